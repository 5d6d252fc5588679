"""The GPU-time extrapolation's counters (benchmarks/gpu_estimate.py): FLOPs and operators are counted
exactly for known work, so the README's extrapolated GPU times rest on correct counts."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

_spec = importlib.util.spec_from_file_location(
    "gpu_estimate", Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_estimate.py")
gpu_estimate = importlib.util.module_from_spec(_spec)
sys.modules["gpu_estimate"] = gpu_estimate  # dataclasses look their module up there
_spec.loader.exec_module(gpu_estimate)


def test_counts_matmul_flops_forward_and_backward():
    lin = nn.Linear(30, 20, bias=False)
    x = torch.randn(8, 30, requires_grad=True)
    fwd = gpu_estimate.count(lambda: lin(x))
    assert fwd.flops == 2 * 8 * 30 * 20
    both = gpu_estimate.count(lambda: lin(x).sum().backward())
    assert both.flops == 3 * 2 * 8 * 30 * 20  # forward, grad of input, grad of weight


def test_counts_convolution_flops():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        c = gpu_estimate.count(lambda: conv(x))
    assert c.flops == 2 * 2 * 4 * 5 * 5 * 3 * 3 * 3


def test_diff_gives_per_iteration_work_of_a_loop():
    w = torch.randn(16, 16)

    def loop(k: int):
        def run():
            y = torch.ones(4, 16)
            for _ in range(k):
                y = torch.tanh(y @ w)
            return y
        return run

    per = gpu_estimate.diff(loop(2), loop(5), 3)
    assert per.flops == 2 * 4 * 16 * 16
    assert per.ops == 2  # mm and tanh


def test_works_under_autograd_grad():
    """FlopCounterMode's module hooks break torch.autograd.grad (CEM's FISTA step); the counter must not."""
    net = nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(3, 5, requires_grad=True)
    c = gpu_estimate.count(lambda: torch.autograd.grad(net(x).sum(), x))
    assert c.flops > 0 and c.ops > 0
