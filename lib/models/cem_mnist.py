"""The MNIST classifier and auto-encoder of the CEM chapter.

They mirror the models of the reference CEM example (alibi's ``cem_mnist`` notebook, itself
following Dhurandhar et al. 2018, Sec. 4): inputs are MNIST digits scaled to [-0.5, 0.5].

* :class:`CEMClassifier`: conv blocks (Conv2d kernel 2 'same' + ReLU, MaxPool 2, Dropout 0.3)
  with 64 then 32 filters (a third block of 32 filters with ``n_blocks=3``, as in later alibi
  versions), then Dense 256 + ReLU, Dropout 0.5, Dense 10. It returns **logits**; the reference
  Keras model ends in a softmax, which :mod:`lib.cem` applies when ``scores='probs'``.
* :class:`CEMAutoencoder`: Conv 16, Conv 16, MaxPool 2, Conv 1 (the 14x14 code), then Conv 16,
  UpSample 2, Conv 16, Conv 1 (linear output).

The layers are laid out so that their weights map one-to-one onto the Keras models of the
reference implementation (see :mod:`lib.reference.alibi_cem`).
"""
from __future__ import annotations

import torch
from torch import nn


class CEMClassifier(nn.Module):
    """CNN classifier for 1x28x28 inputs in [-0.5, 0.5]; outputs logits over ``n_classes``."""

    def __init__(self, n_blocks: int = 2, n_classes: int = 10):
        super().__init__()
        if n_blocks not in (2, 3):
            raise ValueError(f"n_blocks must be 2 or 3, got {n_blocks}")
        filters = [64, 32, 32][:n_blocks]
        layers: list[nn.Module] = []
        c_in, side = 1, 28
        for c_out in filters:
            # Keras' padding='same' for a kernel of 2 pads one row/column after the input, none before
            layers += [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(c_in, c_out, kernel_size=2), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.3)]
            c_in, side = c_out, side // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * side * side, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CEMAutoencoder(nn.Module):
    """Convolutional auto-encoder for 1x28x28 inputs in [-0.5, 0.5] (linear output)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 1, 3, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
