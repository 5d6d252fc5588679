"""The classifier the GCE authors explain (``models/CNN_classifier.py`` @ 2bfe97e of
siplab-gt/generative-causal-explanations): Conv(1->32, 3x3) - ReLU - Conv(32->64, 3x3) - ReLU -
MaxPool 2 - Dropout 0.25 - FC 9216->128 - ReLU - Dropout 0.5 - FC 128->M, returning logits.
Inputs are images in [0, 1] (the authors divide by 255).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GCEClassifier(nn.Module):
    def __init__(self, n_classes: int, channels: int = 1, side: int = 28):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.drop1 = nn.Dropout2d(0.25)
        self.drop2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64 * ((side - 4) // 2) ** 2, 128)
        self.fc2 = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = self.drop1(F.max_pool2d(x, 2)).flatten(1)
        return self.fc2(self.drop2(F.relu(self.fc1(x))))


def reference_init_(module: nn.Module) -> nn.Module:
    """The authors' ``util.weights_init_normal`` for the explainer: convolution (and transposed
    convolution) weights ~ N(0, 0.02). Its branch for linear layers tests the class name for
    'linear' in lower case, which never matches ``Linear``, so linear layers keep torch's default
    initialisation; we do the same."""
    for m in module.modules():
        if "Conv" in type(m).__name__:
            nn.init.normal_(m.weight, 0.0, 0.02)
    return module
