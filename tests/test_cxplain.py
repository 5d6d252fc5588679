"""Tests of lib.cxplain: the causal objective, explanation models, bootstrap ensembles, metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.nn import functional as F

from lib.attributions import block_masks
from lib.cxplain import (
    BootstrapEnsemble,
    MLPExplainer,
    UNetExplainer,
    causal_kl_loss,
    compute_omega,
    cross_entropy_per_sample,
    explain,
    rank_error,
    train_explainer,
    uncertainty_rank_correlation,
)


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def toy_model(c: int = 1, k: int = 3, hw: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(c, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * hw * hw, k)
    ).eval()


def brute_force_omega(model: nn.Module, x: torch.Tensor, y: torch.Tensor, block, mask_value) -> torch.Tensor:
    """Reference implementation: one masked image at a time, plain F.cross_entropy."""
    masks = block_masks(x.shape, block)
    out = torch.zeros(len(x), len(masks), dtype=torch.float64)
    with torch.no_grad():
        for n in range(len(x)):
            base = F.cross_entropy(model(x[n : n + 1]).double(), y[n : n + 1])
            deltas = []
            for mask in masks:
                xm = x[n].clone()
                xm[:, mask] = mask_value if not torch.is_tensor(mask_value) else mask_value.view(-1, 1).expand(-1, int(mask.sum()))
                eps = F.cross_entropy(model(xm.unsqueeze(0)).double(), y[n : n + 1])
                deltas.append(max(float(eps - base), 0.0))
            d = torch.tensor(deltas, dtype=torch.float64)
            out[n] = d / d.sum() if d.sum() > 0 else torch.full_like(d, 1 / len(d))
    return out


# --------------------------------------------------------------------------------------------
# Omega
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "c,block,mask_value,batch_size",
    [(1, 2, 0.0, 64), (1, (2, 4), 0.5, 7), (3, 4, torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1), 1000)],
)
def test_omega_equals_brute_force_loop(c, block, mask_value, batch_size) -> None:
    model = toy_model(c=c)
    torch.manual_seed(1)
    x = torch.rand(5, c, 8, 8)
    y = torch.tensor([0, 1, 2, 1, 0])
    omega, delta = compute_omega(model, x, y, block, mask_value, batch_size=batch_size, return_delta=True)
    assert omega.shape == (5, 64 // (block * block if isinstance(block, int) else block[0] * block[1]))
    np.testing.assert_allclose(omega.sum(1).numpy(), 1.0, rtol=1e-6)
    assert (omega >= 0).all() and (delta >= 0).all()
    expected = brute_force_omega(model, x, y, block, mask_value)
    # float32 forward passes differ slightly with batch composition, hence the tolerance
    np.testing.assert_allclose(omega.double().numpy(), expected.numpy(), atol=2e-5)
    assert (delta > 0).any() and (delta == 0).any()  # both clipped and unclipped blocks occur


def test_omega_planted_block_and_uniform_fallback() -> None:
    # logits [0, 10 * (mean of block 5)]: only block 5 can change the loss of label 1
    w = torch.zeros(1, 8, 8)
    w[0, block_masks((8, 8), 2)[5]] = 10.0
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with torch.no_grad():
        lin[1].weight.zero_()
        lin[1].weight[1] = w.flatten()
        lin[1].bias.zero_()
    x = torch.rand(3, 1, 8, 8) + 0.1
    omega = compute_omega(lin, x, torch.ones(3, dtype=torch.long), 2)
    assert torch.allclose(omega, F.one_hot(torch.full((3,), 5), 16).float())
    # label 0: masking block 5 lowers the loss, no block raises it -> uniform Omega
    omega0 = compute_omega(lin, x, torch.zeros(3, dtype=torch.long), 2)
    assert torch.allclose(omega0, torch.full((3, 16), 1 / 16))
    # the prediction-based loss targets class 1 here (logit > 0), like label 1
    assert torch.allclose(compute_omega(lin, x, None, 2, loss="ce_pred"), omega)
    # a custom loss is used as given: squared error of the class-1 logit to 0
    sq = compute_omega(lin, x, torch.ones(3, dtype=torch.long), 2, loss=lambda z, t: -(z[:, 1] ** 2))
    assert torch.allclose(sq, F.one_hot(torch.full((3,), 5), 16).float())
    with pytest.raises(ValueError):
        compute_omega(lin, x, None, 2, loss="ce")


def test_cross_entropy_is_accurate_for_confident_predictions() -> None:
    z = torch.randn(6, 4)
    t = torch.tensor([0, 1, 2, 3, 0, 1])
    np.testing.assert_allclose(
        cross_entropy_per_sample(z, t).numpy(), F.cross_entropy(z.double(), t, reduction="none").numpy(), rtol=1e-12
    )
    conf = torch.tensor([[0.0, 30.0], [0.0, 35.0]])  # float32 -log(p) would give exactly 0 for both
    ce = cross_entropy_per_sample(conf, torch.tensor([1, 1]))
    np.testing.assert_allclose(ce.numpy(), np.exp([-30.0, -35.0]), rtol=1e-6)
    assert ce[0] > ce[1] > 0


def test_delta_floor_reproduces_reference_epsilon() -> None:
    model = toy_model()
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 0])
    _, d0 = compute_omega(model, x, y, 2, return_delta=True)
    _, d1 = compute_omega(model, x, y, 2, return_delta=True, delta_floor=1e-7)
    assert torch.equal(d1, d0.clamp_min(1e-7))


# --------------------------------------------------------------------------------------------
# Explanation models and training
# --------------------------------------------------------------------------------------------
def test_explainer_shapes_generic() -> None:
    assert MLPExplainer((1, 28, 28), 2, hidden=8)(torch.rand(2, 1, 28, 28)).shape == (2, 196)
    assert UNetExplainer((1, 28, 28), 2, base_filters=4)(torch.rand(2, 1, 28, 28)).shape == (2, 196)
    assert UNetExplainer((1, 28, 28), 2, base_filters=4, dense_head=False)(torch.rand(2, 1, 28, 28)).shape == (2, 196)
    assert UNetExplainer((3, 64, 64), 16, base_filters=2, depth=4)(torch.rand(1, 3, 64, 64)).shape == (1, 16)
    assert MLPExplainer((3, 64, 64), 16, hidden=8)(torch.rand(1, 3, 64, 64)).shape == (1, 16)
    with pytest.raises(ValueError):
        UNetExplainer((1, 28, 28), 4, depth=1)
    with pytest.raises(ValueError):
        UNetExplainer((1, 28, 28), (2, 4))


def test_kl_loss_definition() -> None:
    omega = torch.tensor([[0.5, 0.5, 0.0]])
    logits = torch.log(torch.tensor([[0.25, 0.5, 0.25]]))
    expected = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.5)
    assert abs(float(causal_kl_loss(logits, omega)) - expected) < 1e-6
    assert float(causal_kl_loss(torch.log(omega.clamp_min(1e-30)), omega)) < 1e-6


def planted_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images 1x8x8 with 16 blocks; the planted Omega puts mass on the block holding a bright square."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(n, 1, 8, 8, generator=g)
    hot = torch.randint(0, 16, (n,), generator=g)
    masks = block_masks((8, 8), 2)
    x[:, 0][masks[hot]] = 1.0
    omega = torch.full((n, 16), 0.2 / 15)
    omega[torch.arange(n), hot] = 0.8
    return x, omega


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_explainer_learns_planted_omega(kind: str) -> None:
    x, omega = planted_data(600, 0)
    xt, ot = planted_data(200, 1)
    torch.manual_seed(0)
    if kind == "mlp":
        model: nn.Module = MLPExplainer((1, 8, 8), 2, hidden=64, dropout=0.0)
        kw = dict(lr=3e-3, batch_size=50)
    else:
        model = UNetExplainer((1, 8, 8), 2, base_filters=8, depth=2, dropout=0.0, dense_head=False)
        kw = dict(lr=3e-3, batch_size=50)
    with torch.no_grad():
        before = float(causal_kl_loss(model(xt), ot))
    model, hist = train_explainer(model, x, omega, max_epochs=15, patience=15, progress=False, **kw)
    with torch.no_grad():
        after = float(causal_kl_loss(model(xt), ot))
        hit = (model(xt).argmax(1) == ot.argmax(1)).float().mean()
    assert after < 0.2 * before, (before, after)
    assert hit > 0.9
    assert len(hist.train_loss) == len(hist.val_loss) and hist.best_epoch >= 0


def test_training_is_deterministic_given_seed() -> None:
    x, omega = planted_data(100, 0)
    weights = []
    for _ in range(2):
        torch.manual_seed(3)
        m = MLPExplainer((1, 8, 8), 2, hidden=16, dropout=0.2)
        train_explainer(m, x, omega, max_epochs=2, seed=5, progress=False)
        weights.append(torch.cat([p.flatten() for p in m.parameters()]))
    assert torch.equal(weights[0], weights[1])
    torch.manual_seed(3)
    m = MLPExplainer((1, 8, 8), 2, hidden=16, dropout=0.2)
    train_explainer(m, x, omega, max_epochs=2, seed=6, progress=False)
    assert not torch.equal(weights[0], torch.cat([p.flatten() for p in m.parameters()]))


# --------------------------------------------------------------------------------------------
# Bootstrap ensembles
# --------------------------------------------------------------------------------------------
def test_bootstrap_samples_with_and_without_replacement() -> None:
    ens = BootstrapEnsemble(lambda: nn.Identity(), n_models=5, resample=True, seed=0)
    idx = ens.bootstrap_indices(1000)
    fractions = [len(np.unique(i)) / 1000 for i in idx]
    # with replacement: ~ 1 - 1/e = 63.2% distinct samples per member, members differ
    assert all(0.58 < f < 0.68 for f in fractions), fractions
    assert not np.array_equal(idx[0], idx[1])
    assert all(len(i) == 1000 and i.min() >= 0 and i.max() < 1000 for i in idx)
    plain = BootstrapEnsemble(lambda: nn.Identity(), n_models=3, resample=False).bootstrap_indices(50)
    assert all(np.array_equal(i, np.arange(50)) for i in plain)


def test_ensemble_fit_uses_resampled_data() -> None:
    x, omega = planted_data(120, 0)
    ens = BootstrapEnsemble(lambda: MLPExplainer((1, 8, 8), 2, hidden=8), n_models=3, seed=1, max_epochs=1, progress=False)
    ens.fit(x, omega, val_fraction=0.25)
    assert ens.val_indices is not None and len(ens.val_indices) == 30
    assert [len(i) for i in ens.indices] == [90, 90, 90]
    assert all(len(np.unique(i)) < 90 for i in ens.indices)
    members = ens.predict_members(x[:4])
    assert members.shape == (3, 4, 16)
    assert not torch.allclose(members[0], members[1])


class ConstantLogits(nn.Module):
    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", torch.log(probs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_ensemble_median_and_interval_width() -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(7, 5), dim=1)
    ens = BootstrapEnsemble(lambda: nn.Identity(), n_models=7)
    ens.models = [ConstantLogits(p) for p in probs]
    x = torch.zeros(2, 1, 4, 4)
    imp, unc = ens.predict(x, confidence=0.9)
    p = probs.double().numpy()
    np.testing.assert_allclose(imp[0].numpy(), np.median(p, 0), rtol=1e-5)
    width = np.percentile(p, 95, 0) - np.percentile(p, 5, 0)
    np.testing.assert_allclose(unc[1].numpy(), width, rtol=1e-5)
    _, sd = ens.predict(x, uncertainty="std")
    np.testing.assert_allclose(sd[0].numpy(), p.std(0, ddof=1), rtol=1e-5)
    e = explain(ens, x)
    assert e.uncertainty is not None and e.importance.shape == (2, 5) and e.seconds >= 0
    single = explain(ens.models[0], x)
    assert single.uncertainty is None
    np.testing.assert_allclose(single.importance[0].numpy(), p[0], rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Uncertainty evaluation
# --------------------------------------------------------------------------------------------
def test_rank_error_hand_example() -> None:
    err = rank_error(np.array([[0.5, 0.3, 0.2]]), np.array([[0.2, 0.3, 0.5]]))
    np.testing.assert_array_equal(err, [[2, 0, 2]])
    # ties in Omega share the average rank: Omega ranks (1, 2.5, 2.5)
    np.testing.assert_array_equal(rank_error(np.array([[0.6, 0.3, 0.1]]), np.array([[1.0, 0.0, 0.0]])), [[0, 0.5, 0.5]])


def test_uncertainty_correlation_detects_informative_uncertainty() -> None:
    rng = np.random.default_rng(0)
    omega = rng.dirichlet(np.ones(50), size=40)
    unc = rng.uniform(0, 1, size=omega.shape)
    noisy = omega + 0.05 * unc * rng.standard_normal(omega.shape)  # error grows with uncertainty
    res = uncertainty_rank_correlation(unc, noisy, omega)
    assert res.rho > 0.2 and res.pvalue < 1e-10 and res.n == 2000
    uninformative = uncertainty_rank_correlation(rng.uniform(size=omega.shape), noisy, omega)
    assert abs(uninformative.rho) < 0.1


# --------------------------------------------------------------------------------------------
# Cross-check against the reference package (cxplain 1.0.3, TensorFlow/Keras 2)
# --------------------------------------------------------------------------------------------
def test_omega_matches_reference_package() -> None:
    import importlib.util

    if importlib.util.find_spec("cxplain") is None or importlib.util.find_spec("tf_keras") is None:
        pytest.skip("reference package cxplain / tf-keras not installed")
    from lib.models.resnet import resnet20
    from lib.reference.cxplain_ref import omega_reference_compatible, reference_omega_subprocess

    torch.manual_seed(0)
    cnn = toy_model(c=1)
    x = torch.rand(5, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 1, 0])
    # a saturated model: logits [0, 30 + <w, x>] with small positive w, so p_1 > 1 - 1e-7 always
    sat = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    with torch.no_grad():
        sat[1].weight.zero_()
        sat[1].weight[1] = 0.05 * torch.rand(64)
        sat[1].bias.copy_(torch.tensor([0.0, 30.0]))
    y_sat = torch.ones(5, dtype=torch.long)
    net = resnet20(n_classes=2).eval()
    x28 = torch.rand(2, 1, 28, 28)
    y28 = torch.tensor([0, 1])
    ref_cnn, ref_sat, ref_net = reference_omega_subprocess([(cnn, x, y, 2), (sat, x, y_sat, 2), (net, x28, y28, 2)])
    assert ref_cnn.shape == (5, 16) and ref_net.shape == (2, 196)

    # same loss, floor and clip as the reference: agreement to float32 precision
    for model, xx, yy, ref in [(cnn, x, y, ref_cnn), (sat, x, y_sat, ref_sat), (net, x28, y28, ref_net)]:
        np.testing.assert_allclose(omega_reference_compatible(model, xx, yy, 2).numpy(), ref, atol=1e-5)
    # our default (exact CE, floor 0) agrees where the model is not saturated ...
    np.testing.assert_allclose(compute_omega(cnn, x, y, 2).numpy(), ref_cnn, atol=1e-4)
    np.testing.assert_allclose(compute_omega(net, x28, y28, 2).numpy(), ref_net, atol=1e-4)
    # ... and differs where it is: Keras' clipped probabilities make every Delta hit the floor
    ours_sat = compute_omega(sat, x, y_sat, 2).numpy()
    assert np.allclose(ref_sat, 1 / 16, atol=1e-5)
    contrib = (sat[1].weight[1].view(1, 8, 8) * x[:, 0]).reshape(5, 4, 2, 4, 2).sum((2, 4)).reshape(5, 16)
    assert (ours_sat.std(1) > 0.01).all()
    assert np.array_equal(ours_sat.argmax(1), contrib.argmax(1).numpy())


def test_reference_explainer_trains_and_agrees() -> None:
    """The reference package's trained MLP explainer and ours learn the same block ranking on a toy problem."""
    import importlib.util

    if importlib.util.find_spec("cxplain") is None or importlib.util.find_spec("tf_keras") is None:
        pytest.skip("reference package cxplain / tf-keras not installed")

    from lib.reference.cxplain_ref import reference_explainer_subprocess

    g = torch.Generator().manual_seed(0)
    n = 400
    on = torch.rand(n, 16, generator=g) < 0.5  # each 2x2 block of an 8x8 image carries ink or not
    ink = on * (0.5 + 0.5 * torch.rand(n, 16, generator=g))
    x = ink.view(n, 4, 4).repeat_interleave(2, 1).repeat_interleave(2, 2).unsqueeze(1)
    w = torch.linspace(-1.5, 1.5, 16)[torch.randperm(16, generator=g)]  # block weights of both signs
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1] = (w.view(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1) / 4).flatten()
        model[1].bias.copy_(torch.tensor([0.0, -float(model[1].weight[1] @ x.flatten(1).mean(0))]))
        y = model(x).argmax(1)  # labels = the model's decisions
    x_tr, y_tr, x_te, y_te = x[:300], y[:300], x[300:], y[300:]
    truth = compute_omega(model, x_te, y_te, 2).numpy()

    ref = reference_explainer_subprocess(model, x_tr, y_tr, x_te, "mlp", 2, num_layers=2, num_units=32, activation="selu",
                                         p_dropout=0.0, learning_rate=1e-3, batch_size=32, num_epochs=60, verbose=0)
    torch.manual_seed(0)
    ours_model = MLPExplainer((1, 8, 8), 2, hidden=32, dropout=0.0)
    train_explainer(ours_model, x_tr, compute_omega(model, x_tr, y_tr, 2), lr=1e-3, batch_size=32, max_epochs=60, progress=False)
    ours = explain(ours_model, x_te).importance.numpy()
    assert ref.shape == ours.shape == truth.shape == (100, 16)
    np.testing.assert_allclose(ref.sum(1), 1.0, rtol=1e-4)  # a softmax over blocks, summed back from pixels

    def mean_rho(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.nanmean([stats.spearmanr(a[i], b[i]).statistic for i in range(len(a))]))

    assert mean_rho(ours, truth) > 0.6
    assert mean_rho(ref, truth) > 0.6
    assert mean_rho(ref, ours) > 0.6


