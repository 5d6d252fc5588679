"""The boolean-string experiment of the RDE reference code: a hand-set network, its instances and
the scores of a relevance map against the planted block.

Reference: ``jmaces/rde`` @ d71169d, ``boolean-strings/models.py`` (``create_simple_model``) and
``boolean-strings/instances.py`` (``create_bernoulli_bg_block``):

* inputs are strings of ``dimension`` = 16 bits, given to the network as (N, 1, 16) (one channel;
  Keras' (N, 16, 1) channels-last);
* the network (:func:`boolean_net`): Conv1D with one all-ones kernel of width ``block_size`` = 5 and
  bias -(5 - 1) = -4, ReLU, Flatten, Dense(1) with weights -1 and bias 1, ReLU, Dense(1) with weight -1
  and bias 1, linear. On a binary string the convolution is 1 exactly on the windows of five ones and
  0 elsewhere, so the output is 1 - ReLU(1 - #windows of ones) = 1 iff some window is all ones;
* an instance (:func:`bernoulli_block_instances`): a background of independent Bernoulli(p) bits
  (the reference's script uses p = 0.05) with one block of ``block_size`` ones planted at a uniformly
  drawn position. Where the background makes a second all-ones window (a one next to the block), the
  string has two prime implicants; such draws are rejected, so that the planted block is the
  instance's only prime implicant (the only minimal set of bits that fixes the output to 1).

The scores of a relevance map r (:func:`block_share`, :func:`block_on_top`) are this book's, not the
reference's (whose results are not published): the share of the map's absolute mass on the block, and
whether the block's five components rank strictly above all others.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

DIMENSION = 16
BLOCK_SIZE = 5
REFERENCE_MUS = [float(m) for m in np.logspace(-5, 0, 10)]  # boolean-strings/script_adf.py: np.logspace(-5, 0, 10)


def boolean_net(dimension: int = DIMENSION, block_size: int = BLOCK_SIZE, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """The reference's hand-set network (``create_simple_model``), inputs (N, 1, dimension), output (N, 1).

    Its parameters are fixed (``requires_grad`` off); gradients with respect to the input still flow.
    """
    n_windows = dimension - block_size + 1
    net = nn.Sequential(nn.Conv1d(1, 1, block_size), nn.ReLU(), nn.Flatten(), nn.Linear(n_windows, 1), nn.ReLU(),
                        nn.Linear(1, 1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(-(block_size - 1))
        net[3].weight.fill_(-1.0)
        net[3].bias.fill_(1.0)
        net[5].weight.fill_(-1.0)
        net[5].bias.fill_(1.0)
    net = net.to(dtype).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def windows_of_ones(x: np.ndarray | torch.Tensor, block_size: int = BLOCK_SIZE) -> np.ndarray:
    """Number of all-ones windows of width ``block_size`` in each binary string of ``x`` (N, d) or (N, 1, d)."""
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x).reshape(len(x), -1) > 0.5
    w = np.lib.stride_tricks.sliding_window_view(a, block_size, axis=1)
    return w.all(-1).sum(1)


@dataclass
class Instances:
    """Binary strings with one planted block: ``x`` (N, 1, d) float64, ``position`` (N,) of the block's
    first bit, ``rejected`` draws (a second all-ones window) and the generator's settings."""

    x: torch.Tensor
    position: np.ndarray
    rejected: int
    p: float
    block_size: int
    seed: int | Sequence[int] | None

    @property
    def block(self) -> np.ndarray:
        """Boolean (N, d): True on each instance's planted block."""
        d = self.x.shape[-1]
        idx = np.arange(d)[None, :]
        return (idx >= self.position[:, None]) & (idx < self.position[:, None] + self.block_size)


