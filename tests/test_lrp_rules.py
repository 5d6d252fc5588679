"""The LRP rules of lib.attributions (iNNvestigate 1.0.8's, as captum propagation rules) against hand
computations in numpy.

Every network here is small enough to write as matrices: a convolution becomes the matrix of its
weights by explicit loops over its positions (``_conv_matrix``), average pooling the matrix of its
quarters, and each rule a few lines of numpy on those matrices, written from the rules' formulas
(iNNvestigate relevance_rule.py @ 1.0.8), not from the code under test.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

SAFE = 1e-7  # iNNvestigate's SafeDivide factor


# ---------------------------------------------------------------------------------------------
# numpy: layers as matrices, rules as formulas
# ---------------------------------------------------------------------------------------------
def _conv_matrix(w: np.ndarray, h: int, wd: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(weights, connectivity) of a stride-1 convolution as (O*H'*W', C*H*W) matrices, zero padding."""
    o_ch, c_ch, k, _ = w.shape
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    m = np.zeros((o_ch * ho * wo, c_ch * h * wd))
    conn = np.zeros_like(m)
    for o in range(o_ch):
        for oy in range(ho):
            for ox in range(wo):
                row = (o * ho + oy) * wo + ox
                for c in range(c_ch):
                    for ky in range(k):
                        for kx in range(k):
                            iy, ix = oy + ky - pad, ox + kx - pad
                            if 0 <= iy < h and 0 <= ix < wd:
                                col = (c * h + iy) * wd + ix
                                m[row, col] = w[o, c, ky, kx]
                                conn[row, col] = 1.0
    return m, conn


def _pool_matrix(c_ch: int, h: int, wd: int) -> np.ndarray:
    """2x2 average pooling (floor) as a (C*H/2*W/2, C*H*W) matrix."""
    ho, wo = h // 2, wd // 2
    p = np.zeros((c_ch * ho * wo, c_ch * h * wd))
    for c in range(c_ch):
        for oy in range(ho):
            for ox in range(wo):
                for dy in range(2):
                    for dx in range(2):
                        p[(c * ho + oy) * wo + ox, (c * h + 2 * oy + dy) * wd + 2 * ox + dx] = 0.25
    return p


def _sdiv(a, b):
    return a / (b + (b == 0) * SAFE)


def _np_epsilon(m, b, x, r, eps):
    z = m @ x + b
    return x * (m.T @ (r / (z + eps * np.where(z >= 0, 1.0, -1.0))))


def _np_z(m, b, x, r):
    return x * (m.T @ _sdiv(r, m @ x + b))


def _np_gradient(m, r):
    return m.T @ r


def _np_alpha_beta(m, b, x, r, alpha, beta):
    """Contributions c_ji = w_ji x_i split by sign; each denominator holds the whole bias (iNNvestigate)."""
    c = m * x[None, :]
    pos, neg = c.clip(min=0), c.clip(max=0)
    out = alpha * (pos * _sdiv(r, pos.sum(1) + b)[:, None]).sum(0)
    if beta:
        out = out - beta * (neg * _sdiv(r, neg.sum(1) + b)[:, None]).sum(0)
    return out


def _np_flat(conn, r):
    return (conn * _sdiv(r, conn.sum(1))[:, None]).sum(0)


def _np_bounded(m, x, low, high, r):
    c = m * x[None, :] - low * m.clip(min=0) - high * m.clip(max=0)
    return (c * _sdiv(r, c.sum(1))[:, None]).sum(0)


# ---------------------------------------------------------------------------------------------
# the tiny CNN: Conv(1->2, 3x3, same) - ReLU - AvgPool 2 - Flatten - Dense 8->4 - ReLU - Dense 4->3
# ---------------------------------------------------------------------------------------------
def _tiny_cnn(seed: int = 1, bias: bool = True) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)).double().eval()
    with torch.no_grad():
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g, dtype=torch.float64) if bias else 0.0)
    return net


def _np_lrp(net: nn.Sequential, x: torch.Tensor, rule: str, target: int, eps: float = 0.2) -> np.ndarray:
    """iNNvestigate's presets on the tiny CNN, by hand, for one image x (1, 4, 4)."""
    conv, d1, d2 = net[0], net[4], net[6]
    m1, conn = _conv_matrix(conv.weight.detach().numpy(), 4, 4, 1)
    b1 = np.repeat(conv.bias.detach().numpy(), 16)
    pool = _pool_matrix(2, 4, 4)
    w2, b2 = d1.weight.detach().numpy(), d1.bias.detach().numpy()
    w3, b3 = d2.weight.detach().numpy(), d2.bias.detach().numpy()
    x0 = x.numpy().reshape(-1)
    a1 = np.maximum(m1 @ x0 + b1, 0)
    p = pool @ a1
    a2 = np.maximum(w2 @ p + b2, 0)
    out = w3 @ a2 + b3
    r3 = np.zeros(3)
    if rule == "deep_taylor_bounded":
        r3[target] = max(out[target], 0.0)  # the ReLU on the output
        r_a2 = _np_alpha_beta(w3, b3, a2, r3, 1, 0)
        r_p = _np_alpha_beta(w2, b2, p, r_a2, 1, 0)
        r_a1 = _np_gradient(pool, r_p)
        return _np_bounded(m1, x0, x0.min(), x0.max(), r_a1).reshape(1, 4, 4)
    r3[target] = out[target]
    r_a2 = _np_epsilon(w3, b3, a2, r3, eps)
    r_p = _np_epsilon(w2, b2, p, r_a2, eps)
    r_a1 = _np_z(pool, 0.0, a1, r_p)
    if rule == "epsilon":
        r_x = _np_epsilon(m1, b1, x0, r_a1, eps)
    elif rule.endswith("_flat"):
        r_x = _np_flat(conn, r_a1)
    else:
        alpha, beta = (1, 0) if rule == "preset_a" else (2, 1)
        r_x = _np_alpha_beta(m1, b1, x0, r_a1, alpha, beta)
    return r_x.reshape(1, 4, 4)


