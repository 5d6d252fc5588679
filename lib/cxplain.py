"""CXPlain (Schwab & Karlen, NeurIPS 2019, arXiv:1910.12336) in PyTorch, CPU-friendly.

What each part reproduces (section numbers refer to the arXiv paper):

* :func:`compute_omega` -- Sec. 3, *causal objective*: the target model's loss on ``x``
  (``eps_X``) and on ``x`` with block ``i`` masked (``eps_{X\\{i}}``) give
  ``Delta_i = max(eps_{X\\{i}} - eps_X, 0)`` and the normalised importance
  ``Omega_i = Delta_i / sum_j Delta_j``; all masked copies go through the target model in large
  batches (no Python loop over blocks), once per sample, without gradients.
* :class:`MLPExplainer`, :class:`UNetExplainer` -- Sec. 3 / 4, the *explanation models* (an MLP
  and a U-net mapping the image to a softmax over blocks).
* :func:`causal_kl_loss`, :func:`train_explainer` -- Sec. 3, training with
  ``KL(Omega || A(x))``.
* :class:`BootstrapEnsemble` -- Sec. 3, *uncertainty estimates*: M explanation models fitted
  on bootstrap resamples; the importance is the ensemble median and the uncertainty the width
  of the (default 95%) bootstrap confidence interval.
* :func:`rank_error`, :func:`uncertainty_rank_correlation` -- Sec. 4, the experiment that
  correlates the uncertainty with the rank error of the importance estimates on held-out data.
* :data:`PAPER_SELECTION`, :func:`search_configs`, :func:`build_explainer` -- the explanation
  models' hyper-parameters: the paper's selection and random-search ranges (appendix A,
  Tables S1-S3), as the CXPlain chapter runs them.

Differences from the reference implementation (``cxplain`` 1.0.3, TensorFlow/Keras) are listed
where they matter; the main ones:

* the reference floors ``Delta_i`` at Keras' epsilon (1e-7) instead of 0, then clips ``Omega``
  to ``[1e-7, 1]`` (``delta_floor`` reproduces the floor; ``lib.reference.cxplain_ref`` the rest);
* the reference computes Keras' categorical cross-entropy on clipped probabilities
  (``[1e-7, 1 - 1e-7]``); here the cross-entropy is computed from logits in float64 with a
  formula that stays accurate when the target model is very confident (``eps_X`` ~ 1e-10),
  which matters for a 99.85%-accurate model: with clipped probabilities every ``Delta_i`` of a
  confidently classified image is 0 and its ``Omega`` becomes uniform;
* the reference trains all ensemble members on the same data (no resampling); here resampling
  with replacement is the default (``resample=True``), as described in the paper.

Block geometry (any ``(C, H, W)``, any block size dividing ``H`` and ``W``; row-major block
numbering) comes from :mod:`lib.attributions`.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, NamedTuple, Sequence, Union, overload

import numpy as np
import torch
from scipy import stats
from torch import nn
from torch.nn import functional as F

from lib.attributions import Block, MaskValue, block_grid, block_masks, block_shape, eval_mode, num_blocks
from lib.progress import progress_bar

__all__ = [
    "LossFn",
    "cross_entropy_per_sample",
    "compute_omega",
    "MLPExplainer",
    "UNetExplainer",
    "causal_kl_loss",
    "TrainHistory",
    "train_explainer",
    "BootstrapEnsemble",
    "Explanation",
    "explain",
    "rank_error",
    "CorrelationResult",
    "uncertainty_rank_correlation",
    "per_image_uncertainty_correlation",
    "PAPER_SELECTION",
    "SEARCH_RANGES",
    "unet_depth",
    "search_configs",
    "build_explainer",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A per-sample loss ``loss(logits (N, K), target (N,) long) -> (N,)``."""


