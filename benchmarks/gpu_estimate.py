"""Extrapolated time of each chapter's full profile on one GPU, from counted work (no GPU here).

    .venv/bin/python benchmarks/gpu_estimate.py [--peak-tflops 67] [--efficiency E] [--launch-us 10] [--only cem rde]

No GPU was lent to this project, so the GPU column of the README's cost table cannot be measured.
This script extrapolates it instead, and says how:

1. For each chapter, the full profile's dominant loop is run here on the CPU for one *unit* of
   work, with the book's own ``lib`` code and the full profile's models and sizes: one batched
   FISTA iteration of the CEM search, one training step of CXPlain's K = 77 U-net and one batch of
   ResNet-20 forwards, one image and relevance map of RDE's relevance-ordering test and one
   evaluation of RDE's objective, one GCE explainer step (and one per classifier of the GCE
   reproduction).
2. While the unit runs, a dispatch mode counts the ATen operators it calls (on a GPU each is at
   least one kernel launch) and their floating-point operations with torch's own formulas
   (``torch.utils.flop_counter``: matrix products and convolutions, forward and backward).
3. The unit's time on one GPU is estimated as ``max(FLOPs / R, operators * L)``: either the GPU is
   busy computing at an achieved rate ``R`` or it waits for eager PyTorch to launch the next kernel
   (``L`` per operator; default 10 us, eager PyTorch's per-operator overhead on a fast host).
4. ``R`` is calibrated, not guessed: the one published GPU time of a workload the book runs is
   Verhoeven et al.'s GCE explainer for MNIST 3/8 (their report's Table 1: 34 min 25 s for 8,000
   steps at N_alpha x N_beta = 100 x 25, batch 64, on a GTX 1080). The GCE unit's counted FLOPs over
   that time give the fraction of the GTX 1080's float32 peak (8.9 TFLOP/s) that such small models
   achieve; ``R`` is the same fraction of the target GPU's peak (default: an H100 SXM's 67 TFLOP/s
   float32 without tensor cores). Override with ``--peak-tflops`` / ``--efficiency``.
5. The full profile's time is the unit's time times the number of units it runs, counted from the
   full profile's parameters (printed per row), with all instances of a batched loop in one batch.

This is an extrapolation, not a measurement: data transfers, Python work outside the counted loops,
early stopping and memory limits are ignored, and the calibration point is another GPU and another
code base. The CPU times of the README come from the committed full-data runs' records, not from
this script. When a GPU is lent, the chapters' full runs on it replace these numbers.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import flop_registry  # noqa: E402


class WorkCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched while active (each is a kernel launch on a GPU) and their
    FLOPs, with torch's own FLOP formulas (``torch.utils.flop_counter.flop_registry``: matrix products
    and convolutions, forward and backward). Unlike ``FlopCounterMode`` it installs no module hooks,
    which break ``torch.autograd.grad`` (CEM's FISTA step)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        self.ops[str(packet)] += 1
        if packet in flop_registry:
            self.flops += int(flop_registry[packet](*args, **kwargs, out_val=out))
        return out


@dataclass
class Unit:
    """One unit of a chapter's full-profile work and how many of them the profile runs."""

    chapter: str
    what: str
    units: float
    units_how: str


@dataclass
class Count:
    flops: float
    ops: int


def count(fn: Callable[[], object]) -> Count:
    """FLOPs and ATen operators of one call of ``fn``, after one uncounted call (lazy state such as
    Adam's moments is created on the first call only)."""
    fn()
    with WorkCounter() as wc:
        fn()
    return Count(float(wc.flops), sum(wc.ops.values()))


def diff(fn_small: Callable[[], object], fn_large: Callable[[], object], k: int) -> Count:
    """Per-iteration count of a loop: (count at more iterations - count at fewer) / k extra iterations."""
    a, b = count(fn_small), count(fn_large)
    return Count((b.flops - a.flops) / k, round((b.ops - a.ops) / k))


# ----------------------------------------------------------------------------- units per chapter


