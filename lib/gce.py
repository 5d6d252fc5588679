"""Generative causal explanations (GCE; O'Shaughnessy, Canal, Connor, Rozell, Davenport, NeurIPS 2020) in torch.

A VAE explainer splits its latent code into K *causal* factors alpha and L *non-causal* factors
beta. It is trained to maximise the information flow I(alpha; Y) from alpha to the classifier's
output while staying a good generative model of the data:

    loss = -I(alpha; Y) + lambda * D,     D = squared reconstruction error + KL   (per image, summed over pixels)

I(alpha; Y) is estimated by sampling (the authors' ``causaleffect.joint_uncond``): ``n_alpha``
draws of alpha ~ N(0, I_K), each with ``n_beta`` draws of beta ~ N(0, I_L); p_i(y) is the mean of
the classifier's softmax over the decoded images of draw i, q(y) the mean of the p_i, and

    I = mean_i sum_y p_i(y) log p_i(y) - sum_y q(y) log q(y)       (nats; eps = 1e-8 inside the logs)

Unlike the reference, which decodes and classifies one alpha at a time in a Python loop, every
estimate here decodes and classifies all ``n_alpha * n_beta`` images in one batched call (chunked
only to bound memory): that product of forward passes is the step's cost and its limit
(``benchmarks/bench_gce.py`` reports the ratio).

Architecture (authors' ``models/CVAE.py`` @ 2bfe97e; the [Re] report's Table 3): encoder three 4x4
convolutions with 64 channels (strides 2, 2, 1; the last padded (1, 2, 1, 2)), linear heads for
the mean and log-variance of the K + L latents; decoder a linear layer to 64 x (side/4)^2, three
transposed 4x4 convolutions, sigmoid output. ``channels=3`` gives the colour variant (CIFAR-10).
Adam with betas (0.5, 0.999) as in the authors' ``GCE.py``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from lib.progress import progress_bar

from lib.gce_core import (EPS, GCEConfig, GCEDecoder, GCEEncoder, GCEExplainer, ProbFn, _latents,  # noqa: F401
                          flow_probs, information_flow, mutual_information, per_latent_flow, train_gce, vae_loss)


@torch.no_grad()
def latent_sweep(decoder: nn.Module, z: torch.Tensor, dim: int, values: Sequence[float]) -> torch.Tensor:
    """Decode copies of latents ``z`` (N, K + L) with coordinate ``dim`` set to each of ``values``:
    images shaped (N, len(values), C, H, W)."""
    v = torch.as_tensor(list(values), dtype=z.dtype, device=z.device)
    zz = z[:, None, :].repeat(1, len(v), 1)
    zz[:, :, dim] = v
    imgs = decoder(zz.reshape(-1, z.shape[1]))
    return imgs.view(len(z), len(v), *imgs.shape[1:])


@torch.no_grad()
def sweep_effect(decoder: nn.Module, classify: ProbFn, z: torch.Tensor, dim: int, values: Sequence[float]) -> dict:
    """How much sweeping latent ``dim`` over ``values`` changes the classifier, per starting point.

    Returns per-start tensors (length N): ``changed`` = share of the sweep's images whose predicted
    class differs from that of the unswept image, ``dp`` = mean over the sweep of the total-variation
    change of p(y) (half the L1 distance, in [0, 1]).
    """
    imgs = latent_sweep(decoder, z, dim, values)
    n, s = imgs.shape[:2]
    p = classify(imgs.flatten(0, 1)).view(n, s, -1)
    p0 = classify(decoder(z))
    changed = (p.argmax(-1) != p0.argmax(-1)[:, None]).double().mean(1)
    dp = 0.5 * (p - p0[:, None]).abs().sum(-1).double().mean(1)
    return {"changed": changed, "dp": dp}


@torch.no_grad()
def ablation_accuracy(explainer: GCEExplainer, classify: ProbFn, x: torch.Tensor, y: torch.Tensor,
                      generator: torch.Generator | None = None, batch: int = 512) -> dict[str, float]:
    """The classifier's accuracy on ``x``, on its re-encoded copies (mean latents decoded), and after
    replacing each latent with one N(0, 1) draw per image (the authors' ``make_fig5ab.py``)."""
    out = {"original": 0.0, "re-encoded": 0.0}
    names = [f"alpha{i + 1}" for i in range(explainer.K)] + [f"beta{i + 1}" for i in range(explainer.L)]
    for n in names:
        out[n] = 0.0
    dtype = next(explainer.parameters()).dtype
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch].to(dtype), y[i : i + batch]
        out["original"] += float((classify(xb).argmax(1) == yb).sum())
        mu, _ = explainer.encoder(xb)
        out["re-encoded"] += float((classify(explainer.decoder(mu)).argmax(1) == yb).sum())
        for d, n in enumerate(names):
            z = mu.clone()
            z[:, d] = torch.randn(len(z), generator=generator, dtype=dtype)
            out[n] += float((classify(explainer.decoder(z)).argmax(1) == yb).sum())
    return {k: v / len(x) for k, v in out.items()}