def _signed_images(n: int = 3, seed: int = 1) -> torch.Tensor:
    x = torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x - x.mean(dim=(1, 2, 3), keepdim=True)  # centred, as the RDE chapter's inputs


# ---------------------------------------------------------------------------------------------
# the presets on the tiny CNN against the hand computation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["epsilon", "preset_a", "preset_b", "preset_a_flat", "preset_b_flat",
                                  "deep_taylor_bounded"])
def test_lrp_presets_match_the_hand_computation(rule):
    from lib.attributions import lrp

    net = _tiny_cnn()
    x = _signed_images()
    r = lrp(net, x, rule=rule, epsilon=0.2)
    targets = net(x).argmax(1)
    assert r.shape == x.shape and r.dtype == x.dtype
    for i in range(len(x)):
        want = _np_lrp(net, x[i], rule, int(targets[i]))
        assert np.abs(want).max() > 1e-3  # a non-trivial map
        np.testing.assert_allclose(r[i].numpy(), want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


def test_lrp_presets_explain_a_given_target_and_deep_taylor_zeroes_a_negative_logit():
    from lib.attributions import lrp

    net = _tiny_cnn()
    x = _signed_images()[:1]
    t = int(net(x).argmax(1))
    with torch.no_grad():
        net[6].bias[t] -= net(x)[0, t] + 1.0  # the top class's logit is now -1, its positive inputs unchanged
    assert float(net(x).detach()[0, t]) == pytest.approx(-1.0)
    want = _np_lrp(net, x[0], "preset_b", t)
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(lrp(net, x, target=t, rule="preset_b")[0].numpy(), want, rtol=1e-9, atol=1e-12)
    assert np.abs(_np_lrp(net, x[0], "preset_a", t)).max() > 1e-3  # α1β0 alone would not give zero here
    assert torch.equal(lrp(net, x, target=t, rule="deep_taylor_bounded").abs(), torch.zeros_like(x))
    with pytest.raises(ValueError, match="rule"):
        lrp(net, x, rule="alpha2beta1")


def test_deep_taylor_passes_relevance_of_inactive_units_as_innvestigate():
    """The gradient mapping on pooling gives relevance to units whose ReLU is off; iNNvestigate's
    conv rule (ReLU built into the layer) redistributes it, and so must captum's pass-through."""
    from lib.attributions import lrp

    net = _tiny_cnn()
    x = _signed_images()
    with torch.no_grad():
        pre = net[0](x)
    assert bool((pre <= 0).any()) and bool((pre > 0).any())  # some units are off: the case this test is about
    r = lrp(net, x, rule="deep_taylor_bounded")
    t = net(x).argmax(1)
    for i in range(len(x)):
        np.testing.assert_allclose(r[i].numpy(), _np_lrp(net, x[i], "deep_taylor_bounded", int(t[i])), rtol=1e-9,
                                   atol=1e-12)


@pytest.mark.parametrize("rule", ["preset_a_flat", "preset_b_flat", "deep_taylor_bounded"])
def test_conserving_presets_conserve_the_logit_without_biases(rule):
    """Without biases: flat, z^B, α1β0, the gradient mapping and LRP-0 conserve relevance (ε absorbs
    some, so the dense layers' ε is tiny here); the map sums to the explained logit."""
    from lib.attributions import lrp

    net = _tiny_cnn(bias=False)
    x = _signed_images(4, seed=5)
    logit = net(x).max(1).values.detach()
    assert bool((logit > 0).all())
    r = lrp(net, x, rule=rule, epsilon=1e-12)
    np.testing.assert_allclose(r.sum(dim=(1, 2, 3)).numpy(), logit.numpy(), rtol=1e-8)


def test_alpha2_beta1_preset_does_not_conserve_with_biases_but_matches_with_signed_inputs():
    """The same rule, biases included: the sum is not the logit (each denominator holds the whole
    bias), so the conservation test above is not passing by accident of the rule's form."""
    from lib.attributions import lrp

    net = _tiny_cnn(bias=True)
    x = _signed_images(4, seed=5)
    logit = net(x).max(1).values.detach()
    r = lrp(net, x, rule="preset_b", epsilon=1e-12)
    assert not np.allclose(r.sum(dim=(1, 2, 3)).numpy(), logit.numpy(), rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# the rule classes one by one, through captum's LRP, on one layer with hand-set numbers
# ---------------------------------------------------------------------------------------------
def _captum(net: nn.Module, x: torch.Tensor, target: int, layer: nn.Module, rule) -> torch.Tensor:
    """captum's LRP with ``rule`` on ``layer`` (captum deletes the rules after each call)."""
    from captum.attr import LRP

    layer.rule = rule
    return LRP(net).attribute(x.clone().requires_grad_(True), target=target).detach()


def test_alpha_beta_rule_on_one_dense_layer_by_hand():
    """Worked by hand: x = (1, -2, 0.5), W row 0 = (2, 1, -4), b0 = 0.5: contributions (2, -2, -2),
    positive sum 2 + b = 2.5, negative sum -4 + b = -3.5, output z = -1.5 is the relevance R."""
    from lib.attributions import AlphaBetaRule

    lin = nn.Linear(3, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, 1.0, -4.0], [1.0, 1.0, 1.0]]))
        lin.bias.copy_(torch.tensor([0.5, -0.25]))
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    net = nn.Sequential(lin)
    r = _captum(net, x, 0, lin, AlphaBetaRule(2.0, 1.0))
    z = -1.5
    want = 2 * np.array([2.0, 0.0, 0.0]) * z / 2.5 - np.array([0.0, -2.0, -2.0]) * z / -3.5
    np.testing.assert_allclose(r[0].numpy(), want, rtol=1e-12)
    r = _captum(net, x, 0, lin, AlphaBetaRule(1.0, 0.0, bias=False))  # no bias: positive part over its sum 2
    np.testing.assert_allclose(r[0].numpy(), np.array([2.0, 0.0, 0.0]) * z / 2.0, rtol=1e-12)
    with pytest.raises(ValueError):
        AlphaBetaRule(-1.0, 0.0)


