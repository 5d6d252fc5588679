"""The RDE STL-10 code path (lib.rde_stl10, lib.models.rde_stl10) on tiny generated data and a tiny model of
the reference's layout: STL-10 is not reachable here and the reference's VGG16 is GPU-sized."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from lib.models.rde_stl10 import (IMAGENET_BGR_MEAN, augment, preprocess, rde_stl10_net, resize, to_model_input,
                                  train_rde_stl10)
from lib.rde import NoiseModel, RDEConfig, adf_forward
from lib.rde_stl10 import (STL10Settings, adf_output_gap, map_name, noise_statistics, reference_indices,
                           rde_explain_on_device, run_stl10_experiment, settings_record,
                           streaming_mean_and_low_rank_cov)

TINY = dict(width=2, hidden=8, input_size=32)


def tiny_settings(**kw) -> STL10Settings:
    base = dict(n_images=4, mus=(0.1, 1.0), max_iterations=5, group_size=256, n_draws=4, stats_batch=4, input_size=32)
    return STL10Settings(**{**base, **kw})


# --- the classifier ------------------------------------------------------------------------------------

def test_the_reference_layout_has_vgg16s_parameter_count_and_only_adf_layers():
    with torch.device("meta"):  # no memory: the full VGG16 at 224 x 224
        net = rde_stl10_net()
    # VGG16 has 138,357,544 parameters with 1000 classes; 10 classes remove 4096 * 990 + 990 of them
    assert sum(p.numel() for p in net.parameters()) == 138_357_544 - 4096 * 990 - 990
    kinds = {type(m) for m in net}
    assert kinds == {nn.Conv2d, nn.ReLU, nn.AvgPool2d, nn.Flatten, nn.Linear}
    assert sum(isinstance(m, nn.Conv2d) for m in net) == 13 and sum(isinstance(m, nn.AvgPool2d) for m in net) == 5
    assert [m.out_channels for m in net if isinstance(m, nn.Conv2d)][-1] == 512


def test_tiny_net_runs_through_adf_and_rejects_bad_sizes():
    net = rde_stl10_net(**TINY, seed=0).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert net(x).shape == (2, 10)
    mean, factor = adf_forward(net, x, torch.zeros(2, 3, 3, 32, 32, dtype=torch.float64), "lowrank")
    assert torch.allclose(mean, net(x), atol=1e-10) and factor.abs().max() == 0  # no noise: the forward pass
    with pytest.raises(ValueError, match="multiple of 32"):
        rde_stl10_net(input_size=100)
    with pytest.raises(ValueError, match="width"):
        rde_stl10_net(width=0)


def test_initialisation_follows_keras_truncated_normals():
    net = rde_stl10_net(width=8, hidden=64, input_size=32, seed=1)
    conv = net.conv2a  # fan_in 8 * 9
    std = math.sqrt(2.0 / (8 * 9))
    assert abs(float(conv.weight.detach().std()) / std - 1) < 0.05 and float(conv.weight.detach().abs().max()) <= 2 * std / 0.8796 + 1e-6
    assert float(conv.bias.detach().abs().max()) == 0


def test_mnist_and_stl10_nets_share_one_keras_initialiser():
    """Both reference classifiers are initialised by lib.models.rde_mnist.keras_init_: glorot_normal
    dense layers (std sqrt(2 / (fan_in + fan_out)), truncated at 2 std before the correction)."""
    from lib.models.rde_mnist import KERAS_TRUNC_STD, keras_init_, rde_mnist_net

    net = rde_mnist_net(seed=0)
    dense = net[10]  # Linear(576, 1024)
    std = math.sqrt(2.0 / (576 + 1024))
    w = dense.weight.detach()
    assert abs(float(w.std()) / std - 1) < 0.02 and float(w.abs().max()) <= 2 * std / KERAS_TRUNC_STD + 1e-6
    torch.manual_seed(3)
    again = keras_init_(rde_stl10_net(width=4, hidden=16, input_size=32))
    torch.manual_seed(3)
    assert torch.equal(again.dense1.weight, keras_init_(rde_stl10_net(width=4, hidden=16, input_size=32)).dense1.weight)


def test_resize_is_pils_nearest_neighbour():
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    ours = resize(torch.from_numpy(img).permute(2, 0, 1)[None].float(), 224)[0].permute(1, 2, 0).numpy()
    theirs = np.asarray(pil.fromarray(img).resize((224, 224), pil.NEAREST)).astype(np.float32)
    assert np.array_equal(ours, theirs)


def test_preprocess_is_the_caffe_convention():
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = 1.0  # pure red
    z = preprocess(x)
    # BGR order: channel 2 is red (255 - 123.68), channels 0 and 1 are blue and green at 0 minus their means
    assert torch.allclose(z[0, :, 0, 0], torch.tensor([-IMAGENET_BGR_MEAN[0], -IMAGENET_BGR_MEAN[1],
                                                       255 - IMAGENET_BGR_MEAN[2]]))
    assert to_model_input(torch.rand(2, 3, 96, 96), 64).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="RGB"):
        preprocess(torch.zeros(1, 1, 4, 4))


def test_augment_without_ranges_is_the_identity_and_flips_mirror():
    x = torch.rand(6, 3, 16, 16, dtype=torch.float64)
    same = augment(x, torch.Generator().manual_seed(0), rotation=0, shift=0, shear=0, zoom=0, flip=False)
    assert torch.allclose(same, x, atol=1e-12)
    flipped = augment(x, torch.Generator().manual_seed(0), rotation=0, shift=0, shear=0, zoom=0, flip=True)
    for a, b in zip(flipped, x):
        assert torch.allclose(a, b, atol=1e-12) or torch.allclose(a, b.flip(-1), atol=1e-12)
    assert not torch.allclose(flipped, x)  # six images: some flipped (seeded)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(augment(x, g1), augment(x, g2))  # seeded
    out = augment(x, torch.Generator().manual_seed(4))
    assert out.min() >= x.min() - 1e-12 and out.max() <= x.max() + 1e-12  # bilinear with border fill


def test_training_steps_reduce_nothing_to_nan_and_stop_at_max_steps():
    net = rde_stl10_net(**TINY, seed=0)
    x, y = torch.rand(8, 3, 96, 96), torch.arange(8) % 10
    out = train_rde_stl10(net, x, y, epochs=1, batch_size=4, input_size=32, max_steps=1)
    assert out["steps"] == 1 and all(math.isfinite(v) for v in out["train_loss"]) and not net.training
    with pytest.raises(ValueError, match="epochs"):
        train_rde_stl10(net, x, y, epochs=0)


# --- images and noise statistics -------------------------------------------------------------------------

def test_reference_indices_are_every_160th_of_the_class_sorted_test_set():
    y = torch.arange(8000) % 10  # any order: the reference's generator lists the images by class
    idx = reference_indices(y, 50)
    sorted_positions = torch.argsort(y, stable=True)
    assert torch.equal(idx, sorted_positions[torch.arange(0, 7999, 160)])
    assert torch.bincount(y[idx], minlength=10).tolist() == [5] * 10
    with pytest.raises(ValueError, match="n_images"):
        reference_indices(y[:10], 11)


@pytest.mark.parametrize("tree", [True, False])
def test_streaming_low_rank_covariance_is_exact_for_low_rank_data(tree):
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    coef = torch.randn(40, 3, generator=g, dtype=torch.float64)
    data = 2.0 + torch.einsum("nk,k...->n...", coef, basis)  # rank 3 around a mean
    batches = lambda _pass: (data[j : j + 8] for j in range(0, 40, 8))
    noise = streaming_mean_and_low_rank_cov(batches, rank=5, tree=tree)
    assert torch.allclose(noise.mean, data.mean(0), atol=1e-12) and noise.var is None
    f = noise.factor.flatten(1)
    c = (data - data.mean(0)).flatten(1)
    assert torch.allclose(f.T @ f, c.T @ c / 39, atol=1e-10)


def test_streaming_low_rank_covariance_keeps_the_leading_directions():
    g = torch.Generator().manual_seed(1)
    scales = torch.tensor([10.0, 5.0, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64)
    data = torch.randn(64, 6, generator=g, dtype=torch.float64) * scales
    noise = streaming_mean_and_low_rank_cov(lambda _p: (data[j : j + 16] for j in range(0, 64, 16)), rank=2)
    f = noise.factor
    c = data - data.mean(0)
    _, s, vt = torch.linalg.svd(c, full_matrices=False)
    exact = (s[:2, None] * vt[:2]) / math.sqrt(63)
    # the top two directions of a clearly separated spectrum: the same covariance up to a small error
    assert torch.allclose(f.T @ f, exact.T @ exact, atol=0.05 * float(exact.norm() ** 2))
    with pytest.raises(ValueError, match="rank"):
        streaming_mean_and_low_rank_cov(lambda _p: iter([data]), rank=0)
    with pytest.raises(ValueError, match="no samples"):
        streaming_mean_and_low_rank_cov(lambda _p: iter([]), rank=2)


def test_noise_statistics_live_in_model_input_space():
    x = torch.rand(12, 3, 96, 96)
    noise = noise_statistics(x, tiny_settings(rank=3), seed=0)
    assert noise.mean.shape == (3, 32, 32) and noise.factor.shape == (3, 3, 32, 32)
    # uniform images average 127.5 per channel; the caffe convention subtracts the BGR means
    assert torch.allclose(noise.mean.mean((1, 2)), 127.5 - torch.tensor(IMAGENET_BGR_MEAN, dtype=torch.float64), atol=6)
    again = noise_statistics(x, tiny_settings(rank=3), seed=0)
    assert torch.equal(noise.factor, again.factor)  # seeded augmentation


# --- the experiment -------------------------------------------------------------------------------------

def test_low_rank_adf_matches_monte_carlo_on_a_linear_model():
    """Without ReLUs, low-rank ADF is exact: its moments agree with Monte Carlo within sampling error."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).double()
    g = torch.Generator().manual_seed(0)
    noise = NoiseModel(torch.randn(3, 4, 4, generator=g, dtype=torch.float64), None,
                       torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64))
    x = torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64)
    s = torch.rand(3, 3, 4, 4, generator=g, dtype=torch.float64)
    gap = adf_output_gap(net, x, s, noise, torch.tensor([0, 1, 2]), n_samples=4096, seed=1)
    assert np.all(np.abs(gap["adf_mean"] - gap["mc_mean"]) < 4 * gap["mc_mean_se"])
    assert np.all(np.abs(gap["adf_var"] - gap["mc_var"]) < 4 * gap["mc_var_se"])


