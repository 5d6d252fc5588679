"""Contrastive Explanation Method (CEM) in torch: pertinent negatives and positives.

Reproduces Dhurandhar et al., "Explanations based on the Missing: Towards Contrastive
Explanations with Pertinent Negatives", NeurIPS 2018 (Sec. 3, Algorithm 1), with the
conventions of the reference implementation most people run, ``alibi.explainers.CEM`` (which
extends the authors' code), so that the two can be compared number for number in the CEM chapter.

For an instance ``x0`` classified as ``t``:

* a **pertinent negative** (PN) is a perturbed instance ``x = x0 + d`` that only *adds* to
  ``x0`` (moves features away from ``no_info_val``), is classified differently from ``t``, and
  is as sparse and small as possible;
* a **pertinent positive** (PP) is the part ``d = x0 - x`` that is *removed* when ``x`` moves
  features towards ``no_info_val``; ``d`` alone must still be classified as ``t``.

Both solve  min_x  c * f_kappa(x) + beta * ||d||_1 + ||d||_2^2 + gamma * ||AE(z) - z||_2^2
(z = x for PN, z = d for PP) by FISTA: gradient steps on the smooth part (L1 excluded) with a
polynomially decaying learning rate and clipped gradients, element-wise shrinkage-thresholding
at ``beta`` (Eq. 7 of the paper), projection onto the feature range and onto the allowed side of
``no_info_val``, and a Nesterov-style momentum step. An outer search over ``c`` (``c_steps``
values) halves ``c`` after a success and multiplies it by 10 (or bisects) after a failure. The
returned solution is, over all iterations and all ``c``, the valid one with the smallest
elastic-net distance ``||d||_2^2 + beta * ||d||_1``.

Unlike the reference (one instance per call), everything here is batched over instances: each
instance has its own ``c`` and its own best solution, and even its own mode (PN or PP) and auto-encoder
weight, so that :func:`cem_explain_many` runs several searches (PN and PP of the same digits, with and
without the auto-encoder) as one batch, split over the CPU's cores. On a CPU, pass the models and ``x0`` in
``torch.channels_last`` memory format: max-pooling is then vectorised over channels and a search
runs faster (same arithmetic up to float rounding; ``benchmarks/bench_cem.py --layouts`` measures
it).

The hinge ``f_kappa`` is computed on the classifier's logits (``scores="logits"``, as in the CEM
authors' ``aen_CEM.py``, IBM/Contrastive-Explanation-Method @ c09c28c, whose MNIST model returns
logits) or on its softmax probabilities (``scores="probs"``, alibi's MNIST example, whose Keras
model ends in a softmax).

Noted quirk kept from the reference for comparability: the PP image is ``d = x0 - x``, so with
data in [-0.5, 0.5] its "empty" value is 0 (not the background -0.5), and it is fed to the
classifier as such.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from lib.parallel import balanced_chunks, default_workers, map_on_cores

Mode = Literal["PN", "PP"]


@dataclass(frozen=True)
class CEMConfig:
    """Hyper-parameters of CEM; defaults are those of the reference MNIST example."""

    kappa: float = 0.0  # confidence margin of the hinge loss on the class scores
    beta: float = 0.1  # weight of the L1 term (shrinkage threshold)
    gamma: float = 0.0  # weight of the auto-encoder term (0: no auto-encoder)
    c_init: float = 1.0  # initial weight c of the hinge loss
    c_steps: int = 10  # number of values of c tried
    max_iterations: int = 1000  # FISTA iterations per value of c
    feature_range: tuple[float, float] = (-0.5, 0.5)
    clip: tuple[float, float] = (-1000.0, 1000.0)  # gradient clipping
    lr_init: float = 1e-2  # decays to 0 over max_iterations with power 0.5
    no_info_val: float = -1.0  # feature value that carries no information
    scores: Literal["probs", "logits"] = "probs"  # what the hinge loss sees (reference: softmax output)

    def __post_init__(self):
        problems = []
        if self.beta < 0 or self.gamma < 0 or self.kappa < 0:
            problems.append("beta, gamma and kappa must be >= 0")
        if self.c_init <= 0 or self.c_steps < 1 or self.max_iterations < 1:
            problems.append("c_init must be > 0, c_steps and max_iterations >= 1")
        if self.feature_range[0] >= self.feature_range[1]:
            problems.append(f"feature_range must be (low, high) with low < high, got {self.feature_range}")
        if self.scores not in ("probs", "logits"):
            problems.append(f"scores must be 'probs' or 'logits', got {self.scores!r}")
        if problems:
            raise ValueError("invalid CEMConfig: " + "; ".join(problems))

    def asdict(self) -> dict:
        return asdict(self)


@dataclass
class CEMResult:
    """Batched CEM output (one row per explained instance)."""

    mode: Mode
    explanation: torch.Tensor  # PN: the perturbed instance x; PP: d = x0 - x (zeros where not found)
    found: torch.Tensor  # bool (B,): a valid explanation was found
    pred: torch.Tensor  # int64 (B,): class predicted for the explanation (-1 if not found)
    orig_pred: torch.Tensor  # int64 (B,): class predicted for x0 (the target t)
    distance: torch.Tensor  # elastic-net distance of the best solution (inf if not found)
    c_final: torch.Tensor  # value of c after the search

    def cpu(self) -> "CEMResult":
        """This result with every tensor on the CPU (e.g. after a search on a GPU)."""
        return CEMResult(self.mode, self.explanation.cpu(), self.found.cpu(), self.pred.cpu(), self.orig_pred.cpu(),
                         self.distance.cpu(), self.c_final.cpu())

    def subset(self, index) -> "CEMResult":
        """The rows ``index`` (a slice, an index tensor or a boolean mask) of this result."""
        return CEMResult(self.mode, self.explanation[index], self.found[index], self.pred[index],
                         self.orig_pred[index], self.distance[index], self.c_final[index])


def _scores(model: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    out = model(x)
    return out.softmax(dim=1) if kind == "probs" else out


RowModes = torch.Tensor  # bool (B,): True where the row searches a PP, False for a PN


def _row_modes(mode: "Mode | RowModes", n: int, device: torch.device) -> RowModes:
    """Per-row PP flags from one mode for the whole batch or from a bool tensor of flags."""
    if isinstance(mode, torch.Tensor):
        if mode.dtype != torch.bool or mode.shape != (n,):
            raise ValueError(f"per-row modes must be a bool tensor of shape ({n},), got {mode.dtype} {tuple(mode.shape)}")
        return mode.to(device)
    if mode not in ("PN", "PP"):
        raise ValueError(f"mode must be 'PN' or 'PP', got {mode!r}")
    return torch.full((n,), mode == "PP", dtype=torch.bool, device=device)


def _hinge(scores: torch.Tensor, target: torch.Tensor, kappa: float, is_pp: RowModes) -> torch.Tensor:
    """f_kappa of the paper: PN wants another class to win, PP wants ``target`` to win, by kappa."""
    onehot = torch.nn.functional.one_hot(target, scores.shape[1]).to(scores.dtype)
    target_score = (scores * onehot).sum(1)
    other_max = (scores - onehot * 1e4).max(1).values
    pn = torch.clamp(target_score - other_max + kappa, min=0.0)
    pp = torch.clamp(other_max - target_score + kappa, min=0.0)
    return torch.where(is_pp, pp, pn)


def _success(scores: torch.Tensor, target: torch.Tensor, kappa: float, is_pp: RowModes) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether the explanation is valid (the reference's ``compare``) and its predicted class."""
    onehot = torch.nn.functional.one_hot(target, scores.shape[1]).to(scores.dtype)
    sign = torch.where(is_pp, -1.0, 1.0).to(scores.dtype).unsqueeze(1)
    adjusted = scores + (kappa * sign) * onehot
    cls = adjusted.argmax(1)
    ok = torch.where(is_pp, cls == target, cls != target)
    return ok, scores.argmax(1)


