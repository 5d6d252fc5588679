"""Baseline attributions shared by the chapters, and the block geometry and masking metric of CXPlain.

Pixel-level baselines from maintained libraries (used by the RDE chapter as they are, and by the
CXPlain chapter reduced to blocks): :func:`saliency`, :func:`smoothgrad`, :func:`guided_backprop`,
:func:`deconvolution`, :func:`integrated_gradients`, :func:`input_x_gradient`, :func:`lrp` (captum),
:func:`deepshap` (shap), :func:`lime_image_map` (lime; :func:`lime_tabular_map` for 1-D inputs), and the
two references of the RDE code,
:func:`input_map` and :func:`input_plus_random`. Each returns a map shaped like the input and
explains the logit of the predicted class unless ``target`` is given.

Reproduces the evaluation protocol of Schwab & Karlen, *CXPlain*, NeurIPS 2019
(arXiv:1910.12336), Section 4 ("Experiments"):

* explanations are compared at **block level**: MNIST images (28x28) are explained on a 14x14
  grid of non-overlapping 2x2 blocks (196 features), ImageNet images (224x224) on a 14x14 grid
  of 16x16 blocks. Every function here takes the block size and works for any ``(C, H, W)``
  input whose height and width the block size divides. Blocks are numbered row-major
  (block ``i`` covers rows ``(i // gw) * bh ...`` and columns ``(i % gw) * bw ...`` where ``gw``
  is the number of blocks per row), the same order as the reference implementation's masks;
* per-pixel attribution maps are reduced to blocks by summing over the block's pixels (and
  channels) and renormalising (:func:`to_blocks`);
* the accuracy metric is the **change in log-odds** of the predicted class when the top
  fraction (10% for MNIST, 30% for ImageNet) of blocks is masked (:func:`delta_log_odds`);
* the baselines are computed with maintained libraries (LIME: ``lime``, SHAP and DeepSHAP:
  ``shap``, Simple Gradient and Integrated Gradients: ``captum``), each reduced to the same
  blocks (:func:`lime_blocks`, :func:`shap_blocks`, :func:`deepshap_blocks`,
  :func:`saliency_blocks`, :func:`integrated_gradients_blocks`).

Conventions: models are ``torch.nn.Module`` s mapping ``(N, C, H, W)`` float inputs to
``(N, K)`` **logits**; inputs are torch tensors; attributions are returned as float32 torch
tensors of shape ``(N, n_blocks)``. Every baseline explains the model's predicted class unless
``target`` is given. No plotting here.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch
from torch import nn

__all__ = [
    "Block",
    "block_shape",
    "block_grid",
    "num_blocks",
    "block_masks",
    "block_segments",
    "blocks_to_pixels",
    "l1_normalise",
    "to_blocks",
    "mask_blocks",
    "top_k_blocks",
    "mask_top_k",
    "eval_mode",
    "predict_logits",
    "predicted_class",
    "log_odds",
    "delta_log_odds",
    "lime_blocks",
    "shap_blocks",
    "deepshap_blocks",
    "saliency_blocks",
    "integrated_gradients_blocks",
    "quiet",
    "saliency",
    "smoothgrad",
    "guided_backprop",
    "deconvolution",
    "integrated_gradients",
    "input_x_gradient",
    "lrp",
    "lrp_ready",
    "LRP_RULES",
    "ZRule",
    "GradientRule",
    "AlphaBetaRule",
    "FlatRule",
    "BoundedRule",
    "deepshap",
    "lime_image_map",
    "lime_tabular_map",
    "input_map",
    "input_plus_random",
]

Block = Union[int, Sequence[int]]
MaskValue = Union[float, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Block geometry
# --------------------------------------------------------------------------------------------
def block_shape(block: Block) -> tuple[int, int]:
    """Return ``(block_height, block_width)`` for an int (square block) or a pair."""
    if isinstance(block, (int, np.integer)):
        bh = bw = int(block)
    else:
        bh, bw = (int(b) for b in block)
    if bh < 1 or bw < 1:
        raise ValueError(f"block size must be positive, got {block}")
    return bh, bw


def block_grid(hw: Sequence[int], block: Block) -> tuple[int, int]:
    """Number of blocks along height and width; raises if the block does not divide the image."""
    h, w = int(hw[-2]), int(hw[-1])
    bh, bw = block_shape(block)
    if h % bh or w % bw:
        raise ValueError(f"block {bh}x{bw} does not divide image {h}x{w}")
    return h // bh, w // bw


def num_blocks(hw: Sequence[int], block: Block) -> int:
    """Number of blocks of an ``H x W`` image (196 for 28x28 with 2x2 blocks)."""
    gh, gw = block_grid(hw, block)
    return gh * gw


def block_masks(hw: Sequence[int], block: Block, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean masks of shape ``(n_blocks, H, W)``; mask ``i`` is True on block ``i`` (row-major)."""
    h, w = int(hw[-2]), int(hw[-1])
    seg = torch.from_numpy(block_segments((h, w), block)).to(device)
    n = num_blocks((h, w), block)
    return seg.unsqueeze(0) == torch.arange(n, device=device).view(n, 1, 1)


def block_segments(hw: Sequence[int], block: Block) -> np.ndarray:
    """Integer map ``(H, W)`` giving each pixel's block index (a fixed-grid segmentation)."""
    h, w = int(hw[-2]), int(hw[-1])
    bh, bw = block_shape(block)
    gh, gw = block_grid((h, w), block)
    rows = np.arange(h) // bh
    cols = np.arange(w) // bw
    return (rows[:, None] * gw + cols[None, :]).astype(np.int64)


def blocks_to_pixels(values: torch.Tensor | np.ndarray, hw: Sequence[int], block: Block) -> torch.Tensor:
    """Expand block values ``(N, n_blocks)`` to pixel maps ``(N, H, W)`` (each pixel gets its block's value)."""
    v = torch.as_tensor(values)
    seg = torch.from_numpy(block_segments(hw, block)).to(v.device)
    if v.shape[-1] != int(seg.max()) + 1:
        raise ValueError(f"expected {int(seg.max()) + 1} block values, got {v.shape[-1]}")
    return v[..., seg]


