"""Plotting helpers: each takes the ``ax`` (or axes) to draw on and returns the figure.

No computation happens here: chapters compute, then call these to draw. Used by every chapter.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def _img(x) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 3 and a.shape[0] in (1, 3):  # CHW -> HWC
        a = a.transpose(1, 2, 0)
    return a.squeeze(-1) if a.ndim == 3 and a.shape[-1] == 1 else a


def image(ax: Axes, x, title: str = "", cmap: str = "gray", vmin: float | None = None, vmax: float | None = None) -> Figure:
    """Show one image (CHW/HW tensor or array) without ticks."""
    ax.imshow(_img(x), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.figure


def image_grid(axes: Sequence[Axes], images: Sequence, titles: Sequence[str] | None = None, **kw) -> Figure:
    """Show ``images`` on ``axes`` (same length), e.g. original / explanation / difference rows."""
    axes = list(np.ravel(axes))
    if len(axes) != len(images):
        raise ValueError(f"{len(axes)} axes for {len(images)} images")
    titles = list(titles) if titles is not None else [""] * len(images)
    for ax, im, t in zip(axes, images, titles):
        image(ax, im, t, **kw)
    return axes[0].figure


def signed_overlay(ax: Axes, base, delta, title: str = "", threshold: float = 1e-6) -> Figure:
    """Grey base image with the non-zero entries of ``delta`` in colour (red: added, blue: removed)."""
    b = _img(base)
    d = _img(delta)
    rgb = np.repeat(((b - b.min()) / (np.ptp(b) + 1e-12))[..., None], 3, axis=-1) * 0.6
    scale = np.abs(d).max() + 1e-12
    add, rem = np.clip(d / scale, 0, 1), np.clip(-d / scale, 0, 1)
    mask = np.abs(d) > threshold
    rgb[mask] = np.stack([add, 0.15 * np.ones_like(add), rem], axis=-1)[mask]
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.figure


def bars(ax: Axes, names: Sequence[str], values: Sequence[float], errors: Sequence[float] | None = None,
         ylabel: str = "", log: bool = False, reference: dict[str, float] | None = None) -> Figure:
    """Bar chart with optional error bars and optional paper reference markers (black ticks)."""
    x = np.arange(len(names))
    ax.bar(x, values, yerr=errors, capsize=3, color="tab:blue", alpha=0.8, label="ours")
    if reference:
        ref_x = [i for i, n in enumerate(names) if n in reference]
        ax.scatter(ref_x, [reference[names[i]] for i in ref_x], marker="_", s=400, color="black", zorder=3, label="paper")
        ax.legend(fontsize=8)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    return ax.figure


def heatmap(ax: Axes, matrix, row_labels: Sequence[str], col_labels: Sequence[str], title: str = "",
            fmt: str = "{:d}", cmap: str = "Blues", xlabel: str = "", ylabel: str = "") -> Figure:
    """Annotated heat map (e.g. original class x class a pertinent negative flips to)."""
    m = np.asarray(matrix)
    ax.imshow(m, cmap=cmap)
    ax.set_xticks(range(len(col_labels)), col_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax.figure


def scatter(ax: Axes, x, y, xlabel: str = "", ylabel: str = "", title: str = "", alpha: float = 0.3) -> Figure:
    """Plain scatter plot (e.g. uncertainty vs rank error)."""
    ax.scatter(np.asarray(x), np.asarray(y), s=6, alpha=alpha)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return ax.figure


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 3.0, height: float = 3.0, **kw):
    """``plt.subplots`` sized per panel; returns (fig, axes)."""
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)


def mask_overlay(ax: Axes, x, mask, title: str = "", color: Sequence[float] = (1.0, 0.15, 0.1), alpha: float = 0.65) -> Figure:
    """Image (CHW/HW) with the pixels where ``mask`` (H, W) is True tinted in ``color``.

    Used by the CXPlain chapter to show which blocks an explanation masks (its top 10%).
    """
    a = _img(x).astype(float)
    a = (a - a.min()) / (np.ptp(a) + 1e-12)
    rgb = a.copy() if a.ndim == 3 else np.repeat(a[..., None], 3, axis=-1)
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(color, dtype=float)
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.figure


def relevance_rows(ax: Axes, maps, labels: Sequence[str], bits=None, block=None, title: str = "") -> Figure:
    """One row per relevance map of a 1-D input (e.g. the RDE boolean strings), each row scaled to its
    own largest absolute value (red: positive, blue: negative, white: 0); ``bits`` (d,) is drawn as a
    first row (black = 1) and ``block`` (d,) bool is outlined in green."""
    m = np.asarray(maps.detach().cpu() if isinstance(maps, torch.Tensor) else maps, dtype=float).reshape(len(labels), -1)
    scale = np.abs(m).max(1, keepdims=True)
    m = np.divide(m, scale, out=np.zeros_like(m), where=scale > 0)
    labels = list(labels)
    if bits is not None:
        b = np.asarray(bits.detach().cpu() if isinstance(bits, torch.Tensor) else bits, dtype=float).ravel()
        m = np.vstack([np.zeros((1, m.shape[1])), m])
        labels = ["input"] + labels
    ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    if bits is not None:
        for j in np.flatnonzero(b > 0.5):
            ax.add_patch(plt.Rectangle((j - 0.5, -0.5), 1, 1, color="black"))
    if block is not None:
        idx = np.flatnonzero(np.asarray(block))
        ax.add_patch(plt.Rectangle((idx.min() - 0.5, -0.5), len(idx), len(m), fill=False, edgecolor="tab:green",
                                   linewidth=2))
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xticks(range(m.shape[1]), [str(i) for i in range(m.shape[1])], fontsize=6)
    ax.set_title(title, fontsize=9)
    return ax.figure