# --------------------------------------------------------------------------------------------
# Causal objective: Omega (paper Sec. 3)
# --------------------------------------------------------------------------------------------
def cross_entropy_per_sample(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``-log softmax(logits)[target]`` per sample, in float64, accurate near 0.

    Written as ``softplus(logsumexp_{j != y}(z_j - z_y))`` so that a loss of 1e-12 (a very
    confident correct prediction) is not rounded to 0 as ``-log(p)`` with ``p`` near 1 would be.
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError("logits must be (N, K) with K >= 2")
    z = logits.double()
    t = target.view(-1, 1).long()
    zy = z.gather(1, t)
    others = (z - zy).scatter(1, t, float("-inf"))
    return F.softplus(torch.logsumexp(others, dim=1))


def _forward_batched(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@overload
def compute_omega(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = ...,
    block: Block = ...,
    mask_value: MaskValue = ...,
    loss: Literal["ce", "ce_pred"] | LossFn = ...,
    batch_size: int = ...,
    delta_floor: float = ...,
    return_delta: Literal[False] = ...,
    progress: bool = ...,
    skip_unchanged: bool = ...,
) -> torch.Tensor: ...


@overload
def compute_omega(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = ...,
    block: Block = ...,
    mask_value: MaskValue = ...,
    loss: Literal["ce", "ce_pred"] | LossFn = ...,
    batch_size: int = ...,
    delta_floor: float = ...,
    *,
    return_delta: Literal[True],
    progress: bool = ...,
    skip_unchanged: bool = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


def compute_omega(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    block: Block = 2,
    mask_value: MaskValue = 0.0,
    loss: Literal["ce", "ce_pred"] | LossFn = "ce",
    batch_size: int = 2048,
    delta_floor: float = 0.0,
    return_delta: bool = False,
    progress: bool = False,
    skip_unchanged: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Normalised causal importance ``Omega`` of every block of every image (paper Sec. 3).

    For image ``x`` with label ``y`` and target model ``f``: ``eps_X = L(y, f(x))``; masking
    block ``i`` (setting its pixels in all channels to ``mask_value``) gives ``eps_{X\\{i}}``;

        ``Delta_i = max(eps_{X\\{i}} - eps_X, delta_floor)``,  ``Omega_i = Delta_i / sum_j Delta_j``.

    If no block increases the loss (``sum_j Delta_j = 0``), ``Omega`` is uniform (``1/n_blocks``),
    which is also the limit of the reference implementation's epsilon floor.

    Vectorised: for a chunk of ``k`` images, the ``k * (n_blocks + 1)`` inputs (originals and
    all single-block-masked copies) are built with one broadcast ``torch.where`` and passed
    through ``model`` in batches of ``batch_size``, under ``torch.no_grad`` and in eval mode.
    With ``skip_unchanged`` (default), a masked copy identical to the original (a block whose
    pixels already all equal ``mask_value``, e.g. black background on MNIST) is not passed
    through the model: its loss *is* ``eps_X``, so its ``Delta`` is exactly 0 (then floored at
    ``delta_floor``). This is exact, not an approximation; on MNIST most 2x2 blocks are
    background, so most forward passes are skipped (the CXPlain chapter counts the share).

    Args:
        model: target model, ``(N, C, H, W) -> (N, K)`` logits.
        x: images ``(N, C, H, W)``.
        y: true labels ``(N,)`` (required for ``loss="ce"``).
        block: block size dividing ``H`` and ``W`` (2 for MNIST -> 196 blocks).
        mask_value: value of a masked pixel (0 = black background for [0, 1] MNIST), scalar or
            tensor broadcastable to ``(C, H, W)``.
        loss: ``"ce"``: cross-entropy against the true label ``y`` (the paper's ``L(y, y_hat)``
            and what the reference computes when, as in its examples, the ground-truth labels
            are passed to ``fit``); ``"ce_pred"``: cross-entropy against the model's own
            prediction on the unmasked image (needs no labels); or a callable ``LossFn``
            (it receives ``y``, or the predictions if ``y`` is None).
        batch_size: inputs per forward pass of the target model.
        delta_floor: lower clip of ``Delta`` (0 here; the reference uses 1e-7).
        return_delta: also return the unnormalised ``Delta`` (float64).
        progress: show a tqdm progress bar over chunks of images.
        skip_unchanged: do not evaluate masked copies equal to the original (see above).

    Returns:
        float32 ``Omega`` of shape ``(N, n_blocks)`` (rows sum to 1), and ``Delta`` if requested.
    """
    if x.ndim != 4:
        raise ValueError("x must be (N, C, H, W)")
    if isinstance(loss, str):
        if loss == "ce":
            if y is None:
                raise ValueError("loss='ce' needs the true labels y (or use loss='ce_pred')")
        elif loss != "ce_pred":
            raise ValueError(f"unknown loss {loss!r}")
        loss_fn: LossFn = cross_entropy_per_sample
    else:
        loss_fn = loss
    use_pred = loss == "ce_pred" or y is None
    n, c, h, w = x.shape
    masks = block_masks((h, w), block, device=x.device)  # (B, H, W)
    n_b = masks.shape[0]
    fill = torch.as_tensor(mask_value, dtype=x.dtype, device=x.device)
    per_chunk = max(1, batch_size // (n_b + 1))
    omegas, deltas = [], []
    with eval_mode(model), torch.no_grad():
        for s in progress_bar(range(0, n, per_chunk), enabled=progress, desc="Omega", unit="chunk"):
            xb = x[s : s + per_chunk]
            k = len(xb)
            masked = torch.where(masks[None, :, None], fill, xb[:, None])  # (k, B, C, H, W)
            flat = masked.reshape(k * n_b, c, h, w)
            if skip_unchanged:
                changed = (masked != xb[:, None]).reshape(k * n_b, -1).any(dim=1)
                flat = flat[changed]
            inputs = torch.cat([xb, flat])
            logits = _forward_batched(model, inputs, batch_size)
            full, part = logits[:k], logits[k:]
            target = full.argmax(dim=1) if use_pred else torch.as_tensor(y[s : s + k]).long().to(x.device)
            eps_full = loss_fn(full, target).double()
            target_rep = target.repeat_interleave(n_b)
            if skip_unchanged:
                eps_masked = eps_full.repeat_interleave(n_b)  # unchanged copy: same loss, Delta = 0
                if len(part):
                    eps_masked[changed] = loss_fn(part, target_rep[changed]).double()
                eps_masked = eps_masked.view(k, n_b)
            else:
                eps_masked = loss_fn(part, target_rep).double().view(k, n_b)
            delta = (eps_masked - eps_full[:, None]).clamp_min(delta_floor)
            total = delta.sum(dim=1, keepdim=True)
            omega = torch.where(total > 0, delta / torch.where(total > 0, total, 1.0), 1.0 / n_b)
            omegas.append(omega.float())
            deltas.append(delta)
    omega_all = torch.cat(omegas)
    return (omega_all, torch.cat(deltas)) if return_delta else omega_all


# --------------------------------------------------------------------------------------------
# Explanation models (paper Sec. 3 and 4)
# --------------------------------------------------------------------------------------------
class MLPExplainer(nn.Module):
    """MLP explanation model: flattened image -> ``n_layers`` x (Linear, SELU, Dropout) -> blocks.

    Paper (MNIST): 2 hidden layers, ``hidden=126`` units, SELU, dropout 4.01%, Adam lr 1e-3,
    batch size 100. The output layer is linear; ``forward`` returns **logits** over the
    ``n_blocks`` blocks (apply ``softmax`` for the importance distribution ``A(x)``).

    Args:
        input_shape: ``(C, H, W)`` of the explained images.
        block: block size (defines ``n_blocks``).
        hidden: units per hidden layer.
        n_layers: number of hidden layers.
        dropout: dropout probability after each hidden layer (``nn.Dropout``, as the reference).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        block: Block = 2,
        hidden: int = 126,
        n_layers: int = 2,
        dropout: float = 0.0401,
    ) -> None:
        super().__init__()
        c, h, w = (int(v) for v in input_shape)
        self.n_blocks = num_blocks((h, w), block)
        layers: list[nn.Module] = [nn.Flatten()]
        width = c * h * w
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SELU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, self.n_blocks))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_blocks)``."""
        return self.net(x)


class _DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU()
        )


class UNetExplainer(nn.Module):
    """U-net explanation model whose decoder stops at the block grid (14x14 for MNIST, 2x2 blocks).

    Encoder: ``depth + 1`` levels of two 3x3 conv + ReLU with ``base_filters * 2**level``
    filters, 2x2 max pooling between levels, dropout after each level. Decoder: from the
    bottom level up to the level whose resolution equals the block grid, nearest 2x upsampling,
    2x2 conv + ReLU, concatenation with the encoder's skip connection, two 3x3 conv + ReLU.
    A final 3x3 conv gives one channel on the block grid. With ``dense_head=True`` (the
    reference implementation's layout) that map goes through ReLU and a dense layer to the
    ``n_blocks`` logits; otherwise the (linear) map itself is the logits.

    Paper (MNIST): ``base_filters`` K = 77, ``depth`` 2 (28 -> 14 -> 7 and back to 14),
    dropout 0.001%, Adam lr 2e-3, batch size 128. ImageNet with 16x16 blocks on 224x224 needs
    ``depth >= 4``.

    Args:
        input_shape: ``(C, H, W)``; ``H`` and ``W`` must be divisible by ``2**depth``.
        block: square block size, a power of two with ``log2(block) <= depth``.
        base_filters: filters of the first level (K).
        depth: number of down-sampling stages.
        dropout: dropout probability after each encoder level.
        dense_head: end with ReLU + ``Linear(n_blocks, n_blocks)`` as the reference does.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        block: Block = 2,
        base_filters: int = 77,
        depth: int = 2,
        dropout: float = 1e-5,
        dense_head: bool = True,
    ) -> None:
        super().__init__()
        c, h, w = (int(v) for v in input_shape)
        bh, bw = block_shape(block)
        if bh != bw or bh & (bh - 1):
            raise ValueError(f"UNetExplainer needs a square power-of-two block, got {bh}x{bw}")
        up_to = int(math.log2(bh))
        if up_to > depth:
            raise ValueError(f"block {bh} needs depth >= {up_to}")
        if h % (2**depth) or w % (2**depth):
            raise ValueError(f"image {h}x{w} not divisible by 2**depth = {2**depth}")
        self.grid = block_grid((h, w), block)
        self.n_blocks = self.grid[0] * self.grid[1]
        self.depth, self.up_to = depth, up_to
        widths = [base_filters * 2**lvl for lvl in range(depth + 1)]
        self.down = nn.ModuleList()
        c_in = c
        for lvl in range(depth + 1):
            self.down.append(_DoubleConv(c_in, widths[lvl]))
            c_in = widths[lvl]
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for lvl in reversed(range(up_to, depth)):
            self.up.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.ZeroPad2d((0, 1, 0, 1)),  # Keras "same" padding of a 2x2 kernel
                    nn.Conv2d(c_in, widths[lvl], 2),
                    nn.ReLU(),
                )
            )
            self.up_conv.append(_DoubleConv(2 * widths[lvl], widths[lvl]))
            c_in = widths[lvl]
        self.out_conv = nn.Conv2d(c_in, 1, 3, padding=1)
        self.head: nn.Module = (
            nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(self.n_blocks, self.n_blocks)) if dense_head else nn.Flatten()
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_blocks)`` (row-major over the block grid)."""
        skips: list[torch.Tensor] = []
        h = x
        for lvl, conv in enumerate(self.down):
            h = conv(h)
            skips.append(h)
            if lvl < self.depth:
                h = self.pool(h)
            h = self.drop(h)
        for i, lvl in enumerate(reversed(range(self.up_to, self.depth))):
            h = self.up[i](h)
            h = self.up_conv[i](torch.cat([skips[lvl], h], dim=1))
        return self.head(self.out_conv(h))


# --------------------------------------------------------------------------------------------
# Training (paper Sec. 3)
# --------------------------------------------------------------------------------------------
def causal_kl_loss(logits: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """Mean over samples of ``KL(Omega || softmax(logits))`` (the causal objective's loss).

    Computed from log-softmax (no clipping; ``0 * log 0 = 0``). The reference clips both
    distributions to ``[1e-7, 1]`` (Keras' KL), which differs only where ``A(x) < 1e-7``.
    """
    log_a = F.log_softmax(logits, dim=-1)
    return (torch.xlogy(omega, omega) - omega * log_a).sum(dim=-1).mean()


@dataclass
class TrainHistory:
    """Per-epoch mean training and validation KL, the epoch whose weights were kept, seconds."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0


def _split(n: int, val_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    n_val = int(round(val_fraction * n))
    return perm[n_val:], perm[:n_val]


@torch.no_grad()
def _mean_kl(model: nn.Module, x: torch.Tensor, omega: torch.Tensor, batch_size: int) -> float:
    total = 0.0
    for i in range(0, len(x), batch_size):
        total += float(causal_kl_loss(model(x[i : i + batch_size]), omega[i : i + batch_size])) * len(x[i : i + batch_size])
    return total / max(1, len(x))


def train_explainer(
    model: nn.Module,
    x: torch.Tensor,
    omega: torch.Tensor,
    *,
    x_val: torch.Tensor | None = None,
    omega_val: torch.Tensor | None = None,
    val_fraction: float = 0.1,
    lr: float = 1e-3,
    batch_size: int = 100,
    max_epochs: int = 100,
    patience: int = 12,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> tuple[nn.Module, TrainHistory]:
    """Fit an explanation model to precomputed ``Omega`` with Adam and ``KL(Omega || A(x))``.

    Plain mini-batch loop (paper Sec. 3; the reference's defaults are kept: early stopping with
    patience 12 on the validation KL, at most 100 epochs, restoring the best weights). The
    validation set is ``(x_val, omega_val)`` if given, else a random ``val_fraction`` of
    ``(x, omega)`` (the reference uses Keras' ``validation_split``, i.e. the last 10%).
    With ``val_fraction=0`` and no validation set, all epochs run and the last weights are kept.

    Deterministic given ``seed``: shuffling uses a seeded generator and dropout runs under a
    forked RNG seeded with ``seed`` (the caller's global RNG is left untouched). The model's
    initial weights are the caller's (seed before constructing it).

    Returns the trained model (in eval mode) and its :class:`TrainHistory`.
    """
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    if x_val is None:
        if val_fraction > 0:
            tr, va = _split(len(x), val_fraction, gen)
            x, omega, x_val, omega_val = x[tr], omega[tr], x[va], omega[va]
    elif omega_val is None:
        raise ValueError("x_val given without omega_val")
    hist = TrainHistory()
    best_state, best = copy.deepcopy(model.state_dict()), math.inf
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    bad = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bar = progress_bar(range(max_epochs), enabled=progress, desc="explainer", leave=False)
        for epoch in bar:
            model.train()
            perm = torch.randperm(len(x), generator=gen)
            total = 0.0
            for i in range(0, len(x), batch_size):
                idx = perm[i : i + batch_size]
                loss = causal_kl_loss(model(x[idx]), omega[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            hist.train_loss.append(total / len(x))
            model.eval()
            if x_val is not None and len(x_val) > 0:
                v = _mean_kl(model, x_val, omega_val, 512)  # type: ignore[arg-type]
                hist.val_loss.append(v)
                if v < best:
                    best, hist.best_epoch, bad = v, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad += 1
                bar.set_postfix(train=f"{hist.train_loss[-1]:.4f}", val=f"{v:.4f}")
                if bad >= patience:
                    break
            else:
                hist.best_epoch = epoch
                best_state = copy.deepcopy(model.state_dict())
                bar.set_postfix(train=f"{hist.train_loss[-1]:.4f}")
    model.load_state_dict(best_state)
    model.eval()
    hist.seconds = time.perf_counter() - t0
    return model, hist


# --------------------------------------------------------------------------------------------
# Bootstrap ensembles and uncertainty (paper Sec. 3)
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def _predict_softmax(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    with eval_mode(model):
        return torch.cat([torch.softmax(model(x[i : i + batch_size]), dim=-1) for i in range(0, len(x), batch_size)])


class BootstrapEnsemble:
    """``M`` explanation models, each trained on a bootstrap resample (paper Sec. 3).

    **Paper vs. reference.** The paper trains each of the ``M`` models on ``N`` samples drawn
    *with replacement* from the ``N`` training samples (bootstrap resampling) and reads the
    uncertainty off the spread of their outputs. The reference library (``cxplain`` 1.0.3,
    ``CXPlain.fit`` with ``num_models > 1``) fits every member on the *same* data, so its
    spread comes only from random initialisation, shuffling and dropout. ``resample=True``
    (default) is the paper's version; ``resample=False`` the reference's.

    A validation set for early stopping is carved out once (``val_fraction`` of the data,
    seeded) before resampling, so no duplicate of a training sample is used for validation;
    the bootstrap draws from the remaining samples. ``Omega`` is computed once by the caller
    and indexed, never recomputed per member.

    Args:
        make_model: builds a fresh, untrained explanation model (called under
            ``torch.manual_seed(seed + m)`` for member ``m``).
        n_models: ensemble size ``M``.
        resample: draw each member's training set with replacement (paper) or not (reference).
        seed: base seed for resampling, initialisation and training.
        **train_kwargs: passed to :func:`train_explainer` (``lr``, ``batch_size``, ...).
    """

    def __init__(
        self,
        make_model: Callable[[], nn.Module],
        n_models: int = 10,
        resample: bool = True,
        seed: int = 0,
        **train_kwargs: object,
    ) -> None:
        if n_models < 1:
            raise ValueError("n_models must be >= 1")
        self.make_model = make_model
        self.n_models = n_models
        self.resample = resample
        self.seed = seed
        self.train_kwargs = train_kwargs
        self.models: list[nn.Module] = []
        self.histories: list[TrainHistory] = []
        self.indices: list[np.ndarray] = []
        self.val_indices: np.ndarray | None = None

    def bootstrap_indices(self, n: int) -> list[np.ndarray]:
        """The training indices of every member (with replacement if ``resample``), seeded."""
        rng = np.random.default_rng(self.seed)
        if self.resample:
            return [rng.integers(0, n, size=n) for _ in range(self.n_models)]
        return [np.arange(n) for _ in range(self.n_models)]

    def fit(
        self,
        x: torch.Tensor,
        omega: torch.Tensor,
        x_val: torch.Tensor | None = None,
        omega_val: torch.Tensor | None = None,
        val_fraction: float = 0.1,
    ) -> "BootstrapEnsemble":
        """Train the ``M`` members on (resampled) ``(x, omega)``; returns ``self``."""
        if x_val is None and val_fraction > 0:
            gen = torch.Generator().manual_seed(self.seed)
            tr, va = _split(len(x), val_fraction, gen)
            self.val_indices = va.numpy()
            x, omega, x_val, omega_val = x[tr], omega[tr], x[va], omega[va]
        self.indices = self.bootstrap_indices(len(x))
        self.models, self.histories = [], []
        for m, idx in enumerate(self.indices):
            torch.manual_seed(self.seed + m)
            model = self.make_model()
            ti = torch.from_numpy(idx)
            kwargs = dict(self.train_kwargs)
            kwargs.setdefault("val_fraction", 0.0)
            model, hist = train_explainer(
                model, x[ti], omega[ti], x_val=x_val, omega_val=omega_val, seed=self.seed + m, **kwargs  # type: ignore[arg-type]
            )
            self.models.append(model)
            self.histories.append(hist)
        return self

    def predict_members(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Softmax outputs of every member, ``(M, N, n_blocks)``."""
        if not self.models:
            raise RuntimeError("fit the ensemble first")
        return torch.stack([_predict_softmax(m, x, batch_size) for m in self.models])

    def predict(
        self,
        x: torch.Tensor,
        confidence: float = 0.95,
        center: Literal["median", "mean"] = "median",
        uncertainty: Literal["ci_width", "std"] = "ci_width",
        batch_size: int = 512,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Importance and uncertainty per block, each ``(N, n_blocks)``.

        The importance is the ensemble median (reference: ``np.median`` over members; the
        median is not renormalised to sum 1). The uncertainty is the width of the central
        ``confidence`` interval of the members' outputs (``np.percentile`` at
        ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``, linear interpolation, as the
        reference computes its confidence intervals), or their standard deviation.
        """
        p = self.predict_members(x, batch_size).double().cpu().numpy()
        imp = np.median(p, axis=0) if center == "median" else p.mean(axis=0)
        if uncertainty == "ci_width":
            a = (1.0 - confidence) / 2.0
            lo, hi = np.percentile(p, 100 * a, axis=0), np.percentile(p, 100 * (1 - a), axis=0)
            unc = hi - lo
        elif uncertainty == "std":
            unc = p.std(axis=0, ddof=1) if len(p) > 1 else np.zeros_like(imp)
        else:
            raise ValueError(f"unknown uncertainty {uncertainty!r}")
        return torch.from_numpy(imp).float(), torch.from_numpy(unc).float()


@dataclass
class Explanation:
    """Output of :func:`explain`: importance ``(N, n_blocks)``, uncertainty or None, wall seconds."""

    importance: torch.Tensor
    uncertainty: torch.Tensor | None
    seconds: float


def explain(
    explainer: Union[nn.Module, BootstrapEnsemble],
    x: torch.Tensor,
    confidence: float = 0.95,
    batch_size: int = 512,
) -> Explanation:
    """Explain images with a trained explanation model or ensemble, timing the call.

    A single model gives ``softmax(A(x))`` and no uncertainty; an ensemble gives the median and
    the confidence-interval width (:meth:`BootstrapEnsemble.predict`).
    """
    t0 = time.perf_counter()
    if isinstance(explainer, BootstrapEnsemble):
        imp, unc = explainer.predict(x, confidence=confidence, batch_size=batch_size)
    else:
        imp, unc = _predict_softmax(explainer, x, batch_size), None
    return Explanation(imp, unc, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# Uncertainty evaluation (paper Sec. 4)
# --------------------------------------------------------------------------------------------
def _ranks_desc(v: np.ndarray) -> np.ndarray:
    """Rank 1 = largest value, per row; ties share their average rank."""
    return stats.rankdata(-v, axis=-1, method="average")


def rank_error(importance: torch.Tensor | np.ndarray, omega: torch.Tensor | np.ndarray) -> np.ndarray:
    """``|rank of block by estimated importance - rank by true Omega|`` per block, ``(N, n_blocks)``.

    Ranks are taken within each image, descending (the most important block has rank 1),
    ties sharing their average rank (blocks with ``Omega = 0`` are tied).
    """
    imp = np.asarray(torch.as_tensor(importance).double())
    om = np.asarray(torch.as_tensor(omega).double())
    if imp.shape != om.shape:
        raise ValueError(f"shapes differ: {imp.shape} vs {om.shape}")
    return np.abs(_ranks_desc(imp) - _ranks_desc(om))


class CorrelationResult(NamedTuple):
    """Spearman's rho, its two-sided p-value, and the number of (uncertainty, error) pairs."""

    rho: float
    pvalue: float
    n: int

    @property
    def pvalue_positive(self) -> float:
        """One-sided p-value of the alternative "rho > 0" (from the two-sided one)."""
        if math.isnan(self.rho):
            return float("nan")
        return self.pvalue / 2 if self.rho > 0 else 1.0 - self.pvalue / 2


def uncertainty_rank_correlation(
    uncertainty: torch.Tensor | np.ndarray,
    importance: torch.Tensor | np.ndarray,
    omega: torch.Tensor | np.ndarray,
    where: torch.Tensor | np.ndarray | None = None,
) -> CorrelationResult:
    """Spearman correlation between per-block uncertainty and rank error, all blocks pooled.

    All blocks of all held-out images are pooled into one set of pairs
    ``(uncertainty_ij, rank_error_ij)``: a description, **not a test** (its p-value treats the
    blocks of one image as independent, which they are not; test
    :func:`per_image_uncertainty_correlation` across images instead). A positive ``rho`` means that blocks with wider
    confidence intervals are those whose importance rank is estimated less accurately.
    ``where`` (boolean, same shape) restricts the pairs to some blocks (the ranks are still
    taken over all blocks of each image), e.g. ``omega > 0``.
    """
    err = rank_error(importance, omega).ravel()
    unc = np.asarray(torch.as_tensor(uncertainty).double()).ravel()
    if unc.shape != err.shape:
        raise ValueError("uncertainty must have the same shape as importance")
    if where is not None:
        keep = np.asarray(torch.as_tensor(where)).astype(bool).ravel()
        if keep.shape != err.shape:
            raise ValueError("where must have the same shape as importance")
        unc, err = unc[keep], err[keep]
    if err.size < 3:
        return CorrelationResult(float("nan"), float("nan"), int(err.size))
    res = stats.spearmanr(unc, err)
    return CorrelationResult(float(res.statistic), float(res.pvalue), int(err.size))


def per_image_uncertainty_correlation(
    uncertainty: torch.Tensor | np.ndarray,
    importance: torch.Tensor | np.ndarray,
    omega: torch.Tensor | np.ndarray,
    where: torch.Tensor | np.ndarray | None = None,
    min_blocks: int = 3,
) -> np.ndarray:
    """Spearman's rho between uncertainty and rank error **within each image**, ``(N,)``.

    The blocks of one image are not independent, so a test across images needs one number per
    image: this is it (test the values across images, e.g. with
    :func:`lib.stats.one_sample_test`). Ranks (of the importance, of ``Omega`` and inside the
    correlation) are average ranks, so tied blocks (e.g. the many with ``Omega = 0``) share one
    rank. ``where`` keeps only some blocks of each image for the correlation (the rank error is
    still computed over all blocks). An image whose kept uncertainties or rank errors are all equal
    (rho undefined) or that keeps fewer than ``min_blocks`` blocks gives NaN.
    """
    err = rank_error(importance, omega)
    unc = np.asarray(torch.as_tensor(uncertainty).double())
    if unc.shape != err.shape:
        raise ValueError("uncertainty must have the same shape as importance")
    keep = np.ones(err.shape, bool) if where is None else np.asarray(torch.as_tensor(where)).astype(bool)
    if keep.shape != err.shape:
        raise ValueError("where must have the same shape as importance")
    rhos = np.full(len(err), np.nan)
    for i in range(len(err)):
        u, e = unc[i][keep[i]], err[i][keep[i]]
        if len(u) < min_blocks or np.ptp(u) == 0 or np.ptp(e) == 0:
            continue
        rhos[i] = stats.spearmanr(u, e).statistic
    return rhos


# --------------------------------------------------------------------------------------------
# Hyper-parameters: the paper's selection and its random search (paper appendix A, Tables S1-S3)
# --------------------------------------------------------------------------------------------
PAPER_SELECTION: dict[str, dict[str, float | int]] = {
    "mlp": {"hidden": 126, "n_layers": 2, "dropout": 0.0401, "lr": 1e-3, "batch_size": 100},
    "unet": {"base_filters": 77, "depth": 2, "dropout": 0.00001, "lr": 2e-3, "batch_size": 128},
    "unet_imagenet": {"base_filters": 12, "depth": 4, "dropout": 0.0561, "lr": 1e-3, "batch_size": 32},
}
"""The configurations the paper selected after 5 random-search runs each (Schwab & Karlen 2019,
appendix A, "MNIST Benchmark" and "ImageNet Benchmark"): MNIST MLP with 2 hidden layers of 126
SELU units, dropout 4.01%, Adam lr 1e-3, batch 100; MNIST U-net with K = 77 initial filters
(doubling), 2 down-sampling stages, ReLU, dropout 0.001%, Adam lr 2e-3, batch 128; ImageNet U-net
with K = 12, dropout 5.61%, Adam lr 1e-3, batch 32 (depth: enough stages to reach the 14x14 block
grid of 224x224 images, see :func:`unet_depth`)."""

SEARCH_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "mlp": {"hidden": (70, 140), "dropout": (0.0, 0.10)},
    "unet": {"base_filters": (65, 80), "dropout": (0.0, 0.10)},
    "unet_imagenet": {"base_filters": (8, 24), "dropout": (0.0, 0.10)},
}
"""The paper's random-search ranges (appendix A, Table S1: MNIST MLP, H in [70, 140], dropout in
[0%, 10%]; Table S2: MNIST U-net, K in [65, 80], dropout in [0%, 10%]; Table S3: ImageNet U-net,
K in [8, 24], dropout in [0%, 10%]). The appendix says the values were drawn "at random from
predefined ranges"; :func:`search_configs` draws integers uniformly (inclusive) and dropout
uniformly; the other hyper-parameters stay at :data:`PAPER_SELECTION`."""


def unet_depth(block: Block) -> int:
    """Down-sampling stages of the U-net for a block size: 2 (the paper's MNIST U-net), or
    ``log2(block)`` if larger (16x16 ImageNet blocks need 4 so that the bottom level is the block grid)."""
    bh, _ = block_shape(block)
    return max(2, int(math.log2(bh)))


def search_configs(
    kind: Literal["mlp", "unet", "unet_imagenet"],
    n_runs: int,
    seed: int = 0,
    block: Block = 2,
) -> list[dict[str, float | int]]:
    """The configurations of a random search of ``n_runs`` runs for one explanation model.

    Run 0 is the paper's selection (:data:`PAPER_SELECTION`); runs 1.. are random draws from the
    paper's ranges (:data:`SEARCH_RANGES`, seeded, independent of the global RNG). ``block`` sets
    the U-net depth (:func:`unet_depth`). ``kind="unet_imagenet"`` is the ImageNet benchmark's
    U-net (Table S3). Used by the CXPlain chapter.
    """
    if kind not in PAPER_SELECTION:
        raise ValueError(f"kind must be one of {sorted(PAPER_SELECTION)}, got {kind!r}")
    if n_runs < 1:
        raise ValueError("n_runs must be >= 1")
    rng = np.random.default_rng([seed, sorted(PAPER_SELECTION).index(kind)])
    width_key = "hidden" if kind == "mlp" else "base_filters"
    lo, hi = SEARCH_RANGES[kind][width_key]
    configs = []
    for run in range(n_runs):
        cfg = dict(PAPER_SELECTION[kind])
        if run > 0:
            cfg[width_key] = int(rng.integers(int(lo), int(hi) + 1))
            cfg["dropout"] = round(float(rng.uniform(*SEARCH_RANGES[kind]["dropout"])), 5)
        if kind != "mlp":
            cfg["depth"] = unet_depth(block)
        configs.append(cfg)
    return configs


def build_explainer(
    kind: Literal["mlp", "unet", "unet_imagenet"],
    config: dict[str, float | int],
    input_shape: Sequence[int],
    block: Block,
    seed: int | None,
) -> nn.Module:
    """A fresh explanation model for a :func:`search_configs` configuration.

    With an int ``seed`` its initial weights depend only on that seed (built under a forked,
    seeded RNG; the caller's global RNG state is neither used nor changed), so a chapter that
    loads some models from a cache and trains others gets the same models either way. With
    ``seed=None`` the global RNG is used (e.g. inside :class:`BootstrapEnsemble`, which seeds
    it per member).
    """
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if kind == "mlp":
            return MLPExplainer(input_shape, block, hidden=int(config["hidden"]), n_layers=int(config["n_layers"]),
                                dropout=float(config["dropout"]))
        if kind in ("unet", "unet_imagenet"):
            return UNetExplainer(input_shape, block, base_filters=int(config["base_filters"]), depth=int(config["depth"]),
                                 dropout=float(config["dropout"]))
    raise ValueError(f"kind must be 'mlp', 'unet' or 'unet_imagenet', got {kind!r}")