def _project(x: torch.Tensor, x0: torch.Tensor, no_info: torch.Tensor, is_pp_b: torch.Tensor,
             x0_gap: torch.Tensor | None = None) -> torch.Tensor:
    """Keep a coordinate's move only on the allowed side of ``no_info`` (PN away, PP towards);
    ``is_pp_b`` is the per-row PP flag broadcast to x's shape, ``x0_gap`` optionally the constant
    ``|x0 - no_info|``."""
    farther = (x - no_info).abs() > ((x0 - no_info).abs() if x0_gap is None else x0_gap)
    return torch.where(farther ^ is_pp_b, x, x0)


def _shrink(y: torch.Tensor, x0: torch.Tensor, beta: float, lo: float, hi: float) -> torch.Tensor:
    """Element-wise shrinkage-thresholding of y around x0 at beta, clipped to [lo, hi] (Eq. 7)."""
    diff = y - x0
    up = torch.clamp(y - beta, max=hi)
    down = torch.clamp(y + beta, min=lo)
    return torch.where(diff > beta, up, torch.where(diff < -beta, down, x0))


def fista_path(
    model: nn.Module,
    x0: torch.Tensor,
    target: torch.Tensor,
    c: torch.Tensor,
    mode: "Mode | RowModes",
    config: CEMConfig,
    autoencoder: nn.Module | None = None,
    gamma: torch.Tensor | None = None,
):
    """The FISTA iterates ``(x_k, y_k)`` for one value of ``c`` (per instance), k = 1..max_iterations.

    ``x_k`` is the shrunk and projected iterate (the candidate explanation), ``y_k`` the
    extrapolated point at which the next gradient is taken. One step: a gradient step on the
    smooth loss c * f_kappa + ||x0 - y||^2 (+ gamma * auto-encoder term) with clipped gradients and
    learning rate lr_init * (1 - k / max_iterations)^0.5, then shrinkage-thresholding at beta,
    projection, and the momentum step y = x_k + k/(k+3) * (x_k - x_{k-1}) (the reference's
    step counter starts at 1), projected again.

    ``mode`` is 'PN' or 'PP' for the whole batch, or a bool tensor (B,) that is True for the rows
    searching a PP. ``gamma`` optionally gives each row its own auto-encoder weight (default:
    ``config.gamma`` for every row); rows with weight 0 skip the auto-encoder.
    """
    lo, hi = config.feature_range
    no_info = torch.full_like(x0, config.no_info_val)
    x0_gap = (x0 - no_info).abs()
    B = x0.shape[0]
    is_pp = _row_modes(mode, B, x0.device)
    is_pp_b = is_pp.view(-1, *[1] * (x0.ndim - 1))
    all_pp, no_pp = bool(is_pp.all()), not bool(is_pp.any())
    if gamma is None:
        gamma = x0.new_full((B,), float(config.gamma))
    ae_rows = (gamma > 0).nonzero().squeeze(1)
    uniform_gamma = bool((gamma == gamma[0]).all()) and len(ae_rows) == B
    if len(ae_rows) and autoencoder is None:
        raise ValueError("an auto-encoder weight gamma > 0 needs an autoencoder")

    def smooth_loss(y: torch.Tensor) -> torch.Tensor:
        d = x0 - y
        z = d if all_pp else y if no_pp else torch.where(is_pp_b, d, y)
        loss = (c * _hinge(_scores(model, z, config.scores), target, config.kappa, is_pp)).sum() + d.pow(2).sum()
        if uniform_gamma:  # every row with the same weight (one search): the original single-mode sum
            loss = loss + float(gamma[0]) * (autoencoder(z) - z).pow(2).sum()
        elif len(ae_rows):
            za = z[ae_rows]
            loss = loss + (gamma[ae_rows] * (autoencoder(za) - za).pow(2).flatten(1).sum(1)).sum()
        return loss

    x = x0.clone()
    y = x0.clone()
    for k in range(config.max_iterations):
        y.requires_grad_(True)
        (grad,) = torch.autograd.grad(smooth_loss(y), y)
        lr = config.lr_init * (1.0 - k / config.max_iterations) ** 0.5
        with torch.no_grad():
            y = y - lr * grad.clamp(*config.clip)
            x_new = _project(_shrink(y, x0, config.beta, lo, hi), x0, no_info, is_pp_b, x0_gap)
            zt = (k + 1) / (k + 4)
            y = _project(x_new + zt * (x_new - x), x0, no_info, is_pp_b, x0_gap)
            x = x_new
        yield x, y


