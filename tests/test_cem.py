"""lib.cem: the invariants of pertinent negatives and positives, on a small model trained on real digits."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.cem import CEMConfig, CEMResult, _shrink, cem_explain, cem_explain_many, changed_part, fista_path, is_empty, reconstruction_error, sparsity
from lib.data import load_mnist
from lib.train import fit

NO_INFO = -1.0


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    ds = load_mnist(verbose=False)
    x, y = ds.x_train[:3000] - 0.5, ds.y_train[:3000]
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    fit(model, x, y, F.cross_entropy, epochs=3, batch_size=64, seed=0, progress=False)
    ae = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 784), nn.Unflatten(1, (1, 28, 28)))
    fit(ae, x, x, F.mse_loss, epochs=2, batch_size=64, seed=0, progress=False)
    x0 = ds.x_test[:8] - 0.5
    return model.eval(), ae.eval(), x0


CFG = CEMConfig(c_steps=5, max_iterations=50, gamma=0.0)  # c reaches 1e4: enough to flip any digit


@pytest.mark.parametrize("scores", ["probs", "logits"])
def test_pn_only_adds_and_changes_the_class(setup, scores):
    model, _, x0 = setup
    res = cem_explain(model, x0, "PN", CEMConfig(**{**CFG.asdict(), "scores": scores}))
    assert res.found.float().mean() >= 0.5  # a PN is found for most digits
    x = res.explanation[res.found]
    base = x0[res.found]
    assert ((x - NO_INFO).abs() >= (base - NO_INFO).abs() - 1e-6).all()  # moved away from no-info only
    assert x.min() >= -0.5 - 1e-6 and x.max() <= 0.5 + 1e-6  # inside the feature range
    with torch.no_grad():
        new_class = model(x).argmax(1)
    assert (new_class != res.orig_pred[res.found]).all()  # the PN really changes the class
    assert torch.equal(new_class, res.pred[res.found])
    assert (res.pred[~res.found] == -1).all()


@pytest.mark.parametrize("scores", ["probs", "logits"])
def test_pp_only_removes_and_keeps_the_class(setup, scores):
    model, _, x0 = setup
    res = cem_explain(model, x0, "PP", CEMConfig(**{**CFG.asdict(), "scores": scores}))
    assert res.found.float().mean() >= 0.5
    d = res.explanation[res.found]
    base = x0[res.found]
    x = base - d  # the perturbed instance the PP was removed from
    assert ((x - NO_INFO).abs() <= (base - NO_INFO).abs() + 1e-6).all()  # moved towards no-info only
    assert x.min() >= -0.5 - 1e-6 and x.max() <= 0.5 + 1e-6
    assert (d >= -1e-6).all()  # with no_info below the range, removing means darkening: d >= 0
    with torch.no_grad():
        assert (model(d).argmax(1) == res.orig_pred[res.found]).all()  # the PP alone keeps the class


def test_every_fista_iterate_respects_range_and_direction(setup):
    model, ae, x0 = setup
    target = model(x0).argmax(1)
    for mode in ("PN", "PP"):
        cfg = CEMConfig(max_iterations=25, gamma=10.0)
        for x, y in fista_path(model, x0, target, torch.full((len(x0),), 10.0), mode, cfg, ae):
            for z in (x, y):
                assert z.min() >= -0.5 - 1e-6 and z.max() <= 0.5 + 1e-6
                farther = (z - NO_INFO).abs() > (x0 - NO_INFO).abs() + 1e-7
                closer = (z - NO_INFO).abs() < (x0 - NO_INFO).abs() - 1e-7
                assert not (closer if mode == "PN" else farther).any()


def test_shrinkage_thresholding_by_hand():
    x0 = torch.tensor([0.0, 0.0, 0.0, 0.4, -0.4])
    y = torch.tensor([0.05, 0.3, -0.3, 0.6, -0.6])
    # |y - x0| <= beta -> x0; above -> y - beta (capped at hi); below -> y + beta (floored at lo)
    assert torch.allclose(_shrink(y, x0, 0.1, -0.5, 0.5), torch.tensor([0.0, 0.2, -0.2, 0.5, -0.5]))


def test_batch_rows_are_independent(setup):
    """Each instance has its own c and its own solution: explaining it alone gives the same answer."""
    model, _, x0 = setup
    cfg = CEMConfig(c_steps=2, max_iterations=20)
    batch = cem_explain(model, x0[:4], "PN", cfg)
    alone = cem_explain(model, x0[2:3], "PN", cfg)
    assert torch.allclose(batch.explanation[2:3], alone.explanation, atol=1e-5)
    assert torch.equal(batch.c_final[2:3], alone.c_final)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_many_searches_in_one_batch_equal_separate_searches(setup, workers):
    """PN and PP with the auto-encoder and PN without it, run as one mixed batch (split over threads),
    give each search's own answer: rows keep their own mode, gamma, c and best solution."""
    model, ae, x0 = setup
    model64, ae64, x64 = copy.deepcopy(model).double(), copy.deepcopy(ae).double(), x0[:3].double()
    cfg = CEMConfig(c_steps=5, max_iterations=30, gamma=1.0)
    cfg0 = CEMConfig(**{**cfg.asdict(), "gamma": 0.0})
    alone = [cem_explain(model64, x64, "PN", cfg, autoencoder=ae64), cem_explain(model64, x64, "PP", cfg, autoencoder=ae64),
             cem_explain(model64, x64[1:], "PN", cfg0)]
    together = cem_explain_many(model64, [(x64, "PN", cfg), (x64, "PP", cfg), (x64[1:], "PN", cfg0)], autoencoder=ae64,
                                workers=workers)
    assert [r.mode for r in together] == ["PN", "PP", "PN"]
    for a, b in zip(alone, together):
        assert torch.equal(a.found, b.found) and torch.equal(a.pred, b.pred) and torch.equal(a.c_final, b.c_final)
        assert torch.equal(a.orig_pred, b.orig_pred)
        assert torch.allclose(a.explanation, b.explanation, atol=1e-10, rtol=0)
        assert torch.allclose(a.distance, b.distance, atol=1e-10, rtol=0)
    assert together[0].found.any() and together[1].found.any() and together[2].found.any()  # not a vacuous comparison


