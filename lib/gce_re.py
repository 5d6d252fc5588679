"""The [Re] GCE study's extensions (harder classifiers, classifier mode, parameter selection, input scaling),
built on :mod:`lib.gce` (the method) and :mod:`lib.models.gce_re` (the study's classifiers).

Used by the chapter ``chapters/gce_reproduction.md``. Nothing here changes the method: these are the
experiment's glue (cached classifiers, one large batched estimate of I(alpha; Y) with its Monte-Carlo
error, sweep statistics per latent, Algorithm 1's grid points as single calls).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from lib import gce, gce_core
from lib.cache import cached_model
from lib.models.gce_re import PerGroupCalls, build_classifier, train_classifier
from lib.stats import Estimate
from lib.train import fit


def cached_classifier(arch: str, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int, data_id: str,
                      data_fingerprint: str, dtype: str = "float64", n_classes: int = 2, channels: int = 1,
                      side: int = 28, input_scale: float = 1.0, verbose: bool = True) -> tuple[nn.Module, dict]:
    """The classifier ``arch`` trained with the authors' recipe on ``x * input_scale`` (cached by
    configuration, data and code; the quick profile's are committed in ``data/artifacts``)."""
    config = {"arch": arch, "epochs": epochs, "seed": seed, "dtype": dtype, "data": data_id, "n_classes": n_classes,
              "channels": channels, "side": side, "input_scale": input_scale, "n_train": len(x)}

    def build() -> nn.Module:
        torch.manual_seed(seed)
        return build_classifier(arch, n_classes, channels, side)

    def train(m: nn.Module) -> dict:
        return train_classifier(m, x * input_scale, y, epochs, seed=seed, dtype=getattr(torch, dtype))

    return cached_model(f"gce-re-{arch}" + ("" if input_scale == 1.0 else f"-x{input_scale:g}"), config, build, train,
                        data_fingerprint=data_fingerprint, verbose=verbose, code=[train_classifier, fit])


