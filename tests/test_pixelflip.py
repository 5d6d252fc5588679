"""lib.pixelflip: orderings, curves and their areas; the true relevance ranks best."""
import numpy as np
import pytest
import torch
from torch import nn

from lib.pixelflip import area, relevance_ordering, relevance_ordering_test


def test_ordering_is_ascending_and_breaks_ties_at_random():
    m = torch.tensor([[3.0, 1.0, 2.0, 1.0, 1.0]])
    orders = {tuple(relevance_ordering(m, torch.Generator().manual_seed(s))[0].tolist()) for s in range(20)}
    assert all(o[3:] == (2, 0) for o in orders)  # least relevant first, the most relevant last
    assert all(set(o[:3]) == {1, 3, 4} for o in orders) and len(orders) > 1  # ties in random order


def known_model():
    """Class 0's logit grows with pixels 0-9 of an 8x8 image; the rest is ignored."""
    lin = nn.Linear(64, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, :10] = 2.0
        lin.bias.copy_(torch.tensor([-5.0, 0.0]))
    net = nn.Sequential(nn.Flatten(), lin)
    return lambda x: torch.softmax(net(x), 1)


def test_the_true_relevance_ranks_best():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 1, 8, 8)
    x.view(4, -1)[:, :10] = 1.0  # class 0 with high confidence
    y = torch.zeros(4, dtype=torch.long)
    true = torch.zeros_like(x)
    true.view(4, -1)[:, :10] = 1.0
    random = torch.rand(x.shape, generator=g)
    inverted = -true
    res = {name: relevance_ordering_test(known_model(), x, y, m, group_size=4, n_draws=64, generator=g, progress=False)
           for name, m in [("true", true), ("random", random), ("inverted", inverted)]}
    auc = {k: area(r.distortion, r.rate).mean() for k, r in res.items()}
    assert auc["true"] < auc["random"] < auc["inverted"]
    acc = {k: area(r.accuracy, r.rate).mean() for k, r in res.items()}
    assert acc["true"] > acc["inverted"]
    r = res["true"]
    assert r.rate[0] == 1.0 and r.rate[-1] == 0.0 and r.distortion.shape == (4, 17)
    assert np.all(r.distortion[:, 0] == 0)  # nothing randomised: no change
    assert np.allclose(r.distortion[:, :14], 0)  # the irrelevant 54 pixels go first (13.5 steps of 4)


def test_area_of_constant_curves_and_sparse_window():
    rate = np.linspace(1, 0, 11)
    curves = np.ones((2, 11)) * np.array([[0.5], [2.0]])
    assert np.allclose(area(curves, rate), [0.5, 2.0])
    assert np.allclose(area(curves, rate, max_rate=0.2), [0.5, 2.0])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        relevance_ordering_test(known_model(), torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), torch.zeros(1, 64))


def test_tie_free_ranks_follow_the_ordering():
    from lib.pixelflip import tie_free_ranks

    m = torch.tensor([[[[3.0, 1.0], [2.0, 1.0]]]])
    r = tie_free_ranks(m, torch.Generator().manual_seed(0))
    assert sorted(r.flatten().tolist()) == [0, 1, 2, 3]
    assert r.flatten()[0] == 3 and r.flatten()[2] == 2  # most relevant last
    assert set(r.flatten()[[1, 3]].tolist()) == {0, 1}  # the tie takes the two lowest ranks


def test_baseline_mode_most_relevant_first_drops_the_probability_fastest():
    from lib.pixelflip import baseline_flip_curves

    x = torch.zeros(2, 1, 8, 8)
    x.view(2, -1)[:, :10] = 1.0
    true = torch.zeros_like(x)
    true.view(2, -1)[:, :10] = 1.0
    labels = torch.zeros(2, dtype=torch.long)
    good = baseline_flip_curves(known_model(), x, labels, true, group_size=4)
    bad = baseline_flip_curves(known_model(), x, labels, -true, group_size=4)
    assert good.shape == (2, 16)
    assert good.mean() < bad.mean()
    assert np.allclose(good[:, 2:], good[0, -1])  # after 3 steps of 4 the 10 relevant pixels are at the baseline (0)
    assert np.allclose(bad[:, :13], bad[0, 0])  # the 54 irrelevant pixels go first: no change for 13 steps