def test_flat_and_bounded_rules_on_one_convolution_by_hand():
    """A 1x3 input x and one 1x3 'same' convolution with weights (1, -2, 3): output 0 sees
    (padding, x0, x1) with weights (-2, 3) on x0, x1; output 1 sees (x0, x1, x2) with (1, -2, 3).
    The explained output j starts with relevance z_j."""
    from lib.attributions import BoundedRule, FlatRule

    conv = nn.Conv2d(1, 1, (1, 3), padding=(0, 1)).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -2.0, 3.0]]]]))
        conv.bias.fill_(10.0)  # ignored by both rules (but part of z_j)

    class Head(nn.Module):  # the convolution's outputs as the scores, no other module for LRP to visit
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, t):
            return self.conv(t).flatten(1)

    x = torch.tensor([[[[0.5, -1.0, 2.0]]]], dtype=torch.float64)
    z = conv(x).detach().numpy().reshape(-1)
    x0, x1, x2 = 0.5, -1.0, 2.0
    flat = lambda j: _captum(Head(), x, j, conv, FlatRule())[0, 0, 0].numpy()
    np.testing.assert_allclose(flat(0), [z[0] / 2, z[0] / 2, 0.0], rtol=1e-12)  # 2 inputs inside the image
    np.testing.assert_allclose(flat(1), [z[1] / 3] * 3, rtol=1e-12)  # 3 inputs
    lo, hi = -1.0, 2.0  # z^B: x_i w_i - low w_i+ - high w_i-, inside the image only, bias ignored
    bounded = lambda j: _captum(Head(), x, j, conv, BoundedRule(lo, hi))[0, 0, 0].numpy()
    c0 = np.array([x0 * -2 - hi * -2, x1 * 3 - lo * 3, 0.0])
    c1 = np.array([x0 * 1 - lo * 1, x1 * -2 - hi * -2, x2 * 3 - lo * 3])
    np.testing.assert_allclose(bounded(0), c0 * z[0] / c0.sum(), rtol=1e-12)
    np.testing.assert_allclose(bounded(1), c1 * z[1] / c1.sum(), rtol=1e-12)


def test_gradient_and_z_rules_on_average_pooling_by_hand():
    from lib.attributions import GradientRule, ZRule

    pool = nn.AvgPool2d(2)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = pool

        def forward(self, t):
            return self.pool(t).flatten(1)

    x = torch.tensor([[[[1.0, 3.0], [0.0, 4.0]]]], dtype=torch.float64)
    # the output 2 as relevance; gradient: a quarter each, whatever the value (the zero input too)
    np.testing.assert_allclose(_captum(Head(), x, 0, pool, GradientRule())[0, 0].numpy(), np.full((2, 2), 2.0 / 4),
                               rtol=1e-12)
    # LRP-0: in proportion to the value, x_i / 4 / 2 * 2
    np.testing.assert_allclose(_captum(Head(), x, 0, pool, ZRule())[0, 0].numpy(), x[0, 0].numpy() / 4, rtol=1e-12)
