"""Device placement: the lib code paths that the chapters run with ``device="cuda"``, checked on a
CPU-only machine with a pretend accelerator (``tests/fake_device.py``: a TorchFunctionMode that makes
"cuda" a tagged CPU tensor and raises where a real GPU would: host and device tensors mixed in one
operation, ``.numpy()`` on a device tensor). Each test also compares the numbers with a plain CPU run.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fake_device import DeviceMismatch, OnDevice, fake_accelerator
from lib.cem import CEMConfig, cem_explain, cem_explain_many, sparsity
from lib.models.cem_mnist import CEMAutoencoder, CEMClassifier
from lib.train import fit, predict


def test_fake_accelerator_catches_the_bugs_it_is_for():
    with fake_accelerator() as dev:
        x = torch.ones(4).to(dev)
        assert isinstance(x, OnDevice) and x.device.type == "cuda"
        with pytest.raises(DeviceMismatch):
            _ = x * torch.full((4,), 2.0)  # a host constant of shape (B,), as lib/cem.py had for c
        with pytest.raises(DeviceMismatch):
            x.numpy()
        with pytest.raises(DeviceMismatch):
            nn.Linear(4, 2)(x)  # a model left on the host
        assert float((x * torch.tensor(2.0)).sum()) == 8.0  # 0-dim host scalars are fine, as on CUDA
        assert float(x.cpu().numpy().sum()) == 4.0
        assert x[torch.tensor([0, 1])].device.type == "cuda"  # host index tensors are fine, as on CUDA
        model = nn.Linear(4, 2).to(dev)
        assert all(isinstance(p, OnDevice) for p in model.parameters())
        assert model(x).device.type == "cuda"
        assert torch.zeros(3, device=dev).device.type == "cuda"
    assert not isinstance(torch.zeros(1), OnDevice)


def _cem_models():
    torch.manual_seed(0)
    return CEMClassifier().double().eval(), CEMAutoencoder().double().eval()


@pytest.mark.parametrize("mode", ["PN", "PP"])
def test_cem_search_runs_on_the_device_with_the_cpu_numbers(mode):
    cnn, ae = _cem_models()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.5
    cfg = CEMConfig(gamma=100.0, c_steps=2, max_iterations=5, scores="logits")
    on_cpu = cem_explain(cnn, x, mode, cfg, autoencoder=ae)
    with fake_accelerator() as dev:
        res = cem_explain(cnn.to(dev), x.to(dev), mode, cfg, autoencoder=ae.to(dev))
        assert res.explanation.device.type == "cuda"
        res = res.cpu()
        l0 = sparsity(x, res)["L0"]
    assert not isinstance(res.explanation, OnDevice)
    assert torch.equal(res.explanation, on_cpu.explanation)
    assert torch.equal(res.found, on_cpu.found) and torch.equal(res.pred, on_cpu.pred)
    assert torch.equal(l0.nan_to_num(-1), sparsity(x, on_cpu)["L0"].nan_to_num(-1))


def test_cem_many_searches_run_on_the_device_with_the_cpu_numbers():
    cnn, ae = _cem_models()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.5
    cfg = CEMConfig(gamma=100.0, c_steps=2, max_iterations=5, scores="logits")
    cfg0 = CEMConfig(**{**cfg.asdict(), "gamma": 0.0})
    searches = [(x, "PN", cfg), (x, "PP", cfg), (x[1:], "PN", cfg0)]
    on_cpu = cem_explain_many(cnn, searches, autoencoder=ae, workers=1)
    with fake_accelerator() as dev:
        res = cem_explain_many(cnn.to(dev), [(xx.to(dev), m, c) for xx, m, c in searches], autoencoder=ae.to(dev))
        assert all(r.explanation.device.type == "cuda" and r.found.device.type == "cuda" for r in res)
        res = [r.cpu() for r in res]
    for a, b in zip(res, on_cpu):
        assert not isinstance(a.explanation, OnDevice)
        assert torch.equal(a.explanation, b.explanation) and torch.equal(a.pred, b.pred)


def test_fit_and_predict_follow_the_device():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    ref = CEMClassifier()
    torch.manual_seed(0)
    ref = CEMClassifier()
    fit(ref, x, y, F.cross_entropy, epochs=1, batch_size=16, seed=0, progress=False, dtype=torch.float64)
    with fake_accelerator() as dev:
        torch.manual_seed(0)
        model = CEMClassifier()
        fit(model, x, y, F.cross_entropy, epochs=1, batch_size=16, seed=0, progress=False, dtype=torch.float64, device=dev)
        out = predict(model, x, device=dev)  # returned on the host
    assert not isinstance(out, OnDevice)
    assert torch.allclose(out, predict(ref, x), atol=0, rtol=0)


def test_cxplain_ensemble_predict_returns_host_arrays():
    from lib.cxplain import BootstrapEnsemble, MLPExplainer, compute_omega, explain

    torch.manual_seed(0)
    target = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    x = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 2, (12,), generator=torch.Generator().manual_seed(3))
    omega_cpu = compute_omega(target, x, y, block=2)
    with fake_accelerator() as dev:
        omega = compute_omega(target.to(dev), x.to(dev), y, block=2)
        assert omega.device.type == "cuda"
        assert torch.allclose(omega.cpu(), omega_cpu)
        ens = BootstrapEnsemble(lambda: MLPExplainer((1, 4, 4), block=2, hidden=8).to(dev), n_models=2, seed=0,
                                max_epochs=2, batch_size=4, progress=False)
        ens.fit(x.to(dev), omega)
        e = explain(ens, x.to(dev))
    assert np.isfinite(e.importance.numpy()).all() and e.uncertainty.shape == (12, 4)


def test_block_masking_metric_on_the_device():
    from lib.attributions import delta_log_odds, top_k_blocks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    imp = torch.rand(5, 4, generator=torch.Generator().manual_seed(5))
    ref_sel, ref_dlo = top_k_blocks(imp, 0.5), delta_log_odds(model, x, imp, 0.5, 2, 0.0)
    with fake_accelerator() as dev:
        sel = top_k_blocks(imp.to(dev), 0.5)
        dlo = delta_log_odds(model.to(dev), x.to(dev), imp.to(dev), 0.5, 2, 0.0)
        assert sel.device.type == "cuda"
        sel, dlo = sel.cpu(), dlo.cpu()
    assert torch.equal(sel, ref_sel) and torch.allclose(dlo, ref_dlo)
