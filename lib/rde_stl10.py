"""The RDE paper's STL-10 experiment, end to end (reference: ``jmaces/rde`` @ d71169d, ``stl10/``).

What the reference does, and what :func:`run_stl10_experiment` does with it:

1. **Images**: the test generator (``flow_from_directory``, ``shuffle=False``: sorted by class folder,
   then by file), 50 images ``INDICES = range(0, 7999, 160)`` of the 8,000 (``script_adf.py``,
   ``pixelflip.py``): :func:`reference_indices` (the test set sorted stably by label; we assume the
   class folders sort in label order, as the class names do, and the files in the binary's order);
2. **noise statistics**: the mean and a rank-30 covariance factor of the *augmented* training generator
   (``instances.compute_statistics``: ``statstream.streaming_mean_and_low_rank_covariance(generator, 30,
   steps=n // 64, tree=True)``; batches of 64 in model input space, a second pass over fresh batches
   for the covariance): :func:`streaming_mean_and_low_rank_cov` and :func:`noise_statistics`;
3. **RDE**: ADF in the low-rank mode (``MODE = "half"``, ``RANK = 30``), the Lagrangian
   distortion + Phi(x)^2 * mu * mean|s| for mu in {0.01, 0.1, 1.0}, projected gradient descent with
   step size ``eta = 10`` (``stl10/rde.py``: ``ProjectedGD(..., eta=1e1, momentum=0.85)``), s0 = 0.25,
   at most 1500 iterations: :func:`lib.rde.rde_explain` with ``RDEConfig(mode="lowrank", eta=10)``;
   the rank is the noise factor's (``NoiseModel.factor`` has 30 rows);
4. **relevance-ordering test**: 128 noise draws per step (``NUM_SAMPLES``), groups of 512 components
   (``GROUP_SIZE``; 150,528 = 294 x 512 components at 224 x 224 x 3), uniform noise in
   [x.min(), x.max()], the softmax of the predicted class: :func:`lib.pixelflip.relevance_ordering_test`.

:class:`STL10Settings` holds these settings. The classifier is :mod:`lib.models.rde_stl10` (VGG16 with
average pooling; the reference's weights are not shipped). GPU-sized at the reference's scale; every
step runs on the model's device, and tests run it on tiny generated data with a tiny model.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from lib.models.rde_stl10 import INPUT_SIZE, augment, preprocess, resize, to_model_input
from lib.pixelflip import FlipCurves, area, area_se, relevance_ordering_test
from lib.rde import NoiseModel, RDEConfig, RDEResult, adf_forward, obfuscation_moments, output_variance, rde_explain

SOURCE = "jmaces/rde @ d71169d, stl10/{script_adf,rde,pixelflip,instances}.py"


@dataclass(frozen=True)
class STL10Settings:
    """The reference's STL-10 settings (see the module docstring for the file of each)."""

    n_images: int = 50  # INDICES = range(0, 7999, 160)
    mus: tuple[float, ...] = (0.01, 0.1, 1.0)  # MUS
    mode: str = "lowrank"  # MODE = "half"
    rank: int = 30  # RANK
    eta: float = 10.0  # ProjectedGD(eta=1e1) in stl10/rde.py
    max_iterations: int = 1500  # ProjectedGD's maxiter
    s0: float = 0.25
    group_size: int = 512  # GROUP_SIZE
    n_draws: int = 128  # NUM_SAMPLES
    stats_batch: int = 64  # the augmented training generator's batch size (BATCH_SIZE_TRAIN)
    stats_tree: bool = True  # statstream's binary-tree merging
    input_size: int = INPUT_SIZE

    def rde_config(self, mu: float) -> RDEConfig:
        """lib.rde's optimiser settings for one mu (the other fields are RDEConfig's defaults, which are the
        reference's ProjectedGD arguments: momentum 0.85, c 0.65, tau 0.7, 30 line-search steps, tolerances 1e-18)."""
        return RDEConfig(mu=mu, mode=self.mode, s0=self.s0, max_iterations=self.max_iterations, eta=self.eta)


# --- images -----------------------------------------------------------------------------------------