def cem_units() -> list[tuple[Unit, Count]]:
    from lib.cem import CEMConfig, cem_explain
    from lib.models.cem_mnist import CEMAutoencoder, CEMClassifier

    torch.manual_seed(0)
    rows = 1_600  # chapter cem, full profile: 500 digits -> PN and PP with the auto-encoder term, PN without (about 1,600 rows)
    model, ae = CEMClassifier().eval(), CEMAutoencoder().eval()
    for p in list(model.parameters()) + list(ae.parameters()):
        p.requires_grad_(False)
    x0 = torch.rand(rows, 1, 28, 28) - 0.5

    def search(iters: int) -> Callable[[], object]:
        cfg = CEMConfig(gamma=100.0, c_steps=1, max_iterations=iters, scores="logits")
        return lambda: cem_explain(model, x0, "PN", cfg, autoencoder=ae)

    c = diff(search(2), search(4), 2)
    unit = Unit("CEM", f"one FISTA iteration, {rows} rows in one batch (CNN and auto-encoder forward+backward)",
                10 * 1000, "c_steps 10 x max_iterations 1,000, the rows batched")
    return [(unit, c)]


def cxplain_units() -> list[tuple[Unit, Count]]:
    from lib.cxplain import build_explainer, causal_kl_loss, search_configs
    from lib.models.resnet import resnet20

    torch.manual_seed(0)
    out = []
    cfg = search_configs("unet", 1, block=2)[0]
    batch = int(cfg["batch_size"])
    unet = build_explainer("unet", cfg, (1, 28, 28), 2, seed=0)
    opt = torch.optim.Adam(unet.parameters(), lr=float(cfg["lr"]))
    xb = torch.rand(batch, 1, 28, 28)
    omega = torch.softmax(torch.randn(batch, 196), 1)

    def unet_step() -> None:
        opt.zero_grad(set_to_none=True)
        causal_kl_loss(unet.train()(xb), omega).backward()
        opt.step()

    n_expl = round(0.9 * round(0.9 * 11_982))  # explanation models' training images (chapter cxplain)
    steps = math.ceil(n_expl / batch)
    out.append((Unit("CXPlain", f"one U-net (K = {cfg['base_filters']}) training step, batch {batch}",
                     (5 + 2 * 5) * 50 * steps,
                     f"(5 search runs + 2 ensembles x 5 members) x 50 epochs x {steps} steps ({n_expl} images)"),
                count(unet_step)))
    target = resnet20(n_classes=2, in_channels=1, residual_scale_init=0.5).eval()
    xr = torch.rand(2048, 1, 28, 28)

    def forwards() -> None:
        with torch.no_grad():
            target(xr)

    n_fwd = round(0.9 * 11_982) * (196 + 1) + 100 * 2 * 10_000
    out.append((Unit("CXPlain", "ResNet-20 target, 2,048 forwards", n_fwd / 2048,
                     "Omega (10,784 images x 197 masked copies) + LIME and Kernel SHAP (100 images x 2 x 10,000 samples)"),
                count(forwards)))
    return out


