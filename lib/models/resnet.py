"""ResNet-20 without batch normalisation: the target model of the CXPlain chapter.

Used by ``chapters/cxplain.md`` to reproduce Section 4 ("Experiments", MNIST benchmark) of
Schwab & Karlen, *CXPlain: Causal Explanations for Model Interpretation under Uncertainty*,
NeurIPS 2019 (arXiv:1910.12336): a ResNet-20 with ReLU activations and **no batch
normalisation** trained to tell MNIST digit 8 from digit 3 (pixel values in [0, 1]); the paper
reports 99.85% test accuracy for its model.

Architecture (He et al. 2016, "Deep Residual Learning", CIFAR variant with n = 3):

* stem: 3x3 convolution to 16 channels + ReLU;
* three stages of three basic blocks each (16, 32, 64 channels); the first block of
  stages 2 and 3 halves the spatial resolution with stride 2 (28 -> 14 -> 7 for MNIST);
* basic block: conv3x3 -> ReLU -> conv3x3, added to the shortcut, then ReLU;
* shortcut: identity, or a 1x1 convolution with stride 2 where the shape changes (the
  "projection" shortcut of the Keras ``resnet_v1`` example; He et al. used zero padding);
* global average pooling and a linear layer to ``n_classes`` logits.

That is 1 + 3 * 3 * 2 + 1 = 20 weight layers (the 1x1 projections are not counted, as usual).
Without batch normalisation every convolution has a bias.

Design constraints imposed by the explanation methods applied to this model:

* every ReLU application is its own ``nn.ReLU`` module (no module reused twice, no functional
  ``F.relu``), because ``shap.DeepExplainer`` attaches DeepLIFT rules to module instances;
* the model returns **logits** (no softmax), as ``lib.cxplain`` and ``lib.attributions`` expect.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNet20", "resnet20", "resnet32", "RandomAugment", "Augmented"]


class BasicBlock(nn.Module):
    """Residual basic block without batch norm: ``relu(conv(relu(conv(x))) + shortcut(x))``.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: stride of the first convolution (2 halves height and width).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=True)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=True)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=True)
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = self.conv2(self.relu1(self.conv1(x)))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 (3 stages x 3 basic blocks, 16/32/64 channels), ReLU, no batch norm.

    Args:
        n_classes: number of output logits (2 for MNIST 8 vs 3).
        in_channels: input channels (1 for MNIST).
        widths: channels of the three stages.
        blocks_per_stage: basic blocks per stage (3 gives ResNet-20; 6*n+2 layers in general).
        residual_scale_init: the weights of the last convolution of each residual branch are
            multiplied by this factor at initialisation. Without batch norm the activations'
            variance roughly doubles at every residual addition under He initialisation; a
            factor < 1 (default 0.5) keeps the initial logits at a moderate scale so that
            training from scratch with Adam is stable. 1.0 gives plain He initialisation.

    Input: ``(N, in_channels, H, W)`` floats (MNIST: ``(N, 1, 28, 28)`` in [0, 1]).
    Output: ``(N, n_classes)`` logits.
    """

    def __init__(
        self,
        n_classes: int = 2,
        in_channels: int = 1,
        widths: tuple[int, int, int] = (16, 32, 64),
        blocks_per_stage: int = 3,
        residual_scale_init: float = 0.5,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=True)
        self.stem_relu = nn.ReLU()
        layers: list[nn.Module] = []
        c_in = widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks_per_stage):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(BasicBlock(c_in, width, stride))
                c_in = width
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1], n_classes)
        self._init_weights(residual_scale_init)

    def _init_weights(self, residual_scale_init: float) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                with torch.no_grad():
                    m.conv2.weight.mul_(residual_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, n_classes)``."""
        h = self.stem_relu(self.stem(x))
        h = self.blocks(h)
        return self.fc(self.flatten(self.pool(h)))


def resnet20(n_classes: int = 2, in_channels: int = 1, **kwargs: object) -> ResNet20:
    """Build the ResNet-20 (no batch norm) used as CXPlain's MNIST target model."""
    return ResNet20(n_classes=n_classes, in_channels=in_channels, **kwargs)  # type: ignore[arg-type]


def resnet32(n_classes: int = 2, in_channels: int = 3, **kwargs: object) -> ResNet20:
    """ResNet-32 without batch norm (5 basic blocks per stage: 6 * 5 + 2 = 32 layers): the target model
    of the paper's ImageNet benchmark (appendix A, "ImageNet Benchmark": binary, ReLU, no batch norm,
    trained from scratch)."""
    return ResNet20(n_classes=n_classes, in_channels=in_channels, blocks_per_stage=5, **kwargs)  # type: ignore[arg-type]


class RandomAugment(nn.Module):
    """Random data augmentation of a batch, active only in training mode (identity in eval mode).

    The paper's ImageNet target (appendix A) was trained with "a randomised shear, zoom, width shift,
    and height shift of up to 10%", rotations of at most 20 degrees and random horizontal flips
    (Keras' ``ImageDataGenerator``). Here one random affine map per image (``affine_grid`` +
    ``grid_sample``, bilinear, zero padding) with those ranges, then a flip with probability 1/2.
    Draws from the global torch RNG (seeded by the training loop's caller).
    """

    def __init__(self, shear: float = 0.1, zoom: float = 0.1, shift: float = 0.1, rotation_deg: float = 20.0,
                 hflip: bool = True) -> None:
        super().__init__()
        self.shear, self.zoom, self.shift, self.rotation, self.hflip = shear, zoom, shift, rotation_deg, hflip

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not self.training:
            return x
        n = x.shape[0]
        u = lambda a: (torch.rand(n, dtype=x.dtype, device=x.device) * 2 - 1) * a  # noqa: E731
        angle = u(self.rotation) * torch.pi / 180
        zx, zy = 1 + u(self.zoom), 1 + u(self.zoom)
        sh = u(self.shear)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0], theta[:, 0, 1] = cos * zx, -sin * zx + sh
        theta[:, 1, 0], theta[:, 1, 1] = sin * zy, cos * zy
        theta[:, 0, 2], theta[:, 1, 2] = u(2 * self.shift), u(2 * self.shift)  # grid units: [-1, 1] spans the image
        grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        out = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.hflip:
            flip = torch.rand(n, device=x.device) < 0.5
            out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        return out


class Augmented(nn.Module):
    """``net`` preceded by :class:`RandomAugment`: train this, explain ``.net`` (no augmentation module in the
    explained model, so DeepSHAP and the masking metric see the plain network)."""

    def __init__(self, net: nn.Module, **augment: float) -> None:
        super().__init__()
        self.augment = RandomAugment(**augment)  # type: ignore[arg-type]
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(self.augment(x))