def probs_fn(classifier: nn.Module, mode: str = "eval", group: int | None = None,
             input_scale: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """images -> softmax probabilities of ``classifier`` in ``mode`` ("eval" or "train"), classified in
    groups of ``group`` images per call (``None``: one call), inputs multiplied by ``input_scale``.

    "train" puts the classifier in training mode for the call (dropout on, batch norm over each
    group) and restores its parameters, buffers and mode afterwards."""
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    net = PerGroupCalls(classifier, group) if group else classifier

    def classify(images: torch.Tensor) -> torch.Tensor:
        was = classifier.training
        saved = {k: v.clone() for k, v in classifier.state_dict().items()} if mode == "train" else None
        classifier.train(mode == "train")
        try:
            return torch.softmax(net(images * input_scale), 1)
        finally:
            if saved is not None:
                classifier.load_state_dict(saved)
            classifier.train(was)

    return classify


@torch.no_grad()
def flow_probs(decoder: nn.Module, classify: Callable, K: int, L: int, n_alpha: int, n_beta: int,
               seed: int, dims: Sequence[int] | None = None, chunk: int = 2048) -> torch.Tensor:
    """Class probabilities (n_alpha, n_beta, M) of the decoded images behind one estimate of I
    (the layout of :func:`lib.gce.information_flow`: the ``dims`` coordinates fixed per alpha draw).
    ``chunk`` must be a multiple of ``n_beta`` when ``classify`` works per group."""
    gen = torch.Generator().manual_seed(seed)
    p0 = next(decoder.parameters())
    z = gce._latents(K, L, n_alpha, n_beta, dims, gen, p0.dtype, p0.device)
    step = max(n_beta, chunk - chunk % n_beta)
    probs = torch.cat([classify(decoder(z[i : i + step])) for i in range(0, len(z), step)])
    return probs.view(n_alpha, n_beta, -1).double()


def mi_estimate(probs: torch.Tensor, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """I(alpha; Y) from ``probs`` (n_alpha, n_beta, M) with a percentile bootstrap over the alpha draws
    (the Monte-Carlo error of the outer sample; the inner sample's upward bias, about
    (M - 1) / (2 n_beta) nats, is not in the interval and is stated by the caller)."""
    value = float(gce.mutual_information(probs))
    p = probs.mean(1).numpy()  # (n_alpha, M)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(p), size=(n_boot, len(p)))
    pb = p[idx]  # (n_boot, n_alpha, M)
    inner = (pb * np.log(pb + gce.EPS)).sum(2).mean(1)
    q = pb.mean(1)
    boot = inner - (q * np.log(q + gce.EPS)).sum(1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return Estimate(value, float(lo), float(hi), len(p), f"plug-in I, percentile bootstrap over {len(p)} alpha draws "
                    f"({n_boot} resamples), n_beta={probs.shape[1]}")


@torch.no_grad()
def sweep_stats(decoder: nn.Module, classify: Callable, K: int, L: int, n_start: int, values: Sequence[float],
                seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Per latent (alpha1.., beta1..): :func:`lib.gce.sweep_effect` from ``n_start`` prior draws."""
    gen = torch.Generator().manual_seed(seed)
    p0 = next(decoder.parameters())
    z = torch.randn(n_start, K + L, generator=gen, dtype=p0.dtype)
    names = [f"alpha{i + 1}" for i in range(K)] + [f"beta{i + 1}" for i in range(L)]
    return {n: gce.sweep_effect(decoder, classify, z, d, values) for d, n in enumerate(names)}


@dataclass
class PointResult:
    """One grid point of Algorithm 1: final D and C (means over the last ``tail`` steps) and the history."""

    K: int
    L: int
    lam: float
    seed: int
    D: float
    C: float
    history: dict


def train_point(classifier: nn.Module, x: torch.Tensor, K: int, L: int, lam: float, *, steps: int, n_alpha: int,
                n_beta: int, tail: int, seed: int, lr: float = 5e-4, batch_size: int = 64,
                classifier_mode: str = "eval", progress: bool = False) -> PointResult:
    """Train one explainer (a fresh :class:`lib.gce.GCEExplainer`, seeded) at (K, L, lam) and return
    D and C = -I as the means over its last ``tail`` steps (the [Re] code's measure, with 500 of
    3000 steps). One grid point = one call, so a sweep runner can distribute them."""
    if not 1 <= tail <= steps:
        raise ValueError(f"tail must be in [1, steps={steps}], got {tail}")
    torch.manual_seed(seed)
    explainer = gce.GCEExplainer(K, L, channels=x.shape[1], side=x.shape[-1])
    from lib.models.gce_cnn import reference_init_
    reference_init_(explainer)
    cfg = gce.GCEConfig(K=K, L=L, lam=lam, steps=steps, n_alpha=n_alpha, n_beta=n_beta, batch_size=batch_size, lr=lr,
                        classifier_mode=classifier_mode, seed=seed)
    hist = gce.train_gce(explainer, classifier, x, cfg, progress=progress, desc=f"K{K} L{L} lam{lam:g}")
    D = float(np.mean(hist["D"][-tail:]))
    C = -float(np.mean(hist["I"][-tail:]))
    return PointResult(K, L, lam, seed, D, C, hist)


def re_step2_lambda(d_of_lambda: Callable[[float], float], d_ref: float, criterion: float, lam_step: float = 0.01,
                    max_steps: int = 100) -> tuple[float, list[tuple[float, float]]]:
    """The [Re] code's step-2 lambda search for one (K, L) (``algorithm1.py`` of FACT-anonymous @ 44c3dd7):
    lambda = lam_step, 2 lam_step, ...; stop when D is within ``criterion`` (relative) of step 1's
    ``d_ref``, or when the relative gap grows (then the previous lambda is kept). Returns the chosen
    lambda and the (lambda, relative gap) rows. ``d_of_lambda(lam)`` gives D for the lambda the run
    *uses*: pass a function that ignores its argument to replay the repository's version, which
    trains every step with the fixed starting value."""
    rows: list[tuple[float, float]] = []
    lam, old = 0.0, math.inf
    for _ in range(max_steps):
        lam = round(lam + lam_step, 10)
        gap = (d_of_lambda(lam) - d_ref) / d_ref
        rows.append((lam, gap))
        if gap <= criterion:
            return lam, rows
        if gap > old:
            return round(lam - lam_step, 10), rows
        old = gap
    return math.nan, rows


def cached_explainer(arch: str, classifier: nn.Module, classifier_key: str, x: torch.Tensor, cfg: gce.GCEConfig, *,
                     data_fingerprint: str, store_dtype: str = "bfloat16", cache=None, progress: bool = True,
                     verbose: bool = True) -> tuple[nn.Module, dict]:
    """Train a GCE explainer for ``classifier`` (float32, the authors' initialisation, the classifier
    called once per alpha draw on its ``n_beta`` images, in ``cfg.classifier_mode``) or load it.

    Only the decoder (all that I(alpha; Y) and the sweeps need) and the training history are stored,
    in ``store_dtype`` (bfloat16 keeps the committed quick-profile files small). Returns the decoder
    (float32, eval mode) and ``{"I": [...], "D": [...], "train_seconds", "from_cache", "key"}``."""
    import time

    from lib.cache import ArtifactCache
    from lib.models.gce_cnn import reference_init_

    cache = cache or ArtifactCache()
    config = {**cfg.asdict(), "arch": arch, "classifier": classifier_key, "group_calls": True, "train_dtype": "float32",
              "store_dtype": store_dtype, "n_train": len(x), "channels": int(x.shape[1]), "side": int(x.shape[-1])}

    def build() -> gce.GCEExplainer:
        torch.manual_seed(cfg.seed)
        return reference_init_(gce.GCEExplainer(cfg.K, cfg.L, channels=int(x.shape[1]), side=int(x.shape[-1])))

    def create() -> dict:
        t0 = time.perf_counter()
        ex = build()
        hist = gce.train_gce(ex, PerGroupCalls(classifier, cfg.n_beta), x.float(), cfg, progress=progress,
                             desc=f"GCE {arch} ({cfg.classifier_mode})")
        sd = {k: v.to(getattr(torch, store_dtype)) for k, v in ex.decoder.state_dict().items()}
        return {"decoder": sd, "info": {"I": hist["I"], "D": hist["D"], "train_seconds": time.perf_counter() - t0}}

    name = f"gce-re-{arch}-explainer-{cfg.classifier_mode}"
    payload, hit = cache.get_or_create(name, config, create, data_fingerprint, code=[gce_core, PerGroupCalls])
    dec = build().decoder
    dec.load_state_dict({k: v.float() for k, v in payload["decoder"].items()})
    info = {**payload["info"], "from_cache": hit, "key": payload["__key__"]}
    if verbose:
        how = "loaded from cache" if hit else f"trained in {info['train_seconds']:.0f} s and cached"
        print(f"{name}: {how} (key {info['key']})")
    return dec.eval(), info


def point_name(K: int, L: int, lam: float, seed: int) -> str:
    """The artifact name of one grid point (one name per point: ``ci/freeze_artifacts.py`` keeps one file per name)."""
    return f"gce-re-alg1-K{K}-L{L}-lam{lam:g}-s{seed}"


def cached_point(classifier: nn.Module, classifier_key: str, x: torch.Tensor, K: int, L: int, lam: float, *, steps: int,
                 n_alpha: int, n_beta: int, tail: int, seed: int, data_fingerprint: str, lr: float = 5e-4,
                 batch_size: int = 64, cache=None) -> tuple[PointResult, bool]:
    """:func:`train_point` through the artifact cache: only the (small) D and I histories are stored,
    so a parameter-selection grid can be committed for the quick profile. Returns (result, from_cache)."""
    from lib.cache import ArtifactCache

    cache = cache or ArtifactCache()
    config = {"K": K, "L": L, "lam": lam, "steps": steps, "n_alpha": n_alpha, "n_beta": n_beta, "tail": tail, "seed": seed,
              "lr": lr, "batch_size": batch_size, "classifier": classifier_key, "n_train": len(x)}

    def create() -> dict:
        r = train_point(classifier, x.float(), K, L, lam, steps=steps, n_alpha=n_alpha, n_beta=n_beta, tail=tail,
                        seed=seed, lr=lr, batch_size=batch_size)
        return {"I": r.history["I"], "D": r.history["D"]}

    payload, hit = cache.get_or_create(point_name(K, L, lam, seed), config, create, data_fingerprint, code=[gce_core])
    D = float(np.mean(payload["D"][-tail:]))
    C = -float(np.mean(payload["I"][-tail:]))
    return PointResult(K, L, lam, seed, D, C, {"I": payload["I"], "D": payload["D"]}), hit