# --------------------------------------------------------------------------------------------
# Skipping unchanged masked copies; search configurations; seeded explainers (CXPlain chapter)
# --------------------------------------------------------------------------------------------
class CountingModel(nn.Module):
    """Wraps a model and counts the images it is called on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return self.inner(x)


def test_skip_unchanged_is_exact_and_skips_background_blocks() -> None:
    torch.manual_seed(2)
    x = torch.zeros(4, 1, 8, 8)
    x[:, :, 2:6, 2:6] = torch.rand(4, 1, 4, 4) + 0.1  # ink in 4 of the 16 blocks (2x2) of each image
    x[3] = 0.0  # an all-background image: every masked copy equals it
    y = torch.tensor([0, 1, 2, 1])
    model = CountingModel(toy_model())
    skip, d_skip = compute_omega(model, x, y, 2, 0.0, return_delta=True)
    assert model.seen == 4 + 3 * 4  # originals + only the masked copies that differ
    model.seen = 0
    full, d_full = compute_omega(model, x, y, 2, 0.0, skip_unchanged=False, return_delta=True)
    assert model.seen == 4 * 17
    # images with ink: the same Omega; the all-background image: computing its masked copies gives
    # Delta within rounding of 0 (identical rows of a batch may differ in the last bits on some CPUs'
    # kernels, and normalising such noise is meaningless), skipping them gives exactly 0
    np.testing.assert_allclose(skip[:3].numpy(), full[:3].numpy(), atol=1e-6)
    np.testing.assert_allclose(d_skip.numpy(), d_full.numpy(), atol=1e-5)
    assert (d_skip[3] == 0).all()
    ink_blocks = block_masks(x.shape, 2).unsqueeze(0).mul(x[:, 0].unsqueeze(1) > 0).flatten(2).any(-1)
    assert (d_skip[~ink_blocks] == 0).all()  # unchanged copies: Delta exactly 0
    np.testing.assert_allclose(skip[3].numpy(), 1 / 16)  # nothing to remove: uniform
    # with a non-zero mask value nothing is skipped
    model.seen = 0
    compute_omega(model, x, y, 2, 0.5)
    assert model.seen == 4 * 17


def test_search_configs_start_with_the_paper_and_stay_in_the_appendix_ranges() -> None:
    from lib.cxplain import PAPER_SELECTION, SEARCH_RANGES, search_configs, unet_depth

    # the paper's ranges (appendix A, Tables S1-S3)
    assert SEARCH_RANGES["mlp"] == {"hidden": (70, 140), "dropout": (0.0, 0.10)}
    assert SEARCH_RANGES["unet"] == {"base_filters": (65, 80), "dropout": (0.0, 0.10)}
    assert SEARCH_RANGES["unet_imagenet"] == {"base_filters": (8, 24), "dropout": (0.0, 0.10)}
    mlp = search_configs("mlp", 8, seed=3)
    assert mlp[0] == PAPER_SELECTION["mlp"] and len(mlp) == 8
    assert mlp == search_configs("mlp", 8, seed=3) and mlp != search_configs("mlp", 8, seed=4)
    assert all(70 <= c["hidden"] <= 140 and 0 <= c["dropout"] <= 0.10 for c in mlp)
    assert len({c["hidden"] for c in mlp}) > 3
    assert all(c["lr"] == 1e-3 and c["batch_size"] == 100 and c["n_layers"] == 2 for c in mlp)
    unet = search_configs("unet", 6, seed=0)
    assert unet[0]["base_filters"] == 77 and unet[0]["dropout"] == PAPER_SELECTION["unet"]["dropout"]
    assert all(65 <= c["base_filters"] <= 80 and c["depth"] == 2 and c["lr"] == 2e-3 and c["batch_size"] == 128
               for c in unet)
    inet = search_configs("unet_imagenet", 6, seed=0, block=16)
    assert inet[0]["base_filters"] == 12 and inet[0]["dropout"] == 0.0561 and inet[0]["lr"] == 1e-3
    assert all(8 <= c["base_filters"] <= 24 and c["depth"] == 4 and c["batch_size"] == 32 for c in inet)
    assert unet_depth(2) == 2 and unet_depth(16) == 4 and search_configs("unet", 1, block=16)[0]["depth"] == 4
    with pytest.raises(ValueError):
        search_configs("cnn", 1)  # type: ignore[arg-type]


def test_build_explainer_is_seeded_without_touching_the_global_rng() -> None:
    from lib.cxplain import build_explainer, search_configs

    cfg = search_configs("mlp", 1)[0]
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = build_explainer("mlp", cfg, (1, 8, 8), 2, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    b = build_explainer("mlp", cfg, (1, 8, 8), 2, seed=5)
    c = build_explainer("mlp", cfg, (1, 8, 8), 2, seed=6)
    flat = lambda m: torch.cat([p.flatten() for p in m.parameters()])  # noqa: E731
    assert torch.equal(flat(a), flat(b)) and not torch.equal(flat(a), flat(c))
    torch.manual_seed(7)
    d = build_explainer("mlp", cfg, (1, 8, 8), 2, seed=None)  # global RNG
    torch.manual_seed(7)
    e = build_explainer("mlp", cfg, (1, 8, 8), 2, seed=None)
    assert torch.equal(flat(d), flat(e))
    small = {**search_configs("unet", 1, block=4)[0], "base_filters": 4}
    unet = build_explainer("unet", small, (3, 16, 16), 4, seed=0)
    assert unet(torch.rand(2, 3, 16, 16)).shape == (2, 16)


def test_correlation_one_sided_p_and_block_subset() -> None:
    rng = np.random.default_rng(1)
    omega = rng.dirichlet(np.ones(30), size=20)
    unc = rng.uniform(0, 1, size=omega.shape)
    noisy = omega + 0.05 * unc * rng.standard_normal(omega.shape)
    res = uncertainty_rank_correlation(unc, noisy, omega)
    assert res.rho > 0 and res.pvalue_positive == pytest.approx(res.pvalue / 2)
    neg = uncertainty_rank_correlation(-unc, noisy, omega)
    assert neg.rho < 0 and neg.pvalue_positive == pytest.approx(1 - neg.pvalue / 2)
    where = omega > np.median(omega)
    sub = uncertainty_rank_correlation(unc, noisy, omega, where=where)
    assert sub.n == int(where.sum())
    expected = stats.spearmanr(unc[where], rank_error(noisy, omega)[where]).statistic
    assert sub.rho == pytest.approx(expected)
    assert np.isnan(uncertainty_rank_correlation(unc, noisy, omega, where=np.zeros_like(where)).rho)


def test_per_image_correlation_tests_images_not_blocks() -> None:
    from lib.cxplain import per_image_uncertainty_correlation
    from lib.stats import one_sample_test

    rng = np.random.default_rng(2)
    omega = rng.dirichlet(np.ones(30), size=12)
    unc = rng.uniform(0, 1, size=omega.shape)
    noisy = omega + 0.05 * unc * rng.standard_normal(omega.shape)  # error grows with uncertainty in every image
    rhos = per_image_uncertainty_correlation(unc, noisy, omega)
    assert rhos.shape == (12,)
    for i in (0, 5):
        assert rhos[i] == pytest.approx(stats.spearmanr(unc[i], rank_error(noisy, omega)[i]).statistic)
    assert one_sample_test(rhos, "greater").p < 0.01
    # uninformative uncertainty: no image-level evidence (the test is over 12 images, not 360 blocks)
    flat = per_image_uncertainty_correlation(rng.uniform(size=omega.shape), noisy, omega)
    assert one_sample_test(flat, "greater").p > 0.01
    # an image with constant uncertainty has no rho; a block subset changes only which pairs count
    unc2 = unc.copy()
    unc2[3] = 0.5
    r2 = per_image_uncertainty_correlation(unc2, noisy, omega)
    assert np.isnan(r2[3]) and np.isfinite(np.delete(r2, 3)).all()
    where = omega > np.median(omega, axis=1, keepdims=True)
    sub = per_image_uncertainty_correlation(unc, noisy, omega, where=where)
    assert sub[1] == pytest.approx(stats.spearmanr(unc[1][where[1]], rank_error(noisy, omega)[1][where[1]]).statistic)
    assert np.isnan(per_image_uncertainty_correlation(unc, noisy, omega, where=np.zeros_like(where))).all()


def test_omega_float32_scale_bounds_a_float32_recomputation() -> None:
    """A float32 rounding of the logits moves Omega by a few units of the scale, a changed floor by far more."""
    from lib.reference.cxplain_ref import KERAS_EPSILON, keras_categorical_crossentropy, omega_float32_scale

    torch.manual_seed(0)
    net = toy_model(c=1)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    scale = omega_float32_scale(net, x, y, 2)
    assert scale.shape == (4,) and (scale > 0).all()

    def omega_with(model):
        return compute_omega(model, x, y, 2, 0.0, loss=keras_categorical_crossentropy, delta_floor=KERAS_EPSILON).double()

    base = omega_with(net)
    # the same model with every logit perturbed by one float32 ulp-sized relative error
    noisy = nn.Sequential(net, _Jitter(torch.finfo(torch.float32).eps))
    units = ((omega_with(noisy) - base).abs().max(1).values / scale).max()
    assert units <= 16
    # a real difference: logits off by 1e-4 relative (e.g. a layer computed in half precision)
    coarse = nn.Sequential(net, _Jitter(1e-4))
    assert ((omega_with(coarse) - base).abs().max(1).values / scale).max() > 16


class _Jitter(nn.Module):
    """Multiply logits by (1 + u), u uniform in [-eps, eps] (a float32 rounding-sized perturbation)."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(len(z))
        return z * (1 + self.eps * (2 * torch.rand(z.shape, generator=g) - 1))


def test_resnet32_and_augmentation_only_in_training() -> None:
    from lib.models.resnet import Augmented, resnet20, resnet32

    n_conv = lambda m: sum(isinstance(k, nn.Conv2d) and k.kernel_size == (3, 3) for k in m.modules())  # noqa: E731
    assert n_conv(resnet20()) == 19 and n_conv(resnet32(in_channels=3)) == 31  # + the final linear layer: 20, 32
    m = Augmented(resnet32(n_classes=2, in_channels=3))
    x = torch.rand(6, 3, 32, 32)
    m.eval()
    assert torch.equal(m.augment(x), x) and torch.equal(m(x), m.net(x))
    m.train()
    torch.manual_seed(0)
    a = m.augment(x)
    assert a.shape == x.shape and not torch.equal(a, x)
    # within the paper's ranges the image content stays mostly inside the frame
    assert (a.sum((1, 2, 3)) > 0.5 * x.sum((1, 2, 3))).all()
