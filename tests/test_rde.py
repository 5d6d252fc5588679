"""lib.rde: ADF moments against Monte Carlo, the distortion's invariants, and the batched optimiser."""
import pytest
import torch
from torch import nn

from lib.rde import NoiseModel, RDEConfig, adf_forward, distortion, distortion_mc, rde_explain, relu_moments



pytestmark = pytest.mark.usefixtures("float64_default")  # tests/conftest.py


def mc_moments(f, mean, var, n=200_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = mean + var.sqrt() * torch.randn(n, *mean.shape, generator=g)
    out = f(z)
    return out.mean(0), out.var(0), out


def within_sampling_error(adf_mean, adf_var, samples, k=5.0):
    n = len(samples)
    m, v = samples.mean(0), samples.var(0)
    se_m = (v / n).sqrt()
    # standard error of a sample variance: sqrt((mu4 - v^2) / n)
    mu4 = ((samples - m) ** 4).mean(0)
    se_v = ((mu4 - v**2).clamp_min(0) / n).sqrt()
    assert torch.all((adf_mean - m).abs() <= k * se_m + 1e-12), (adf_mean - m).abs().max()
    assert torch.all((adf_var - v).abs() <= k * se_v + 1e-12), (adf_var - v).abs().max()


def test_relu_moments_match_monte_carlo():
    mean = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5, 4.0])
    var = torch.tensor([0.5, 1.0, 2.0, 0.1, 1.0, 0.01])
    m, v = relu_moments(mean, var)
    _, _, s = mc_moments(torch.relu, mean, var)
    within_sampling_error(m, v, s)
    m0, v0 = relu_moments(torch.tensor([-1.0, 2.0]), torch.zeros(2))  # no variance: plain ReLU
    assert m0.tolist() == [0.0, 2.0] and v0.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("make", [lambda: nn.Linear(12, 5), lambda: nn.Conv2d(1, 3, 3, padding=1), lambda: nn.AvgPool2d(2)],
                         ids=["linear", "conv", "avgpool"])
def test_single_linear_layers_match_monte_carlo(make):
    torch.manual_seed(0)
    layer = make()
    shape = (12,) if isinstance(layer, nn.Linear) else (1, 4, 4)
    mean, var = torch.randn(shape), torch.rand(shape) + 0.1
    model = nn.Sequential(layer)
    with torch.no_grad():
        am, av = adf_forward(model, mean[None], var[None])
        _, _, s = mc_moments(model, mean, var)
    within_sampling_error(am[0], av[0], s)


def reference_like_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 4, 5, padding=2), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 7 * 7, 16), nn.ReLU(), nn.Linear(16, 10))


def test_a_mask_of_ones_has_zero_distortion():
    net = reference_like_net()
    x = torch.rand(3, 1, 28, 28)
    noise = NoiseModel.from_data(torch.rand(50, 1, 28, 28))
    with torch.no_grad():
        logits = net(x)
    node = logits.argmax(1)
    target = logits.gather(1, node[:, None])[:, 0]
    d = distortion(net, x, torch.ones_like(x), node, target, noise)
    assert torch.allclose(d, torch.zeros(3), atol=1e-20)
    assert torch.all(distortion(net, x, torch.zeros_like(x), node, target, noise) > 0)


def test_lowrank_mode_is_exact_for_a_linear_model():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    data = torch.randn(400, 1, 4, 4) @ torch.randn(4, 4)  # correlated pixels
    full = NoiseModel.from_data(data, rank=16)
    x, s = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    node, target = torch.tensor([0, 2]), torch.zeros(2)
    cov = torch.cov((data - data.mean(0)).flatten(1).T)
    w = net[1].weight
    for i in range(2):
        ds = (1 - s[i]).flatten()
        var_exact = (w[node[i]] * ds) @ cov @ (w[node[i]] * ds)
        mean_exact = net(s[i : i + 1] * x[i : i + 1] + (1 - s[i : i + 1]) * data.mean(0))[0, node[i]]
        d = distortion(net, x[i : i + 1], s[i : i + 1], node[i : i + 1], target[i : i + 1], full, mode="lowrank")
        assert d.item() == pytest.approx(0.5 * (mean_exact.item() ** 2 + var_exact.item()), rel=1e-8)


