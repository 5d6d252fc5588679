"""lib.seeding: same seed, bit-identical CPU training; another seed, another result."""
import torch
import torch.nn.functional as F
from torch import nn

from lib.seeding import seed_everything
from lib.train import fit


def train_once(seed: int) -> torch.Tensor:
    seed_everything(seed)
    x = torch.randn(256, 10)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    fit(model, x, y, F.cross_entropy, epochs=3, batch_size=32, seed=seed, progress=False)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_same_seed_is_bit_identical():
    assert torch.equal(train_once(3), train_once(3))


def test_other_seed_differs():
    assert not torch.equal(train_once(3), train_once(4))
