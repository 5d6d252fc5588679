"""Rate-distortion explanations (RDE; Macdonald, Waeldchen, Hauch, Kutyniok 2019) in torch.

RDE explains a classifier's decision on an image x by a mask s in [0, 1]^n: the components with
s = 1 are kept, the others are replaced by noise n drawn from the training data's statistics,

    y = s * x + (1 - s) * n,

and the mask should keep the classifier's score Phi (the top-class logit) unchanged with as few
components as possible. The reference code (``jmaces/rde`` @ d71169d, ``mnist/rde.py``) minimises
the Lagrangian

    L(s) = 1/2 [ (E Phi(y) - Phi(x))^2 + Var Phi(y) ]  +  Phi(x)^2 * mu * mean|s|

where the moments of Phi(y) are propagated through the network by *assumed density filtering*
(ADF): every layer's output is approximated by a Gaussian with matched mean and variance
(``mode="diag"``: independent components; ``mode="lowrank"``: a rank-r factor of the covariance,
the reference's "half" mode). It optimises with projected gradient descent on the [0, 1] box,
momentum 0.85 (a moving average of gradients), a backtracking line search, s0 = 0.25 and at most
1500 iterations. Here every step runs on a batch of images at once, each with its own step size
and line search, so one batched ADF forward/backward pass per line-search trial is the cost.

Supported layers for ADF: ``Conv2d``, ``Linear``, ``AvgPool2d``, ``ReLU``, ``Flatten`` inside an
``nn.Sequential`` (the reference's MNIST classifier is exactly such a stack).

Checking ADF against Monte Carlo: :func:`distortion_mc` (the distortion from noise draws),
:func:`layer_moments_mc` (means and variances after every layer, the counterpart of
``adf_forward(..., trace=[])``) and :func:`distortion_mc_masks` (many masks of one image with the
same draws, to compare how ADF and Monte Carlo order masks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lib.progress import progress_bar

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)


# --- ADF moment propagation ----------------------------------------------------------------------

def relu_moments(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ReLU(z) for z ~ N(mean, var), elementwise (exact for a Gaussian input).

    Components with (numerically) zero variance are plain ReLUs. The Gaussian branch is evaluated on a
    safe variance there, so that its gradient stays finite: ``torch.where`` passes the unused branch's
    gradient times zero, and sqrt's infinite gradient at 0 would turn that into NaN (MNIST's border
    pixels have zero variance in the training data, so this happens in RDE).
    """
    deterministic = var <= 1e-24
    safe_var = torch.where(deterministic, torch.ones_like(var), var)
    std = safe_var.sqrt()
    r = mean / std
    cdf = 0.5 * (1 + torch.erf(r / _SQRT2))
    pdf = torch.exp(-0.5 * r * r) / _SQRT2PI
    m = mean * cdf + std * pdf
    second = (mean * mean + safe_var) * cdf + mean * std * pdf
    v = (second - m * m).clamp_min(0)
    return torch.where(deterministic, mean.clamp_min(0), m), torch.where(deterministic, torch.zeros_like(v), v)


