"""Tests of lib.attributions: block reduction, masking, the log-odds metric and the baselines."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from lib.attributions import (
    block_masks,
    block_segments,
    blocks_to_pixels,
    deepshap_blocks,
    delta_log_odds,
    integrated_gradients_blocks,
    l1_normalise,
    lime_blocks,
    log_odds,
    mask_top_k,
    num_blocks,
    saliency_blocks,
    shap_blocks,
    to_blocks,
    top_k_blocks,
)
from lib.models.resnet import resnet20


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
class LinearLogit(nn.Module):
    """Two-class model with logits ``[0, <w, x> + b]``: the log-odds of class 1 is ``<w, x> + b``."""

    def __init__(self, w: torch.Tensor, b: float = 0.0) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.lin = nn.Linear(w.numel(), 2)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.weight[1] = w.flatten()
            self.lin.bias.zero_()
            self.lin.bias[1] = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.flatten(x))


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def tiny_cnn(c: int = 1, k: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, k)
    ).eval()


# --------------------------------------------------------------------------------------------
# Block geometry and reduction
# --------------------------------------------------------------------------------------------
def test_to_blocks_hand_computed() -> None:
    m = torch.arange(16.0).reshape(1, 4, 4)
    # blocks (row-major): {0,1,4,5}=10, {2,3,6,7}=18, {8,9,12,13}=42, {10,11,14,15}=50; total 120
    np.testing.assert_allclose(to_blocks(m, 2, normalise=False)[0].numpy(), [10, 18, 42, 50])
    np.testing.assert_allclose(to_blocks(m, 2)[0].numpy(), np.array([10, 18, 42, 50]) / 120, rtol=1e-6)
    # channels are summed too; non-square blocks (1 row x 2 columns) give 8 blocks
    two = torch.stack([m[0], 2 * m[0]]).unsqueeze(0)  # (1, 2, 4, 4)
    np.testing.assert_allclose(to_blocks(two, 2, normalise=False)[0].numpy(), 3 * np.array([10, 18, 42, 50]))
    np.testing.assert_allclose(
        to_blocks(m, (1, 2), normalise=False)[0].numpy(), [1, 5, 9, 13, 17, 21, 25, 29]
    )


def test_to_blocks_signed_and_absolute() -> None:
    m = torch.tensor([[[1.0, -3.0], [0.0, 0.0]]])  # one 2x2 image, 1x1 blocks
    np.testing.assert_allclose(to_blocks(m, 1)[0].numpy(), [0.25, -0.75, 0, 0])
    np.testing.assert_allclose(to_blocks(m, 1, absolute=True)[0].numpy(), [0.25, 0.75, 0, 0])
    # a block whose pixels cancel sums to zero before normalisation
    np.testing.assert_allclose(to_blocks(m.reshape(1, 1, 4), (1, 2), normalise=False)[0].numpy(), [-2, 0])
    assert torch.equal(l1_normalise(torch.zeros(2, 3)), torch.zeros(2, 3))


def test_block_masks_partition_row_major() -> None:
    masks = block_masks((4, 6), 2)
    assert masks.shape == (6, 4, 6)
    assert torch.equal(masks.sum(0), torch.ones(4, 6, dtype=torch.long))
    assert masks[1, 0:2, 2:4].all() and masks[1].sum() == 4  # block 1: first row of blocks, 2nd column
    assert masks[3, 2:4, 0:2].all()  # block 3 starts the second row of blocks
    seg = block_segments((4, 6), 2)
    assert seg[3, 5] == 5 and seg[0, 0] == 0
    with pytest.raises(ValueError):
        block_masks((28, 28), 3)
    assert num_blocks((28, 28), 2) == 196 and num_blocks((224, 224), 16) == 196
    v = torch.arange(6.0).unsqueeze(0)
    assert torch.equal(blocks_to_pixels(v, (4, 6), 2)[0], torch.from_numpy(seg).float())


def test_mask_top_k_hand_example() -> None:
    x = torch.ones(1, 1, 4, 4)
    imp = torch.tensor([[0.1, 0.7, 0.15, 0.05]])
    out = mask_top_k(x, imp, fraction=0.25, block=2, mask_value=-1.0)  # k = round(1) = 1: block 1
    expected = torch.ones(1, 1, 4, 4)
    expected[0, 0, 0:2, 2:4] = -1.0
    assert torch.equal(out, expected)
    sel = top_k_blocks(imp, 0.5)
    assert sel.tolist() == [[False, True, True, False]]
    # ties broken towards the lower index; k = round(0.1 * 196) = 20
    assert top_k_blocks(torch.zeros(1, 4), 0.25).tolist() == [[True, False, False, False]]
    assert int(top_k_blocks(torch.rand(3, 196), 0.1).sum(1)[0]) == 20
    # per-channel mask values on a 3-channel image
    x3 = torch.zeros(1, 3, 4, 4)
    fill = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    out3 = mask_top_k(x3, imp, 0.25, 2, fill)
    assert torch.equal(out3[0, :, 0, 2], torch.tensor([1.0, 2.0, 3.0])) and out3[0, :, 3, 0].abs().sum() == 0


# --------------------------------------------------------------------------------------------
# The log-odds metric
# --------------------------------------------------------------------------------------------
def test_log_odds_matches_definition() -> None:
    logits = torch.randn(5, 3)
    cls = torch.tensor([0, 1, 2, 1, 0])
    p = torch.softmax(logits.double(), 1)[torch.arange(5), cls]
    np.testing.assert_allclose(log_odds(logits, cls).numpy(), torch.log(p / (1 - p)).numpy(), rtol=1e-10)


@pytest.mark.parametrize("mask_value", [0.0, 0.3])
def test_delta_log_odds_linear_model_analytic(mask_value: float) -> None:
    torch.manual_seed(1)
    w = torch.randn(1, 4, 4)
    model = LinearLogit(w, b=0.2)
    x = torch.rand(6, 1, 4, 4)
    imp = torch.rand(6, 4)
    got = delta_log_odds(model, x, imp, fraction=0.5, block=2, mask_value=mask_value)
    # by hand: log-odds of class 1 is s = <w, x> + b, of class 0 it is -s; masking blocks B
    # changes s by -sum_{pixels in B} w * (x - mask_value)
    s = (w * x).flatten(1).sum(1) + 0.2
    cls = (s > 0).long()
    sign = torch.where(cls == 1, 1.0, -1.0)
    contrib = to_blocks(w * (x - mask_value), 2, normalise=False)  # (6, 4)
    top2 = torch.argsort(imp, dim=1, descending=True)[:, :2]
    expected = sign * contrib.gather(1, top2).sum(1)
    np.testing.assert_allclose(got.numpy(), expected.double().numpy(), rtol=1e-5, atol=1e-5)
    # a wrong ranking gives a different answer (the metric depends on the importance)
    worst = delta_log_odds(model, x, -imp, fraction=0.5, block=2, mask_value=mask_value)
    assert not torch.allclose(worst, got)


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------
def test_gradient_baselines_on_linear_model_match_weights() -> None:
    torch.manual_seed(2)
    w = torch.randn(1, 8, 8)
    model = LinearLogit(w, b=-0.1)
    x = torch.rand(3, 1, 8, 8)
    target = torch.ones(3, dtype=torch.long)
    sal = saliency_blocks(model, x, 2, target=target)
    np.testing.assert_allclose(sal.numpy(), to_blocks(w.abs().expand(3, 1, 8, 8), 2).numpy(), rtol=1e-5)
    ig = integrated_gradients_blocks(model, x, 2, target=target, n_steps=16)
    exact = to_blocks(w * x, 2)  # IG of a linear function from a zero baseline is w * x
    np.testing.assert_allclose(ig.numpy(), exact.numpy(), rtol=1e-4, atol=1e-6)
    ds = deepshap_blocks(model, x, torch.zeros(4, 1, 8, 8), 2, target=target)
    np.testing.assert_allclose(ds.numpy(), exact.numpy(), rtol=1e-4, atol=1e-6)
    # Kernel SHAP of an additive game is exact: Shapley value of block i = its contribution
    sh = shap_blocks(model, x[:2], 2, nsamples=200, target=target[:2], output="log_odds")
    np.testing.assert_allclose(sh.numpy(), exact[:2].numpy(), rtol=1e-3, atol=1e-5)


def test_lime_recovers_linear_contributions() -> None:
    torch.manual_seed(3)
    w = 0.05 * torch.randn(1, 8, 8)  # small logits: probabilities nearly linear in the blocks
    model = LinearLogit(w)
    x = torch.rand(2, 1, 8, 8)
    lm = lime_blocks(model, x, 2, num_samples=400, target=torch.ones(2, dtype=torch.long))
    exact = to_blocks(w * x, 2)
    for i in range(2):
        assert stats.spearmanr(lm[i].numpy(), exact[i].numpy()).statistic > 0.9
    # deterministic for a fixed seed
    assert torch.equal(lm, lime_blocks(model, x, 2, num_samples=400, target=torch.ones(2, dtype=torch.long)))


def test_all_baselines_run_on_small_models() -> None:
    x = torch.rand(2, 1, 8, 8)
    cnn = tiny_cnn()
    net = resnet20(n_classes=2).eval()
    bg = torch.rand(5, 1, 8, 8)
    results = {
        "lime": lime_blocks(cnn, x, 2, num_samples=50),
        "shap": shap_blocks(cnn, x, 2, nsamples=60),
        "deepshap": deepshap_blocks(cnn, x, bg, 2, check_additivity=True),
        "deepshap_resnet": deepshap_blocks(net, x, bg, 2, check_additivity=True),
        "saliency": saliency_blocks(net, x, 2),
        "ig": integrated_gradients_blocks(net, x, 4, n_steps=8),
    }
    for name, r in results.items():
        n_b = 4 if name == "ig" else 16
        assert r.shape == (2, n_b), name
        assert torch.isfinite(r).all(), name
        np.testing.assert_allclose(r.abs().sum(1).numpy(), 1.0, rtol=1e-5, err_msg=name)


def test_deepshap_of_the_predicted_class_only_equals_the_full_computation() -> None:
    """The fast path (shap's ranked_outputs=1: one backward pass per image) gives the same maps as
    explaining every output and picking the predicted class."""
    torch.manual_seed(1)
    x = torch.rand(4, 1, 8, 8)
    cnn = tiny_cnn()
    bg = torch.rand(5, 1, 8, 8)
    fast = deepshap_blocks(cnn, x, bg, 2)
    full = deepshap_blocks(cnn, x, bg, 2, check_additivity=True)  # the path over all outputs
    pred = deepshap_blocks(cnn, x, bg, 2, target=cnn(x).argmax(1))
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fast, pred, rtol=1e-5, atol=1e-7)


def test_baselines_generic_three_channel() -> None:
    torch.manual_seed(4)
    model = tiny_cnn(c=3)
    x = torch.rand(1, 3, 8, 8)
    fill = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)
    assert lime_blocks(model, x, 4, num_samples=30, mask_value=0.5).shape == (1, 4)
    assert shap_blocks(model, x, 4, nsamples=20, mask_value=fill).shape == (1, 4)
    assert integrated_gradients_blocks(model, x, 4, baseline=fill, n_steps=4).shape == (1, 4)


# --------------------------------------------------------------------------------------------
# Helpers of the CXPlain chapter: quiet() and the mask overlay
# --------------------------------------------------------------------------------------------
def test_quiet_silences_warnings_and_prints_but_not_errors(capsys) -> None:
    import sys
    import warnings

    from lib.attributions import quiet

    with quiet():
        print("chatter")
        print("more chatter", file=sys.stderr)
        warnings.warn("library warning")
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    with pytest.raises(RuntimeError, match="boom"), quiet():
        raise RuntimeError("boom")
    print("after")
    assert capsys.readouterr().out == "after\n"


def test_mask_overlay_tints_exactly_the_masked_pixels() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from lib import plotting

    x = torch.rand(1, 8, 8)
    sel = top_k_blocks(torch.arange(16.0).view(1, 16), 0.25)  # the 4 last blocks
    pix = blocks_to_pixels(sel, (8, 8), 2)[0]
    fig, axes = plotting.new_figure(1, 1)
    assert plotting.mask_overlay(axes[0, 0], x, pix, "t") is fig
    rgb = axes[0, 0].get_images()[0].get_array()
    grey = (x[0] - x.min()) / (x.max() - x.min())
    tinted = ~np.isclose(rgb[..., 0], rgb[..., 2])
    assert np.array_equal(tinted, pix.numpy())
    np.testing.assert_allclose(rgb[~pix.numpy()][:, 1], grey[~pix].numpy(), atol=1e-6)


# --------------------------------------------------------------------------------------------
# Pixel-level baselines shared with the RDE chapter
# --------------------------------------------------------------------------------------------
def _small_cnn(seed=0):
    torch.manual_seed(seed)
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3 * 4 * 4, 5),
                         nn.ReLU(), nn.Linear(5, 3)).double().eval()


def test_squared_saliency_is_the_squared_gradient():
    from lib.attributions import saliency

    net = _small_cnn()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    t = net(x).argmax(1)
    (g,) = torch.autograd.grad(net(x).gather(1, t[:, None]).sum(), x)
    assert torch.allclose(saliency(net, x.detach(), square=True), g**2)
    assert torch.allclose(saliency(net, x.detach()), g.abs())


def test_lrp_ready_is_equivalent_and_lrp_epsilon_conserves_relevance():
    from torch import nn
    from lib.attributions import lrp, lrp_ready

    net = _small_cnn()
    for m in net:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.zeros_(m.bias)  # without biases the epsilon rule (tiny epsilon) conserves relevance
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(lrp_ready(net, (1, 8, 8))(x), net(x), atol=1e-12)
    r = lrp(net, x, epsilon=1e-12)
    logit = net(x).max(1).values
    assert torch.allclose(r.sum(dim=(1, 2, 3)), logit, rtol=1e-6)
    assert lrp(net, x, rule="preset_a").shape == x.shape
    with pytest.raises(ValueError, match="rule"):
        lrp(net, x, rule="alpha2beta1")


def test_smoothgrad_is_seeded_and_input_plus_random_has_the_stated_noise():
    from lib.attributions import input_plus_random, smoothgrad

    net = _small_cnn()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    a, b = smoothgrad(net, x, n_samples=8, seed=1), smoothgrad(net, x, n_samples=8, seed=1)
    assert torch.equal(a, b) and torch.all(a >= 0)
    big = torch.randn(1, 1, 200, 200, dtype=torch.float64)
    noise = input_plus_random(big, torch.Generator().manual_seed(0)) - big
    assert abs(float(noise.std()) / (2 * float(big.std())) - 1) < 0.02


def test_lime_image_map_paints_segment_weights():
    from lib.attributions import lime_image_map

    net = _small_cnn().float()
    x = torch.rand(1, 1, 8, 8)
    m = lime_image_map(net, x, num_samples=50, seed=0)
    assert m.shape == x.shape and torch.isfinite(m).all()