def bernoulli_block_instances(n: int, seed: int | Sequence[int], dimension: int = DIMENSION,
                              block_size: int = BLOCK_SIZE, p: float = 0.05) -> Instances:
    """``n`` instances as the reference's ``create_bernoulli_bg_block`` (position uniform over the
    d - b + 1 windows, then d Bernoulli(p) bits, then the block set to ones), drawn from
    ``np.random.default_rng(seed)`` (an int, or a sequence such as ``[seed, 1]`` for an independent
    stream); a draw with more than one all-ones window is rejected and redrawn."""
    if n < 1 or not 0.0 <= p <= 1.0 or not 1 <= block_size <= dimension:
        raise ValueError(f"need n >= 1, 0 <= p <= 1 and 1 <= block_size <= dimension (got {n}, {p}, {block_size})")
    rng = np.random.default_rng(seed)
    xs, pos, rejected = [], [], 0
    while len(xs) < n:
        position = int(rng.integers(0, dimension - block_size + 1))
        bg = rng.binomial(1, p, dimension)
        bg[position : position + block_size] = 1
        if int(windows_of_ones(bg[None], block_size)[0]) != 1:
            rejected += 1
            continue
        xs.append(bg)
        pos.append(position)
    x = torch.as_tensor(np.stack(xs), dtype=torch.float64).unsqueeze(1)
    return Instances(x, np.asarray(pos), rejected, p, block_size, seed)


def reference_instance(dimension: int = DIMENSION, block_size: int = BLOCK_SIZE, p: float = 0.05) -> Instances:
    """The single instance of the reference's scripts: ``np.random.seed(1)`` and then
    ``create_bernoulli_bg_block(p=0.05)`` (numpy's legacy generator, same draws in the same order)."""
    rs = np.random.RandomState(1)
    position = int(rs.randint(0, dimension - block_size + 1))
    bg = rs.binomial(1, p, dimension)
    bg[position : position + block_size] = 1
    x = torch.as_tensor(bg[None], dtype=torch.float64).unsqueeze(1)
    return Instances(x, np.asarray([position]), 0, p, block_size, None)


def two_class_scores(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """The reference's ``wrapped_prediction`` for LIME (``boolean-strings/script_lime.py``): strings
    (M, d) -> [f(x), 1 - f(x)] (M, 2), where f is the network's output (in [0, 1] on [0, 1]^d)."""
    dtype = next(model.parameters()).dtype

    def predict(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            f = model(torch.as_tensor(np.asarray(a), dtype=dtype).view(len(a), 1, -1)).double().cpu().numpy()
        return np.concatenate([f, 1 - f], axis=1)

    return predict


def _flat(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    a = maps.detach().cpu().double().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps, dtype=np.float64)
    return a.reshape(len(a), -1)


def block_share(maps: torch.Tensor | np.ndarray, block: np.ndarray) -> np.ndarray:
    """Share of each map's absolute mass on its block: sum_B |r_i| / sum_i |r_i| (N,). A map without
    mass (all zeros) has share 0: it puts nothing on the block."""
    a = np.abs(_flat(maps))
    total = a.sum(1)
    on = (a * block).sum(1)
    return np.where(total > 0, on / np.where(total > 0, total, 1.0), 0.0)


def block_on_top(maps: torch.Tensor | np.ndarray, block: np.ndarray, rel_margin: float = 1e-6) -> np.ndarray:
    """Does the block hold the map's top components? True where every block component's (signed)
    relevance exceeds every other component's by more than ``rel_margin`` times the map's largest
    absolute value (N,) bool. Ties are failures: an all-zero map, or a mask at 1 on the block and on a
    background bit, does not single out the block; the margin keeps last-bit rounding from deciding."""
    a = _flat(maps)
    scale = np.abs(a).max(1)
    lo_block = np.where(block, a, np.inf).min(1)
    hi_rest = np.where(block, -np.inf, a).max(1)
    return (lo_block - hi_rest > rel_margin * scale) & (scale > 0)


def select_mu(on_top: np.ndarray, share: np.ndarray) -> int:
    """The index of the sparsity weight to use, from calibration instances: the largest share of
    instances with the block on top (``on_top``: bool (n_mu, N)); ties go to the larger mean share
    (``share``: (n_mu, N)), then to the smaller index (the smaller mu in an increasing sweep)."""
    top = np.asarray(on_top, dtype=float).mean(1)
    sh = np.asarray(share, dtype=float).mean(1)
    return int(np.lexsort((np.arange(len(top)), -sh, -top))[0])