def _linear_like(layer: nn.Module, mean: torch.Tensor, second: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a linear layer to the mean (with bias) and its weight-only (squared, for variances) map to ``second``."""
    if isinstance(layer, nn.Conv2d):
        conv = lambda x, w, b: F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
        m = conv(mean, layer.weight, layer.bias)
        if kind == "diag":
            return m, conv(second, layer.weight**2, None)
        r = second.shape[1]
        flat = second.flatten(0, 1)
        return m, conv(flat, layer.weight, None).unflatten(0, (-1, r))
    m = F.linear(mean, layer.weight, layer.bias)
    if kind == "diag":
        return m, F.linear(second, layer.weight**2)
    return m, F.linear(second, layer.weight)


def adf_forward(model: nn.Sequential, mean: torch.Tensor, second: torch.Tensor, mode: str = "diag",
                trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Propagate a Gaussian through ``model`` by assumed density filtering.

    ``mode="diag"``: ``second`` is the variance, shaped like ``mean``; returns (mean, variance).
    ``mode="lowrank"``: ``second`` is a covariance factor shaped (N, r, *mean.shape[1:]) with
    Cov = sum_k f_k f_k^T; returns (mean, factor); the output variance is ``factor.pow(2).sum(1)``.
    Through a ReLU the factor is scaled by Phi(mean / std) (the linearisation that keeps the rank).
    ``trace``: if a list, (layer name, mean, variance) after every layer is appended.
    """
    if mode not in ("diag", "lowrank"):
        raise ValueError(f"mode must be 'diag' or 'lowrank', got {mode!r}")
    for name, layer in model.named_children():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            mean, second = _linear_like(layer, mean, second, mode)
        elif isinstance(layer, nn.AvgPool2d):
            k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
            pool = lambda x: F.avg_pool2d(x, layer.kernel_size, layer.stride, layer.padding)
            mean = pool(mean)
            second = pool(second) / (k * k) if mode == "diag" else pool(second.flatten(0, 1)).unflatten(0, (len(mean), -1))
        elif isinstance(layer, nn.ReLU):
            if mode == "diag":
                mean, second = relu_moments(mean, second)
            else:
                var = second.pow(2).sum(1)
                slope = 0.5 * (1 + torch.erf(mean / var.clamp_min(1e-24).sqrt() / _SQRT2))
                mean, _ = relu_moments(mean, var)
                second = second * slope.unsqueeze(1)
        elif isinstance(layer, nn.Flatten):
            mean = mean.flatten(1)
            second = second.flatten(1) if mode == "diag" else second.flatten(2)
        elif isinstance(layer, (nn.Dropout, nn.Identity)):
            pass
        else:
            raise TypeError(f"ADF does not support layer {name}: {type(layer).__name__}")
        if trace is not None:
            trace.append((name, mean.detach(), (second if mode == "diag" else second.pow(2).sum(1)).detach()))
    return mean, second


# --- The RDE objective ---------------------------------------------------------------------------

@dataclass
class NoiseModel:
    """Statistics of the obfuscating noise: per-component mean and variance (diag), or a covariance
    factor shaped (r, *image shape) (lowrank)."""

    mean: torch.Tensor
    var: torch.Tensor | None = None
    factor: torch.Tensor | None = None

    @classmethod
    def from_data(cls, x: torch.Tensor, rank: int | None = None) -> "NoiseModel":
        """Mean and variance (or a rank-``rank`` covariance factor, from the top principal directions) of images ``x``."""
        x = x.double()
        mean = x.mean(0)
        if rank is None:
            return cls(mean, x.var(0, unbiased=True))
        c = (x - mean).flatten(1)
        _, sv, vt = torch.linalg.svd(c, full_matrices=False)
        factor = (sv[:rank, None] * vt[:rank]) / math.sqrt(len(x) - 1)
        return cls(mean, None, factor.view(rank, *x.shape[1:]))


def obfuscation_moments(x: torch.Tensor, s: torch.Tensor, noise: NoiseModel, mode: str = "diag",
                        dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance (diag) or covariance factor (lowrank) of y = s x + (1 - s) n, per image."""
    x, s = x.to(dtype), s.to(dtype)
    mean_in = s * x + (1 - s) * noise.mean.to(dtype)
    if mode == "diag":
        if noise.var is None:
            raise ValueError("diag mode needs a noise variance (NoiseModel.from_data without rank)")
        return mean_in, (1 - s) ** 2 * noise.var.to(dtype)
    if noise.factor is None:
        raise ValueError("lowrank mode needs a covariance factor (NoiseModel.from_data with rank)")
    return mean_in, noise.factor.to(dtype).unsqueeze(0) * (1 - s).unsqueeze(1)


def distortion(model: nn.Sequential, x: torch.Tensor, s: torch.Tensor, node: torch.Tensor, target: torch.Tensor,
               noise: NoiseModel, mode: str = "diag") -> torch.Tensor:
    """ADF estimate of 1/2 [(E Phi(y) - target)^2 + Var Phi(y)] per image (shape (N,)), y = s x + (1 - s) n."""
    dtype = next(model.parameters()).dtype
    mean_in, second = obfuscation_moments(x, s, noise, mode, dtype)
    out_mean, out_second = adf_forward(model, mean_in, second, mode)
    out_var = out_second if mode == "diag" else out_second.pow(2).sum(1)
    idx = node.view(-1, 1)
    m, v = out_mean.gather(1, idx).squeeze(1), out_var.gather(1, idx).squeeze(1)
    return 0.5 * ((m - target.to(dtype)) ** 2 + v)


def _noise_draws(noise: NoiseModel, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k Gaussian draws with the noise model's moments (float64)."""
    if noise.factor is not None and noise.var is None:
        eps = torch.randn(k, noise.factor.shape[0], generator=generator, dtype=torch.float64)
        return noise.mean.double() + torch.einsum("kr,r...->k...", eps, noise.factor.double())
    return noise.mean.double() + noise.var.double().sqrt() * torch.randn(k, *noise.mean.shape, generator=generator,
                                                                          dtype=torch.float64)


@torch.no_grad()
def layer_moments_mc(model: nn.Sequential, x: torch.Tensor, s: torch.Tensor, noise: NoiseModel, n_samples: int = 4096,
                     generator: torch.Generator | None = None, batch: int = 1024) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Monte-Carlo mean and variance after every layer of ``model`` for one image ``x`` (C, H, W) and mask ``s``,
    with Gaussian noise of the noise model's moments: the counterpart of ``adf_forward(..., trace=[])``."""
    dtype = next(model.parameters()).dtype
    names = [name for name, _ in model.named_children()]
    sums: list = [0.0] * len(names)
    squares: list = [0.0] * len(names)
    for j in range(0, n_samples, batch):
        k = min(batch, n_samples - j)
        h = (s * x + (1 - s) * _noise_draws(noise, k, generator)).to(dtype)
        for li, layer in enumerate(model.children()):
            h = layer(h)
            hd = h.double()
            sums[li] = sums[li] + hd.sum(0)
            squares[li] = squares[li] + (hd * hd).sum(0)
    out = []
    for name, sm, sq in zip(names, sums, squares):
        mean = sm / n_samples
        out.append((name, mean, ((sq - n_samples * mean * mean) / (n_samples - 1)).clamp_min(0)))
    return out


@torch.no_grad()
def distortion_mc_masks(model: nn.Module, x: torch.Tensor, masks: torch.Tensor, node: int, target: float,
                        noise: NoiseModel, n_samples: int = 256, seed: int = 0, batch: int = 4096) -> torch.Tensor:
    """Monte-Carlo distortion of one image ``x`` (C, H, W) under each of ``masks`` (K, C, H, W), with the
    same noise draws for every mask (common random numbers: the masks' differences are not buried in
    independent sampling noise). Returns (K,) float64."""
    dtype = next(model.parameters()).dtype
    n = _noise_draws(noise, n_samples, torch.Generator().manual_seed(seed))
    out = []
    for s in masks:
        vals = []
        for j in range(0, n_samples, batch):
            y = s * x + (1 - s) * n[j : j + batch]
            vals.append(model(y.to(dtype))[:, node].double())
        v = torch.cat(vals)
        out.append(0.5 * ((v.mean() - target) ** 2 + v.var(unbiased=True)))
    return torch.stack(out)


@torch.no_grad()
def distortion_mc(model: nn.Module, x: torch.Tensor, s: torch.Tensor, node: torch.Tensor, target: torch.Tensor,
                  noise: NoiseModel, n_samples: int = 1024, generator: torch.Generator | None = None,
                  batch: int = 4096) -> torch.Tensor:
    """Monte-Carlo estimate of the same distortion with Gaussian noise of the same moments (per image)."""
    dtype = next(model.parameters()).dtype
    out = []
    for i in range(len(x)):
        vals = []
        for j in range(0, n_samples, batch):
            n = _noise_draws(noise, min(batch, n_samples - j), generator)
            y = s[i] * x[i] + (1 - s[i]) * n
            vals.append(model(y.to(dtype))[:, node[i]].double())
        v = torch.cat(vals)
        out.append(0.5 * ((v.mean() - target[i].double()) ** 2 + v.var(unbiased=True)))
    return torch.stack(out)


@dataclass
class RDEConfig:
    """The reference's optimiser settings (``mnist/rde.py`` and ``ProjectedGD``)."""

    mu: float = 0.5
    mode: str = "diag"
    s0: float = 0.25
    max_iterations: int = 1500
    eta: float = 1.0
    momentum: float = 0.85
    c: float = 0.65  # sufficient-decrease constant of the line search
    tau: float = 0.7  # step shrink factor
    max_ls: int = 30
    ftol: float = 1e-18
    xtol: float = 1e-18


@dataclass
class RDEResult:
    mask: torch.Tensor  # (N, *image shape) in [0, 1]
    distortion: torch.Tensor  # (N,) ADF distortion at the end
    sparsity: torch.Tensor  # (N,) mean |s|
    iterations: torch.Tensor  # (N,) iterations run per image
    history: list = field(default_factory=list)  # objective mean per iteration


def rde_explain(model: nn.Sequential, x: torch.Tensor, noise: NoiseModel, cfg: RDEConfig,
                node: torch.Tensor | None = None, progress: bool = True) -> RDEResult:
    """RDE masks for a batch of images ``x`` (N, C, H, W); ``node`` defaults to each image's top class.

    Projected gradient descent on [0, 1] with momentum (a moving average of gradients) and a
    backtracking line search per image, as in the reference's ``ProjectedGD``; an image stops at
    ``max_iterations``, or when its objective and its mask stop changing (the reference's relative
    tolerances) while its line search finds no sufficient decrease.
    """
    dtype = next(model.parameters()).dtype
    x = x.to(dtype)
    n = len(x)
    with torch.no_grad():
        logits = model(x)
    node = logits.argmax(1) if node is None else node
    target = logits.gather(1, node.view(-1, 1)).squeeze(1).detach()
    weight = (target**2 * cfg.mu).detach()
    dims = tuple(range(1, x.dim()))
    numel = x[0].numel()

    def objective(s: torch.Tensor) -> torch.Tensor:
        return distortion(model, x, s, node, target, noise, cfg.mode) + weight * s.abs().mean(dims)

    def value_and_grad(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = s.detach().requires_grad_(True)
        f = objective(s)
        (g,) = torch.autograd.grad(f.sum(), s)
        return f.detach(), g.detach()

    s = torch.full_like(x, cfg.s0)
    f, g = value_and_grad(s)
    m = torch.zeros_like(s)
    step0 = torch.full((n,), cfg.eta, dtype=dtype)
    active = torch.ones(n, dtype=torch.bool)
    iters = torch.zeros(n, dtype=torch.long)
    shape = (n,) + (1,) * (x.dim() - 1)
    history = []
    bar = progress_bar(total=cfg.max_iterations, desc=f"RDE mu={cfg.mu:g}", enabled=progress, leave=False, mininterval=1.0)
    for _ in range(cfg.max_iterations):
        if not active.any():
            break
        s_old, f_old = s.clone(), f.clone()
        m = torch.where(active.view(shape), cfg.momentum * m + (1 - cfg.momentum) * g, m)
        step = step0.clone()
        accepted = ~active
        ls_count = torch.zeros(n, dtype=torch.long)
        cand, f_cand = s_old.clone(), f_old.clone()
        for _ls in range(cfg.max_ls):
            trying = ~accepted
            if not trying.any():
                break
            ls_count += trying.long()
            proposal = (s_old - step.view(shape) * m).clamp(0.0, 1.0)
            with torch.no_grad():
                f_prop = objective(proposal)
            decrease = f_old - f_prop >= cfg.c / step * (proposal - s_old).pow(2).sum(dims)
            take = trying & decrease
            cand[take], f_cand[take] = proposal[take], f_prop[take]
            accepted = accepted | take
            step = torch.where(trying & ~take, step * cfg.tau, step)
        failed = active & ~accepted  # no sufficient decrease: like the reference, keep the last (smallest) trial step
        cand[failed], f_cand[failed] = proposal[failed], f_prop[failed]
        # step-size adaptation as in the reference: grow after an immediate success, shrink after long searches
        step0 = torch.where(active & (ls_count == 1), step0 / cfg.tau, step0)
        step0 = torch.where(active & (ls_count >= min(5, cfg.max_ls)), step0 * cfg.tau, step0)
        s = torch.where(active.view(shape), cand, s)
        f_new, g_new = value_and_grad(s)
        f = torch.where(active, f_new, f)
        g = torch.where(active.view(shape), g_new, g)
        iters += active.long()
        small_f = (f - f_old) ** 2 < cfg.ftol * torch.minimum(f_old**2, f**2)
        small_x = (s - s_old).pow(2).mean(dims) < cfg.xtol * torch.minimum(s_old.pow(2).mean(dims), s.pow(2).mean(dims))
        active = active & ~(small_f & small_x & failed)
        history.append(float(f.mean()))
        bar.update(1)
    bar.close()
    with torch.no_grad():
        d = distortion(model, x, s, node, target, noise, cfg.mode)
    return RDEResult(s.detach(), d.detach(), s.abs().mean(dims).detach(), iters, history)