# --- Parameter selection (the paper's Algorithm 1) ---------------------------------------------

@dataclass
class SelectionStep:
    step: int
    K: int
    L: int
    lam: float
    D: float
    C: float
    note: str = ""


@dataclass
class Selection:
    """The outcome of :func:`select_parameters`: the chosen (K, L, lambda) and every grid point tried."""

    K: int
    L: int
    lam: float
    trace: list[SelectionStep] = field(default_factory=list)


def _plateaued(prev: float, new: float, rel: float) -> bool:
    """True when ``new`` improves on ``prev`` (both to be minimised) by less than ``rel`` of |prev|."""
    return (prev - new) < rel * abs(prev)


def select_parameters(
    train_point: Callable[[int, int, float], tuple[float, float]],
    *,
    max_latents: int = 12,
    lambdas: Sequence[float] = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1),
    plateau_d: float = 0.01,
    plateau_c: float = 0.01,
    approach_d: float = 0.05,
    lam_step1: float = 1.0,
) -> Selection:
    """Algorithm 1 of the paper with its criteria as parameters.

    ``train_point(K, L, lam)`` trains one explainer and returns ``(D, C)``: the final data term and
    causal term C = -I(alpha; Y) (both minimised). One grid point is one call, so a sweep runner can
    distribute them.

    1. K = 0: increase L from 1 until D improves by less than ``plateau_d`` (relative): the total
       latent dimension is the last L that still improved.
    2. Increment K and decrement L (K + L fixed); for each (K, L) increase lambda through
       ``lambdas`` until D comes within ``approach_d`` (relative) of step 1's D (the [Re] report
       tried 5 % and 6 %): the first such lambda is chosen, larger ones are not trained.
    3. Stop when C improves by less than ``plateau_c`` (relative); return the (K, L, lambda) from
       immediately before the plateau.
    """
    trace: list[SelectionStep] = []
    prev_d, total = None, None
    for L in range(1, max_latents + 1):
        d, c = train_point(0, L, lam_step1)
        trace.append(SelectionStep(1, 0, L, lam_step1, d, c))
        if prev_d is not None and _plateaued(prev_d, d, plateau_d):
            total, d_ref = L - 1, prev_d
            trace[-1].note = f"D plateaued (< {plateau_d:.0%} better): total latent dimension {total}"
            break
        prev_d = d
    if total is None:
        total, d_ref = max_latents, prev_d
        trace[-1].note = f"no plateau up to {max_latents} latents"
    best: tuple[int, int, float, float] | None = None
    for K in range(1, total + 1):
        L = total - K
        chosen = None
        for lam in sorted(lambdas):
            d, c = train_point(K, L, lam)
            ok = d <= d_ref * (1 + approach_d)
            trace.append(SelectionStep(2, K, L, lam, d, c, f"D within {approach_d:.0%} of step 1" if ok else ""))
            if ok:
                chosen = (lam, c)
                break
        if chosen is None:
            trace.append(SelectionStep(3, K, L, math.nan, math.nan, math.nan, "no lambda keeps D within the criterion"))
            break
        lam, c = chosen
        if best is not None and _plateaued(best[3], c, plateau_c):
            trace.append(SelectionStep(3, K, L, lam, math.nan, c, f"C plateaued (< {plateau_c:.0%} better): keep K={best[0]}"))
            break
        best = (K, L, lam, c)
    if best is None:
        return Selection(0, total, lam_step1, trace)
    return Selection(best[0], best[1], best[2], trace)


# --- Monte-Carlo error and bias of the I(alpha; Y) estimator -------------------------------------

def mi_bootstrap(probs: torch.Tensor, n_boot: int = 2000, seed: int = 0) -> torch.Tensor:
    """Bootstrap replicates of :func:`mutual_information` over the outer draws (rows of ``probs``,
    shaped (n_alpha, n_beta, M)); the outer draws are independent, the inner ones stay with their row."""
    if probs.ndim != 3:
        raise ValueError(f"probs must be (n_alpha, n_beta, M), got shape {tuple(probs.shape)}")
    p = probs.double().mean(1)  # (n_alpha, M)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(p), (n_boot, len(p)), generator=g)
    pb = p[idx]  # (n_boot, n_alpha, M)
    q = pb.mean(1)
    return (pb * torch.log(pb + EPS)).sum(-1).mean(1) - (q * torch.log(q + EPS)).sum(-1)


