"""The MNIST classifier of the RDE reference code, its input convention and its training augmentation.

Reference: ``jmaces/rde`` @ d71169d, ``mnist/models.py`` (``load_model``) and
``mnist/data/keras_generators.py``:

* architecture: Conv 32 5x5 'same' + ReLU, AvgPool 2, Conv 64 5x5 'same' + ReLU, AvgPool 2,
  Conv 64 5x5 'same' + ReLU, AvgPool 2 (7 -> 3, floor), Flatten, Dense 1024 + ReLU, Dense 10
  (logits); He-normal kernels for the convolutions, Glorot-normal for the dense layers (Keras'
  truncated normals), zero biases. :func:`rde_mnist_net` builds it as an ``nn.Sequential`` of
  exactly these layers, so that :func:`lib.rde.adf_forward` can propagate moments through it and
  captum's LRP and shap's DeepExplainer find one ``nn.ReLU`` module per activation;
* inputs: raw grey levels 0-255, centred per sample (``samplewise_center=True``, no rescaling):
  :func:`to_model_input` maps the book's [0, 1] images to that scale;
* training data: the reference's augmented generator (rotations up to 5 degrees, shifts, shear and
  zoom up to 5 %): :func:`augment` draws such affine transforms with ``torch`` only (torchvision
  does not install beside the pinned torch). The reference ships neither weights nor a training
  script; the chapter states the recipe it uses.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


KERAS_TRUNC_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]


def keras_init_(net: nn.Module) -> nn.Module:
    """Initialise every ``Conv2d`` and ``Linear`` of ``net`` in place as Keras does, in module order.

    Convolutions: ``he_normal``; dense layers: ``glorot_normal``. Both draw from a normal truncated at
    two standard deviations whose standard deviation is divided by the truncated normal's own
    (:data:`KERAS_TRUNC_STD`), so the drawn weights have the nominal variance. Biases are zero.
    The RDE reference's MNIST and STL-10 classifiers both use these initialisers.
    """
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            std = math.sqrt(2.0 / fan_in) / KERAS_TRUNC_STD
        elif isinstance(m, nn.Linear):
            std = math.sqrt(2.0 / (m.in_features + m.out_features)) / KERAS_TRUNC_STD
        else:
            continue
        nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return net


def rde_mnist_net(n_classes: int = 10, seed: int | None = None) -> nn.Sequential:
    """The reference's MNIST classifier (logits) for inputs (N, 1, 28, 28), initialised as in Keras.

    Initialisation: :func:`keras_init_` (Keras' ``he_normal`` and ``glorot_normal``).
    """
    if seed is not None:
        torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(64 * 3 * 3, 1024), nn.ReLU(), nn.Linear(1024, n_classes),
    )
    return keras_init_(net)


def to_model_input(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (N, 1, H, W) to the reference's input: grey levels 0-255 minus each image's mean."""
    if x.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
    raw = x * 255.0
    return raw - raw.mean(dim=(1, 2, 3), keepdim=True)


def random_affine_theta(n: int, generator: torch.Generator, rotation: float, shift: float, shear: float, zoom: float,
                        flip: bool = False) -> torch.Tensor:
    """``n`` random affine maps (n, 2, 3) in float64 for :func:`torch.nn.functional.affine_grid`, drawn as Keras'
    ``ImageDataGenerator`` draws them: rotation uniform in +-``rotation`` degrees, shear angle uniform in
    +-``shear`` degrees, zoom factors uniform in [1 - ``zoom``, 1 + ``zoom``] per axis, shifts uniform in
    +-``shift`` of the size and, with ``flip``, a horizontal flip with probability 1/2 (drawn last, so
    ``flip=False`` draws the same maps from the same generator state). Each maps output coordinates to
    input coordinates: flip, then rotation @ shear @ zoom, then the shift. Shared by the RDE reference's
    MNIST and STL-10 training generators.
    """
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    a = torch.deg2rad(u(-rotation, rotation))
    sh = torch.deg2rad(u(-shear, shear))
    zx, zy = u(1 - zoom, 1 + zoom), u(1 - zoom, 1 + zoom)
    tx, ty = u(-shift, shift) * 2, u(-shift, shift) * 2  # affine_grid's coordinates span [-1, 1]
    mirror = (torch.where(torch.rand(n, generator=generator, dtype=torch.float64) < 0.5, -1.0, 1.0) if flip
              else torch.ones(n, dtype=torch.float64))
    cos, sin = torch.cos(a), torch.sin(a)
    m00, m01 = cos * zx * mirror, (-sin + cos * torch.tan(sh)) * zy
    m10, m11 = sin * zx * mirror, (cos + sin * torch.tan(sh)) * zy
    return torch.stack([torch.stack([m00, m01, tx], 1), torch.stack([m10, m11, ty], 1)], 1)


def augment(x: torch.Tensor, generator: torch.Generator, rotation: float = 5.0, shift: float = 0.05,
            shear: float = 0.05, zoom: float = 0.05) -> torch.Tensor:
    """Random affine copies of images (N, C, H, W) in [0, 1], as the reference's training generator.

    Per image: rotation uniform in +-``rotation`` degrees, shifts uniform in +-``shift`` of the size,
    shear angle uniform in +-``shear`` degrees (Keras' ``shear_range`` is an angle in degrees, so
    the reference's 0.05 is a negligible shear), zoom factors uniform in [1 - zoom, 1 + zoom] per axis;
    bilinear resampling, points outside the image are 0 (black background; Keras' default 'nearest'
    fill repeats the border, which for MNIST's black border is the same).
    """
    theta = random_affine_theta(len(x), generator, rotation, shift, shear, zoom).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def train_rde_mnist(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0, lr: float = 1e-3,
                    batch_size: int = 128, dtype: torch.dtype = torch.float64, progress: bool = False) -> dict:
    """The book's training recipe for the reference classifier (the reference ships none).

    Adam (learning rate ``lr``), cross-entropy on the logits, batches of 128 (the reference
    generator's training batch size), ``epochs`` passes over freshly augmented copies of the
    training images ``x`` in [0, 1] (:func:`augment`, seeded), inputs mapped by
    :func:`to_model_input`. Trained in ``dtype`` (float64: the same weights on every x86 CPU).
    Returns the per-epoch training loss.
    """
    from lib.train import fit

    g = torch.Generator().manual_seed(seed)
    xa = torch.cat([augment(x, g) for _ in range(epochs)])
    ya = y.repeat(epochs)
    hist = fit(model, to_model_input(xa), ya, F.cross_entropy, epochs=1, batch_size=batch_size, lr=lr, seed=seed,
               progress=progress, dtype=dtype)
    # one pass over `epochs` augmented copies = `epochs` epochs with fresh augmentation; report the mean loss per copy
    return {"train_loss": hist["train_loss"], "epochs": epochs}