def l1_normalise(values: torch.Tensor) -> torch.Tensor:
    """Divide each row by the sum of its absolute values (rows of zeros stay zero).

    For non-negative rows this is the usual renormalisation to sum 1; for signed rows the signs
    (evidence for / against the explained class) are kept and the absolute values sum to 1.
    """
    s = values.abs().sum(dim=-1, keepdim=True)
    return torch.where(s > 0, values / torch.where(s > 0, s, torch.ones_like(s)), values)


def to_blocks(
    pixel_map: torch.Tensor | np.ndarray,
    block: Block,
    *,
    absolute: bool = False,
    normalise: bool = True,
) -> torch.Tensor:
    """Reduce per-pixel attributions to block attributions (CXPlain paper, Sec. 4).

    Args:
        pixel_map: ``(N, H, W)`` or ``(N, C, H, W)`` attributions (tensor or array).
        block: block size (int or ``(bh, bw)``) dividing ``H`` and ``W``.
        absolute: take absolute values per pixel before summing (e.g. gradient magnitude).
        normalise: renormalise each sample with :func:`l1_normalise` (sum 1 for non-negative maps).

    Returns:
        float32 tensor ``(N, n_blocks)``: the sum over each block's pixels and over channels,
        blocks numbered row-major.
    """
    p = torch.as_tensor(pixel_map).detach().float()
    if p.ndim == 3:
        p = p.unsqueeze(1)
    if p.ndim != 4:
        raise ValueError(f"pixel_map must be (N, H, W) or (N, C, H, W), got shape {tuple(p.shape)}")
    if absolute:
        p = p.abs()
    n, _, h, w = p.shape
    bh, bw = block_shape(block)
    gh, gw = block_grid((h, w), block)
    out = p.sum(dim=1).reshape(n, gh, bh, gw, bw).sum(dim=(2, 4)).reshape(n, gh * gw)
    return l1_normalise(out) if normalise else out


# --------------------------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------------------------
def mask_blocks(x: torch.Tensor, selected: torch.Tensor, block: Block, mask_value: MaskValue = 0.0) -> torch.Tensor:
    """Return a copy of ``x`` ``(N, C, H, W)`` with the selected blocks set to ``mask_value``.

    Args:
        x: images ``(N, C, H, W)``.
        selected: boolean ``(N, n_blocks)``; True marks a block to mask.
        block: block size.
        mask_value: scalar, or a tensor broadcastable to ``(C, H, W)`` (e.g. a per-channel mean
            of shape ``(C, 1, 1)``). 0 is black background for MNIST scaled to [0, 1].
    """
    if selected.shape != (x.shape[0], num_blocks(x.shape, block)):
        raise ValueError(f"selected must be (N, n_blocks) = {(x.shape[0], num_blocks(x.shape, block))}")
    pix = blocks_to_pixels(selected.to(x.device), x.shape, block).unsqueeze(1)  # (N, 1, H, W)
    fill = torch.as_tensor(mask_value, dtype=x.dtype, device=x.device)
    return torch.where(pix, fill, x)


def top_k_blocks(importance: torch.Tensor | np.ndarray, fraction: float) -> torch.Tensor:
    """Boolean ``(N, n_blocks)`` marking the ``k = round(fraction * n_blocks)`` most important blocks.

    ``k`` is at least 1 (196 blocks: 10% -> 20 blocks, 30% -> 59 blocks). Ties are broken in
    favour of the lower block index (stable sort), so the result is deterministic.
    """
    imp = torch.as_tensor(importance).detach().float()
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n_b = imp.shape[-1]
    k = max(1, int(round(fraction * n_b)))
    order = torch.argsort(imp, dim=-1, descending=True, stable=True)[..., :k]
    sel = torch.zeros(imp.shape, dtype=torch.bool, device=imp.device)
    sel.scatter_(-1, order, True)
    return sel


def mask_top_k(
    x: torch.Tensor,
    importance: torch.Tensor | np.ndarray,
    fraction: float = 0.1,
    block: Block = 2,
    mask_value: MaskValue = 0.0,
) -> torch.Tensor:
    """Mask the top ``fraction`` of blocks of each image by ``importance`` (Sec. 4 of the paper)."""
    return mask_blocks(x, top_k_blocks(importance, fraction), block, mask_value)


# --------------------------------------------------------------------------------------------
# Model outputs and the log-odds metric
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put ``model`` in eval mode (restores the previous mode afterwards)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode without gradients, in batches."""
    with eval_mode(model), torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def predicted_class(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Arg-max class of ``model`` on each image of ``x``."""
    return predict_logits(model, x, batch_size).argmax(dim=1)


