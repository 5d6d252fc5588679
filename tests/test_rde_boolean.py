"""The boolean-string experiment: the hand-set network, the instances, full-covariance ADF, the
L-BFGS-B variant of RDE (lib.rde.rde_lbfgsb) and the 1-D uses of the shared baselines."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from lib.models.rde_boolean import (BLOCK_SIZE, DIMENSION, bernoulli_block_instances, block_on_top, block_share,
                                    boolean_net, reference_instance, two_class_scores, windows_of_ones)
from lib.rde import (LBFGSB_OPTIONS, NoiseModel, adf_forward, distortion, obfuscation_moments, output_variance,
                     rde_lbfgsb)


pytestmark = pytest.mark.usefixtures("float64_default")  # tests/conftest.py


def all_strings(d=DIMENSION):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d))).unsqueeze(1)


def uniform_noise(d=DIMENSION, rank=None):
    return NoiseModel.independent(torch.full((1, d), 0.5), torch.full((1, d), 1 / 12), rank=rank)


# --- the network and the instances ----------------------------------------------------------------

def test_network_outputs_one_iff_a_window_of_ones_exists():
    net = boolean_net()
    x = all_strings()  # all 2^16 strings
    with torch.no_grad():
        out = net(x)[:, 0]
    expected = torch.as_tensor(windows_of_ones(x) > 0, dtype=out.dtype)
    assert torch.equal(out, expected)
    # an independent count: the strings without 5 ones in a row, built bit by bit;
    # free[k] = strings so far that end in exactly k ones (k < 5)
    free = [1] + [0] * 4
    for _ in range(DIMENSION):
        free = [sum(free)] + free[:4]
    assert int(expected.sum()) == 2**DIMENSION - sum(free)
    assert set(out.unique().tolist()) == {0.0, 1.0}


def test_windows_of_ones_counts_windows():
    x = np.zeros((3, 16))
    x[1, 2:7] = 1  # one window
    x[2, 2:8] = 1  # six ones in a row: two windows
    assert windows_of_ones(x).tolist() == [0, 1, 2]


def test_instances_have_exactly_the_planted_block():
    inst = bernoulli_block_instances(300, seed=3)
    assert inst.x.shape == (300, 1, DIMENSION)
    assert np.all(windows_of_ones(inst.x) == 1)
    block = inst.block
    assert np.all(block.sum(1) == BLOCK_SIZE)
    flat = inst.x[:, 0].numpy()
    assert np.all(flat[block] == 1)
    assert set(np.unique(inst.position)) == set(range(DIMENSION - BLOCK_SIZE + 1))  # every position occurs
    bg = flat[~block].mean()
    assert 0.01 < bg < 0.06  # Bernoulli(0.05), slightly thinned by the rejection of second windows
    again = bernoulli_block_instances(300, seed=3)
    assert torch.equal(again.x, inst.x) and again.rejected == inst.rejected
    assert not torch.equal(bernoulli_block_instances(300, seed=4).x, inst.x)


def test_reference_instance_is_numpy_seed_1():
    ref = reference_instance()
    rs = np.random.RandomState(1)
    pos = rs.randint(0, DIMENSION - BLOCK_SIZE + 1)
    bg = rs.binomial(1, 0.05, DIMENSION)
    bg[pos : pos + BLOCK_SIZE] = 1
    assert int(ref.position[0]) == pos and ref.x.flatten().tolist() == bg.astype(float).tolist()
    assert windows_of_ones(ref.x)[0] >= 1


def test_block_scores():
    block = np.zeros((4, 8), dtype=bool)
    block[:, 2:5] = True
    maps = np.array([
        [0, 0, 1, 1, 1, 0, 0, 0],  # exactly the block
        [0, 0, 1, 1, 1, 1, 0, 0],  # a tie with a background component
        [0, 0, 0, 0, 0, 0, 0, 0],  # no mass
        [-2, 0, 1, 1, 1, 0, 0, 0],  # strong negative relevance outside: block on top, but half the mass outside
    ], dtype=float)
    assert block_on_top(maps, block).tolist() == [True, False, False, True]
    assert np.allclose(block_share(maps, block), [1.0, 0.75, 0.0, 0.6])
    nearly = maps[:1] + np.array([[0, 0, 0, 0, 0, 1 - 1e-9, 0, 0]])  # a near-tie inside the margin is a tie
    assert not block_on_top(nearly, block[:1])[0]


def test_two_class_scores_are_the_reference_wrapper():
    net = boolean_net()
    x = np.zeros((2, DIMENSION))
    x[0, 3:8] = 1
    p = two_class_scores(net)(x)
    assert p.tolist() == [[1.0, 0.0], [0.0, 1.0]]


# --- full-covariance ADF --------------------------------------------------------------------------

def correlated_gaussian(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = int(np.prod(shape))
    a = torch.randn(p, p, generator=g) / p**0.5
    cov = a @ a.T + 0.05 * torch.eye(p)
    mean = torch.randn(p, generator=g)
    return mean.view(1, *shape), cov.unsqueeze(0)


def mc_cov(f, mean, cov, n=100_000, seed=1):
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(cov[0])
    z = mean.flatten(1) + torch.randn(n, chol.shape[0], generator=g) @ chol.T
    with torch.no_grad():
        y = f(z.view(n, *mean.shape[1:])).flatten(1)
    m = y.mean(0)
    c = y - m
    emp = c.T @ c / (n - 1)
    # standard error of each covariance entry: sqrt(Var((y_i - m_i)(y_j - m_j)) / n)
    se = ((c.unsqueeze(2) * c.unsqueeze(1)).var(0) / n).sqrt()
    return m, (y.var(0) / n).sqrt(), emp, se


@pytest.mark.parametrize("make", [
    lambda: nn.Conv1d(2, 3, 3, padding=1),
    lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 4)),
], ids=["conv1d", "linear"])
def test_full_adf_of_linear_layers_matches_monte_carlo(make):
    torch.manual_seed(0)
    layer = make()
    net = layer if isinstance(layer, nn.Sequential) else nn.Sequential(layer)
    mean, cov = correlated_gaussian((2, 6))
    with torch.no_grad():
        am, ac = adf_forward(net, mean, cov, mode="full")
    m, se_m, c, se_c = mc_cov(net, mean, cov)
    assert torch.all((am.flatten() - m).abs() <= 5 * se_m)
    assert torch.all((ac[0] - c).abs() <= 5 * se_c + 1e-12)
    assert torch.allclose(ac[0], ac[0].T)


def test_full_adf_relu_matches_monte_carlo_where_it_is_exact_and_bounds_it_elsewhere():
    """ReLU in full mode (keras-adf's): the mean is exact; the covariance is D C D with the expected slopes,
    exact where every unit is almost surely on one side of 0, and a lower bound of the variance elsewhere."""
    mean, cov = correlated_gaussian((8,), seed=2)
    far = mean.sign() * (mean.abs() + 4 * torch.diagonal(cov[0]).sqrt())  # every unit at least 4 sigma from 0
    net = nn.Sequential(nn.ReLU())
    for mu in (mean, far):
        with torch.no_grad():
            am, ac = adf_forward(net, mu, cov, mode="full")
        m, se_m, c, se_c = mc_cov(net, mu, cov, n=200_000)
        # the mean: exact (+ 1e-6: a unit 4 sigma below 0 is never positive in the draws, but has a tiny exact tail)
        assert torch.all((am.flatten() - m).abs() <= 5 * se_m + 1e-6)
        if mu is far:
            assert torch.all((ac[0] - c).abs() <= 5 * se_c + 1e-4 * c.abs().max())
        else:
            v_adf, v_mc, se_v = torch.diagonal(ac[0]), torch.diagonal(c), torch.diagonal(se_c)
            assert torch.all(v_adf <= v_mc + 5 * se_v)
            assert torch.any(v_adf < v_mc - 5 * se_v)  # strictly below somewhere: it is the linearisation


def test_full_mode_equals_lowrank_of_full_rank_and_diag_without_relu():
    torch.manual_seed(0)
    net = boolean_net()
    x = bernoulli_block_instances(5, seed=0).x
    s = torch.rand(5, 1, DIMENSION)
    out = {}
    for mode, rank in (("diag", None), ("lowrank", DIMENSION), ("full", None)):
        m, second = adf_forward(net, *obfuscation_moments(x, s, uniform_noise(rank=rank), mode), mode)
        out[mode] = (m, output_variance(second, mode))
    assert torch.allclose(out["lowrank"][0], out["full"][0], atol=1e-12)
    assert torch.allclose(out["lowrank"][1], out["full"][1], atol=1e-12)
    # one linear layer on independent noise: diag's variances are exact too, so the two modes agree
    for lin in (nn.Sequential(nn.Conv1d(1, 2, 5)), nn.Sequential(nn.Flatten(), nn.Linear(DIMENSION, 3))):
        lin = lin.double()
        with torch.no_grad():
            md, vd = adf_forward(lin, *obfuscation_moments(x, s, uniform_noise(), "diag"), "diag")
            mf, cf = adf_forward(lin, *obfuscation_moments(x, s, uniform_noise(), "full"), "full")
        assert torch.allclose(md, mf, atol=1e-12)
        assert torch.allclose(vd.flatten(1), output_variance(cf, "full"), atol=1e-12)
    with pytest.raises(ValueError, match="full"):
        adf_forward(lin, x, torch.zeros(5, 3, 3), mode="full")  # wrong covariance shape


@pytest.mark.parametrize("mode,rank", [("diag", None), ("lowrank", DIMENSION), ("full", None)])
def test_a_mask_of_ones_has_zero_distortion(mode, rank):
    net = boolean_net()
    inst = bernoulli_block_instances(6, seed=1)
    x = inst.x
    noise = uniform_noise(rank=rank)
    target = torch.ones(6)
    node = torch.zeros(6, dtype=torch.long)
    d1 = distortion(net, x, torch.ones_like(x), node, target, noise, mode)
    assert torch.allclose(d1, torch.zeros(6), atol=1e-20)
    d0 = distortion(net, x, torch.zeros_like(x), node, target, noise, mode)
    db = distortion(net, x, torch.as_tensor(inst.block, dtype=x.dtype).unsqueeze(1), node, target, noise, mode)
    assert torch.all(d0 > 0.05) and torch.all(db < 0.01)  # the block keeps the output (nearly: ADF is not exact)


# --- the L-BFGS-B optimiser -------------------------------------------------------------------------

def separable_toy(n=12, seed=0):
    """A linear model f(y) = w . y explained at x = the noise mean: the distortion is
    1/2 sum_i w_i^2 v_i (1 - s_i)^2, so the minimiser of distortion + mu mean(s) on [0, 1] is
    s_i = clip(1 - mu / (n w_i^2 v_i), 0, 1), component by component."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, generator=g) * 2 + 0.2
    var = torch.rand(n, generator=g) + 0.5
    net = nn.Sequential(nn.Flatten(), nn.Linear(n, 1)).double()
    with torch.no_grad():
        net[1].weight.copy_(w.view(1, n))
        net[1].bias.zero_()
    noise = NoiseModel.independent(torch.full((1, n), 0.3), var.view(1, n))
    x = torch.full((1, 1, n), 0.3)
    return net, x, noise, w, var


@pytest.mark.parametrize("mode,rank", [("diag", None), ("full", None)])
def test_lbfgsb_finds_the_known_minimiser(mode, rank):
    net, x, noise, w, var = separable_toy()
    n = x.numel()
    mus = torch.tensor([0.05, 1.0, 20.0])
    res = rde_lbfgsb(net, x.expand(3, -1, -1), noise, mus, mode=mode)
    expected = (1 - mus.view(3, 1) / (n * w**2 * var)).clamp(0, 1)
    assert torch.allclose(res.mask.view(3, n), expected, atol=1e-4), (res.mask.view(3, n) - expected).abs().max()
    assert (expected == 0).any() and (expected > 0).any()  # the toy has components on the bound and inside
    assert res.converged.all() and torch.all(res.evaluations >= res.iterations)
    assert torch.allclose(res.sparsity, res.mask.view(3, n).mean(1))


def test_lbfgsb_batches_like_single_runs_and_reports_failures():
    net = boolean_net()
    inst = bernoulli_block_instances(4, seed=2)
    mus = torch.tensor([1e-3, 1e-2, 0.1, 1.0])
    together = rde_lbfgsb(net, inst.x, uniform_noise(), mus, mode="diag", batch_size=3)  # two lockstep groups
    for i in range(4):
        alone = rde_lbfgsb(net, inst.x[i : i + 1], uniform_noise(), float(mus[i]), mode="diag")
        assert torch.allclose(alone.mask, together.mask[i : i + 1], atol=1e-8)
        assert alone.iterations[0] == together.iterations[i]
    with pytest.raises(ValueError, match="mu"):
        rde_lbfgsb(net, inst.x, uniform_noise(), torch.ones(3))
    with pytest.raises(ValueError, match="rate_gradient"):
        rde_lbfgsb(net, inst.x, uniform_noise(), 0.1, rate_gradient="abs")
    bad = nn.Sequential(nn.Flatten(), nn.Linear(DIMENSION, 1), nn.Sigmoid()).double()  # ADF has no sigmoid
    with pytest.raises(TypeError, match="Sigmoid"):
        rde_lbfgsb(bad, inst.x, uniform_noise(), 0.1)


def test_lbfgsb_keeps_the_planted_block():
    net = boolean_net()
    inst = bernoulli_block_instances(8, seed=5)
    res = rde_lbfgsb(net, inst.x, uniform_noise(), 0.02, mode="full")
    assert block_on_top(res.mask, inst.block).all()
    assert LBFGSB_OPTIONS["maxiter"] == 15000 and LBFGSB_OPTIONS["maxcor"] == 10  # scipy's defaults, as the reference


def test_sign_rate_gradient_is_the_reference_slope():
    """rate_gradient="sign" gives the rate term the slope sign(s) / n, which is 0 at s = 0 (the reference's
    np.sign); "one-sided" gives 1 / n everywhere. The objective's values agree."""
    from lib.rde import _lbfgsb_objective

    net = boolean_net()
    x = bernoulli_block_instances(2, seed=0).x
    mu, n = 0.3, DIMENSION
    s = np.random.default_rng(0).random((2, n))
    s[:, ::3] = 0.0  # some components on the bound
    out = {}
    for rg in ("one-sided", "sign"):
        evaluate, *_ = _lbfgsb_objective(net, x, uniform_noise(), mu, "diag", None, rg)
        out[rg] = evaluate([0, 1], s)
    assert np.allclose(out["one-sided"][0], out["sign"][0], rtol=0, atol=1e-15)
    diff = out["one-sided"][1] - out["sign"][1]
    assert np.allclose(diff[s == 0], mu / n, rtol=0, atol=1e-15)
    assert np.allclose(diff[s > 0], 0.0, rtol=0, atol=1e-15)


# --- the shared baselines on 1-D inputs ------------------------------------------------------------

def test_lrp_ready_handles_conv1d_networks():
    from lib.attributions import lrp_ready

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 2, 5), nn.ReLU(), nn.Flatten(), nn.Linear(24, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    ready = lrp_ready(net, (1, DIMENSION))
    x = torch.rand(4, 1, DIMENSION)
    assert torch.allclose(ready(x), net(x), atol=1e-12)
    assert not any(isinstance(m, (nn.Flatten, nn.Linear)) for m in ready.modules())
    assert sum(isinstance(m, nn.Conv1d) for m in ready.modules()) == 3


def test_lime_tabular_map_finds_the_relevant_features():
    from lib.attributions import lime_tabular_map

    def predict(a):  # class 0's score depends on features 2 and 5 only
        p = 1 / (1 + np.exp(-(4 * a[:, 2] + 4 * a[:, 5] - 4)))
        return np.stack([p, 1 - p], 1)

    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.random((2, 1, 8)))
    m = lime_tabular_map(predict, x, rng.random((256, 8)), label=0, num_samples=500, num_features=3, top_labels=2)
    assert m.shape == x.shape
    flat = m.view(2, 8).abs()
    assert torch.all((flat > 0).sum(1) <= 3)  # lime keeps num_features weights
    assert set(flat.argsort(1, descending=True)[:, :2].flatten().tolist()) == {2, 5}
    again = lime_tabular_map(predict, x, rng.random((256, 8)) * 0 + np.linspace(0, 1, 256)[:, None], label=0,
                             num_samples=500, num_features=3)
    assert again.shape == x.shape


