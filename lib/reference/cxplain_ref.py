"""Run the reference CXPlain package (``cxplain`` 1.0.3, TensorFlow/Keras 2) to cross-check Omega.

The reference implementation (github.com/d909b/cxplain) computes its causal targets in two
places: ``ZeroMasking.get_predictions_after_masking`` (numpy: the explained model's outputs on
the images and on every single-block-masked copy) and ``causal_loss.calculate_delta_errors``
(inside the Keras training graph: the loss differences, floored, normalised and clipped).
:func:`reference_omega` calls exactly those two functions of the installed package on a torch
model wrapped to look like a Keras model, so the chapter can compare the reference's Omega with
:func:`lib.cxplain.compute_omega` on the same model and data.

Compatibility shims (the package targets TF 1.x/2.0-era private APIs): before the package is
imported, :func:`install_compat` sets ``TF_USE_LEGACY_KERAS=1`` (so ``tf.keras`` is Keras 2 from
the ``tf-keras`` package), maps the private ``tensorflow.python.keras`` modules that cxplain
imports onto ``tf_keras`` in ``sys.modules``, and restores ``collections.Sequence`` /
``collections.Iterable`` (removed in Python 3.10). These are process-wide side effects; they
must happen before TensorFlow is first imported in the process. Eager execution stays on:
computing Omega needs no Keras training graph.

Training the reference's explanation models (:func:`fit_reference_explainer`) needs two more
things: TF1 graph mode (``tf.compat.v1.disable_eager_execution()``, because the package compiles
Keras models with ``tf.compat.v1.train`` optimisers) -- a process-wide switch after which
:func:`reference_omega` no longer works, so run the two in separate processes -- and
:func:`patch_reference_for_training`, which makes ``MaskingUtil.get_num_indices`` return the
block-grid shape as ints (it returns numpy floats, which current Keras' ``Reshape`` rejects).

Documented differences between the reference's Omega and ours (``lib.cxplain``):

* loss: Keras ``categorical_crossentropy`` on the explained model's probabilities, clipped to
  ``[1e-7, 1 - 1e-7]`` (float32), versus our float64 cross-entropy from logits;
* ``Delta`` floored at ``1e-7`` (Keras epsilon) instead of 0, and the normalised Omega clipped to
  ``[1e-7, 1]`` (not renormalised afterwards);
* only zero masking (mask value 0), channels-last internally.

:func:`omega_reference_compatible` applies those three choices through the public options of
:func:`lib.cxplain.compute_omega` (a custom loss and ``delta_floor``), so that it must agree
with :func:`reference_omega` to float32 precision.
"""
from __future__ import annotations

import collections
import collections.abc
import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence
from types import ModuleType

import numpy as np
import torch
from torch import nn

from lib.cxplain import compute_omega

__all__ = [
    "KERAS_EPSILON",
    "install_compat",
    "TorchAsKerasModel",
    "reference_masked_predictions",
    "reference_omega",
    "keras_categorical_crossentropy",
    "omega_reference_compatible",
    "EPS32",
    "omega_float32_scale",
    "patch_reference_for_training",
    "fit_reference_explainer",
    "reference_explain_blocks",
    "reference_omega_subprocess",
    "reference_explainer_subprocess",
]

KERAS_EPSILON = 1e-7
_TF_KERAS_ALIASES = ("", ".losses", ".models", ".backend", ".callbacks", ".layers", ".regularizers")