def log_odds(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """``log(p_c / (1 - p_c))`` of class ``c`` under ``softmax(logits)``, computed stably in float64.

    Equals ``z_c - logsumexp_{j != c} z_j``; for two classes ``z_c - z_other``.
    """
    z = logits.double()
    zc = z.gather(1, cls.view(-1, 1).long()).squeeze(1)
    others = z.scatter(1, cls.view(-1, 1).long(), float("-inf"))
    return zc - torch.logsumexp(others, dim=1)


def delta_log_odds(
    model: nn.Module,
    x: torch.Tensor,
    importance: torch.Tensor | np.ndarray,
    fraction: float = 0.1,
    block: Block = 2,
    mask_value: MaskValue = 0.0,
    target: torch.Tensor | None = None,
    batch_size: int = 512,
) -> torch.Tensor:
    """Drop in log-odds of the explained class after masking the top blocks (paper, Sec. 4).

    For each image, the class ``c`` is ``target`` or (default) the model's prediction on the
    unmasked image; the ``round(fraction * n_blocks)`` blocks with the highest ``importance``
    are set to ``mask_value`` and the function returns

        ``log_odds_c(x) - log_odds_c(x_masked)``,   ``log_odds_c = log(p_c / (1 - p_c))``.

    Positive values mean that masking the blocks an explanation marked as important removed
    evidence for the class (larger is better). Returns float64 ``(N,)``; the paper reports
    the mean and standard deviation over 100 test images.
    """
    logits = predict_logits(model, x, batch_size)
    cls = logits.argmax(dim=1) if target is None else torch.as_tensor(target).long()
    masked = mask_top_k(x, importance, fraction, block, mask_value)
    return log_odds(logits, cls) - log_odds(predict_logits(model, masked, batch_size), cls)


def _targets(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None) -> torch.Tensor:
    if target is None:
        return predicted_class(model, x)
    t = torch.as_tensor(target).long()
    return t.expand(len(x)).clone() if t.ndim == 0 else t


# --------------------------------------------------------------------------------------------
# Baselines (maintained libraries), reduced to blocks
# --------------------------------------------------------------------------------------------
def lime_blocks(
    model: nn.Module,
    x: torch.Tensor,
    block: Block = 2,
    num_samples: int = 1000,
    mask_value: float = 0.0,
    target: torch.Tensor | int | None = None,
    seed: int = 0,
    batch_size: int = 500,
    kernel_width: float = 0.25,
    progress: bool = False,
) -> torch.Tensor:
    """LIME (``lime.lime_image``) with a fixed grid segmentation whose segments are the blocks.

    Each block is one interpretable feature; a perturbed sample switches blocks off by setting
    them to ``mask_value`` (LIME's ``hide_color``); the explanation is the weight of each block
    in LIME's locally weighted ridge regression of the class probability (no feature selection:
    all blocks are kept). The paper used 10,000 samples per image (``num_samples``).

    Grayscale inputs (C = 1) are given to LIME as RGB copies (LIME converts them itself) and
    mapped back by taking the first channel. Returns ``(N, n_blocks)`` L1-normalised weights.
    """
    from lime import lime_image
    from lib.progress import progress_bar

    n, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError("lime_image supports 1- or 3-channel images")
    segments = block_segments((h, w), block)
    n_b = int(segments.max()) + 1
    targets = _targets(model, x, target)

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(images)).float().permute(0, 3, 1, 2)
        if c == 1:
            t = t[:, :1]
        return torch.softmax(predict_logits(model, t, batch_size), dim=1).double().numpy()

    out = torch.zeros(n, n_b)
    with _lime_progress(lime_image, progress):
        for i in progress_bar(range(n), enabled=progress, desc="LIME"):
            explainer = lime_image.LimeImageExplainer(
                kernel_width=kernel_width, feature_selection="none", random_state=seed + i
            )
            img = x[i].permute(1, 2, 0).double().numpy()
            if c == 1:
                img = img[:, :, 0]
            label = int(targets[i])
            exp = explainer.explain_instance(
                img,
                classifier_fn,
                labels=(label,),
                hide_color=mask_value,
                top_labels=None,
                num_features=n_b,
                num_samples=num_samples,
                batch_size=batch_size,
                segmentation_fn=lambda _img: segments,
                random_seed=seed + i,
            )
            for seg_id, weight in exp.local_exp[label]:
                out[i, seg_id] = float(weight)
    return l1_normalise(out)


@contextlib.contextmanager
def _lime_progress(lime_image_module: object, show: bool) -> Iterator[None]:
    """``lime_image`` wraps its sampling loop in tqdm unconditionally; silence it unless ``show``."""
    saved = getattr(lime_image_module, "tqdm")
    if not show:
        setattr(lime_image_module, "tqdm", lambda iterable, *args, **kwargs: iterable)
    try:
        yield
    finally:
        setattr(lime_image_module, "tqdm", saved)


def shap_blocks(
    model: nn.Module,
    x: torch.Tensor,
    block: Block = 2,
    nsamples: int = 1000,
    mask_value: MaskValue = 0.0,
    target: torch.Tensor | int | None = None,
    output: str = "prob",
    l1_reg: str | float | bool = False,
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = False,
) -> torch.Tensor:
    """Kernel SHAP (``shap.KernelExplainer``) over the blocks as binary features.

    The game is ``v(S) = f(x with the blocks outside S set to mask_value)`` where ``f`` is the
    explained class's probability (``output="prob"``) or log-odds (``output="log_odds"``); the
    background is "all blocks masked". ``nsamples`` coalitions are evaluated per image (the
    paper used 10,000).

    ``l1_reg`` is passed to shap: the default ``False`` estimates all blocks. Note that
    shap >= 0.47 defaults to ``"num_features(10)"`` (only 10 non-zero blocks) and the 2019
    versions defaulted to ``"auto"`` (AIC feature selection when fewer than 20% of coalitions
    are sampled, which is always the case for 196 blocks).

    KernelExplainer draws coalitions with numpy's global RNG; it is seeded with ``seed + i``
    before image ``i``. Returns ``(N, n_blocks)`` L1-normalised SHAP values.
    """
    import shap
    from lib.progress import progress_bar

    if output not in ("prob", "log_odds"):
        raise ValueError("output must be 'prob' or 'log_odds'")
    n = x.shape[0]
    n_b = num_blocks(x.shape, block)
    targets = _targets(model, x, target)
    fill = torch.as_tensor(mask_value, dtype=x.dtype)
    out = torch.zeros(n, n_b)
    for i in progress_bar(range(n), enabled=progress, desc="SHAP"):
        xi, ti = x[i : i + 1], int(targets[i])

        def f(z: np.ndarray, xi: torch.Tensor = xi, ti: int = ti) -> np.ndarray:
            keep = torch.from_numpy(np.asarray(z) > 0.5)
            imgs = mask_blocks(xi.expand(len(keep), -1, -1, -1), ~keep, block, fill)
            logits = predict_logits(model, imgs, batch_size)
            cls = torch.full((len(keep),), ti, dtype=torch.long)
            if output == "prob":
                return torch.softmax(logits.double(), dim=1)[:, ti].numpy()
            return log_odds(logits, cls).numpy()

        np.random.seed(seed + i)
        explainer = shap.KernelExplainer(f, np.zeros((1, n_b)), link="identity")
        vals = explainer.shap_values(np.ones((1, n_b)), nsamples=nsamples, l1_reg=l1_reg, silent=True)
        out[i] = torch.as_tensor(np.asarray(vals, dtype=np.float64).reshape(-1)[:n_b]).float()
    return l1_normalise(out)