def rde_units() -> list[tuple[Unit, Count]]:
    from lib.models.rde_mnist import rde_mnist_net
    from lib.pixelflip import relevance_ordering_test
    from lib.rde import NoiseModel, distortion

    torch.manual_seed(0)
    net = rde_mnist_net(seed=0).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.rand(1, 1, 28, 28)
    maps = torch.rand(1, 1, 28, 28)

    def probs(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(net(z), 1)

    def one_map() -> None:
        relevance_ordering_test(probs, x, torch.zeros(1, dtype=torch.long), maps, group_size=5, n_draws=512,
                                generator=torch.Generator().manual_seed(0), progress=False)

    out = [(Unit("RDE", "relevance-ordering test, one image and one map at 512 draws per step (158 steps)",
                 50 * 19, "50 images x 19 relevance maps, as many steps per call as fit 8,192 inputs"), count(one_map))]
    xs = torch.rand(50, 1, 28, 28)
    noise = NoiseModel.from_data(torch.rand(256, 1, 28, 28))
    s = torch.rand(50, 1, 28, 28, requires_grad=True)
    node, tgt = torch.zeros(50, dtype=torch.long), torch.ones(50)

    def objective() -> None:
        d = distortion(net, xs, s, node, tgt, noise)
        (d.sum() + s.abs().sum()).backward()

    out.append((Unit("RDE", "RDE objective and gradient, 50 images in one batch (ADF, diagonal)",
                     3 * 1500 * 2, "3 values of mu x at most 1,500 iterations x about 2 evaluations (line search)"),
                count(objective)))
    return out


def _gce_step(classifier: torch.nn.Module, n_alpha: int, n_beta: int) -> Count:
    """Counted work of one GCE explainer step (K = 1, L = 7, VAE batch 64) for ``classifier``."""
    from lib.gce_core import GCEConfig, GCEExplainer, train_gce

    x = torch.rand(256, 1, 28, 28)
    ex = GCEExplainer(1, 7)
    cfg = GCEConfig(K=1, L=7, lam=0.05, steps=1, n_alpha=n_alpha, n_beta=n_beta)
    return count(lambda: train_gce(ex, classifier.eval(), x, cfg, progress=False))


def gce_units() -> list[tuple[Unit, Count]]:
    from lib.models.gce_cnn import GCEClassifier

    torch.manual_seed(0)
    return [(Unit("GCE", "one explainer step (VAE batch 64 + 25 x 100 decoded and classified images)", 8000,
                  "8,000 steps per explainer (the authors' MNIST 3/8 setting)"), _gce_step(GCEClassifier(2), 25, 100))]


def gce_reproduction_units() -> list[tuple[Unit, Count]]:
    from lib.models.gce_re import ARCHITECTURES, build_classifier

    out = []
    for arch in ARCHITECTURES:
        torch.manual_seed(0)
        out.append((Unit("GCE reproduction", f"one explainer step for the {arch} classifier (VAE batch 64 + 15 x 75 "
                         "decoded and classified images)", 8000, "8,000 steps per explainer (the [Re] report's setting)"),
                    _gce_step(build_classifier(arch), 15, 75)))
    return out


CHAPTERS = {"cem": cem_units, "cxplain": cxplain_units, "rde": rde_units, "gce": gce_units,
            "gce_reproduction": gce_reproduction_units}
CALIBRATION = {"seconds": 34 * 60 + 25, "steps": 8000, "peak_tflops": 8.9,
               "source": "Verhoeven et al., [Re] GCE, Table 1: MNIST 3/8 GCE training, GTX 1080 (8.9 TFLOP/s float32 peak)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peak-tflops", type=float, default=67.0, help="target GPU's float32 peak, TFLOP/s (H100 SXM: 67)")
    ap.add_argument("--efficiency", type=float, default=None,
                    help="achieved fraction of the peak (default: calibrated on the published GCE time)")
    ap.add_argument("--launch-us", type=float, default=10.0, help="per-operator launch overhead L, microseconds")
    ap.add_argument("--only", nargs="*", choices=sorted(CHAPTERS), default=sorted(CHAPTERS))
    a = ap.parse_args()
    torch.set_num_threads(1)  # counting does not depend on threads
    gce_unit, gce_count = gce_units()[0]
    calibrated = gce_count.flops * CALIBRATION["steps"] / CALIBRATION["seconds"] / (CALIBRATION["peak_tflops"] * 1e12)
    eff = calibrated if a.efficiency is None else a.efficiency
    rate, launch = eff * a.peak_tflops * 1e12, a.launch_us * 1e-6
    print(f"calibration: {CALIBRATION['source']}: {CALIBRATION['seconds']} s for {CALIBRATION['steps']} steps of "
          f"{gce_count.flops / 1e9:.3g} GFLOP (counted) = {100 * calibrated:.1f} % of its peak")
    print(f"assumptions: achieved rate R = {100 * eff:.1f} % of {a.peak_tflops:g} TFLOP/s = {rate / 1e12:.2f} TFLOP/s; "
          f"launch overhead L = {a.launch_us:g} us per operator")
    totals: dict[str, float] = {}
    for name in a.only:
        for unit, c in ([(gce_unit, gce_count)] if name == "gce" else CHAPTERS[name]()):
            compute, latency = c.flops / rate, c.ops * launch
            gpu = max(compute, latency) * unit.units
            bound = "compute" if compute >= latency else "launches"
            print(f"\n[{unit.chapter}] {unit.what}\n  per unit: {c.flops / 1e9:.3g} GFLOP, {c.ops} operators; "
                  f"GPU {1e3 * compute:.3g} ms compute vs {1e3 * latency:.3g} ms launches ({bound}-bound)\n"
                  f"  units: {unit.units:,.0f} = {unit.units_how}\n  full profile: one GPU about {gpu / 3600:.2g} h")
            totals[unit.chapter] = totals.get(unit.chapter, 0.0) + gpu
    print("\nper chapter (counted loops only), one GPU: " + "; ".join(f"{k} about {g / 60:.2g} min" for k, g in totals.items()))


if __name__ == "__main__":
    main()