def test_input_plus_random_with_a_fixed_stddev():
    from lib.attributions import input_plus_random

    x = torch.zeros(2000, 1, DIMENSION)
    r = input_plus_random(x, torch.Generator().manual_seed(0), stddev=0.5)
    assert abs(float(r.std()) - 0.5) < 0.01


# --- device placement (tests/fake_device.py: a pretend accelerator on the CPU) ------------------------

def test_full_adf_and_lbfgsb_run_on_the_device_with_the_cpu_numbers():
    from fake_device import OnDevice, fake_accelerator

    inst = bernoulli_block_instances(3, seed=6)
    mus = torch.tensor([1e-3, 0.02, 0.3])
    on_cpu = {mode: rde_lbfgsb(boolean_net(), inst.x, uniform_noise(rank=DIMENSION), mus, mode=mode)
              for mode in ("diag", "lowrank", "full")}
    with fake_accelerator() as dev:
        net = boolean_net().to(dev)
        noise = NoiseModel.independent(torch.full((1, DIMENSION), 0.5, device=dev), torch.full((1, DIMENSION), 1 / 12, device=dev),
                                       rank=DIMENSION)
        for mode, ref in on_cpu.items():
            res = rde_lbfgsb(net, inst.x.to(dev), noise, mus.to(dev), mode=mode)
            assert res.mask.device.type == "cuda" and res.distortion.device.type == "cuda"
            mask = res.mask.cpu()
            assert not isinstance(mask, OnDevice)
            assert torch.allclose(mask, ref.mask, atol=1e-9)  # the same minimisation, up to rounding