def deepshap(
    model: nn.Module,
    x: torch.Tensor,
    background: torch.Tensor,
    target: torch.Tensor | int | None = None,
    check_additivity: bool = False,
) -> torch.Tensor:
    """DeepSHAP (``shap.DeepExplainer``, DeepLIFT rescale rule averaged over a background set).

    Explains the explained class's **logit**; returns per-pixel values shaped like ``x`` (float32).
    The model must use one ``nn.ReLU`` module per activation (see ``lib.models.resnet``).
    """
    import shap

    targets = _targets(model, x, target)
    with eval_mode(model):
        explainer = shap.DeepExplainer(model, background)
        if target is None and not check_additivity:
            # only the predicted (largest-logit) class: one backward pass per image instead of K (shap's own
            # additivity check does not support ranked outputs, hence the full path when it is asked for)
            vals, ranks = explainer.shap_values(x, ranked_outputs=1, output_rank_order="max",
                                                check_additivity=check_additivity)
            if not torch.equal(torch.as_tensor(ranks)[:, 0].long(), targets):
                raise RuntimeError("DeepExplainer's top-ranked output differs from the predicted class")
            targets = torch.zeros(len(x), dtype=torch.long)  # the single explained output
        else:
            vals = explainer.shap_values(x, check_additivity=check_additivity)
    arr = np.asarray(vals)
    if arr.ndim == x.dim() + 1:  # (N, C, H, W, K): one map per output
        arr = arr[np.arange(len(x)), ..., targets.numpy()]
    elif arr.ndim != x.dim():
        raise RuntimeError(f"unexpected DeepExplainer output shape {arr.shape}")
    return torch.as_tensor(arr).float()


def deepshap_blocks(
    model: nn.Module,
    x: torch.Tensor,
    background: torch.Tensor,
    block: Block = 2,
    target: torch.Tensor | int | None = None,
    check_additivity: bool = False,
) -> torch.Tensor:
    """:func:`deepshap` of the class logit, summed per block (:func:`to_blocks`, signed, L1-normalised).
    ``background`` is e.g. 100 training images."""
    return to_blocks(deepshap(model, x, background, target, check_additivity), block)


def saliency(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | int | None = None,
    absolute: bool = True,
    square: bool = False,
) -> torch.Tensor:
    """Gradient of the class logit (``captum.attr.Saliency``): |d logit_c / d x| by default; the
    signed gradient with ``absolute=False``; its square with ``square=True`` (the RDE reference's
    "Sensitivity", iNNvestigate's gradient with ``postprocess="square"``)."""
    from captum.attr import Saliency

    targets = _targets(model, x, target)
    with eval_mode(model):
        attr = Saliency(model).attribute(x.clone().requires_grad_(True), target=targets, abs=absolute and not square)
    return attr.detach() ** 2 if square else attr.detach()


def saliency_blocks(
    model: nn.Module,
    x: torch.Tensor,
    block: Block = 2,
    target: torch.Tensor | int | None = None,
    absolute: bool = True,
) -> torch.Tensor:
    """Simple Gradient (:func:`saliency`): |d logit_c / d x| summed per block."""
    return to_blocks(saliency(model, x, target, absolute), block)


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | int | None = None,
    n_steps: int = 50,
    baseline: MaskValue = 0.0,
    internal_batch_size: int | None = 512,
) -> torch.Tensor:
    """Integrated Gradients (``captum.attr.IntegratedGradients``) of the class logit, per pixel (signed).

    ``baseline``: a scalar or a tensor broadcastable to one image, or one baseline per image (N, ...).
    """
    from captum.attr import IntegratedGradients

    targets = _targets(model, x, target)
    b = torch.as_tensor(baseline, dtype=x.dtype)
    base = (b if b.dim() == x.dim() and len(b) == len(x) else b.expand_as(x[:1]).expand_as(x)).contiguous()
    with eval_mode(model):
        attr = IntegratedGradients(model).attribute(
            x, baselines=base, target=targets, n_steps=n_steps, internal_batch_size=internal_batch_size
        )
    return attr.detach()


def integrated_gradients_blocks(
    model: nn.Module,
    x: torch.Tensor,
    block: Block = 2,
    target: torch.Tensor | int | None = None,
    n_steps: int = 50,
    baseline: MaskValue = 0.0,
    internal_batch_size: int | None = 512,
) -> torch.Tensor:
    """:func:`integrated_gradients` of the class logit, signed, summed per block and L1-normalised.

    The baseline defaults to the masking value (black image for MNIST).
    """
    return to_blocks(integrated_gradients(model, x, target, n_steps, baseline, internal_batch_size), block)


