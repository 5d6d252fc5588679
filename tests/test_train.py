"""lib.train.fit: optimiser choices, learning-rate decay and dtype."""
import pytest
import torch
from torch import nn

from lib.models.gce_cnn import GCEClassifier, reference_init_
from lib.train import fit, predict


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    return x, (x[:, 0] > 0).long()


def test_sgd_with_step_decay_trains_and_is_seeded():
    x, y = data()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = nn.Linear(4, 2)
        h = fit(m, x, y, nn.functional.cross_entropy, epochs=5, batch_size=16, lr=0.1, optimizer="sgd", momentum=0.5,
                lr_decay=0.7, progress=False)
        runs.append((h["train_loss"], m.weight.detach().clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0][-1] < runs[0][0][0]
    with pytest.raises(ValueError, match="optimizer"):
        fit(nn.Linear(4, 2), x, y, nn.functional.cross_entropy, epochs=1, batch_size=8, optimizer="lbfgs")


def test_float64_training_keeps_the_model_in_float64():
    x, y = data()
    m = nn.Linear(4, 2)
    fit(m, x, y, nn.functional.cross_entropy, epochs=1, batch_size=16, dtype=torch.float64, progress=False)
    assert m.weight.dtype == torch.float64 and predict(m, x).dtype == torch.float64


def test_gce_classifier_shapes_and_reference_init():
    torch.manual_seed(0)
    clf = GCEClassifier(3)
    assert clf(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    lin_before = clf.fc1.weight.detach().clone()
    reference_init_(clf)
    assert clf.conv1.weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert torch.equal(clf.fc1.weight, lin_before)  # linear layers keep torch's default, as in the reference