def reference_indices(y_test: torch.Tensor, n_images: int) -> torch.Tensor:
    """Test-set indices of the explained images: the test set sorted stably by label (the reference's
    directory generator lists class folders in order), then every (len // n_images)-th image. On STL-10's
    8,000 test images with 50 images these are the positions ``range(0, 7999, 160)``, 5 per class."""
    if not 1 <= n_images <= len(y_test):
        raise ValueError(f"n_images must be in [1, {len(y_test)}], got {n_images}")
    order = torch.argsort(y_test.cpu(), stable=True)
    step = len(order) // n_images
    return order[torch.arange(n_images) * step]


# --- noise statistics: statstream's streaming mean and low-rank covariance ---------------------------

def _truncated_svd(a: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``rank`` largest singular values of ``a`` (B, P) and their right singular vectors (P, k)."""
    _, s, vh = torch.linalg.svd(a, full_matrices=False)
    k = min(rank, s.numel())
    return s[:k], vh[:k].T


def _merge(s1: torch.Tensor, v1: torch.Tensor, s2: torch.Tensor, v2: torch.Tensor,
           rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two truncated SVD factors (S, V) of row blocks A1, A2 into one of [A1; A2], truncated to
    ``rank`` (statstream's ``_merge_low_rank_eigendecomposition``, after Rehurek 2011): V2 is split into
    its part in span(V1) and an orthonormal remainder Q R, and the small matrix
    [[diag S1, Z diag S2], [0, R diag S2]] is decomposed."""
    r1, r2 = len(s1), len(s2)
    k = min(rank, r1 + r2, v1.shape[0])
    z = v1.T @ v2
    q, r = torch.linalg.qr(v2 - v1 @ z, mode="reduced")
    top = torch.cat([torch.diag(s1), z * s2], 1)
    bottom = torch.cat([torch.zeros(r2, r1, dtype=s1.dtype, device=s1.device), r * s2], 1)
    u, s, _ = torch.linalg.svd(torch.cat([top, bottom], 0))
    u, s = u[:, :k], s[:k]
    return s, v1 @ u[:r1] + q @ u[r1:]


def streaming_mean_and_low_rank_cov(batches: Callable[[int], Iterable[torch.Tensor]], rank: int,
                                    tree: bool = True) -> NoiseModel:
    """The mean and a rank-``rank`` covariance factor of a stream of batches, as the reference's
    ``statstream.streaming_mean_and_low_rank_covariance``: a first pass for the mean, a second pass in
    which each centred batch's truncated SVD is merged into the running one (``tree``: pairwise, in a
    binary tree, as the reference; else one after the other). The covariance is approximated by
    F^T F with F = V diag(S) / sqrt(n - 1) over the n samples of the second pass; it is exact where
    the centred data has rank <= ``rank``.

    ``batches(pass_index)`` returns an iterable of batches (B, *shape) for pass 0 (mean) and pass 1
    (covariance); the reference's generator draws fresh augmented images in each pass. Computed in
    float64 on the batches' device. Returns ``NoiseModel(mean, factor=F)`` with F shaped (k, *shape),
    k = min(rank, samples); its ``var`` is None (the low-rank mode's statistics).
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    total, count, shape = None, 0, None
    for b in batches(0):
        b = b.double()
        total = b.sum(0) if total is None else total + b.sum(0)
        count += len(b)
        shape = b.shape[1:]
    if not count:
        raise ValueError("the stream yielded no samples")
    mean = total / count
    stack: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    s_run = v_run = None
    n2 = 0
    for b in batches(1):
        c = (b.double() - mean).flatten(1)
        s, v = _truncated_svd(c, rank)
        n2 += len(c)
        if tree:
            stack.append((s, v, 0))
            while len(stack) >= 2 and stack[-1][2] == stack[-2][2]:
                (s_a, v_a, lev), (s_b, v_b, _) = stack.pop(), stack.pop()
                stack.append((*_merge(s_a, v_a, s_b, v_b, rank), lev + 1))
        else:
            s_run, v_run = (s, v) if s_run is None else _merge(s_run, v_run, s, v, rank)
    if tree:
        while len(stack) >= 2:
            (s_a, v_a, lev), (s_b, v_b, _) = stack.pop(), stack.pop()
            stack.append((*_merge(s_a, v_a, s_b, v_b, rank), lev + 1))
        s_run, v_run = stack[0][0], stack[0][1]
    if n2 < 2:
        raise ValueError("the covariance pass needs at least 2 samples")
    factor = (v_run * s_run).T / math.sqrt(n2 - 1)
    return NoiseModel(mean, None, factor.reshape(len(s_run), *shape))


def augmented_batches(x: torch.Tensor, batch_size: int, seed: int, size: int = INPUT_SIZE, augmented: bool = True,
                      device: str | torch.device = "cpu") -> Callable[[int], Iterator[torch.Tensor]]:
    """The reference's augmented training generator as a stream for :func:`streaming_mean_and_low_rank_cov`:
    for each pass, the training images ``x`` (N, 3, 96, 96) in [0, 1] in a new seeded random order, in
    ``len(x) // batch_size`` full batches (the reference's ``steps = n // batch_size``), each resized to
    ``size``, augmented (:func:`lib.models.rde_stl10.augment`; ``augmented=False`` skips it) and
    preprocessed to model input space, in float64 on ``device``."""
    steps = len(x) // batch_size
    if steps < 1:
        raise ValueError(f"{len(x)} images do not fill one batch of {batch_size}")

    def batches(pass_index: int) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(seed * 1000 + pass_index)
        order = torch.randperm(len(x), generator=g)
        for j in range(steps):
            xb = resize(x[order[j * batch_size : (j + 1) * batch_size]].to(device=device, dtype=torch.float64), size)
            yield preprocess(augment(xb, g) if augmented else xb)

    return batches


def noise_statistics(x_train: torch.Tensor, settings: STL10Settings = STL10Settings(), seed: int = 0,
                     augmented: bool = True, device: str | torch.device = "cpu") -> NoiseModel:
    """RDE's noise model for STL-10 as the reference computes it: the streaming mean and rank-``settings.rank``
    covariance factor of the augmented training images in model input space (:func:`augmented_batches`,
    :func:`streaming_mean_and_low_rank_cov` with the reference's batch size and tree merging)."""
    batches = augmented_batches(x_train, settings.stats_batch, seed, settings.input_size, augmented, device)
    return streaming_mean_and_low_rank_cov(batches, settings.rank, tree=settings.stats_tree)


def noise_to(noise: NoiseModel, device: str | torch.device) -> NoiseModel:
    """The same noise model with its tensors on ``device``."""
    move = lambda t: None if t is None else t.to(device)
    return NoiseModel(move(noise.mean), move(noise.var), move(noise.factor), move(noise.cov))


# --- RDE and the relevance-ordering test on the model's device ----------------------------------------

def rde_explain_on_device(model: nn.Sequential, x: torch.Tensor, noise: NoiseModel, cfg: RDEConfig,
                          node: torch.Tensor | None = None, progress: bool = False) -> RDEResult:
    """:func:`lib.rde.rde_explain` with its working tensors on ``x``'s device.

    ``rde_explain`` makes its per-image state (step sizes, active flags, counters) with torch factories
    that name no device, i.e. on the host; on a GPU that state meets the device tensors in ``torch.where``
    and fails. Inside ``torch.device(x.device)`` those factories default to ``x``'s device (tensors made
    from other tensors keep theirs). On the CPU this is ``rde_explain`` itself, with the same numbers.
    """
    with torch.device(x.device):
        return rde_explain(model, x, noise, cfg, node=node, progress=progress)


def softmax_probs(model: nn.Module, chunk: int = 256) -> Callable[[torch.Tensor], torch.Tensor]:
    """The classifier's softmax as the relevance-ordering test needs it: host images in, host
    probabilities out, computed on the model's device in chunks of ``chunk`` images."""
    p0 = next(model.parameters())

    @torch.no_grad()
    def probs(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.softmax(model(t[j : j + chunk].to(device=p0.device, dtype=p0.dtype)), 1).float().cpu()
                          for j in range(0, len(t), chunk)])

    return probs


@torch.no_grad()
def adf_output_gap(model: nn.Sequential, x: torch.Tensor, s: torch.Tensor, noise: NoiseModel, node: torch.Tensor,
                   n_samples: int = 1024, seed: int = 0, batch: int = 256) -> dict[str, np.ndarray]:
    """Low-rank ADF's moments of the logits ``node`` against Monte Carlo, per image.

    y = s x + (1 - s) n with n Gaussian of the noise model's mean and low-rank covariance (the
    distribution ADF assumes at the input); ``n_samples`` draws per image through ``model``. Returns the
    ADF mean and variance, the Monte-Carlo mean and variance and their standard errors (the mean's:
    sqrt(var / n); the variance's: from the sample's fourth central moment), as host float64 arrays (N,).
    """
    dtype = next(model.parameters()).dtype
    mean_in, second = obfuscation_moments(x, s, noise, "lowrank", dtype)
    m_adf, f_adf = adf_forward(model, mean_in, second, "lowrank")
    idx = node.to(x.device).view(-1, 1)
    out = {"adf_mean": m_adf.gather(1, idx)[:, 0], "adf_var": output_variance(f_adf, "lowrank").gather(1, idx)[:, 0]}
    g = torch.Generator().manual_seed(seed)
    factor = noise.factor.double()
    rows = {"mc_mean": [], "mc_var": [], "mc_mean_se": [], "mc_var_se": []}
    for i in range(len(x)):
        vals = []
        for j in range(0, n_samples, batch):
            k = min(batch, n_samples - j)
            eps = torch.randn(k, factor.shape[0], generator=g, dtype=torch.float64).to(factor.device)
            draws = noise.mean.double() + torch.einsum("kr,r...->k...", eps, factor)
            y = s[i].double() * x[i].double() + (1 - s[i].double()) * draws
            vals.append(model(y.to(dtype))[:, int(node[i])].double())
        v = torch.cat(vals)
        mu, var = v.mean(), v.var(unbiased=True)
        m4 = ((v - mu) ** 4).mean()
        rows["mc_mean"].append(mu)
        rows["mc_var"].append(var)
        rows["mc_mean_se"].append((var / n_samples).sqrt())
        rows["mc_var_se"].append(((m4 - var**2).clamp_min(0) / n_samples).sqrt())
    out.update({k: torch.stack(v) for k, v in rows.items()})
    return {k: v.double().cpu().numpy() for k, v in out.items()}


# --- the experiment ------------------------------------------------------------------------------------

@dataclass
class STL10Run:
    """What :func:`run_stl10_experiment` computed; ``masks``, ``curves`` and arrays live on the host."""

    settings: STL10Settings
    indices: torch.Tensor  # (N,) test-set indices of the explained images
    labels: torch.Tensor  # (N,) their labels
    predicted: torch.Tensor  # (N,) the classifier's top class
    masks: dict[float, torch.Tensor]  # mu -> (N, 3, S, S) RDE masks in [0, 1]
    rde: dict[float, dict[str, torch.Tensor]]  # mu -> distortion, sparsity, iterations per image
    curves: dict[str, FlipCurves]  # map name -> relevance-ordering curves
    noise: NoiseModel
    seconds: dict[str, float] = field(default_factory=dict)
    adf_gap: dict[str, np.ndarray] | None = None

    def summary(self, sparse_rate: float = 0.2) -> dict[str, dict[str, float]]:
        """Per map: the mean over images of the distortion's area under the curve over all rates and over
        the sparse window [0, ``sparse_rate``] (mean heights, lower is better), the Monte-Carlo error of the
        sparse mean, and the mean accuracy over the sparse window; plain floats for ``log.report``."""
        out = {}
        for name, c in self.curves.items():
            sp = area(c.distortion, c.rate, sparse_rate)
            se = area_se(c.distortion_se, c.rate, sparse_rate)
            out[name] = {"distortion_auc": float(area(c.distortion, c.rate).mean()), "distortion_sparse": float(sp.mean()),
                         "distortion_sparse_mc_se": float(np.sqrt((se**2).sum()) / len(se)),
                         "accuracy_sparse": float(area(c.accuracy, c.rate, sparse_rate).mean())}
        for mu, r in self.rde.items():
            out[map_name(mu)].update({"rate": float(r["sparsity"].mean()), "adf_distortion": float(r["distortion"].mean()),
                                      "iterations_mean": float(r["iterations"].double().mean()),
                                      "iterations_max": int(r["iterations"].max())})
        return out


def map_name(mu: float) -> str:
    """The name of RDE's map at ``mu`` in :attr:`STL10Run.curves`."""
    return f"RDE μ={mu:g}"


def run_stl10_experiment(model: nn.Sequential, x_test: torch.Tensor, y_test: torch.Tensor, x_train: torch.Tensor,
                         settings: STL10Settings = STL10Settings(), seed: int = 0, noise: NoiseModel | None = None,
                         image_batch: int = 8, random_reference: bool = True, mc_samples: int | None = None,
                         flip_steps_per_call: int = 2, progress: bool = False) -> STL10Run:
    """The reference's STL-10 experiment on ``model`` (logits; on any device, in eval mode).

    ``x_test``, ``y_test``: the test split as :func:`lib.data.load_stl10` gives it ((N, 3, 96, 96) in [0, 1],
    labels 0..9); ``x_train``: the training images for the noise statistics (ignored when ``noise`` is
    given: a :class:`lib.rde.NoiseModel` with a covariance factor, in model input space). Steps: the
    explained images (:func:`reference_indices`), the noise statistics (:func:`noise_statistics`, on the
    model's device), RDE for every mu of ``settings`` (:func:`rde_explain_on_device`, ``image_batch``
    images at a time: the low-rank ADF pass holds rank + 1 copies of every activation per image), then the
    relevance-ordering test of every mask, and of a random ordering when ``random_reference`` (the map
    of zeros: ties are broken at random), with ``settings.n_draws`` draws per step and groups of
    ``settings.group_size`` (images and noise on the host, the classifier on its device,
    ``flip_steps_per_call`` steps per batch of forward passes). ``mc_samples``: also compare low-rank ADF
    with Monte Carlo at the explained logit for the first mu's masks (:func:`adf_output_gap`).
    The seeds: noise statistics ``seed``, test draws ``seed * 1000 + k`` for the k-th map.
    """
    p0 = next(model.parameters())
    device, dtype = p0.device, p0.dtype
    seconds: dict[str, float] = {}
    picked = reference_indices(y_test, settings.n_images)
    z = to_model_input(x_test[picked].to(dtype), settings.input_size)  # host, model input space
    labels = y_test[picked].cpu()
    with torch.no_grad():
        logits = torch.cat([model(z[j : j + image_batch].to(device)).cpu() for j in range(0, len(z), image_batch)])
    predicted = logits.argmax(1)
    t0 = time.perf_counter()
    if noise is None:
        noise = noise_statistics(x_train, settings, seed=seed, device=device)
    if noise.factor is None:
        raise ValueError("the low-rank mode needs a noise model with a covariance factor (noise_statistics)")
    noise_dev = noise_to(noise, device)
    seconds["noise_statistics"] = time.perf_counter() - t0

    masks: dict[float, torch.Tensor] = {}
    rde: dict[float, dict[str, torch.Tensor]] = {}
    for mu in settings.mus:
        t0 = time.perf_counter()
        parts = [rde_explain_on_device(model, z[j : j + image_batch].to(device), noise_dev, settings.rde_config(mu),
                                       node=predicted[j : j + image_batch].to(device), progress=progress)
                 for j in range(0, len(z), image_batch)]
        masks[mu] = torch.cat([r.mask.float().cpu() for r in parts])
        rde[mu] = {"distortion": torch.cat([r.distortion.cpu() for r in parts]),
                   "sparsity": torch.cat([r.sparsity.cpu() for r in parts]),
                   "iterations": torch.cat([r.iterations.cpu() for r in parts])}
        seconds[f"rde_{mu:g}"] = time.perf_counter() - t0

    maps = {map_name(mu): m for mu, m in masks.items()}
    if random_reference:
        maps["random"] = torch.zeros_like(z, dtype=torch.float32)
    probs = softmax_probs(model)
    curves: dict[str, FlipCurves] = {}
    for k, (name, m) in enumerate(maps.items()):
        t0 = time.perf_counter()
        curves[name] = relevance_ordering_test(probs, z.float(), labels, m, group_size=settings.group_size,
                                               n_draws=settings.n_draws,
                                               generator=torch.Generator().manual_seed(seed * 1000 + k),
                                               batch=settings.n_draws * flip_steps_per_call, progress=progress,
                                               desc=f"pixel flipping {name}")
        seconds[f"flip_{name}"] = time.perf_counter() - t0

    gap = None
    if mc_samples:
        mu0 = settings.mus[0]
        gap = adf_output_gap(model, z.to(device), masks[mu0].to(device=device, dtype=dtype), noise_dev,
                             predicted.to(device), n_samples=mc_samples, seed=seed)
    return STL10Run(settings, picked, labels, predicted, masks, rde, curves, noise, seconds, gap)


def settings_record(settings: STL10Settings) -> dict:
    """The settings as plain values (for a run record or a cache key)."""
    d = asdict(settings)
    d["mus"] = list(d["mus"])
    return d
