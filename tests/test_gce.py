"""lib.gce: the information-flow estimator, the explainer's shapes, training hygiene and Algorithm 1."""
import math

import pytest
import torch
from torch import nn

from lib.gce import (GCEConfig, GCEExplainer, information_flow, latent_sweep, mutual_information, per_latent_flow,
                     select_parameters, sweep_effect, train_gce, vae_loss)


class FirstCoordinate(nn.Module):
    """A 'decoder' that passes the latents through unchanged (the 'image' is the latent vector)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, z):
        return z * self.w


def perfect_on_alpha(M):
    """Class = which of M equiprobable N(0, 1) intervals alpha (coordinate 0) falls in; near one-hot."""
    edges = torch.distributions.Normal(0.0, 1.0).icdf(torch.arange(1, M) / M)

    def classify(z):
        a = z[:, :1]
        cls = (a > edges).sum(1)
        return nn.functional.one_hot(cls, M).to(z.dtype) * (1 - 1e-6 * M) + 1e-6
    return classify


def test_constant_classifier_has_no_information_flow():
    g = torch.Generator().manual_seed(0)
    const = lambda x: torch.tensor([[0.2, 0.3, 0.5]]).expand(len(x), 3)
    # zero up to float32 rounding at the scale of the entropies (about 1): a few eps
    assert float(information_flow(FirstCoordinate(), const, 1, 3, 50, 20, generator=g)) == pytest.approx(0.0, abs=10 * 1.2e-7)


@pytest.mark.parametrize("M", [2, 3])
def test_perfect_classifier_of_alpha_reaches_log_M(M):
    g = torch.Generator().manual_seed(0)
    info = float(information_flow(FirstCoordinate(), perfect_on_alpha(M), 1, 2, 4000, 4, generator=g))
    assert info == pytest.approx(math.log(M), abs=5e-3)  # q is an empirical mean over 4000 draws
    assert info <= math.log(M) + 1e-9


def test_per_latent_flows_locate_the_causal_factor():
    g = torch.Generator().manual_seed(1)
    flows = per_latent_flow(FirstCoordinate(), perfect_on_alpha(2), 1, 3, 2000, 50, generator=g)
    assert flows[0] == pytest.approx(math.log(2), abs=5e-3)
    # betas carry no information, but the plug-in estimate is biased upwards by about
    # (M - 1) / (2 n_beta) nats (each p_i is a mean of n_beta noisy draws): 0.01 here, 0.001 with 500
    assert flows[1:].mean().item() == pytest.approx(1 / (2 * 50), abs=2e-3)
    more = per_latent_flow(FirstCoordinate(), perfect_on_alpha(2), 1, 1, 500, 500, generator=g)
    assert more[1].item() == pytest.approx(1 / (2 * 500), abs=5e-4)
    # a classifier of beta_2 instead: the flow moves to that latent
    on_beta = lambda z: perfect_on_alpha(2)(z[:, 2:3])
    flows = per_latent_flow(FirstCoordinate(), on_beta, 1, 3, 2000, 50, generator=g)
    assert int(flows.argmax()) == 2 and float(flows[0]) < 0.02


def test_mutual_information_formula_on_a_hand_example():
    # two alphas, each with deterministic, opposite predictions: I = H(q) = ln 2
    probs = torch.tensor([[[1.0, 0.0]] * 3, [[0.0, 1.0]] * 3])
    assert float(mutual_information(probs)) == pytest.approx(math.log(2), abs=1e-6)
    # identical predictions for every alpha: I = 0
    probs = torch.tensor([[[0.7, 0.3]] * 3] * 4)
    assert float(mutual_information(probs)) == pytest.approx(0.0, abs=10 * 1.2e-7)


@pytest.mark.parametrize("channels, side", [(1, 28), (3, 32)])
def test_explainer_shapes_and_range(channels, side):
    torch.manual_seed(0)
    ex = GCEExplainer(K=2, L=3, channels=channels, side=side)
    x = torch.rand(5, channels, side, side)
    with torch.no_grad():
        xhat, mu, logvar = ex(x)
    assert xhat.shape == x.shape and mu.shape == logvar.shape == (5, 5)
    assert float(xhat.min()) >= 0 and float(xhat.max()) <= 1
    d, sse, kld = vae_loss(x, xhat, mu, logvar)
    assert float(d) == pytest.approx(float(sse + kld)) and float(kld) >= 0
    imgs = latent_sweep(ex.decoder, torch.zeros(4, 5), dim=0, values=[-2, 0, 2])
    assert imgs.shape == (4, 3, channels, side, side)
    with pytest.raises(ValueError):
        GCEExplainer(K=0, L=0)


def test_information_flow_is_differentiable_and_batched():
    torch.manual_seed(0)
    ex = GCEExplainer(K=1, L=2)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 2))
    calls = []

    def classify(x):
        calls.append(len(x))
        return torch.softmax(clf(x), 1)

    info = information_flow(ex.decoder, classify, 1, 2, 10, 7)
    info.backward()
    assert calls == [70]  # one batched call for all n_alpha * n_beta images
    assert ex.decoder.fc[0].weight.grad is not None and float(ex.decoder.fc[0].weight.grad.abs().sum()) > 0


class BNClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                                 nn.Linear(4 * 26 * 26, 2))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_training_leaves_the_classifier_unchanged(mode):
    torch.manual_seed(0)
    clf = BNClassifier().eval()
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    ex = GCEExplainer(K=1, L=1, filters=8)
    cfg = GCEConfig(K=1, L=1, lam=0.05, steps=3, n_alpha=4, n_beta=5, batch_size=8, classifier_mode=mode)
    hist = train_gce(ex, clf, torch.rand(32, 1, 28, 28), cfg, progress=False)
    assert len(hist["I"]) == 3 and all(math.isfinite(v) for v in hist["loss"])
    after = clf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm running statistics restored
    assert not clf.training and all(p.requires_grad for p in clf.parameters())


def test_training_is_seeded():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        clf, ex = BNClassifier().eval(), GCEExplainer(K=1, L=1, filters=8)
        cfg = GCEConfig(K=1, L=1, lam=0.05, steps=2, n_alpha=3, n_beta=3, batch_size=4, seed=5)
        runs.append(train_gce(ex, clf, torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)), cfg, progress=False))
    assert runs[0] == runs[1]


def test_sweep_effect_separates_causal_from_non_causal_latents():
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    classify = perfect_on_alpha(2)
    on_alpha = sweep_effect(FirstCoordinate(), classify, z, 0, [-3, -1, 1, 3])
    on_beta = sweep_effect(FirstCoordinate(), classify, z, 1, [-3, -1, 1, 3])
    assert float(on_alpha["changed"].mean()) == pytest.approx(0.5, abs=0.01)  # half of the sweep crosses 0
    assert float(on_beta["changed"].max()) == 0.0 and float(on_beta["dp"].max()) < 1e-9


def test_algorithm_1_on_a_synthetic_objective():
    """D falls with the latent dimension until 4, then flattens; I grows with K until 2; a larger
    lambda brings D back towards step 1's value. Algorithm 1 must find K = 2, L = 2 and the first
    lambda that meets the D criterion."""
    calls = []

    def train_point(K, L, lam):
        calls.append((K, L, lam))
        total = K + L
        d = 100.0 / min(total, 4) + 0.1 * total
        d *= 1 + 0.1 * K * max(0.0, 0.05 - lam) / 0.05  # the causal term costs D unless lambda is large
        c = -min(K, 2) * 0.3 - 0.001 * K
        return d, c

    sel = select_parameters(train_point, lambdas=[0.01, 0.03, 0.05, 0.07], approach_d=0.05)
    assert (sel.K, sel.L) == (2, 2)
    # D(step 1, total 4) = 25.4; with K = 2 lambda 0.03 gives D = 25.4 * 1.08 (> 5 %), 0.05 gives 25.4: first ok
    assert sel.lam == 0.05
    assert (2, 2, 0.07) not in calls  # larger lambdas are not trained once the criterion holds
    loose = select_parameters(train_point, lambdas=[0.01, 0.03, 0.05, 0.07], approach_d=0.10)
    assert loose.lam == 0.03  # a looser criterion picks a smaller lambda
    assert any(s.step == 1 and "plateau" in s.note for s in sel.trace)


def test_mi_estimate_error_and_bias_correction():
    """On a planted problem the bootstrap interval covers ln 2 and the Richardson correction removes
    the c / n_beta bias that the plug-in estimate has for a noisy classifier."""
    from lib.gce import flow_probs, mi_estimate

    g = torch.Generator().manual_seed(0)

    def noisy(z):  # p(class | alpha, beta) = sigmoid(4 alpha + 3 beta): beta blurs the class of alpha
        p0 = torch.sigmoid(4 * z[:, :1] + 3 * z[:, 1:2])
        return torch.cat([p0, 1 - p0], 1)

    small = mi_estimate(flow_probs(FirstCoordinate(), noisy, 1, 1, 2000, 8, generator=g), n_boot=500)
    big = mi_estimate(flow_probs(FirstCoordinate(), noisy, 1, 1, 2000, 200, generator=g), n_boot=500)
    assert small["low"] <= small["value"] <= small["high"] and small["se"] > 0
    assert small["value"] > big["value"] + 0.01  # the plug-in bias at n_beta = 8 is visible
    assert small["corrected"] == pytest.approx(big["corrected"], abs=0.01)  # and removed by the correction


def test_subsampled_estimates_reproduce_the_small_estimator():
    from lib.gce import mutual_information, subsampled_estimates

    probs = torch.rand(20, 12, 3, generator=torch.Generator().manual_seed(0))
    probs = probs / probs.sum(-1, keepdim=True)
    vals = subsampled_estimates(probs, 10, 4)
    assert len(vals) == 2 * 3
    assert float(vals[0]) == pytest.approx(float(mutual_information(probs[:10, :4].double())))
    with pytest.raises(ValueError):
        subsampled_estimates(probs, 30, 4)


def test_toy_causal_objective_recovers_the_classifier_direction():
    """Appendix Fig. 8 set-up: a linear classifier with normal at 0 degrees; I(alpha; Y) is largest
    when alpha's column points along the normal and beta's is orthogonal to it, near 0 when alpha is
    orthogonal to the normal."""
    from lib.gce import hyperplane_classifier, toy_grid, toy_objectives, unit

    clf = hyperplane_classifier(unit(0.0), ksig=5.0)
    W = lambda ta, tb: torch.stack([unit(ta), unit(tb)], 1)
    g = lambda: torch.Generator().manual_seed(0)
    best = toy_objectives(W(0.0, math.pi / 2), clf, 1, 200, 100, generator=g(), objectives=["joint_uncond", "joint_cond"])
    worst = toy_objectives(W(math.pi / 2, 0.0), clf, 1, 200, 100, generator=g(), objectives=["joint_uncond", "joint_cond"])
    assert best["joint_uncond"] > 0.4 and worst["joint_uncond"] < 0.02
    assert best["joint_cond"] > worst["joint_cond"]
    grid = toy_grid(clf, 1, n_grid=5, n_alpha=100, n_beta=50, progress=False)  # 0, 45, 90, 135, 180 degrees
    i, j = divmod(int(grid["joint_uncond"].argmax()), 5)
    assert grid["thetas"][i] in (0.0, pytest.approx(math.pi)) and grid["thetas"][j] == pytest.approx(math.pi / 2)


def test_lingauss_nll_prefers_the_data_covariance():
    from lib.gce import lingauss_nll

    x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert lingauss_nll(x, torch.eye(2)) < lingauss_nll(x, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert lingauss_nll(x, torch.eye(2)) < lingauss_nll(x, 0.5 * torch.eye(2))
