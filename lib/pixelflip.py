"""The relevance-ordering (pixel-flipping) test of the RDE paper, batched.

For an image x with predicted class c, components are randomised in the order of a relevance map,
*least relevant first* (so the most relevant ones are kept longest), ``group_size`` components per
step; at each step ``n_draws`` noisy copies are drawn (uniform noise in [x.min(), x.max()], then
clipped to that range) and the classifier's softmax probability of c is compared with its value on
x. A good relevance map keeps the probability (low distortion) and the accuracy high while few
components are kept. Ties in the map are broken at random. This follows the reference code
(``jmaces/rde`` @ d71169d, ``mnist/pixelflip.py``): distortion = mean squared change of the
probability of the originally predicted class; accuracy against the true label; the Monte-Carlo
standard error of each step's mean is reported, and the rate is the share of components *not*
randomised.

Every step of every image is a batch of ``n_draws`` forward passes; all of them go through the
model in large batches (``batch`` images per call), which is this test's cost and its limit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lib.progress import progress_bar

ProbFn = Callable[[torch.Tensor], torch.Tensor]
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it


def relevance_ordering(mapping: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flat component indices of each map (N, ...) in ascending relevance, ties broken at random."""
    flat = mapping.flatten(1).double()
    noise = torch.rand(flat.shape, generator=generator, dtype=torch.float64)
    # sort by (relevance, random key): a stable sort on the random key, then on the relevance
    order = torch.argsort(noise, dim=1)
    keyed = torch.gather(flat, 1, order)
    second = torch.argsort(keyed, dim=1, stable=True)
    return torch.gather(order, 1, second)


@dataclass
class FlipCurves:
    """Per image (rows) and step (columns): mean distortion and accuracy with their MC standard errors."""

    rate: np.ndarray  # (S + 1,) share of components kept, from 1 to 0
    distortion: np.ndarray  # (N, S + 1)
    distortion_se: np.ndarray
    accuracy: np.ndarray
    accuracy_se: np.ndarray

    def mean_curves(self) -> dict[str, np.ndarray]:
        """Means over images, and the band of the reference's plots: the RMS of the per-image MC errors."""
        n = len(self.distortion)
        return {"distortion": self.distortion.mean(0), "distortion_band": np.sqrt((self.distortion_se**2).mean(0)),
                "accuracy": self.accuracy.mean(0), "accuracy_band": np.sqrt((self.accuracy_se**2).mean(0)), "n": n}


def area(curves: np.ndarray, rate: np.ndarray, max_rate: float = 1.0) -> np.ndarray:
    """Per-image area under ``curves`` against the rate, over rates in [0, max_rate] (trapezoids),
    normalised by ``max_rate`` (a mean height). ``max_rate < 1`` looks at sparse explanations only."""
    r = rate[::-1]
    c = curves[:, ::-1]
    keep = r <= max_rate + 1e-12
    r, c = r[keep], c[:, keep]
    return _trapezoid(c, r, axis=1) / max(r[-1] - r[0], 1e-12)


def area_se(se: np.ndarray, rate: np.ndarray, max_rate: float = 1.0) -> np.ndarray:
    """Monte-Carlo standard error of :func:`area` per image, from the per-step standard errors ``se``
    (the steps' noise draws are independent, so the trapezoid weights combine them in quadrature)."""
    r = rate[::-1]
    e = se[:, ::-1]
    keep = r <= max_rate + 1e-12
    r, e = r[keep], e[:, keep]
    w = np.zeros(len(r))
    d = np.diff(r) / 2
    w[:-1] += d
    w[1:] += d
    return np.sqrt((e**2 * w**2).sum(1)) / max(r[-1] - r[0], 1e-12)


