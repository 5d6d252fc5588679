"""RDE costs: one optimiser iteration with ADF moments vs with Monte-Carlo moments, and the
relevance-ordering test's throughput vs plain batched forward passes, side by side in one run.

    .venv/bin/python benchmarks/bench_rde.py [--images 8] [--draws 64] [--mc 16 64 256] [--repeats 3]

ADF: one value-and-gradient pass of the diag-ADF objective (lib.rde.distortion) for a batch of images.
Monte Carlo: the same objective estimated from S noise draws per image (reparameterised, so autograd
gives its gradient), for each S in ``--mc``; its relative standard error (over 20 independent
estimates) says which S matches ADF's determinism to a given accuracy. (ADF has a bias instead:
the chapter measures it.) Times per image are extrapolated to the reference's 1500 iterations.
Pixel flipping: lib.pixelflip.relevance_ordering_test on ``--images`` images with ``--draws``
draws per step, against one plain batched forward pass of the same number of corrupted copies.
The classifier is the reference architecture with random weights (the cost does not depend on them).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lib.models.rde_mnist import rde_mnist_net  # noqa: E402
from lib.pixelflip import relevance_ordering_test  # noqa: E402
from lib.rde import NoiseModel, _noise_draws, distortion  # noqa: E402
from timing import timed  # noqa: E402  (benchmarks/timing.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--draws", type=int, default=64)
    ap.add_argument("--mc", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    net = rde_mnist_net(seed=0).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    n = args.images
    x = 100 * torch.randn(n, 1, 28, 28)
    noise = NoiseModel.from_data(100 * torch.randn(500, 1, 28, 28))
    with torch.no_grad():
        logits = net(x)
    node = logits.argmax(1)
    target = logits.gather(1, node[:, None])[:, 0]
    s0 = torch.full_like(x, 0.25)

    def adf_step():
        s = s0.clone().requires_grad_(True)
        torch.autograd.grad(distortion(net, x, s, node, target, noise).sum(), s)

    def mc_objective(s: torch.Tensor, draws: int, gen: torch.Generator) -> torch.Tensor:
        nz = _noise_draws(noise, draws * n, gen).float().view(n, draws, 1, 28, 28)
        y = s[:, None] * x[:, None] + (1 - s[:, None]) * nz
        out = net(y.flatten(0, 1)).view(n, draws, -1).gather(2, node.view(n, 1, 1).expand(n, draws, 1))[..., 0]
        return 0.5 * ((out.mean(1) - target) ** 2 + out.var(1))

    def mc_step(draws: int):
        gen = torch.Generator().manual_seed(0)
        s = s0.clone().requires_grad_(True)
        torch.autograd.grad(mc_objective(s, draws, gen).sum(), s)

    t_adf = timed(adf_step, args.repeats)
    print(f"threads {torch.get_num_threads()}; {n} images per batch; times per image, x 1500 iterations")
    print(f"ADF (diag) value+grad: {1000 * t_adf / n:8.1f} ms per image per iteration -> {1500 * t_adf / n:7.1f} s per image")
    for draws in args.mc:
        t = timed(lambda: mc_step(draws), args.repeats)
        with torch.no_grad():
            est = torch.stack([mc_objective(s0, draws, torch.Generator().manual_seed(k)) for k in range(20)])
        rel_se = float((est.std(0) / est.mean(0)).mean())
        print(f"MC, {draws:4d} draws value+grad: {1000 * t / n:8.1f} ms per image per iteration -> {1500 * t / n:7.1f} s per image "
              f"({t / t_adf:5.1f}x ADF); relative SE of the objective {rel_se:.3f}")

    probs = lambda t: torch.softmax(net(t), 1)
    maps = torch.rand_like(x)
    t0 = time.perf_counter()
    relevance_ordering_test(probs, x, node, maps, group_size=5, n_draws=args.draws, progress=False)
    t_flip = time.perf_counter() - t0
    copies = n * (math.ceil(784 / 5) + 1) * args.draws
    xb = x[:1].expand(min(copies, 8192), -1, -1, -1).contiguous()
    with torch.no_grad():
        t_plain = timed(lambda: net(xb), 1) * copies / len(xb)
    print(f"pixel flipping: {copies} classified copies in {t_flip:.1f} s ({copies / t_flip:.0f}/s); plain batched forwards "
          f"of as many images {t_plain:.1f} s ({copies / t_plain:.0f}/s): the test runs at {t_plain / t_flip:.0%} of that limit")


if __name__ == "__main__":
    main()
