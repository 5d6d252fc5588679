"""Cross-check of :mod:`lib.cem` against the reference implementation, ``alibi.explainers.CEM``.

alibi's CEM (TensorFlow 1-style graph code, extending the CEM authors' implementation) needs a
Keras model to differentiate through. We therefore copy the weights of the torch models of
:mod:`lib.models.cem_mnist` into identical Keras models (NHWC layout; the Dense layer after the
flatten is re-indexed from torch's CHW order to Keras' HWC order), check that both give the same
outputs, and run alibi on them with the same hyper-parameters as ours.

alibi's hinge loss works on whatever the Keras model returns: with the softmax output of its MNIST
example (``scores="probs"`` here) it compares probabilities; with a Keras copy that returns logits
(``scores="logits"``) it computes the hinge on the logits, as the CEM authors' ``aen_CEM.py``
(IBM/Contrastive-Explanation-Method @ c09c28c) does. The copies are float32 whatever the torch
model's dtype.

Environment: alibi 0.9.6 runs on TensorFlow 2.21 only with legacy Keras 2 (package ``tf-keras``,
``TF_USE_LEGACY_KERAS=1`` set before TensorFlow is imported) and with TF2 behaviour disabled
(``tf.compat.v1.disable_v2_behavior()``) before any model is built. Both are process-wide switches, so :func:`tf_session` must be called
before anything else imports TensorFlow in the process. Used by the CEM chapter and
``benchmarks/bench_cem.py``.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lib.cem import CEMConfig
from lib.models.cem_mnist import CEMAutoencoder, CEMClassifier

_TF = None


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the process's file descriptor 2 (C/C++ writes included) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tf_session():
    """Import TensorFlow in the mode alibi's CEM needs (legacy Keras, graph mode); return ``tf``."""
    global _TF
    if _TF is None:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with _quiet_stderr():  # TensorFlow's C++ start-up lines (with timestamps) go straight to fd 2
            import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
        if tf.executing_eagerly():
            tf.compat.v1.disable_v2_behavior()
        warnings.filterwarnings("ignore", message=".*state_updates.*", category=UserWarning)
        warnings.filterwarnings("ignore", message="IProgress not found")  # alibi imports tqdm.auto
        logging.getLogger("alibi").setLevel(logging.ERROR)  # "No PN found!": our tables report it
        _TF = tf
    return _TF


def _simultaneous_assign_session(tf, config):
    """A TF1 session in which one ``run`` that fetches several assign ops computes all the values
    to assign first and only then writes them (the simultaneous update FISTA needs).

    alibi updates its two FISTA variables with two assign ops in one ``session.run``, the second
    reading the variable the first writes. TensorFlow does not order the two, so the read sees
    the old or the new value at random and alibi's iterates, and even its success rates, differ
    from run to run (seen here; tests/test_cem_reference.py). With this session, which changes
    nothing else, alibi is reproducible and its iterates match :func:`lib.cem.fista_path` to
    float32 precision.
    """

    class SimultaneousAssignSession(tf.compat.v1.Session):
        def run(self, fetches, feed_dict=None, options=None, run_metadata=None):
            if isinstance(fetches, (list, tuple)):
                assigns = [f for f in fetches if getattr(getattr(f, "op", None), "type", "") == "Assign"]
                if len(assigns) > 1:
                    targets = [a.op.inputs[1] for a in assigns]
                    values = super().run(targets, feed_dict=feed_dict)
                    feed_dict = {**(feed_dict or {}), **dict(zip(targets, values))}
            return super().run(fetches, feed_dict=feed_dict, options=options, run_metadata=run_metadata)

    return SimultaneousAssignSession(config=config)


def _fresh_graph() -> None:
    """Start a new TF graph with a :func:`_simultaneous_assign_session` as Keras' session."""
    tf = tf_session()
    backend = tf.compat.v1.keras.backend
    backend.clear_session()
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=torch.get_num_threads())
    backend.set_session(_simultaneous_assign_session(tf, config))


def _conv_weights(conv: nn.Conv2d) -> list[np.ndarray]:
    return [conv.weight.detach().float().permute(2, 3, 1, 0).numpy(), conv.bias.detach().float().numpy()]