def install_compat() -> ModuleType:
    """Make ``import cxplain`` work on TF 2.21 / Python 3.11; returns the ``tensorflow`` module.

    Raises ``RuntimeError`` if TensorFlow was already imported with Keras 3 as ``tf.keras``.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    already = "tensorflow" in sys.modules
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    for name in ("Sequence", "Iterable", "Mapping"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    import tensorflow as tf
    import tf_keras

    if already and "tf_keras" not in str(getattr(tf.keras, "__file__", "")):
        raise RuntimeError(
            "TensorFlow was imported before lib.reference.cxplain_ref without TF_USE_LEGACY_KERAS=1; "
            "import this module (or set the variable) first, or run the cross-check in a fresh process"
        )
    for suffix in _TF_KERAS_ALIASES:
        sys.modules["tensorflow.python.keras" + suffix] = importlib.import_module("tf_keras" + suffix) if suffix else tf_keras
    return tf


class TorchAsKerasModel:
    """Wrap a torch classifier (logits) as a Keras-like model with ``predict`` -> probabilities.

    The reference passes channels-last images, sometimes flattened to ``(N, H*W*C)`` (its
    masking code reshapes the masked copies); both are reshaped to ``(N, C, H, W)`` here.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int], batch_size: int = 1024) -> None:
        self.model = model.eval()
        self.c, self.h, self.w = input_shape
        self.batch_size = batch_size

    def predict(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.asarray(x, dtype=np.float32)).reshape(-1, self.h, self.w, self.c).permute(0, 3, 1, 2)
        with torch.no_grad():
            logits = torch.cat([self.model(t[i : i + self.batch_size]) for i in range(0, len(t), self.batch_size)])
        return torch.softmax(logits, dim=1).numpy()