def test_monte_carlo_distortion_agrees_with_adf_where_adf_is_exact():
    """Without ReLUs (conv, pooling, dense) diag ADF is exact for independent Gaussian noise, so the
    Monte-Carlo estimate must agree within its sampling error; with ReLUs the gap is measured in the
    RDE chapter, not assumed here."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
    x = torch.rand(2, 1, 28, 28)
    noise = NoiseModel.from_data(torch.rand(200, 1, 28, 28))
    s = torch.full_like(x, 0.5)
    with torch.no_grad():
        logits = net(x)
    node = logits.argmax(1)
    target = logits.gather(1, node[:, None])[:, 0] + 0.05  # a non-zero mean term too
    with torch.no_grad():
        adf = distortion(net, x, s, node, target, noise)
    mc = distortion_mc(net, x, s, node, target, noise, n_samples=20_000, generator=torch.Generator().manual_seed(0))
    # the MC distortion is 1/2 (mean^2 + var) of a Gaussian output: its relative SE is about sqrt(2/n) on the variance
    assert torch.all((adf / mc - 1).abs() < 5 * (2 / 20_000) ** 0.5), (adf, mc)


def test_adf_trace_reports_every_layer():
    net = reference_like_net()
    trace = []
    adf_forward(net, torch.rand(1, 1, 28, 28), torch.rand(1, 1, 28, 28), trace=trace)
    assert [t[0] for t in trace] == [str(i) for i in range(len(net))]


class Weighted(nn.Module):
    """Logit 0 = sum of the first 4 pixels (times 5); logit 1 constant: only those pixels matter."""

    def __init__(self, n=16):
        super().__init__()
        self.lin = nn.Linear(n, 2)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.weight[0, :4] = 5.0
            self.lin.bias.copy_(torch.tensor([0.0, -1.0]))


def relevant_model():
    m = Weighted()
    return nn.Sequential(nn.Flatten(), m.lin)


def test_rde_keeps_the_relevant_pixels_and_batches_like_single_runs():
    net = relevant_model()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 4, 4, generator=g) + 0.5
    noise = NoiseModel.from_data(torch.rand(100, 1, 4, 4, generator=g))
    cfg = RDEConfig(mu=0.005, max_iterations=300)  # a small sparsity weight: keeping a relevant pixel pays
    res = rde_explain(net, x, noise, cfg, progress=False)
    flat = res.mask.flatten(1)
    assert torch.all(flat[:, :4].min(1).values > 0.9)  # the relevant pixels are kept
    assert torch.all(flat[:, 4:].max(1).values < 0.05)  # the others are dropped
    alone = rde_explain(net, x[1:2], noise, cfg, progress=False)
    assert torch.allclose(alone.mask, res.mask[1:2], atol=1e-10)
    assert res.distortion.shape == (3,) and torch.all(res.iterations >= 1)


def test_rde_rejects_a_missing_noise_statistic():
    net = relevant_model()
    x = torch.rand(1, 1, 4, 4)
    noise = NoiseModel.from_data(torch.rand(10, 1, 4, 4))
    with pytest.raises(ValueError, match="lowrank"):
        rde_explain(net, x, noise, RDEConfig(mode="lowrank", max_iterations=2), progress=False)


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)),  # disjoint windows of independent noise
    lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()),  # one linear map, then a pointwise ReLU
], ids=["pool-dense", "conv-relu"])
def test_layer_moments_mc_match_adf_where_adf_is_exact(make):
    """Diag ADF is exact while every layer's inputs are independent Gaussians (or a pointwise function of
    them): the Monte-Carlo moments after every layer agree within sampling error. (After a convolution,
    neighbouring units share input pixels, so a following pooling or dense layer is where the gap starts:
    that gap is measured in the RDE chapter.)"""
    from lib.rde import layer_moments_mc, obfuscation_moments

    torch.manual_seed(0)
    net = make()
    x, s = torch.rand(1, 8, 8), torch.rand(1, 8, 8)
    noise = NoiseModel.from_data(torch.rand(300, 1, 8, 8))
    trace = []
    with torch.no_grad():
        adf_forward(net, *obfuscation_moments(x[None], s[None], noise), trace=trace)
    n = 40_000
    mc = layer_moments_mc(net, x, s, noise, n_samples=n, generator=torch.Generator().manual_seed(1), batch=8192)
    assert [t[0] for t in trace] == [m[0] for m in mc]
    for (_, am, av), (_, mm, mv) in zip(trace, mc):
        # + 1e-6: units that are (almost) never positive have no Monte-Carlo spread but a tiny exact ADF tail
        assert torch.all((am[0] - mm).abs() <= 5 * (mv / n).sqrt() + 1e-6)
        # relative SE of a sample variance: sqrt((kurtosis - 1) / n) <= sqrt(8 / n) for units that are positive often
        # enough; a rarely positive ReLU unit is heavy-tailed and tiny, so it is held to an absolute bound instead
        big = mv > 0.01 * mv.max()
        assert torch.all((av[0] - mv).abs()[big] <= 5 * (8 / n) ** 0.5 * mv[big])
        assert torch.all((av[0] - mv).abs()[~big] <= 0.002 * mv.max())


def test_distortion_mc_masks_uses_common_draws():
    from lib.rde import distortion_mc_masks

    net = reference_like_net()
    x = torch.rand(1, 28, 28)
    noise = NoiseModel.from_data(torch.rand(50, 1, 28, 28))
    with torch.no_grad():
        out = net(x[None])[0]
    node = int(out.argmax())
    s = torch.rand(1, 28, 28)
    masks = torch.stack([s, s, torch.ones_like(s)])
    d = distortion_mc_masks(net, x, masks, node, float(out[node]), noise, n_samples=64, seed=0)
    assert d[0] == d[1]  # the same draws for every mask: equal masks, equal values
    assert d[2] < 1e-10 < d[0]  # a mask of ones keeps the logit


def test_zero_variance_components_keep_gradients_finite():
    """Pixels without noise variance (MNIST's border) give units with zero variance: plain ReLUs whose
    gradient must stay finite (sqrt's infinite slope at 0 once made every RDE mask NaN in float32)."""
    for dtype in (torch.float32, torch.float64):
        mean = torch.tensor([-1.0, 0.5, 2.0, -0.3], dtype=dtype, requires_grad=True)
        var = torch.tensor([0.0, 0.0, 1.0, 0.2], dtype=dtype, requires_grad=True)
        m, v = relu_moments(mean, var)
        (m.sum() + v.sum()).backward()
        assert torch.isfinite(mean.grad).all() and torch.isfinite(var.grad).all()
        assert m[:2].tolist() == [0.0, 0.5] and v[:2].tolist() == [0.0, 0.0]
    net = reference_like_net().float()
    x = torch.rand(2, 1, 28, 28)
    data = torch.rand(50, 1, 28, 28)
    data[:, :, :3, :] = 0.0  # border rows without variance
    noise = NoiseModel.from_data(data)
    res = rde_explain(net, x, noise, RDEConfig(mu=0.5, max_iterations=3), progress=False)
    assert torch.isfinite(res.mask).all() and torch.isfinite(res.distortion).all()