@torch.no_grad()
def relevance_ordering_test(
    probs: ProbFn,
    x: torch.Tensor,
    y: torch.Tensor,
    mappings: torch.Tensor,
    group_size: int = 5,
    n_draws: int = 512,
    generator: torch.Generator | None = None,
    batch: int = 8192,
    progress: bool = True,
    desc: str = "pixel flipping",
) -> FlipCurves:
    """Run the test for images ``x`` (N, C, H, W), labels ``y`` and relevance maps of the same shape."""
    if mappings.shape != x.shape:
        raise ValueError(f"relevance maps must have the images' shape {tuple(x.shape)}, got {tuple(mappings.shape)}")
    n, size = len(x), x[0].numel()
    steps = math.ceil(size / group_size)
    order = relevance_ordering(mappings, generator)
    p0 = probs(x)
    node = p0.argmax(1)
    target = p0.gather(1, node[:, None])[:, 0]
    shape = (steps + 1, n)
    dist, dist_se = np.zeros(shape), np.zeros(shape)
    acc, acc_se = np.zeros(shape), np.zeros(shape)
    steps_per_call = max(1, batch // n_draws)
    bar = progress_bar(total=n * (steps + 1), desc=desc, enabled=progress, leave=False, mininterval=1.0)
    for i in range(n):
        xi = x[i].flatten()
        lo, hi = float(xi.min()), float(xi.max())
        # randomised[k] = True for the k * group_size least relevant components
        rank = torch.empty(size, dtype=torch.long)
        rank[order[i]] = torch.arange(size)
        for s0 in range(0, steps + 1, steps_per_call):
            ks = torch.arange(s0, min(steps + 1, s0 + steps_per_call))
            randomised = rank[None, :] < (ks[:, None] * group_size)  # (k, size)
            noise = lo + (hi - lo) * torch.rand(len(ks), n_draws, size, generator=generator, dtype=x.dtype)
            mask = randomised[:, None, :].to(x.dtype)
            corrupted = ((1 - mask) * xi + mask * noise).clamp(lo, hi).view(-1, *x.shape[1:])
            p = probs(corrupted).view(len(ks), n_draws, -1)
            sq = (p[..., node[i]] - target[i]).double() ** 2
            hit = (p.argmax(-1) == y[i]).double()
            rows = ks.numpy()  # a one-element torch index is taken as a scalar (__index__); numpy rows keep the shape
            dist[rows, i] = sq.mean(1).numpy()
            dist_se[rows, i] = (sq.std(1, unbiased=False) / math.sqrt(n_draws)).numpy()
            acc[rows, i] = hit.mean(1).numpy()
            acc_se[rows, i] = (hit.std(1, unbiased=False) / math.sqrt(n_draws)).numpy()
            bar.update(len(ks))
    bar.close()
    rate = 1 - np.minimum(np.arange(steps + 1) * group_size, size) / size
    return FlipCurves(rate, dist.T, dist_se.T, acc.T, acc_se.T)


def tie_free_ranks(mapping: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each component's rank in ascending relevance (0 = least relevant), ties broken at random as in
    :func:`relevance_ordering`; float64, shaped like ``mapping``. Two tests given these ranks instead of
    the map see the same order, whatever their own tie-breaking."""
    order = relevance_ordering(mapping, generator)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    return ranks.double().view(mapping.shape)


@torch.no_grad()
def baseline_flip_curves(
    probs: ProbFn,
    x: torch.Tensor,
    labels: torch.Tensor,
    mappings: torch.Tensor,
    group_size: int = 5,
    most_relevant_first: bool = True,
    generator: torch.Generator | None = None,
    batch: int = 8192,
) -> np.ndarray:
    """The pixel-flipping test of Quantus' ``PixelFlipping`` (deterministic, no noise draws).

    Components are replaced, ``group_size`` per step and *most relevant first* by default, by a
    baseline: the image's minimum (Quantus' ``perturb_baseline="black"``, the minimum of the image).
    Returns the probability of class ``labels`` after each step, shaped (N, ceil(size / group_size));
    the first column is after the first group (Quantus' curve has no unperturbed point). Ties are
    broken at random (``generator``); pass :func:`tie_free_ranks` to fix the order.
    """
    if mappings.shape != x.shape:
        raise ValueError(f"relevance maps must have the images' shape {tuple(x.shape)}, got {tuple(mappings.shape)}")
    n, size = len(x), x[0].numel()
    steps = math.ceil(size / group_size)
    order = relevance_ordering(mappings, generator)
    if most_relevant_first:
        order = order.flip(1)
    out = np.zeros((n, steps))
    for i in range(n):
        xi = x[i].flatten()
        rank = torch.empty(size, dtype=torch.long)
        rank[order[i]] = torch.arange(size)
        removed = rank[None, :] < (torch.arange(1, steps + 1)[:, None] * group_size)  # (steps, size)
        imgs = torch.where(removed, xi.min(), xi).view(-1, *x.shape[1:])
        p = torch.cat([probs(imgs[j : j + batch]) for j in range(0, steps, batch)])
        out[i] = p[:, labels[i]].double().numpy()
    return out


def plot_curve(ax, rate: np.ndarray, mean: np.ndarray, band: np.ndarray | None = None, label: str = "", **kw):
    """One method's mean curve against the rate (share of components kept), with its band shaded."""
    (line,) = ax.plot(rate, mean, label=label, **kw)
    if band is not None:
        ax.fill_between(rate, mean - band, mean + band, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("rate (share of components kept)")
    return line