def reference_masked_predictions(
    model: nn.Module, x: torch.Tensor, block: int = 2, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """The reference's ``ZeroMasking`` outputs: probabilities ``(N, K)`` and masked ``(N, n_blocks, K)``."""
    install_compat()
    from cxplain.backend.masking.zero_masking import ZeroMasking

    _, c, h, w = x.shape
    x_cl = x.permute(0, 2, 3, 1).numpy().astype(np.float32)
    dummy_y = np.zeros((len(x), 1), dtype=np.float32)
    _, y_pred, y_pred_masked = ZeroMasking().get_predictions_after_masking(
        TorchAsKerasModel(model, (c, h, w)), x_cl, dummy_y, downsample_factors=(block, block), batch_size=batch_size
    )
    return y_pred, y_pred_masked


def reference_omega(model: nn.Module, x: torch.Tensor, y: torch.Tensor, block: int = 2, batch_size: int = 64) -> np.ndarray:
    """Omega as the reference package computes it (masking + ``calculate_delta_errors``).

    ``y`` are integer labels (one-hot encoded here, as in the reference's examples). Returns
    float32 ``(N, n_blocks)``.
    """
    tf = install_compat()
    from cxplain.backend.causal_loss import calculate_delta_errors
    from cxplain.backend.tf_math_interface import TensorflowInterface
    from tensorflow.python.keras.losses import categorical_crossentropy  # aliased to tf_keras

    y_pred, y_pred_masked = reference_masked_predictions(model, x, block, batch_size)
    y_true = np.eye(y_pred.shape[1], dtype=np.float32)[np.asarray(y)]
    per_block = tf.unstack(tf.constant(y_pred_masked), axis=1)  # as the Keras model's Lambda layer does
    delta = calculate_delta_errors(
        tf.constant(y_true), tf.constant(y_pred), per_block, categorical_crossentropy, math_ops=TensorflowInterface
    )
    return np.asarray(delta)


def keras_categorical_crossentropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Keras 2's ``categorical_crossentropy`` of a softmax output, as a ``lib.cxplain.LossFn``.

    float32 probabilities, renormalised, clipped to ``[1e-7, 1 - 1e-7]``, ``-log p_target``.
    """
    p = torch.softmax(logits.float(), dim=1)
    p = (p / p.sum(dim=1, keepdim=True)).clamp(KERAS_EPSILON, 1 - KERAS_EPSILON)
    return -torch.log(p.gather(1, target.view(-1, 1).long()).squeeze(1))


def omega_reference_compatible(model: nn.Module, x: torch.Tensor, y: torch.Tensor, block: int = 2) -> torch.Tensor:
    """:func:`lib.cxplain.compute_omega` with the reference's loss, epsilon floor and final clip."""
    omega = compute_omega(model, x, y, block, 0.0, loss=keras_categorical_crossentropy, delta_floor=KERAS_EPSILON)
    return omega.clamp(KERAS_EPSILON, 1.0)


EPS32 = float(torch.finfo(torch.float32).eps)


def omega_float32_scale(model: nn.Module, x: torch.Tensor, y: torch.Tensor, block: int = 2) -> torch.Tensor:
    """Per image, the size of one float32 rounding of the reference's Omega: ``eps32 * (1 + max_j eps_j) / sum_j Delta_j``.

    The reference computes every loss ``eps`` (of the image and of each masked copy) as a float32
    clipped cross-entropy, known to about ``eps32 * (1 + eps)`` (absolute: the rounding of the
    probability near 1 and of the logarithm); ``Omega_i = Delta_i / sum_j Delta_j`` divides loss
    differences by the image's total loss increase, which magnifies that rounding when the total is
    small (a confident model). A cross-implementation difference is judged in units of this scale
    (float64 ``(N,)``): a few units are rounding, many units a real difference.
    """
    from lib.attributions import block_masks, predict_logits

    _, delta = compute_omega(model, x, y, block, 0.0, loss=keras_categorical_crossentropy, delta_floor=KERAS_EPSILON,
                             return_delta=True)
    masks = block_masks(x.shape, block)
    out = []
    for i in range(len(x)):
        copies = torch.where(masks[:, None], torch.zeros((), dtype=x.dtype), x[i : i + 1])
        logits = predict_logits(model, torch.cat([x[i : i + 1], copies]))
        eps_max = keras_categorical_crossentropy(logits, torch.full((len(logits),), int(y[i]))).double().max()
        out.append(EPS32 * (1.0 + eps_max) / delta[i].sum())
    return torch.stack(out)


def patch_reference_for_training() -> None:
    """Cast the block-grid shape returned by the reference's ``MaskingUtil.get_num_indices`` to ints."""
    install_compat()
    from cxplain.backend.masking.masking_util import MaskingUtil

    original = MaskingUtil.__dict__["get_num_indices"].__func__
    if getattr(original, "_int_steps_patch", False):
        return

    def get_num_indices(image_shape, downsample_factors):  # type: ignore[no-untyped-def]
        num_indices, steps = original(image_shape, downsample_factors)
        return num_indices, tuple(int(v) for v in steps)

    get_num_indices._int_steps_patch = True  # type: ignore[attr-defined]
    MaskingUtil.get_num_indices = staticmethod(get_num_indices)


def fit_reference_explainer(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    builder: str = "mlp",
    block: int = 2,
    num_models: int = 1,
    **builder_kwargs: object,
) -> object:
    """Fit the reference package's ``CXPlain`` (TF1 graph mode; see the module docstring).

    ``builder`` is ``"mlp"`` (``MLPModelBuilder``) or ``"unet"`` (``UNetModelBuilder`` with
    ``downsample_factors=(block, block)``); ``builder_kwargs`` go to the builder (``num_layers``,
    ``num_units``, ``p_dropout``, ``batch_size``, ``num_epochs``, ``learning_rate``, ...).
    ``y`` are integer labels, one-hot encoded for the reference's cross-entropy. Switches the
    process to graph mode. Returns the fitted ``cxplain.CXPlain`` instance.
    """
    tf = install_compat()
    tf.compat.v1.disable_eager_execution()
    patch_reference_for_training()
    from cxplain import CXPlain, MLPModelBuilder, UNetModelBuilder, ZeroMasking
    from tensorflow.python.keras.losses import categorical_crossentropy  # aliased to tf_keras

    _, c, h, w = x.shape
    if builder == "mlp":
        mb = MLPModelBuilder(**builder_kwargs)
    elif builder == "unet":
        mb = UNetModelBuilder((block, block), **builder_kwargs)
    else:
        raise ValueError("builder must be 'mlp' or 'unet'")
    wrapped = TorchAsKerasModel(model, (c, h, w))
    n_classes = int(wrapped.predict(x[:1].permute(0, 2, 3, 1).numpy()).shape[1])
    explainer = CXPlain(
        wrapped, mb, ZeroMasking(), categorical_crossentropy, num_models=num_models, downsample_factors=(block, block)
    )
    explainer.fit(x.permute(0, 2, 3, 1).numpy(), np.eye(n_classes, dtype=np.float32)[np.asarray(y)])
    return explainer


def reference_explain_blocks(
    explainer: object, x: torch.Tensor, block: int = 2, confidence: float | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Block-level importance ``(N, n_blocks)`` from a fitted reference ``CXPlain``.

    The reference upsamples its block softmax to pixels (each pixel gets ``value / block**2``),
    so summing per block recovers the block values exactly. With ``confidence`` (ensembles
    only) also returns the width of the reference's confidence interval per block.
    """
    from lib.attributions import to_blocks

    x_cl = x.permute(0, 2, 3, 1).numpy()
    out = explainer.predict(x_cl, confidence_level=confidence)  # type: ignore[attr-defined]
    if confidence is None:
        return to_blocks(np.asarray(out)[..., 0], block, normalise=False)
    imp, ci = out
    width = ci[..., 1] - ci[..., 0]
    return to_blocks(np.asarray(imp)[..., 0], block, normalise=False), to_blocks(np.asarray(width), block, normalise=False)


def reference_omega_subprocess(
    jobs: Sequence[tuple[nn.Module, torch.Tensor, torch.Tensor, int]], timeout: float = 600.0
) -> list[np.ndarray]:
    """Run :func:`reference_omega` for each ``(model, x, y, block)`` in a fresh Python process.

    Isolates TensorFlow and the compatibility shims from the calling process (e.g. a test
    session or notebook that imported TensorFlow with Keras 3). Models are passed with
    ``torch.save``, so their classes must be importable from the repository root.
    """
    data = _run_in_subprocess(list(jobs), timeout)
    return [data[f"omega_{i}"] for i in range(len(jobs))]


def reference_explainer_subprocess(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_explain: torch.Tensor,
    builder: str = "mlp",
    block: int = 2,
    num_models: int = 1,
    timeout: float = 900.0,
    **builder_kwargs: object,
) -> np.ndarray:
    """Fit the reference ``CXPlain`` in a fresh process and return its block importance for ``x_explain``.

    Runs :func:`fit_reference_explainer` (TF1 graph mode, which is process-wide, hence the
    separate process) and :func:`reference_explain_blocks`; returns float32 ``(N, n_blocks)``.
    Used by ``tests/test_cxplain.py`` to check that the reference's trained explanation model
    and ours learn the same thing on a toy problem.
    """
    job = {"kind": "explainer", "model": model, "x_train": x_train, "y_train": y_train, "x_explain": x_explain,
           "builder": builder, "block": block, "num_models": num_models, "builder_kwargs": builder_kwargs}
    return _run_in_subprocess(job, timeout)["importance"]


def _run_in_subprocess(job: object, timeout: float) -> dict[str, np.ndarray]:
    """Run :func:`_main` on ``job`` in a fresh Python process; return the arrays it saved."""
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "job.pt", Path(tmp) / "out.npz"
        torch.save(job, src)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run(
            [sys.executable, "-m", "lib.reference.cxplain_ref", str(src), str(dst)],
            cwd=root, env=env, capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"reference subprocess failed:\n{proc.stderr[-4000:]}")
        with np.load(dst) as data:
            return {k: data[k] for k in data.files}


def _main(argv: Sequence[str]) -> None:
    """``python -m lib.reference.cxplain_ref JOBS.pt OUT.npz`` (used by the ``*_subprocess`` functions)."""
    install_compat()
    torch.set_num_threads(1)  # the jobs are small; avoids oversubscription next to TensorFlow's pools
    jobs = torch.load(argv[0], weights_only=False)
    if isinstance(jobs, dict) and jobs.get("kind") == "explainer":
        explainer = fit_reference_explainer(jobs["model"], jobs["x_train"], jobs["y_train"], jobs["builder"], jobs["block"],
                                            jobs["num_models"], **jobs["builder_kwargs"])
        imp = reference_explain_blocks(explainer, jobs["x_explain"], jobs["block"])
        np.savez(argv[1], importance=np.asarray(imp, dtype=np.float32))
        return
    np.savez(argv[1], **{f"omega_{i}": reference_omega(m, x, y, b) for i, (m, x, y, b) in enumerate(jobs)})


if __name__ == "__main__":
    _main(sys.argv[1:])