def smoothgrad(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | int | None = None,
    stdev: float | torch.Tensor | None = None,
    n_samples: int = 64,
    square: bool = True,
    seed: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """SmoothGrad (``captum.attr.NoiseTunnel`` around ``Saliency``) of the class logit.

    ``stdev``: the noise's standard deviation, a number or one per image (N,); default
    0.3 x (max - min) of each image, the RDE reference's setting (iNNvestigate ``smoothgrad`` with
    ``noise_scale=0.3 * (x.max() - x.min())``). ``square=True``: the mean of the squared gradients
    over ``n_samples`` noisy copies (captum's ``smoothgrad_sq``; iNNvestigate's
    ``postprocess="square"`` squares each copy's gradient before averaging); ``False``: the mean
    gradient. The noise comes from torch's global generator, forked and seeded with ``seed`` here.
    """
    from captum.attr import NoiseTunnel, Saliency

    targets = _targets(model, x, target)
    if stdev is None:
        flat = x.flatten(1)
        stdev = 0.3 * (flat.max(1).values - flat.min(1).values)
    sd = torch.as_tensor(stdev, dtype=x.dtype).expand(len(x))
    out = []
    with eval_mode(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nt = NoiseTunnel(Saliency(model))
        for i in range(len(x)):  # captum takes one noise level per input tensor: one image at a time
            a = nt.attribute(x[i : i + 1].clone().requires_grad_(True), nt_type="smoothgrad_sq" if square else "smoothgrad",
                             nt_samples=n_samples, nt_samples_batch_size=batch_size, stdevs=float(sd[i]),
                             target=int(targets[i]), abs=False)
            out.append(a.detach())
    return torch.cat(out)


def guided_backprop(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
    """Guided Backprop (``captum.attr.GuidedBackprop``) of the class logit; needs ``nn.ReLU`` modules."""
    from captum.attr import GuidedBackprop

    targets = _targets(model, x, target)
    with eval_mode(model):
        return GuidedBackprop(model).attribute(x.clone(), target=targets).detach()


def deconvolution(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
    """Deconvolution / DeconvNet (``captum.attr.Deconvolution``) of the class logit; needs ``nn.ReLU`` modules."""
    from captum.attr import Deconvolution

    targets = _targets(model, x, target)
    with eval_mode(model):
        return Deconvolution(model).attribute(x.clone(), target=targets).detach()


def input_x_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
    """Input x Gradient (``captum.attr.InputXGradient``) of the class logit."""
    from captum.attr import InputXGradient

    targets = _targets(model, x, target)
    with eval_mode(model):
        return InputXGradient(model).attribute(x.clone().requires_grad_(True), target=targets).detach()


# --------------------------------------------------------------------------------------------
# LRP: captum propagation rules for iNNvestigate's presets, and the wrapper
# --------------------------------------------------------------------------------------------
# The rules below follow iNNvestigate 1.0.8, the version the RDE reference pins (jmaces/rde @ d71169d,
# README "innvestigate (v1.0.8)"; albermax/innvestigate @ e76ec2d, tag 1.0.8):
# innvestigate/analyzer/relevance_based/relevance_rule.py (the rules),
# innvestigate/analyzer/relevance_based/relevance_analyzer.py (the LRP presets, the pooling rule) and
# innvestigate/analyzer/deeptaylor.py (bounded Deep Taylor). captum's LRP calls each layer's rule
# on the layer's input x and its output relevance R and passes relevance unchanged through ReLU
# modules, as iNNvestigate does for a Keras layer with a built-in ReLU activation.
from captum.attr._utils.lrp_rules import PropagationRule  # noqa: E402  (captum is needed by every rule class)

SAFE_DIVIDE_FACTOR = 1e-7  # iNNvestigate's SafeDivide: a / (b + [b == 0] * keras.backend.epsilon())


def _safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a / (b + (b == 0).to(b.dtype) * SAFE_DIVIDE_FACTOR)


_KERNEL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_POOLING_AVG = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_POOLING_MAX = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _kernel_call(module: nn.Module, x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's linear map with the given weight and bias (not ``module(x)``, which would run LRP's hooks)."""
    if isinstance(module, nn.Linear):
        return torch.nn.functional.linear(x, weight, bias)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module._conv_forward(x, weight, bias)
    raise TypeError(f"no kernel rule for {type(module).__name__} (Linear and Conv1d/2d/3d only)")


def _kernel_transpose(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Wᵀs: the bias-free linear map with ``weight``, transposed and applied to ``s`` (its gradient at any point)."""
    with torch.enable_grad():
        t = torch.zeros_like(x, requires_grad=True)
        (g,) = torch.autograd.grad(_kernel_call(module, t, weight), t, s)
    return g


class ZRule(PropagationRule):
    """LRP-0 (iNNvestigate ``ZRule``; its ``AveragePoolingReverseLayer`` on average pooling):
    R_i = x_i Σ_j w_ij R_j / z_j with z_j the layer's output (bias included), divided safely
    (z_j + 1e-7 where z_j = 0 exactly, iNNvestigate's ``SafeDivide``). Conserves relevance
    where the layer has no bias (average pooling has none)."""

    def _manipulate_weights(self, module, inputs, outputs) -> None:
        pass

    def _create_backward_hook_output(self, outputs: torch.Tensor):
        def _backward_hook_output(grad):
            self.relevance_output[grad.device] = grad.data
            return _safe_divide(grad, outputs)

        return _backward_hook_output


class GradientRule(PropagationRule):
    """The gradient mapping, R_in = Jᵀ R_out (iNNvestigate's ``_gradient_reverse_mapping``, which bounded
    Deep Taylor uses on pooling layers and every LRP analyzer on max pooling): for 2x2 average pooling
    each input gets a quarter of its output's relevance, whatever its value. Conserves relevance
    where every input reaches an output (average pooling of a size the pool divides)."""

    def _manipulate_weights(self, module, inputs, outputs) -> None:
        pass

    def _create_backward_hook_output(self, outputs: torch.Tensor):
        def _backward_hook_output(grad):
            self.relevance_output[grad.device] = grad.data
            return grad

        return _backward_hook_output

    def _create_backward_hook_input(self, inputs: torch.Tensor):
        def _backward_hook_input(grad):
            self.relevance_input[grad.device] = grad.data
            return grad  # unchanged: no multiplication by the input

        return _backward_hook_input


class _DirectRule(PropagationRule):
    """Base of the rules that compute a layer's input relevance themselves from its input x, its
    (unmodified) parameters and its output relevance R (:meth:`propagate`), for rules that are not
    "modify the weights, divide by the output, multiply by the input", which is all captum's
    propagation can express. The backward pass through the layer still runs; its result is replaced
    by :meth:`propagate`'s. Layers with one input only."""

    def _manipulate_weights(self, module, inputs, outputs) -> None:
        pass

    def forward_hook(self, module, inputs, outputs):
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        if len(inputs) != 1:
            raise ValueError(f"{type(self).__name__} handles layers with one input only")
        self._module, self._x = module, inputs[0].data
        return super().forward_hook(module, inputs, outputs)

    def _create_backward_hook_output(self, outputs: torch.Tensor):
        def _backward_hook_output(grad):
            self.relevance_output[grad.device] = grad.data
            self._relevance_in = self.propagate(self._module, self._x, grad.data)
            return grad

        return _backward_hook_output

    def _create_backward_hook_input(self, inputs: torch.Tensor):
        def _backward_hook_input(grad):
            r = self._relevance_in
            self.relevance_input[grad.device] = r
            grad.replace_out = r
            return r

        return _backward_hook_input

    def propagate(self, module: nn.Module, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class AlphaBetaRule(_DirectRule):
    """LRP-αβ as iNNvestigate's ``AlphaBetaRule`` (relevance_rule.py @ 1.0.8, unchanged in 2.1.2):
    with x⁺ = max(x, 0), x⁻ = min(x, 0), W⁺ = max(W, 0), W⁻ = min(W, 0),

        R_i = α [x⁺_i (W⁺ᵀ s⁺)_i + x⁻_i (W⁻ᵀ s⁺)_i] − β [x⁺_i (W⁻ᵀ s⁻)_i + x⁻_i (W⁺ᵀ s⁻)_i],
        s⁺ = R / (W⁺x⁺ + W⁻x⁻ + b),    s⁻ = R / (W⁻x⁺ + W⁺x⁻ + b)   (safe division),

    i.e. the positive contributions x_i w_ij > 0 get α of the relevance and the negative ones −β,
    each in proportion to its share, for signed inputs too (captum's ``Alpha1_Beta0_Rule`` only
    clamps the weights, which is the same for x ≥ 0 only). ``bias=True`` (iNNvestigate's default, and
    its presets'): iNNvestigate splits the bias into b⁺ and b⁻ but feeds b⁺ to one and b⁻ to the other
    half-layer of *both* denominators, so each holds the whole bias b (a split by sign would give b⁺
    to the positive and b⁻ to the negative one); ``bias=False`` (``AlphaBetaIgnoreBiasRule``): no
    bias. With α − β = 1 (which iNNvestigate requires; any α, β ≥ 0 are accepted here) and b = 0 the
    rule conserves relevance where both denominators are non-zero."""

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, bias: bool = True) -> None:
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {alpha}, {beta}")
        self.alpha, self.beta, self.bias = float(alpha), float(beta), bias

    def propagate(self, module, x, r):
        w = module.weight
        b = module.bias if self.bias else None
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        bp, bn = (b.clamp(min=0), b.clamp(max=0)) if b is not None else (None, None)

        def part(w1, b1, w2, b2):  # w1 on x⁺, w2 on x⁻, each half-layer with its share of the bias
            s = _safe_divide(r, _kernel_call(module, xp, w1, b1) + _kernel_call(module, xn, w2, b2))
            return xp * _kernel_transpose(module, x, w1, s) + xn * _kernel_transpose(module, x, w2, s)

        out = self.alpha * part(wp, bp, wn, bn)
        if self.beta:
            out = out - self.beta * part(wn, bn, wp, bp)
        return out


class FlatRule(_DirectRule):
    """The flat rule (iNNvestigate ``FlatRule``): every input in an output's receptive field gets an
    equal share of its relevance, R_i = Σ_j R_j / n_j, with n_j the number of inputs of output j
    (zero padding excluded: the all-ones kernel applied to an all-ones input) and neither the input
    values, the weights nor the bias used. Conserves relevance."""

    def propagate(self, module, x, r):
        ones = torch.ones_like(module.weight)
        s = _safe_divide(r, _kernel_call(module, torch.ones_like(x), ones))
        return _kernel_transpose(module, x, ones, s)


class BoundedRule(_DirectRule):
    """Deep Taylor's z^B rule for inputs bounded by [low, high] (iNNvestigate ``BoundedRule``):

        R_i = Σ_j (x_i w_ij − l_i w⁺_ij − h_i w⁻_ij) R_j / z_j,   z_j = Σ_i (x_i w_ij − l_i w⁺_ij − h_i w⁻_ij),

    with l_i = low and h_i = high (0 on zero padding, as iNNvestigate's constant tensors, padded by
    the layer), the bias ignored, safe division. ``low``/``high``: numbers, or tensors that broadcast
    against the layer's input (per image: shape (N, 1, 1, 1)). Conserves relevance where z_j ≠ 0."""

    def __init__(self, low: float | torch.Tensor = -1.0, high: float | torch.Tensor = 1.0) -> None:
        self.low, self.high = low, high

    def propagate(self, module, x, r):
        w = module.weight
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        lo = torch.zeros_like(x) + torch.as_tensor(self.low, dtype=x.dtype, device=x.device)
        hi = torch.zeros_like(x) + torch.as_tensor(self.high, dtype=x.dtype, device=x.device)
        z = _kernel_call(module, x, w) - _kernel_call(module, lo, wp) - _kernel_call(module, hi, wn)
        s = _safe_divide(r, z)
        return (x * _kernel_transpose(module, x, w, s) - lo * _kernel_transpose(module, x, wp, s)
                - hi * _kernel_transpose(module, x, wn, s))


class _FlattenLast(nn.Module):
    """``features`` (a Sequential without Flatten modules) followed by a flatten in ``forward``."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


def lrp_ready(model: nn.Sequential, input_shape: Sequence[int]) -> nn.Module:
    """An equivalent copy of a ``Sequential`` CNN without ``nn.Flatten`` modules, for captum's LRP.

    captum's LRP needs a rule for every leaf module and has none for ``nn.Flatten`` (a rule on it
    changes the gradient's shape). Every ``Linear`` after the ``Flatten`` becomes the equivalent
    ``Conv2d`` (the first with the kernel size of the flattened feature map, the others 1x1) and the
    flatten moves into ``forward``, outside the modules LRP visits. Same outputs, same parameters.
    A 1-D feature map (C, L) before the ``Flatten`` (a ``Conv1d`` network) gives ``Conv1d`` layers.
    """
    import copy

    layers, after_flatten, shape, spatial = [], False, None, 2
    with torch.no_grad():
        z = torch.zeros(1, *input_shape, dtype=next(model.parameters()).dtype)
        for layer in model:
            if isinstance(layer, nn.Flatten):
                if after_flatten:
                    raise ValueError("lrp_ready: more than one Flatten")
                after_flatten, shape = True, tuple(z.shape[1:])
                spatial = 1 if len(shape) == 2 else 2
                continue
            if after_flatten and isinstance(layer, nn.Linear):
                k = shape[1:] if shape is not None else (1,) * spatial
                in_ch = shape[0] if shape is not None else layer.in_features
                conv_cls = nn.Conv1d if spatial == 1 else nn.Conv2d
                conv = conv_cls(in_ch, layer.out_features, k).to(layer.weight.dtype)
                conv.weight.copy_(layer.weight.view(layer.out_features, in_ch, *k))
                conv.bias.copy_(layer.bias)
                layers.append(conv)
                shape = None  # later Linear layers are 1x1 convolutions
            else:
                layers.append(copy.deepcopy(layer))
            if not after_flatten:
                z = layer(z)
    return _FlattenLast(nn.Sequential(*layers)).eval()


LRP_RULES = ("epsilon", "preset_a", "preset_b", "preset_a_flat", "preset_b_flat", "deep_taylor_bounded")


def _lrp_layer_rule(rule: str, layer: nn.Module, first: bool, dense: bool, epsilon: float,
                    low: torch.Tensor, high: torch.Tensor) -> PropagationRule | None:
    """The rule iNNvestigate 1.0.8 applies to ``layer`` (None: captum's handling, e.g. ReLU's pass-through)."""
    from captum.attr._utils.lrp_rules import EpsilonRule

    kernel = isinstance(layer, _KERNEL_LAYERS)
    if rule == "deep_taylor_bounded":  # deeptaylor.py: BoundedDeepTaylor
        if kernel:  # z^B on the input layer; every other layer with a kernel (and an activation, linear too) α1β0
            return BoundedRule(low, high) if first else AlphaBetaRule(1.0, 0.0, bias=True)
        if isinstance(layer, _POOLING_AVG + _POOLING_MAX):
            return GradientRule()
        return None
    if kernel:  # relevance_analyzer.py: LRPEpsilon / LRPSequentialPreset{A,B}[Flat]
        if first and rule.endswith("_flat"):
            return FlatRule()
        if rule == "epsilon" or dense:
            return EpsilonRule(epsilon=epsilon)
        return AlphaBetaRule(1.0, 0.0) if rule.startswith("preset_a") else AlphaBetaRule(2.0, 1.0)
    if isinstance(layer, _POOLING_AVG):
        return ZRule()
    if isinstance(layer, _POOLING_MAX):
        return GradientRule()
    return None


def lrp(
    model: nn.Sequential,
    x: torch.Tensor,
    target: torch.Tensor | int | None = None,
    rule: str = "epsilon",
    epsilon: float = 0.2,
    low: float | torch.Tensor | None = None,
    high: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Layer-wise relevance propagation of the class logit (``captum.attr.LRP``) on :func:`lrp_ready` (model),
    with iNNvestigate 1.0.8's rules per layer (the version of the RDE reference, jmaces/rde @ d71169d,
    ``mnist/script_innvestigate.py``; the rules: :class:`ZRule`, :class:`GradientRule`,
    :class:`AlphaBetaRule`, :class:`FlatRule`, :class:`BoundedRule`, captum's ``EpsilonRule``).
    "Dense" layers are the ``Linear`` modules of ``model``, "conv" layers its convolutions, the
    "input layer" is the first module when it has a kernel.

    * ``"epsilon"`` (``lrp.epsilon``): the ε-rule (z + ε·sign(z), sign(0) = 1, bias included: captum's
      ``EpsilonRule`` is iNNvestigate's) on every conv and dense layer, LRP-0 (:class:`ZRule`) on
      average pooling;
    * ``"preset_a"`` (``lrp.sequential_preset_a``): α1β0 on conv layers, ε on dense layers, LRP-0 on
      average pooling; ``"preset_b"`` (``lrp.sequential_preset_b``): the same with α2β1 on conv layers;
    * ``"preset_a_flat"``, ``"preset_b_flat"``: the same with the flat rule on the input layer;
    * ``"deep_taylor_bounded"`` (``deep_taylor.bounded``): z^B with bounds ``low``, ``high`` on the
      input layer (default: each image's minimum and maximum, as the reference), α1β0 with bias on every
      other kernel layer (iNNvestigate's check "contains an activation" is true of every Keras Dense
      layer, so the linear output layer gets it too), the gradient mapping on pooling layers, and the
      explained logit passed through a ReLU first (iNNvestigate's ``DeepTaylor._prepare_model``): a
      non-positive logit gives an all-zero map.

    Max pooling gets the gradient mapping in every preset, as in iNNvestigate. ``epsilon`` is the
    dense layers' ε (the reference: 0.2; iNNvestigate's preset default 0.1). Relevance passes ReLU
    modules unchanged (captum), which is iNNvestigate's treatment of a layer's built-in ReLU.
    Known differences from iNNvestigate: none in the rules' formulas; captum runs in the input's dtype
    (iNNvestigate in Keras' float32), and the output relevance is the logit times the propagation
    of 1 (captum) rather than the logit itself propagated, equal up to rounding.
    """
    from captum.attr import LRP

    if rule not in LRP_RULES:
        raise ValueError(f"rule must be one of {LRP_RULES}, got {rule!r}")
    targets = _targets(model, x, target)
    net = lrp_ready(model, x.shape[1:])
    kernels = [m for m in net.features if isinstance(m, _KERNEL_LAYERS)]
    n_dense = sum(isinstance(m, nn.Linear) for m in model)  # lrp_ready turned them into the last convolutions
    dense = kernels[len(kernels) - n_dense:] if n_dense else []
    flat = x.flatten(1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    low = flat.min(1).values.view(shape) if low is None else low
    high = flat.max(1).values.view(shape) if high is None else high
    for i, layer in enumerate(net.features):
        r = _lrp_layer_rule(rule, layer, i == 0, any(layer is d for d in dense), epsilon, low, high)
        if r is not None:
            layer.rule = r
    out = LRP(net).attribute(x.clone().requires_grad_(True), target=targets).detach()
    if rule == "deep_taylor_bounded":
        with torch.no_grad():
            positive = net(x).gather(1, targets.view(-1, 1).to(x.device)).view(shape) > 0
        out = out * positive
    return out


def lime_image_map(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | int | None = None,
    num_samples: int = 1000,
    seed: int = 0,
    batch_size: int = 500,
    scores: str = "logits",
) -> torch.Tensor:
    """LIME with the defaults of ``lime_image.LimeImageExplainer().explain_instance``, as a pixel map.

    As in the RDE reference (``mnist/script_lime.py``): the image is given as an RGB copy of its grey
    channel, the classifier sees the channel mean, the explainer uses its defaults (quickshift
    segmentation, 1000 samples, ``hide_color=None``: a segment is replaced by its mean, top 5 labels)
    and the explained class's segment weights are painted onto the segments' pixels. ``scores``:
    ``"logits"`` (the reference's model has no softmax) or ``"probs"``. One-channel images only.
    """
    from lime import lime_image

    if x.shape[1] != 1:
        raise ValueError("lime_image_map expects one-channel images")
    if scores not in ("logits", "probs"):
        raise ValueError("scores must be 'logits' or 'probs'")
    targets = _targets(model, x, target)

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(images.mean(-1, keepdims=True))).permute(0, 3, 1, 2).to(x.dtype)
        out = predict_logits(model, t, batch_size).double()
        return (torch.softmax(out, 1) if scores == "probs" else out).numpy()

    out = torch.zeros(x.shape, dtype=torch.float64)
    with _lime_progress(lime_image, False):
        for i in range(len(x)):
            img = x[i, 0].double().numpy()
            rgb = np.repeat(img[..., None], 3, axis=-1)
            exp = lime_image.LimeImageExplainer(random_state=seed + i).explain_instance(
                rgb, classifier_fn, num_samples=num_samples, batch_size=batch_size, random_seed=seed + i)
            label = int(targets[i])
            if label not in exp.local_exp:
                raise RuntimeError(f"LIME did not explain class {label} (not among its top labels)")
            seg = torch.from_numpy(exp.segments)
            for seg_id, weight in exp.local_exp[label]:
                out[i, 0][seg == seg_id] = float(weight)
    return out.to(x.dtype)


def lime_tabular_map(
    predict: Callable[[np.ndarray], np.ndarray],
    x: torch.Tensor,
    training_data: np.ndarray,
    label: int = 0,
    num_samples: int = 5000,
    num_features: int = 10,
    top_labels: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """LIME for tabular data (``lime.lime_tabular.LimeTabularExplainer``, classification mode) with
    lime's defaults (quartile discretisation, kernel width 0.75 sqrt(d), ``num_samples`` = 5000
    perturbations, the ``num_features`` = 10 features of largest weight kept, the others 0), as a map
    shaped like ``x`` (N, d) or (N, 1, d): the weight of each feature for class ``label``.

    ``predict`` maps strings (M, d) to class scores (M, K) (numpy); ``training_data`` (M, d) gives
    lime its feature statistics; ``top_labels``: lime's ``top_labels`` (the RDE reference's
    ``boolean-strings/script_lime.py`` passes 2 and reads class 0). Instance ``i`` has its own explainer
    seeded with ``seed + i``. Returns float64.
    """
    from lime.lime_tabular import LimeTabularExplainer

    flat = torch.as_tensor(x).detach().cpu().double().reshape(len(x), -1).numpy()
    out = np.zeros_like(flat)
    for i in range(len(flat)):
        explainer = LimeTabularExplainer(np.asarray(training_data), mode="classification", random_state=seed + i)
        exp = explainer.explain_instance(flat[i], predict, labels=(label,), top_labels=top_labels,
                                         num_features=num_features, num_samples=num_samples)
        if label not in exp.local_exp:
            raise RuntimeError(f"LIME did not explain class {label} (not among its top labels)")
        for feature, weight in exp.local_exp[label]:
            out[i, feature] = float(weight)
    return torch.as_tensor(out).view(x.shape)


def input_map(x: torch.Tensor) -> torch.Tensor:
    """The input itself as a relevance map (the RDE reference's "Input", iNNvestigate ``input``)."""
    return x.detach().clone()


def input_plus_random(x: torch.Tensor, generator: torch.Generator | None = None, scale: float = 2.0,
                      stddev: float | None = None) -> torch.Tensor:
    """The input plus Gaussian noise of standard deviation ``scale`` x std(x) per image (the RDE
    reference's "Input + random", iNNvestigate ``random`` with ``stddev = 2 * np.std(x)``), or of the
    fixed standard deviation ``stddev`` when given (``boolean-strings/script_innvestigate.py``: 0.5)."""
    if stddev is not None:
        return x + stddev * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    sd = x.flatten(1).std(1, unbiased=False).view(-1, *([1] * (x.dim() - 1)))
    return x + scale * sd * torch.randn(x.shape, generator=generator, dtype=x.dtype)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Python warnings and anything written to ``sys.stdout``/``sys.stderr`` inside the block.

    The CXPlain chapter computes the baselines inside this context, so that library chatter
    (shap's and captum's warnings, LIME's messages) does not appear in a run that computes
    them but not in a rerun that loads them from the cache (nbval compares both). Exceptions
    still propagate.
    """
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
