"""The STL-10 classifier of the RDE reference code, its input convention and its training augmentation.

Reference: ``jmaces/rde`` @ d71169d, ``stl10/models.py`` (``load_model``, ``load_adfmodel``) and
``stl10/data/keras_generators.py``.

**Known** (from that code):

* architecture: VGG16's layout with average instead of max pooling, for inputs 224 x 224 x 3:
  five blocks of 3 x 3 'same' convolutions with ReLU, (64, 64), (128, 128), (256, 256, 256),
  (512, 512, 512), (512, 512, 512) channels, each block followed by ``AveragePooling2D(2)``; then
  Flatten, Dense 4096 + ReLU, Dense 4096 + ReLU, Dense 10 (logits; softmax only for the
  pixel-flipping test). Kernels ``he_normal`` (convolutions) and ``glorot_normal`` (dense), Keras'
  zero biases. No dropout, no batch normalisation. :func:`rde_stl10_net` builds exactly this as an
  ``nn.Sequential`` of the layers :func:`lib.rde.adf_forward` supports (Conv2d, ReLU, AvgPool2d,
  Flatten, Linear);
* inputs: ``flow_from_directory(target_size=(224, 224))`` (Keras' ``load_img`` resizes with
  nearest-neighbour interpolation by default), then ``keras.applications.vgg16.preprocess_input``
  (the 'caffe' convention: RGB -> BGR, minus the ImageNet channel means 103.939, 116.779, 123.68 in
  BGR order, no scaling): :func:`to_model_input`;
* the augmented training generator, from which the reference also computes RDE's noise statistics:
  rotations up to 20 degrees, width and height shifts up to 20 %, shear 0.2 (degrees: Keras'
  ``shear_range`` is an angle in degrees), zoom in [0.8, 1.2], horizontal flips, batches of 64,
  Keras' default fill ('nearest': the border pixel repeated): :func:`augment`.

**Assumed or unknown**:

* the weights (``stl10-vgg16-avgpool-weights.hdf5``) are not shipped and no training script
  exists; whether they were trained from scratch or started from ImageNet's VGG16 weights (the
  ImageNet preprocessing hints at the latter) is unknown. :func:`train_rde_stl10` is *our* recipe
  (from scratch, Adam, cross-entropy, the reference generator's augmentation and batch size 64);
* how the authors turned the STL-10 binaries into the image files their generators read (we
  assume lossless files of the original 96 x 96 images, upsampled by ``load_img``) and which
  training images went to their ``validation`` folder (we train on all 5,000);
* the resampling of the augmentation: Keras uses scipy's spline interpolation of order 1 with the
  transform composed about the image centre; :func:`augment` uses ``grid_sample`` (bilinear, border
  padding) with the same parameter ranges, which is the same family of transforms, not bitwise the
  same images;
* Keras flattens channels-last (H, W, C), torch channels-first (C, H, W): loading the reference's
  weights (were they available) would need the first dense layer's rows permuted.

``width`` scales every channel count (64 = VGG16) and ``hidden`` the dense layers (4096 = VGG16), and
``input_size`` sets the input side (a multiple of 32), so that tests and a CPU can build a tiny
version of the same layout.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from lib.models.rde_mnist import keras_init_, random_affine_theta

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, mode 'caffe'
INPUT_SIZE = 224


def rde_stl10_net(n_classes: int = 10, width: int = 64, input_size: int = INPUT_SIZE, hidden: int = 4096,
                  seed: int | None = None) -> nn.Sequential:
    """The reference's VGG16-style STL-10 classifier with average pooling (logits), for inputs
    (N, 3, ``input_size``, ``input_size``), initialised as Keras does (``he_normal`` convolutions,
    ``glorot_normal`` dense layers: normals truncated at two standard deviations, their standard deviation
    corrected for the truncation; zero biases).

    ``width``: channels of the first block (64 in VGG16); block b has ``width * 2**b`` channels, capped at
    ``8 * width`` (VGG16's 64, 128, 256, 512, 512). ``hidden``: units of the two hidden dense layers
    (4096 in the reference). ``input_size``: a multiple of 32 (five poolings by 2; 224 in the reference).
    Layers are named (``conv1a``, ``relu1a``, ..., ``pool5``, ``flatten``, ``dense1``, ...), so a trace of
    :func:`lib.rde.adf_forward` reads like the reference's model summary.
    """
    if width < 1 or hidden < 1 or n_classes < 2:
        raise ValueError(f"width, hidden must be >= 1 and n_classes >= 2, got {width}, {hidden}, {n_classes}")
    if input_size < 32 or input_size % 32:
        raise ValueError(f"input_size must be a positive multiple of 32 (five 2x2 poolings), got {input_size}")
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[tuple[str, nn.Module]] = []
    c_in = 3
    for b, block in enumerate(VGG16_BLOCKS, start=1):
        for k, c in enumerate(block):
            c_out = max(1, c * width // 64)
            tag = f"{b}{'abc'[k]}"
            layers += [(f"conv{tag}", nn.Conv2d(c_in, c_out, 3, padding=1)), (f"relu{tag}", nn.ReLU())]
            c_in = c_out
        layers.append((f"pool{b}", nn.AvgPool2d(2)))
    side = input_size // 32
    layers += [("flatten", nn.Flatten()),
               ("dense1", nn.Linear(c_in * side * side, hidden)), ("relu_d1", nn.ReLU()),
               ("dense2", nn.Linear(hidden, hidden)), ("relu_d2", nn.ReLU()),
               ("dense3", nn.Linear(hidden, n_classes))]
    net = nn.Sequential(OrderedDict(layers))
    return keras_init_(net)


def resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Images (N, C, H, W) resized to ``size`` x ``size`` by nearest-neighbour interpolation as PIL's
    ``NEAREST`` (the default of Keras' ``load_img``): output pixel i takes input pixel
    floor((i + 0.5) * H / size) (torch's ``nearest-exact``). 96 -> 224 repeats each pixel 2 or 3 times."""
    if x.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="nearest-exact")


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """RGB images in [0, 1] (N, 3, H, W) to the reference's model input: ``vgg16.preprocess_input`` of the
    0-255 values ('caffe': channels reversed to BGR, the ImageNet BGR means subtracted, no scaling)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W), got shape {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_BGR_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * 255.0).flip(1) - mean


def to_model_input(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """STL-10 images in [0, 1] (N, 3, 96, 96), RGB, to the reference's input (N, 3, size, size):
    :func:`resize` then :func:`preprocess`."""
    return preprocess(resize(x, size))


def augment(x: torch.Tensor, generator: torch.Generator, rotation: float = 20.0, shift: float = 0.2,
            shear: float = 0.2, zoom: float = 0.2, flip: bool = True) -> torch.Tensor:
    """Random affine copies of images (N, C, H, W) with the ranges of the reference's augmented training
    generator (``stl10/data/keras_generators.py``, ``load_train_data_augmented``).

    Per image: rotation uniform in +-``rotation`` degrees, shifts uniform in +-``shift`` of the size,
    shear angle uniform in +-``shear`` degrees, zoom factors uniform in [1 - zoom, 1 + zoom] per axis
    (factors > 1 show a larger region: Keras' convention), a horizontal flip with probability 1/2;
    bilinear resampling, points outside the image take the nearest border pixel (Keras' default fill
    'nearest'). The draws use ``generator`` on the host, so a seed gives the same copies on any device.
    """
    theta = random_affine_theta(len(x), generator, rotation, shift, shear, zoom, flip)
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def train_rde_stl10(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0, lr: float = 1e-4,
                    batch_size: int = 64, input_size: int = INPUT_SIZE, device: str | torch.device = "cpu",
                    max_steps: int | None = None) -> dict:
    """Our training recipe for the reference classifier (the reference ships neither weights nor a
    training script): Adam with learning rate ``lr``, cross-entropy on the logits, batches of
    ``batch_size`` (64: the reference's ``BATCH_SIZE_TRAIN``), ``epochs`` passes over the training images
    ``x`` (N, 3, 96, 96) in [0, 1] in a seeded random order, each batch resized to ``input_size``,
    augmented (:func:`augment`, seeded) and preprocessed (:func:`preprocess`) on ``device``. The model is
    moved to ``device`` and trained in its own dtype; ``max_steps`` stops early (for a test). GPU-sized at
    the reference's scale (VGG16 at 224 x 224). Returns the mean training loss per epoch and the steps run.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    model.to(device).train()
    dtype = next(model.parameters()).dtype
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses, steps = [], 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        total, count = 0.0, 0
        for j in range(0, len(x), batch_size):
            if max_steps is not None and steps >= max_steps:
                break
            idx = order[j : j + batch_size]
            xb = resize(x[idx].to(device=device, dtype=dtype), input_size)
            xb = preprocess(augment(xb, g))
            loss = F.cross_entropy(model(xb), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            steps += 1
        if count:
            losses.append(total / count)
    model.eval()
    return {"train_loss": losses, "steps": steps, "epochs": epochs}