def mi_half_beta(probs: torch.Tensor) -> float:
    """The estimate with half the inner draws (the mean over the two halves of every row)."""
    h = probs.shape[1] // 2
    if h < 1:
        raise ValueError("need n_beta >= 2 to halve the inner draws")
    return 0.5 * float(mutual_information(probs[:, :h].double()) + mutual_information(probs[:, h : 2 * h].double()))


def mi_estimate(probs: torch.Tensor, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """I(alpha; Y) from one large sample with its Monte-Carlo error.

    Returns ``value`` (the plug-in estimate, nats), ``low``/``high`` (percentile bootstrap interval
    over the outer draws), ``se`` (bootstrap standard error), ``half_beta`` (the same estimate with
    half the inner draws) and ``corrected``: ``2 * value - half_beta``. The plug-in estimate is
    biased upwards by about c / n_beta (each p_i is a mean of n_beta noisy outputs, and the entropy
    is concave); halving n_beta doubles that term, so the difference removes it to first order
    (Richardson extrapolation). The bias from the finite number of outer draws (H(q) is estimated
    too) is of order (M - 1) / (2 n_alpha) downwards and is small for a large n_alpha.
    """
    probs = probs.detach()
    reps = mi_bootstrap(probs, n_boot, seed)
    a = (1 - level) / 2
    lo, hi = torch.quantile(reps, torch.tensor([a, 1 - a], dtype=reps.dtype)).tolist()
    value = float(mutual_information(probs.double()))
    half = mi_half_beta(probs)
    return {"value": value, "low": lo, "high": hi, "se": float(reps.std()), "half_beta": half,
            "corrected": 2 * value - half, "n_alpha": probs.shape[0], "n_beta": probs.shape[1]}


def subsampled_estimates(probs: torch.Tensor, n_alpha: int, n_beta: int) -> torch.Tensor:
    """The values a smaller estimator (``n_alpha`` outer x ``n_beta`` inner draws) would give, on
    disjoint blocks of one large sample ``probs`` (N_alpha, N_beta, M): one value per block, so their
    mean estimates that estimator's expected value (and hence its bias against the large sample) and
    their spread its Monte-Carlo noise."""
    NA, NB = probs.shape[:2]
    if not (1 <= n_alpha <= NA and 1 <= n_beta <= NB):
        raise ValueError(f"blocks of {n_alpha} x {n_beta} do not fit a sample of {NA} x {NB}")
    out = [mutual_information(probs[i : i + n_alpha, j : j + n_beta].double())
           for i in range(0, NA - n_alpha + 1, n_alpha) for j in range(0, NB - n_beta + 1, n_beta)]
    return torch.stack(out)


# --- The linear-Gaussian toy problems (appendix Figs. 8-10; authors' make_fig8.py, make_fig9_fig10.py) ---

def unit(theta: float | torch.Tensor) -> torch.Tensor:
    """The unit vector (cos theta, sin theta) (theta in radians)."""
    t = torch.as_tensor(theta, dtype=torch.float64)
    return torch.stack([torch.cos(t), torch.sin(t)])


def hyperplane_classifier(a: torch.Tensor, ksig: float = 5.0, b: float = 0.0) -> ProbFn:
    """The authors' ``OneHyperplaneClassifier``: p(class 0 | x) = sigmoid(ksig (a.x - b))."""
    a = torch.as_tensor(a, dtype=torch.float64)

    def classify(x: torch.Tensor) -> torch.Tensor:
        p0 = torch.sigmoid(ksig * (x.to(a.dtype) @ a - b))[:, None]
        return torch.cat([p0, 1 - p0], 1)
    return classify


def and_classifier(a1: torch.Tensor, a2: torch.Tensor, ksig: float = 100.0) -> ProbFn:
    """The authors' ``TwoHyperplaneClassifier``: p(class 0 | x) = sigmoid(ksig a1.x) sigmoid(ksig a2.x)."""
    a1, a2 = (torch.as_tensor(v, dtype=torch.float64) for v in (a1, a2))

    def classify(x: torch.Tensor) -> torch.Tensor:
        x = x.to(a1.dtype)
        p0 = (torch.sigmoid(ksig * (x @ a1)) * torch.sigmoid(ksig * (x @ a2)))[:, None]
        return torch.cat([p0, 1 - p0], 1)
    return classify


def toy_objectives(W: torch.Tensor, classify: ProbFn, K: int, n_alpha: int, n_beta: int, gamma: float = 1e-3,
                   generator: torch.Generator | None = None, objectives: Sequence[str] = ("joint_uncond",)) -> dict[str, float]:
    """The causal objectives of the authors' ``causaleffect_lingauss_decoder`` for the linear-Gaussian
    generative map x = W z + gamma * noise (W: (2, K + L), its first K columns the alphas):

    * ``joint_uncond``: I(alpha; Y) (the paper's objective);
    * ``joint_cond``: I(alpha; Y | beta) (beta fixed per outer draw, alpha redrawn inside);
    * ``ind_uncond``: (1/K) sum_i I(alpha_i; Y) (the other latents redrawn inside);
    * ``ind_cond``: (1/K) sum_i I(alpha_i; Y | the rest).

    ``n_alpha`` outer x ``n_beta`` inner draws as in :func:`information_flow`. Pass one seeded
    ``generator`` per grid point (common random numbers) for a smooth objective surface.
    """
    W = torch.as_tensor(W, dtype=torch.float64)
    z_dim = W.shape[1]
    out = {}
    for name in objectives:
        if name not in ("joint_uncond", "joint_cond", "ind_uncond", "ind_cond"):
            raise ValueError(f"unknown objective {name!r}")
        blocks = [list(range(K))] if name.startswith("joint") else [[k] for k in range(K)]
        vals = []
        for fixed in blocks:
            # the coordinates held fixed per outer draw: the factor(s) (unconditional) or the rest (conditional)
            held = fixed if name.endswith("uncond") else [d for d in range(z_dim) if d not in fixed]
            z = torch.randn(n_alpha, n_beta, z_dim, generator=generator, dtype=torch.float64)
            if held:
                z[:, :, held] = torch.randn(n_alpha, 1, len(held), generator=generator, dtype=torch.float64).expand(-1, n_beta, -1)
            x = z.reshape(-1, z_dim) @ W.T
            x = x + gamma * torch.randn(x.shape, generator=generator, dtype=torch.float64)
            probs = classify(x).view(n_alpha, n_beta, -1)
            if name.endswith("uncond"):
                vals.append(float(mutual_information(probs)))
            else:  # I(alpha; Y | rest) = mean over the held draws of [H(mean_j p) - mean_j H(p)]
                q = probs.mean(1)
                h_mean = -(q * torch.log(q + EPS)).sum(-1)
                mean_h = -(probs * torch.log(probs + EPS)).sum(-1).mean(1)
                vals.append(float((h_mean - mean_h).mean()))
        out[name] = sum(vals) / len(vals)
    return out


def lingauss_nll(x: torch.Tensor, W: torch.Tensor, gamma: float = 1e-3) -> float:
    """The authors' ``linGauss_NLL_loss``: log det S + mean_i x_i' S^-1 x_i with S = W W' + gamma I."""
    W = torch.as_tensor(W, dtype=torch.float64)
    S = W @ W.T + gamma * torch.eye(W.shape[0], dtype=torch.float64)
    x = torch.as_tensor(x, dtype=torch.float64)
    return float(torch.logdet(S) + (x @ torch.linalg.inv(S) * x).sum(1).mean())


def toy_grid(classify: ProbFn, K: int, n_grid: int = 49, n_alpha: int = 500, n_beta: int = 2500, gamma: float = 1e-3,
             objectives: Sequence[str] = ("joint_uncond",), seed: int = 0, progress: bool = True) -> dict:
    """Each objective of :func:`toy_objectives` on an ``n_grid`` x ``n_grid`` grid of the angles
    (theta_1, theta_2) in [0, pi] of the two columns of W (the authors' 49 x 49 grid; paper:
    n_alpha 500, n_beta 2500). Every grid point uses the same random draws (common random numbers).
    Returns ``thetas`` (radians) and one (n_grid, n_grid) array per objective, indexed [i1, i2]."""
    import numpy as np

    thetas = torch.linspace(0, math.pi, n_grid, dtype=torch.float64)
    out = {name: np.zeros((n_grid, n_grid)) for name in objectives}
    bar = progress_bar(total=n_grid * n_grid, desc="toy grid", enabled=progress, leave=False, mininterval=1.0)
    for i, t1 in enumerate(thetas):
        for j, t2 in enumerate(thetas):
            W = torch.stack([unit(t1), unit(t2)], 1)
            vals = toy_objectives(W, classify, K, n_alpha, n_beta, gamma, torch.Generator().manual_seed(seed), objectives)
            for name, v in vals.items():
                out[name][i, j] = v
            bar.update(1)
    bar.close()
    return {"thetas": thetas.numpy(), **out}
