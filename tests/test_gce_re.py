"""Tests for the [Re] GCE classifiers (lib.models.gce_re), the chapter's glue (lib.gce_re) and the
CIFAR-10 class-pair loader (lib.data.class_pair) on tiny files in the real cifar-10-batches-py layout."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from lib import data
from lib.data import CIFAR10_HORSE_TRUCK, class_pair, load_cifar10
from lib.gce import GCEExplainer, mutual_information
from lib.gce_re import flow_probs, mi_estimate, probs_fn, re_step2_lambda, train_point
from lib.models.gce_re import ARCHITECTURES, PerGroupCalls, build_classifier, has_batch_norm


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("channels,side", [(1, 28), (3, 32)])
def test_architectures_give_logits(arch, channels, side):
    torch.manual_seed(0)
    m = build_classifier(arch, n_classes=2, channels=channels, side=side).eval()
    out = m(torch.rand(5, channels, side, side))
    assert out.shape == (5, 2) and torch.isfinite(out).all()
    assert has_batch_norm(m) == (arch != "base")


def test_unknown_architecture_is_an_error():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_classifier("vgg")


def test_per_group_calls_equal_in_eval_and_per_group_in_train():
    torch.manual_seed(0)
    m = build_classifier("resnet")
    x = torch.rand(12, 1, 28, 28)
    g = PerGroupCalls(m, 4)
    m.eval()
    with torch.no_grad():
        assert torch.allclose(g(x), m(x), atol=1e-6)
        m.train()
        grouped = g(x)
        separate = torch.cat([m(x[i : i + 4]) for i in range(0, 12, 4)])
        whole = m(x)
    assert torch.allclose(grouped, separate, atol=1e-6)
    assert not torch.allclose(grouped, whole, atol=1e-4)  # batch statistics over 4 images differ from those over 12
    with pytest.raises(ValueError, match="whole number of groups"):
        g(x[:10])


def test_train_mode_probs_restore_the_classifier():
    torch.manual_seed(0)
    m = build_classifier("densenet").eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    p = probs_fn(m, "train", group=5)(torch.rand(10, 1, 28, 28))
    assert torch.allclose(p.sum(1), torch.ones(10), atol=1e-6)
    assert not m.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k  # running statistics untouched
    with pytest.raises(ValueError, match="mode"):
        probs_fn(m, "test")


def test_mi_estimate_bounds_and_interval():
    const = torch.full((50, 20, 2), 0.5, dtype=torch.float64)
    e = mi_estimate(const)
    assert abs(e.value) < 1e-6 and abs(e.low) < 1e-6 and abs(e.high) < 1e-6 and e.n == 50
    perfect = torch.zeros(50, 20, 2, dtype=torch.float64)
    perfect[:25, :, 0] = 1
    perfect[25:, :, 1] = 1
    e = mi_estimate(perfect)
    assert e.value == pytest.approx(math.log(2), abs=1e-6)
    assert e.low <= e.value <= e.high + 1e-12
    rng = torch.Generator().manual_seed(0)
    noisy = torch.softmax(torch.randn(200, 10, 2, generator=rng, dtype=torch.float64) * 2, -1)
    e = mi_estimate(noisy)
    assert e.value == pytest.approx(float(mutual_information(noisy)))
    assert e.low < e.value < e.high


def test_flow_probs_groups_match_the_estimator_layout():
    torch.manual_seed(0)
    dec = GCEExplainer(1, 2).decoder.eval()
    m = build_classifier("resnet").eval()
    a = flow_probs(dec, probs_fn(m, "eval", group=6), 1, 2, 4, 6, seed=3, chunk=10)
    b = flow_probs(dec, probs_fn(m, "eval"), 1, 2, 4, 6, seed=3)
    assert a.shape == (4, 6, 2) and torch.allclose(a, b, atol=1e-6)


def test_re_step2_lambda_decreasing_d_and_fixed_lambda():
    d_ref = 100.0
    # D falls with lambda as in the [Re] report's Table 1 (gaps 17.6 %, 10.2 %, 6.7 %, 5.9 %, ...)
    gaps = {0.01: 0.176, 0.02: 0.1018, 0.03: 0.0671, 0.04: 0.0593, 0.05: 0.0554, 0.06: 0.0512, 0.07: 0.0488}
    lam6, rows6 = re_step2_lambda(lambda lam: d_ref * (1 + gaps[round(lam, 2)]), d_ref, 0.06)
    lam5, rows5 = re_step2_lambda(lambda lam: d_ref * (1 + gaps[round(lam, 2)]), d_ref, 0.05)
    assert lam6 == pytest.approx(0.04) and len(rows6) == 4
    assert lam5 == pytest.approx(0.07) and len(rows5) == 7
    # the repository's version trains every step with the same lambda: a deterministic D never moves,
    # so the loop never meets either stopping rule
    lam, rows = re_step2_lambda(lambda lam: 110.0, d_ref, 0.05, max_steps=20)
    assert math.isnan(lam) and len(rows) == 20
    # a D that gets worse stops the search and keeps the previous lambda
    seq = iter([120.0, 115.0, 118.0])
    lam, rows = re_step2_lambda(lambda lam: next(seq), d_ref, 0.05)
    assert lam == pytest.approx(0.02) and len(rows) == 3


def test_train_point_returns_d_and_c():
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 2)).eval()
    x = torch.rand(16, 1, 28, 28)
    r = train_point(clf, x, 1, 1, 0.05, steps=3, n_alpha=2, n_beta=3, tail=2, seed=0, batch_size=4)
    assert len(r.history["D"]) == 3 and r.D > 0 and math.isfinite(r.C) and r.C <= 1e-6
    with pytest.raises(ValueError, match="tail"):
        train_point(clf, x, 1, 1, 0.05, steps=3, n_alpha=2, n_beta=3, tail=4, seed=0)


# --- CIFAR-10 in its real layout (tiny generated files) ---------------------------------------

def _tiny_cifar(folder, n=20, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for name in (*data.CIFAR10_BATCHES, "test_batch"):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.permutation(np.arange(n) % 10)]  # every class twice
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": y}, f)


def test_class_pair_horse_truck_from_the_real_layout(tmp_path, monkeypatch):
    _tiny_cifar(tmp_path / "cifar-10-batches-py")
    monkeypatch.setenv("XAI_DATA_CIFAR10", str(tmp_path))
    ds = load_cifar10(verbose=False)
    pair = class_pair(ds, CIFAR10_HORSE_TRUCK, val_share=0.2, seed=0, pixel_max=255.0)
    assert pair.names == ("horse", "truck")
    assert len(pair.y_train) + len(pair.y_val) == 20 and len(pair.y_val) == 4 and len(pair.y_test) == 4
    assert set(pair.y_val.tolist()) == {0, 1} and set(pair.y_train.tolist()) == {0, 1}
    assert pair.x_train.shape[1:] == (3, 32, 32)
    assert pair.x_train.max() > 1.5 and pair.x_train.max() <= 255.0  # raw byte range
    # the same image in [0, 1] and in [0, 255]
    unit = class_pair(ds, CIFAR10_HORSE_TRUCK, val_share=0.2, seed=0)
    assert torch.allclose(unit.x_train * 255.0, pair.x_train)
    horses = ds.x_train[ds.y_train == 7]
    assert any(torch.allclose(unit.x_train[0], h) for h in horses) or any(
        torch.allclose(unit.x_train[0], t) for t in ds.x_train[ds.y_train == 9])


def test_class_pair_rejects_bad_input(tmp_path):
    _tiny_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_cifar10(path=tmp_path, verbose=False)
    with pytest.raises(ValueError, match="not labels"):
        class_pair(ds, (7, 10))
    with pytest.raises(ValueError, match="val_share"):
        class_pair(ds, (7, 9), val_share=1.0)
    with pytest.raises(ValueError, match="pixel_max"):
        class_pair(ds, (7, 9), pixel_max=0)


def test_scaled_inputs_flatten_a_relu_classifier():
    """The input-scaling stand-in: a classifier fed inputs 255 times smaller than its training range
    sees nearly the same (bias-dominated) input for every image, so its outputs barely vary."""
    torch.manual_seed(0)
    m = build_classifier("base").eval()
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        spread_full = probs_fn(m)(x)[:, 0].std()
        spread_small = probs_fn(m, input_scale=1 / 255)(x)[:, 0].std()
    assert spread_small < spread_full / 20


def test_cached_explainer_and_point_reload_the_same_results(tmp_path):
    from lib.cache import ArtifactCache
    from lib.gce import GCEConfig
    from lib.gce_re import cached_explainer, cached_point

    torch.manual_seed(0)
    cache = ArtifactCache(tmp_path, committed=[])
    clf = build_classifier("resnet").eval()
    x = torch.rand(16, 1, 28, 28)
    cfg = GCEConfig(K=1, L=1, lam=0.05, steps=2, n_alpha=2, n_beta=3, batch_size=4, classifier_mode="train")
    d1, i1 = cached_explainer("resnet", clf, "k", x, cfg, data_fingerprint="t", cache=cache, progress=False, verbose=False)
    d2, i2 = cached_explainer("resnet", clf, "k", x, cfg, data_fingerprint="t", cache=cache, progress=False, verbose=False)
    assert not i1["from_cache"] and i2["from_cache"] and i1["I"] == i2["I"] and len(i1["D"]) == 2
    z = torch.randn(3, 2)
    with torch.no_grad():
        assert torch.equal(d1(z), d2(z))
    r1, hit1 = cached_point(clf, "k", x, 1, 1, 0.05, steps=2, n_alpha=2, n_beta=3, tail=1, seed=0, data_fingerprint="t",
                            batch_size=4, cache=cache)
    r2, hit2 = cached_point(clf, "k", x, 1, 1, 0.05, steps=2, n_alpha=2, n_beta=3, tail=1, seed=0, data_fingerprint="t",
                            batch_size=4, cache=cache)
    assert not hit1 and hit2 and (r1.D, r1.C) == (r2.D, r2.C)