def keras_classifier(model: CEMClassifier, softmax: bool = True):
    """A Keras copy of ``model`` (NHWC input; softmax output like alibi's example, or logits with
    ``softmax=False`` like the CEM authors' classifier)."""
    tf = tf_session()
    from tf_keras import layers, models

    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    dense = [m for m in model.head if isinstance(m, nn.Linear)]
    x_in = layers.Input(shape=(28, 28, 1))
    x = x_in
    for conv in convs:
        x = layers.Conv2D(conv.out_channels, 2, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(0.3)(x)
    side, channels = x.shape[1], x.shape[3]
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    out = layers.Dense(dense[1].out_features, activation="softmax" if softmax else None)(x)
    km = models.Model(x_in, out)
    weights = []
    for conv in convs:
        weights += _conv_weights(conv)
    w1 = dense[0].weight.detach().float()  # (256, C*H*W) in torch's CHW flatten order
    w1 = w1.reshape(256, channels, side, side).permute(2, 3, 1, 0).reshape(side * side * channels, 256)
    weights += [w1.numpy(), dense[0].bias.detach().float().numpy()]
    weights += [dense[1].weight.detach().float().T.numpy(), dense[1].bias.detach().float().numpy()]
    km.set_weights(weights)
    return km


def keras_autoencoder(model: CEMAutoencoder):
    """A Keras copy of the auto-encoder."""
    tf_session()
    from tf_keras import layers, models

    x_in = layers.Input(shape=(28, 28, 1))
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x_in)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Conv2D(1, 3, padding="same", activation=None)(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.UpSampling2D(2)(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    out = layers.Conv2D(1, 3, padding="same", activation=None)(x)
    km = models.Model(x_in, out)
    convs = [m for m in [*model.encoder, *model.decoder] if isinstance(m, nn.Conv2d)]
    km.set_weights([w for c in convs for w in _conv_weights(c)])
    return km


def nchw_to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().permute(0, 2, 3, 1).numpy()


def max_port_error(torch_model: nn.Module, keras_model, x: torch.Tensor, softmax: bool) -> float:
    """Largest absolute difference between the torch model and its Keras copy on ``x``."""
    p = next(torch_model.parameters())
    with torch.no_grad():
        ours = torch_model(x.to(p.dtype)).float()
        ours = ours.softmax(1) if softmax else ours
    theirs = keras_model.predict(nchw_to_nhwc(x), verbose=0)
    if theirs.ndim == 4:
        theirs = theirs.transpose(0, 3, 1, 2)
    return float(np.abs(ours.numpy() - theirs).max())


def maxpool_tie_gradient_gap(classifier: CEMClassifier, x: torch.Tensor, cls: int = 3) -> float:
    """Relative gap between the input gradients of one class score computed by TensorFlow (the
    Keras copy) and by torch, on one input ``x`` (1, 1, 28, 28): max |g_tf - g_torch| / max |g_tf|.

    Where a max-pooling window holds equal values (e.g. an all-zero input), the gradient may be
    routed to different elements by the two libraries' kernels; whether it is depends on the CPU
    and the library versions. The CEM chapter measures and reports this; nothing asserts it.
    """
    tf = tf_session()
    _fresh_graph()
    kc = keras_classifier(classifier, softmax=True)
    sess = tf.compat.v1.keras.backend.get_session()
    ph = tf.compat.v1.placeholder(tf.float32, (1, 28, 28, 1))
    grad_tf = tf.gradients(tf.reduce_sum(kc(ph)[:, cls]), ph)[0]
    theirs = sess.run(grad_tf, {ph: nchw_to_nhwc(x)})
    model = copy.deepcopy(classifier).float()
    xx = x.float().clone().requires_grad_(True)
    (ours,) = torch.autograd.grad(model(xx).softmax(1)[:, cls].sum(), xx)
    return float(abs(nchw_to_nhwc(ours) - theirs).max()) / max(float(abs(theirs).max()), 1e-30)


@dataclass
class ReferenceRun:
    """alibi's explanations for a batch, in our layout (NCHW), one row per instance."""

    mode: str
    explanation: torch.Tensor
    found: torch.Tensor
    pred: torch.Tensor
    seconds_per_instance: float


def alibi_cem(classifier: CEMClassifier, x0: torch.Tensor, mode: str, config: CEMConfig,
              autoencoder: CEMAutoencoder | None = None, progress=None) -> ReferenceRun:
    """Explain each instance of ``x0`` with alibi's CEM (one instance per call, as alibi supports).

    ``config.scores`` picks the Keras copy's output (softmax for ``"probs"``, logits for
    ``"logits"``), on which alibi puts its hinge loss."""
    _fresh_graph()
    from alibi.explainers import CEM

    kc = keras_classifier(classifier, softmax=config.scores == "probs")
    ka = keras_autoencoder(autoencoder) if (autoencoder is not None and config.gamma > 0) else None
    cem = CEM(
        kc, mode=mode, shape=(1, 28, 28, 1), kappa=config.kappa, beta=config.beta,
        feature_range=config.feature_range, gamma=config.gamma, ae_model=ka,
        max_iterations=config.max_iterations, c_init=config.c_init, c_steps=config.c_steps,
        learning_rate_init=config.lr_init, clip=config.clip, no_info_val=config.no_info_val,
    )
    xs = nchw_to_nhwc(x0)
    out = np.zeros_like(xs)
    found = np.zeros(len(xs), dtype=bool)
    pred = np.full(len(xs), -1)
    items = range(len(xs))
    t0 = time.perf_counter()
    for i in progress(items) if progress else items:
        exp = cem.explain(xs[i : i + 1])
        e = exp.data.get(mode)
        if e is not None:
            out[i] = e[0]
            found[i] = True
            pred[i] = int(exp.data[mode + "_pred"])
    seconds = (time.perf_counter() - t0) / max(len(xs), 1)
    return ReferenceRun(mode, torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(found),
                        torch.from_numpy(pred), seconds)


def alibi_last_iterate(classifier: CEMClassifier, x0: torch.Tensor, mode: str, config: CEMConfig,
                       autoencoder: CEMAutoencoder | None = None) -> torch.Tensor:
    """alibi's FISTA iterate ``x_K`` (its variable ``adv``) after ``config.max_iterations`` steps
    with one value of c, for one instance: compare with the last iterate of :func:`lib.cem.fista_path`."""
    if config.c_steps != 1 or x0.shape[0] != 1:
        raise ValueError("compare one instance with c_steps=1")
    _fresh_graph()
    from alibi.explainers import CEM

    kc = keras_classifier(classifier, softmax=config.scores == "probs")
    ka = keras_autoencoder(autoencoder) if (autoencoder is not None and config.gamma > 0) else None
    cem = CEM(kc, mode=mode, shape=(1, 28, 28, 1), kappa=config.kappa, beta=config.beta,
              feature_range=config.feature_range, gamma=config.gamma, ae_model=ka,
              max_iterations=config.max_iterations, c_init=config.c_init, c_steps=1,
              learning_rate_init=config.lr_init, clip=config.clip, no_info_val=config.no_info_val)
    cem.explain(nchw_to_nhwc(x0))
    return torch.from_numpy(cem.sess.run(cem.adv)).permute(0, 3, 1, 2).contiguous()