def test_the_experiment_runs_end_to_end_on_tiny_data():
    net = rde_stl10_net(**TINY, seed=0).double().eval()
    g = torch.Generator().manual_seed(0)
    x_train, x_test = torch.rand(16, 3, 96, 96, generator=g), torch.rand(20, 3, 96, 96, generator=g)
    y_test = torch.arange(20) % 10
    settings = tiny_settings()
    run = run_stl10_experiment(net, x_test, y_test, torch.rand(16, 3, 96, 96, generator=g), settings, mc_samples=32)
    assert run.indices.tolist() == reference_indices(y_test, 4).tolist()
    assert set(run.curves) == {map_name(0.1), map_name(1.0), "random"}
    for mu, m in run.masks.items():
        assert m.shape == (4, 3, 32, 32) and float(m.min()) >= 0 and float(m.max()) <= 1
        assert run.rde[mu]["iterations"].max() <= 5
    c = run.curves["random"]
    assert c.distortion.shape == (4, math.ceil(3 * 32 * 32 / 256) + 1) and np.allclose(c.distortion[:, 0], 0)
    summary = run.summary()
    assert {"distortion_auc", "distortion_sparse", "rate", "iterations_max"} <= set(summary[map_name(0.1)])
    assert all(np.isfinite(v).all() for v in run.adf_gap.values())
    assert settings_record(settings)["mus"] == [0.1, 1.0] and settings.rde_config(0.1).eta == 10
    del x_train


