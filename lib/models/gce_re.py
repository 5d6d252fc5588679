"""The classifiers of the [Re] GCE study (Jensen, Prins, van Westendorp, van Grinsven, RC2020; anonymous
submission, appendix A.1) for MNIST 3 vs 8, written from the report's description and the layer
sizes of its repository (``models/classifiers.py`` of DanielPerezJensen/FACT-anonymous @ 44c3dd7,
itself adapted from the UvA deep-learning tutorial 5). All three use batch normalisation and return
logits (the report's networks return (softmax, logits)).

* :class:`ReResNet`: a 3x3 convolution to 16 channels + batch norm + ReLU, three residual blocks
  (two 3x3 convolutions with batch norm, identity shortcut, ReLU after the sum), global average
  pooling, a linear layer (appendix A.1.2).
* :class:`ReDenseNet`: a 3x3 convolution to 32 channels, one dense block of three dense layers
  (batch norm, ReLU, 1x1 convolution to 32, batch norm, ReLU, 3x3 convolution to 16 channels,
  concatenated to the input), batch norm, ReLU, global average pooling, a linear layer (A.1.3).
* :class:`ReInception`: a 3x3 convolution to 64 channels + batch norm + ReLU, one Inception block
  (1x1 -> 16; 1x1 -> 32 then 3x3 -> 48; 1x1 -> 16 then 3x3 -> 8 (the "5x5" branch uses a 3x3 kernel in
  the repository); 3x3 max pool then 1x1 -> 8; each convolution followed by batch norm and ReLU),
  a 3x3 max pool with stride 2, global average pooling, a linear layer (A.1.4).

:class:`PerGroupCalls` wraps a classifier so that a batch is classified in consecutive groups of
``group`` images, one call each: the authors' estimator classifies the ``Nbeta`` images of one alpha
draw per call, so a classifier left in training mode normalises its batch-norm layers over exactly
those images.
"""
from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES = ("base", "resnet", "densenet", "inception")


def _conv_bn_relu(c_in: int, c_out: int, k: int, bias: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias), nn.BatchNorm2d(c_out), nn.ReLU()]


class _ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(*_conv_bn_relu(c, c, 3, bias=False), nn.Conv2d(c, c, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.net(x))


class ReResNet(nn.Module):
    """The [Re] report's ResNet derivative (16 channels, three residual blocks)."""

    def __init__(self, n_classes: int = 2, channels: int = 1, width: int = 16, blocks: int = 3):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(channels, width, 3, bias=False))
        self.blocks = nn.Sequential(*[_ResBlock(width) for _ in range(blocks)])
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class _DenseLayer(nn.Module):
    def __init__(self, c_in: int, bn_size: int, growth: int):
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, bn_size * growth, 1, bias=False),
                                 nn.BatchNorm2d(bn_size * growth), nn.ReLU(),
                                 nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x), x], 1)


class ReDenseNet(nn.Module):
    """The [Re] report's DenseNet derivative (one dense block of three layers, growth 16, bottleneck 2)."""

    def __init__(self, n_classes: int = 2, channels: int = 1, layers: int = 3, bn_size: int = 2, growth: int = 16):
        super().__init__()
        c = growth * bn_size
        self.stem = nn.Conv2d(channels, c, 3, padding=1)
        block = []
        for i in range(layers):
            block.append(_DenseLayer(c + i * growth, bn_size, growth))
        self.block = nn.Sequential(*block)
        c += layers * growth
        self.out = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
        self.head = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.out(self.block(self.stem(x))).mean((2, 3)))


class _InceptionBlock(nn.Module):
    def __init__(self, c_in: int, out: dict, red: dict):
        super().__init__()
        self.b1 = nn.Sequential(*_conv_bn_relu(c_in, out["1x1"], 1))
        self.b3 = nn.Sequential(*_conv_bn_relu(c_in, red["3x3"], 1), *_conv_bn_relu(red["3x3"], out["3x3"], 3))
        self.b5 = nn.Sequential(*_conv_bn_relu(c_in, red["5x5"], 1), *_conv_bn_relu(red["5x5"], out["5x5"], 3))
        self.bp = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *_conv_bn_relu(c_in, out["max"], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class ReInception(nn.Module):
    """The [Re] report's Inception derivative (one Inception block, 80 output channels)."""

    OUT = {"1x1": 16, "3x3": 48, "5x5": 8, "max": 8}
    RED = {"3x3": 32, "5x5": 16}

    def __init__(self, n_classes: int = 2, channels: int = 1, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(channels, width, 3))
        self.block = _InceptionBlock(width, self.OUT, self.RED)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.head = nn.Linear(sum(self.OUT.values()), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.block(self.stem(x))).mean((2, 3)))


def build_classifier(arch: str, n_classes: int = 2, channels: int = 1, side: int = 28) -> nn.Module:
    """One of :data:`ARCHITECTURES`: 'base' is the GCE authors' CNN (:mod:`lib.models.gce_cnn`)."""
    if arch == "base":
        from lib.models.gce_cnn import GCEClassifier
        return GCEClassifier(n_classes, channels, side)
    if arch == "resnet":
        return ReResNet(n_classes, channels)
    if arch == "densenet":
        return ReDenseNet(n_classes, channels)
    if arch == "inception":
        return ReInception(n_classes, channels)
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class PerGroupCalls(nn.Module):
    """Classify a batch in consecutive groups of ``group`` images, one forward call per group.

    With ``group = Nbeta`` and the estimator's alpha-major layout (:func:`lib.gce.information_flow`
    puts the Nbeta draws of one alpha next to each other), each call sees exactly the images of one
    alpha draw, as in the authors' ``causaleffect.joint_uncond``. In eval mode the output equals the
    wrapped model's; in training mode batch norm uses each group's own statistics.
    """

    def __init__(self, model: nn.Module, group: int):
        super().__init__()
        if group < 1:
            raise ValueError(f"group must be >= 1, got {group}")
        self.model, self.group = model, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) % self.group:
            raise ValueError(f"batch of {len(x)} images is not a whole number of groups of {self.group}")
        return torch.cat([self.model(x[i : i + self.group]) for i in range(0, len(x), self.group)])


# The classifiers' training recipe: the GCE authors' train_mnist_classifier.py (SGD, learning rate 0.1,
# momentum 0.5, StepLR gamma 0.7 per epoch, batch 64), which the [Re] study's train_classifier.py also uses.
RECIPE = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.5, "lr_decay": 0.7, "batch_size": 64}


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0,
                     dtype: torch.dtype | None = torch.float64, progress: bool = False) -> dict:
    """Train ``model`` in place with :data:`RECIPE` (cross-entropy on logits) via :func:`lib.train.fit`;
    the weights are returned in float32 (the rounding of the ``dtype`` training) for explaining."""
    import torch.nn.functional as F

    from lib.train import fit

    hist = fit(model, x, y, F.cross_entropy, epochs=epochs, batch_size=RECIPE["batch_size"], lr=RECIPE["lr"],
               optimizer=RECIPE["optimizer"], momentum=RECIPE["momentum"], lr_decay=RECIPE["lr_decay"], seed=seed,
               dtype=dtype, progress=progress, desc="classifier")
    model.float()
    return hist