def _search(
    model: nn.Module,
    x0: torch.Tensor,
    is_pp: RowModes,
    gamma: torch.Tensor,
    config: CEMConfig,
    autoencoder: nn.Module | None,
    target: torch.Tensor,
    progress: Callable | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The outer search over c around :func:`fista_path`, rows with their own mode and gamma.
    Returns (best explanation, best distance, class of the best, final c) per row."""
    B = x0.shape[0]
    ax = tuple(range(1, x0.ndim))
    is_pp_b = is_pp.view(-1, *[1] * (x0.ndim - 1))
    # bookkeeping on x0's device (float32 for c, as the reference), so a GPU run never mixes devices
    c = x0.new_full((B,), float(config.c_init), dtype=torch.float32)
    c_lb = x0.new_zeros(B, dtype=torch.float32)
    c_ub = x0.new_full((B,), 1e10, dtype=torch.float32)
    best_dist = x0.new_full((B,), float("inf"))  # x0's dtype, as the distances it is compared with
    best = torch.zeros_like(x0)
    best_pred = x0.new_full((B,), -1, dtype=torch.long)

    steps = range(config.c_steps)
    for _ in progress(steps) if progress else steps:
        step_best_dist = x0.new_full((B,), float("inf"))
        step_found = x0.new_zeros(B, dtype=torch.bool)
        for x, _y in fista_path(model, x0, target, c, is_pp, config, autoencoder, gamma):
            d = x0 - x
            expl = torch.where(is_pp_b, d, x)  # what the classifier sees: d for a PP, x for a PN
            with torch.no_grad():
                ok, pred = _success(_scores(model, expl, config.scores), target, config.kappa, is_pp)
            dist = d.pow(2).sum(ax) + config.beta * d.abs().sum(ax)
            better_step = ok & (dist < step_best_dist)
            step_best_dist = torch.where(better_step, dist, step_best_dist)
            step_found |= better_step
            better = ok & (dist < best_dist)
            if better.any():
                best_dist = torch.where(better, dist, best_dist)
                best[better] = expl[better]
                best_pred = torch.where(better, pred, best_pred)
        # outer search over c (the reference's bisection / x10 rule)
        c_ub = torch.where(step_found, torch.minimum(c_ub, c), c_ub)
        c_lb = torch.where(step_found, c_lb, torch.maximum(c_lb, c))
        bounded = c_ub < 1e9
        c = torch.where(bounded, (c_lb + c_ub) / 2, torch.where(step_found, c, c * 10))
    return best, best_dist, best_pred, c


def _check_inputs(model: nn.Module, x0: torch.Tensor, config: CEMConfig, autoencoder: nn.Module | None) -> None:
    lo, hi = config.feature_range
    if x0.min() < lo - 1e-6 or x0.max() > hi + 1e-6:
        raise ValueError(f"x0 has values in [{x0.min():.3f}, {x0.max():.3f}], outside feature_range {config.feature_range}")
    if model.training or (autoencoder is not None and autoencoder.training):
        raise ValueError("put the classifier (and auto-encoder) in eval mode before explaining")


def cem_explain(
    model: nn.Module,
    x0: torch.Tensor,
    mode: Mode,
    config: CEMConfig = CEMConfig(),
    autoencoder: nn.Module | None = None,
    target: torch.Tensor | None = None,
    progress: Callable | None = None,
) -> CEMResult:
    """Find pertinent negatives (``mode='PN'``) or positives (``'PP'``) for a batch ``x0``.

    Args:
        model: classifier returning logits; put it in eval mode (dropout off).
        x0: instances, shape (B, ...), inside ``config.feature_range``.
        mode: 'PN' or 'PP'.
        config: hyper-parameters (:class:`CEMConfig`).
        autoencoder: used when ``config.gamma > 0``.
        target: class to explain per instance; default: the model's prediction on ``x0``.
        progress: optional wrapper for the outer loop over c (e.g. ``tqdm``).

    Returns:
        A :class:`CEMResult`.
    """
    if mode not in ("PN", "PP"):
        raise ValueError(f"mode must be 'PN' or 'PP', got {mode!r}")
    if config.gamma > 0 and autoencoder is None:
        raise ValueError("config.gamma > 0 needs an autoencoder")
    _check_inputs(model, x0, config, autoencoder)
    x0 = x0.detach()
    B = x0.shape[0]
    with torch.no_grad():
        orig_scores = _scores(model, x0, config.scores)
    target = orig_scores.argmax(1) if target is None else target.to(torch.long)
    is_pp = _row_modes(mode, B, x0.device)
    gamma = x0.new_full((B,), float(config.gamma))
    best, best_dist, best_pred, c = _search(model, x0, is_pp, gamma, config, autoencoder, target, progress)
    found = torch.isfinite(best_dist)
    return CEMResult(mode=mode, explanation=best, found=found, pred=best_pred, orig_pred=target, distance=best_dist, c_final=c)


def cem_explain_many(
    model: nn.Module,
    searches: Sequence[tuple[torch.Tensor, Mode, CEMConfig]],
    autoencoder: nn.Module | None = None,
    workers: int | None = None,
    progress: Callable | None = None,
) -> list[CEMResult]:
    """Several CEM searches at once, e.g. PN and PP of the same digits and PN without the auto-encoder.

    Each search is ``(x0, mode, config)``; the configs may differ only in ``gamma``. All rows run as
    one search in which every row keeps its own mode, gamma, c and best solution, so the result of a
    row does not depend on the other rows (up to float rounding). On a CPU the rows are split into
    ``workers`` chunks of about equal cost (a row with the auto-encoder term costs about twice one
    without), each searched in its own thread with single-threaded kernels: at the small batches of a
    CEM search torch's kernels use one core, so this is what uses the others. Default ``workers``:
    the number of CPU cores (at most one per row); on another device one chunk.

    Returns one :class:`CEMResult` per search, in order.
    """
    if not searches:
        return []
    base = searches[0][2]
    for x0, mode, cfg in searches:
        if mode not in ("PN", "PP"):
            raise ValueError(f"mode must be 'PN' or 'PP', got {mode!r}")
        if {**cfg.asdict(), "gamma": 0.0} != {**base.asdict(), "gamma": 0.0}:
            raise ValueError("cem_explain_many: the searches' configs may differ only in gamma")
        if cfg.gamma > 0 and autoencoder is None:
            raise ValueError("config.gamma > 0 needs an autoencoder")
        _check_inputs(model, x0, cfg, autoencoder)
    x_all = torch.cat([x0.detach() for x0, _, _ in searches])
    sizes = [len(x0) for x0, _, _ in searches]
    is_pp = torch.cat([torch.full((n,), m == "PP", dtype=torch.bool) for n, (_, m, _) in zip(sizes, searches)]).to(x_all.device)
    gamma = torch.cat([torch.full((n,), float(cfg.gamma), dtype=x_all.dtype) for n, (_, _, cfg) in zip(sizes, searches)]).to(x_all.device)
    with torch.no_grad():
        target = _scores(model, x_all, base.scores).argmax(1)

    n = len(x_all)
    workers = default_workers(x_all.device) if workers is None else int(workers)
    # balance the chunks by cost: a row with the auto-encoder term ~2, one without ~1 (measured:
    # benchmarks/bench_cem.py); rows of one chunk stay in their original order
    cost = (1.0 + (gamma > 0).double()).cpu().tolist()
    chunks = [torch.tensor(ix, dtype=torch.long) for ix in balanced_chunks(cost, max(1, min(workers, n)))]

    def run(job: tuple[int, torch.Tensor]):
        k, ix = job
        dev_ix = ix.to(x_all.device)
        return _search(model, x_all[dev_ix], is_pp[dev_ix], gamma[dev_ix], base, autoencoder, target[dev_ix],
                       progress if k == 0 else None)

    parts = map_on_cores(run, list(enumerate(chunks)), workers=len(chunks))
    best = torch.zeros_like(x_all)
    best_dist = x_all.new_empty(n, dtype=parts[0][1].dtype)
    best_pred = x_all.new_empty(n, dtype=torch.long)
    c_final = x_all.new_empty(n, dtype=parts[0][3].dtype)
    for ix, (b, dist, pred, c) in zip(chunks, parts):
        dev_ix = ix.to(x_all.device)
        best[dev_ix], best_dist[dev_ix], best_pred[dev_ix], c_final[dev_ix] = b, dist, pred, c
    results, start = [], 0
    for size, (_, mode, _) in zip(sizes, searches):
        sl = slice(start, start + size)
        results.append(CEMResult(mode=mode, explanation=best[sl], found=torch.isfinite(best_dist[sl]), pred=best_pred[sl],
                                 orig_pred=target[sl], distance=best_dist[sl], c_final=c_final[sl]))
        start += size
    return results


def changed_part(x0: torch.Tensor, result: CEMResult) -> torch.Tensor:
    """What the explanation consists of, per instance, as a non-negative-by-construction map:
    for a PN the part added to ``x0`` (``x - x0``), for a PP the pertinent part ``d`` itself.
    Rows without a valid explanation are zero."""
    part = result.explanation - x0 if result.mode == "PN" else result.explanation
    return part * result.found.view(-1, *[1] * (x0.ndim - 1))


def is_empty(x0: torch.Tensor, result: CEMResult, tol: float = 1e-6) -> torch.Tensor:
    """Per instance: a valid explanation in which no feature changed by more than ``tol``.

    For a PP this is the blank input (``d = 0``) already classified as the target: the search
    accepts it at distance 0, but it explains nothing. Such cases are counted apart from the
    explanations that keep some pixels."""
    part = changed_part(x0, result).flatten(1)
    return result.found & ~(part.abs() > tol).any(1)


def sparsity(x0: torch.Tensor, result: CEMResult, tol: float = 1e-6) -> dict[str, torch.Tensor]:
    """L0 (number of features changed/kept, |value| > tol) and L1 of :func:`changed_part`,
    per instance (NaN where no explanation was found)."""
    part = changed_part(x0, result).flatten(1)
    nan = part.new_full((len(part),), float("nan"))
    l0 = torch.where(result.found, (part.abs() > tol).sum(1).float(), nan)
    l1 = torch.where(result.found, part.abs().sum(1), nan)
    return {"L0": l0, "L1": l1}


@torch.no_grad()
def reconstruction_error(autoencoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-instance squared L2 distance ||AE(x) - x||^2: how far ``x`` is from what the
    auto-encoder (a model of the data) reconstructs; the quantity the gamma term penalises."""
    return (autoencoder(x) - x).pow(2).flatten(1).sum(1)