def test_a_noise_model_without_a_factor_is_refused():
    net = rde_stl10_net(**TINY, seed=0).double().eval()
    noise = NoiseModel(torch.zeros(3, 32, 32, dtype=torch.float64), torch.ones(3, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="covariance factor"):
        run_stl10_experiment(net, torch.rand(4, 3, 96, 96), torch.arange(4), torch.rand(4, 3, 96, 96),
                             tiny_settings(), noise=noise)


def test_rde_and_the_relevance_test_run_on_a_device_with_the_cpu_numbers():
    from fake_device import OnDevice, fake_accelerator

    net = rde_stl10_net(**TINY, seed=0).double().eval()
    g = torch.Generator().manual_seed(2)
    x_test, y_test = torch.rand(8, 3, 96, 96, generator=g), torch.arange(8) % 10
    x_train = torch.rand(8, 3, 96, 96, generator=g)
    settings = tiny_settings(n_images=2, mus=(1.0,), max_iterations=3, rank=3)
    ref = run_stl10_experiment(net, x_test, y_test, x_train, settings, mc_samples=16)
    with fake_accelerator() as dev:
        run = run_stl10_experiment(net.to(dev), x_test, y_test, x_train, settings, mc_samples=16)
    mask = run.masks[1.0]
    assert not isinstance(mask, OnDevice)
    assert torch.allclose(mask, ref.masks[1.0], atol=1e-9)
    assert np.allclose(run.curves["random"].distortion, ref.curves["random"].distortion, atol=1e-6)


def test_rde_explain_on_device_is_rde_explain_on_the_cpu():
    from lib.rde import rde_explain

    net = rde_stl10_net(**TINY, seed=0).double().eval()
    x = to_model_input(torch.rand(2, 3, 96, 96, dtype=torch.float64), 32)
    noise = NoiseModel.from_data(to_model_input(torch.rand(10, 3, 96, 96, dtype=torch.float64), 32), rank=4)
    cfg = RDEConfig(mu=1.0, mode="lowrank", max_iterations=4, eta=10.0)
    a = rde_explain_on_device(net, x, noise, cfg)
    b = rde_explain(net, x, noise, cfg, progress=False)
    assert torch.equal(a.mask, b.mask)


def test_random_affine_theta_is_identity_or_mirror_at_zero_ranges_and_flip_is_drawn_last():
    from lib.models.rde_mnist import random_affine_theta

    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    t = random_affine_theta(8, torch.Generator().manual_seed(0), 0.0, 0.0, 0.0, 0.0)
    assert torch.equal(t, eye.expand(8, 2, 3))
    tf = random_affine_theta(64, torch.Generator().manual_seed(0), 0.0, 0.0, 0.0, 0.0, flip=True)
    assert set(tf[:, 0, 0].tolist()) == {-1.0, 1.0} and torch.equal(tf[:, 1], t[:1, 1].expand(64, 3))
    a = random_affine_theta(8, torch.Generator().manual_seed(1), 10.0, 0.1, 5.0, 0.1)
    b = random_affine_theta(8, torch.Generator().manual_seed(1), 10.0, 0.1, 5.0, 0.1, flip=True)
    assert torch.equal(a[:, :, 2], b[:, :, 2]) and torch.equal(a[:, :, 1], b[:, :, 1])  # same draws; flip only mirrors x
