"""lib.models.rde_mnist: the reference classifier's shape, its input convention and the augmentation."""
import torch

from lib.models.rde_mnist import augment, rde_mnist_net, to_model_input
from lib.rde import adf_forward


def test_architecture_outputs_logits_and_supports_adf():
    net = rde_mnist_net(seed=0)
    x = torch.rand(2, 1, 28, 28)
    assert net(x).shape == (2, 10)
    assert sum(isinstance(m, torch.nn.ReLU) for m in net) == 4  # one module per activation (captum, shap)
    m, v = adf_forward(net, x, torch.zeros_like(x))
    assert torch.allclose(m, net(x), atol=1e-4) and torch.all(v == 0)  # no variance: ADF is the plain forward


def test_keras_like_initialisation_is_seeded_and_truncated():
    a, b = rde_mnist_net(seed=3), rde_mnist_net(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    w = a[0].weight
    std = (2.0 / 25) ** 0.5
    assert w.abs().max() <= 2 * std / 0.8796 + 1e-6  # truncated at two (uncorrected) standard deviations
    assert 0.8 * std < float(w.std()) < 1.2 * std  # He-normal scale
    assert torch.all(a[0].bias == 0)


def test_model_input_is_raw_grey_levels_centred_per_image():
    x = torch.rand(3, 1, 28, 28)
    z = to_model_input(x)
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(z[0] - z[0].min(), 255 * (x[0] - x[0].min()), atol=1e-3)


def test_augment_without_ranges_is_the_identity_and_is_seeded():
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    same = augment(x, g, rotation=0, shift=0, shear=0, zoom=0)
    assert torch.allclose(same, x, atol=1e-10)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, x)