def test_many_searches_refuse_configs_that_differ_beyond_gamma(setup):
    model, ae, x0 = setup
    cfg = CEMConfig(c_steps=1, max_iterations=2)
    with pytest.raises(ValueError, match="differ only in gamma"):
        cem_explain_many(model, [(x0, "PN", cfg), (x0, "PP", CEMConfig(**{**cfg.asdict(), "beta": 0.2}))])
    with pytest.raises(ValueError, match="needs an autoencoder"):
        cem_explain_many(model, [(x0, "PN", CEMConfig(**{**cfg.asdict(), "gamma": 1.0}))])
    with pytest.raises(ValueError, match="mode must be"):
        cem_explain_many(model, [(x0, "XX", cfg)])
    assert cem_explain_many(model, []) == []


def test_autoencoder_term_pulls_towards_reconstructions(setup):
    model, ae, x0 = setup
    without = cem_explain(model, x0, "PN", CFG)
    with_ae = cem_explain(model, x0, "PN", CEMConfig(**{**CFG.asdict(), "gamma": 100.0}), autoencoder=ae)
    both = without.found & with_ae.found
    assert both.any()
    assert reconstruction_error(ae, with_ae.explanation[both]).mean() < reconstruction_error(ae, without.explanation[both]).mean()


def test_sparsity_counts_changed_pixels(setup):
    model, _, x0 = setup
    res = cem_explain(model, x0, "PN", CFG)
    sp = sparsity(x0, res)
    part = changed_part(x0, res)
    i = int(res.found.nonzero()[0])
    assert sp["L0"][i] == (part[i].abs() > 1e-6).sum()
    assert torch.isclose(sp["L1"][i], part[i].abs().sum())
    assert torch.isnan(sp["L0"][~res.found]).all()


def test_logit_margin_kappa_is_enforced(setup):
    """With the hinge on the logits (the CEM authors' code) and kappa > 0, a PN must beat the
    original class by kappa logits, not merely change the arg-max."""
    model, _, x0 = setup
    kappa = 2.0
    res = cem_explain(model, x0, "PN", CEMConfig(**{**CFG.asdict(), "scores": "logits", "kappa": kappa}))
    assert res.found.any()
    with torch.no_grad():
        logits = model(res.explanation[res.found])
    t = res.orig_pred[res.found]
    own = logits.gather(1, t[:, None]).squeeze(1)
    assert (logits.max(1).values - own >= kappa - 1e-4).all()


def test_empty_explanations_are_flagged():
    """A valid PP that keeps no pixel (the blank input already has the class) is 'empty'."""
    expl = torch.zeros(3, 1, 2, 2)
    expl[1, 0, 0, 0] = 0.3
    res = CEMResult("PP", expl, found=torch.tensor([True, True, False]), pred=torch.tensor([4, 4, -1]),
                    orig_pred=torch.tensor([4, 4, 4]), distance=torch.tensor([0.0, 0.12, float("inf")]),
                    c_final=torch.ones(3))
    assert is_empty(torch.zeros(3, 1, 2, 2), res).tolist() == [True, False, False]


def test_bad_input_is_rejected(setup):
    model, _, x0 = setup
    with pytest.raises(ValueError, match="mode"):
        cem_explain(model, x0, "XX", CFG)
    with pytest.raises(ValueError, match="feature_range"):
        cem_explain(model, x0 + 1.0, "PN", CFG)
    with pytest.raises(ValueError, match="autoencoder"):
        cem_explain(model, x0, "PN", CEMConfig(gamma=1.0))
    with pytest.raises(ValueError, match="eval mode"):
        cem_explain(model.train(), x0, "PN", CFG)
    model.eval()
    with pytest.raises(ValueError, match="invalid CEMConfig"):
        CEMConfig(beta=-1.0)
