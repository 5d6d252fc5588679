"""Benchmark for the CXPlain chapter: time to explain, masking metric, and Omega throughput.

Not a test. On one machine, in one run, it measures

1. the wall-clock time to explain ``--n-explain`` images (default 100) with every method of the
   paper's comparison (Schwab & Karlen, NeurIPS 2019, Sec. 4): CXPlain with the MLP and the
   U-net explanation model (after training; training and Omega precomputation are timed
   separately), LIME, Kernel SHAP, DeepSHAP, Simple Gradient (saliency) and Integrated
   Gradients, all at block level (2x2 blocks on 28x28 -> 196 features), together with each
   method's drop in log-odds after masking its top 10% blocks;
2. the throughput of :func:`lib.cxplain.compute_omega` relative to its limit: plain batched
   forward passes of the target model over the same number of inputs, ``n * (n_blocks + 1)``;
3. optionally (``--reference``) the reference package's Omega computation on the same images;
4. the cost of subnormal float32 weights (issue found on a ResNet-20 trained with weight decay on
   the full MNIST: 19% of its weights were subnormal, 0 < |w| < 1.18e-38, and its CPU forward was
   about 6x slower): the batched forward time of a ResNet-20 with that share of planted subnormal
   weights, against the same model after :func:`lib.cache.flush_subnormal_` (which
   :func:`lib.cache.cached_model` applies to every trained or loaded model), and the largest change
   of the logits (expected 0: a subnormal weight contributes less than the float32 resolution of
   any non-negligible activation). ``--subnormal-only`` runs just this part.

By default it uses synthetic random images and an untrained ResNet-20 (fast, no data needed;
the explanations are then meaningless and only the timings are informative); ``--real`` uses
MNIST 8 vs 3 through ``lib.data`` (with ``--weights`` a trained ResNet-20 state dict).
Sample counts are small by default; the paper's settings are ``--lime-samples 10000
--shap-samples 10000 --mlp-hidden 126 --unet-filters 77``.

Run from the repository root:  ``PYTHONPATH=. .venv/bin/python benchmarks/bench_cxplain.py``
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("cxplain_mlp", "cxplain_unet", "lime", "shap", "deepshap", "saliency", "ig")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n-explain", type=int, default=100, help="images to explain per method")
    p.add_argument("--n-train", type=int, default=200, help="images used to train the CXPlain explainers")
    p.add_argument("--n-omega", type=int, default=50, help="images for the Omega throughput measurement")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--lime-samples", type=int, default=200, help="LIME perturbation samples per image (paper: 10000)")
    p.add_argument("--shap-samples", type=int, default=200, help="Kernel SHAP coalitions per image (paper: 10000)")
    p.add_argument("--ig-steps", type=int, default=50, help="Integrated Gradients steps")
    p.add_argument("--deepshap-background", type=int, default=20, help="DeepSHAP background images")
    p.add_argument("--mlp-hidden", type=int, default=126, help="MLP explainer hidden units (paper: 126)")
    p.add_argument("--unet-filters", type=int, default=16, help="U-net explainer initial filters K (paper: 77)")
    p.add_argument("--epochs", type=int, default=10, help="max epochs of explainer training")
    p.add_argument("--batch-size", type=int, default=1024, help="target-model batch size for Omega")
    p.add_argument("--fraction", type=float, default=0.1, help="fraction of blocks masked for the log-odds metric")
    p.add_argument("--real", action="store_true", help="use MNIST 8 vs 3 via lib.data instead of random images")
    p.add_argument("--weights", type=str, default=None, help="state dict of a trained ResNet-20 (with --real)")
    p.add_argument("--reference", action="store_true", help="also time the reference package's Omega")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subnormal-images", type=int, default=2000, help="images per forward timing of the subnormal check")
    p.add_argument("--subnormal-share", type=float, default=0.19, help="share of weights made subnormal (19%% as found)")
    p.add_argument("--subnormal-only", action="store_true", help="only run the subnormal-weights measurement")
    return p.parse_args(argv)


def subnormal_benchmark(args: argparse.Namespace) -> None:
    """Forward time of a ResNet-20 with planted subnormal weights vs the same model flushed."""
    import copy

    import torch

    from lib.attributions import predict_logits
    from lib.cache import flush_subnormal_
    from lib.models.resnet import resnet20

    torch.manual_seed(args.seed)
    clean = resnet20(n_classes=2).eval()
    planted = copy.deepcopy(clean)
    g = torch.Generator().manual_seed(args.seed)
    n_planted = n_total = 0
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        for p in planted.parameters():
            pick = torch.rand(p.shape, generator=g) < args.subnormal_share
            # subnormal magnitudes spread over [1e-45, 1e-38], random sign
            mag = tiny * torch.exp(-torch.rand(p.shape, generator=g) * 16.0)
            p[pick] = (mag * torch.sign(torch.randn(p.shape, generator=g)))[pick]
            n_planted += int(((p != 0) & (p.abs() < tiny)).sum())
            n_total += p.numel()
    flushed = copy.deepcopy(planted)
    flush_subnormal_(flushed)
    n_left = sum(int(((p != 0) & (p.abs() < tiny)).sum()) for p in flushed.parameters())
    x = torch.rand(args.subnormal_images, 1, 28, 28, generator=g)

    def best_time(m, repeats=3):
        predict_logits(m, x[:64])
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = predict_logits(m, x, 512)
            best = min(best, time.perf_counter() - t0)
        return best, out

    t_sub, out_sub = best_time(planted)
    t_flush, out_flush = best_time(flushed)
    t_clean, _ = best_time(clean)
    print(f"Subnormal weights: {n_planted} of {n_total} weights of a ResNet-20 made subnormal "
          f"({n_planted / n_total:.0%}); after flushing {n_left} remain")
    print(f"  batched forward of {len(x)} images (best of 3): with subnormals {t_sub:.2f} s, flushed {t_flush:.2f} s, "
          f"the model before planting {t_clean:.2f} s")
    print(f"  ratio with / flushed = {t_sub / t_flush:.2f}  (1.00 = no penalty on this CPU)")
    print(f"  max |logit change| from flushing = {float((out_sub - out_flush).abs().max()):.3g}")
    print()


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.reference:  # TensorFlow must see TF_USE_LEGACY_KERAS before anything imports it
        from lib.reference.cxplain_ref import install_compat

        install_compat()
    import numpy as np
    import torch

    from lib import attributions as A
    from lib import cxplain as C
    from lib.models.resnet import resnet20

    warnings.filterwarnings("ignore")
    import captum.attr  # noqa: F401  (imported here so that import time is not counted as explaining time)
    import lime.lime_image  # noqa: F401
    import shap  # noqa: F401

    if args.threads:
        torch.set_num_threads(args.threads)
    subnormal_benchmark(args)
    if args.subnormal_only:
        return
    torch.manual_seed(args.seed)
    block = 2

    # ---------------------------------------------------------------- data and target model
    model = resnet20(n_classes=2).eval()
    if args.real:
        from lib.data import load_mnist, select_classes

        ds = load_mnist(verbose=False)
        x_tr, y_tr = select_classes(ds.x_train, ds.y_train, (8, 3))
        x_te, y_te = select_classes(ds.x_test, ds.y_test, (8, 3))
        data_note = f"MNIST 8 vs 3 ({ds.describe()})"
        if args.weights:
            model.load_state_dict(torch.load(args.weights, map_location="cpu"))
            model_note = f"trained ResNet-20 from {args.weights}"
        else:
            model_note = "UNTRAINED ResNet-20 (pass --weights for a trained one)"
    else:
        g = torch.Generator().manual_seed(args.seed)
        n = args.n_train + args.n_explain
        x_all = torch.rand(n, 1, 28, 28, generator=g)
        y_all = torch.randint(0, 2, (n,), generator=g)
        x_tr, y_tr, x_te, y_te = x_all[: args.n_train], y_all[: args.n_train], x_all[args.n_train :], y_all[args.n_train :]
        data_note = "SYNTHETIC uniform random 28x28 images with random labels"
        model_note = "UNTRAINED ResNet-20 (random weights)"
    x_tr, y_tr = x_tr[: args.n_train], y_tr[: args.n_train]
    x_ex, y_ex = x_te[: args.n_explain], y_te[: args.n_explain]
    n_b = A.num_blocks(x_ex.shape, block)

    print("CXPlain benchmark")
    print(f"  machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"  data: {data_note}")
    print(f"  target model: {model_note}")
    if not args.real or not args.weights:
        print("  NOTE: explanations of an untrained model / random data are meaningless; only timings are informative.")
    print(f"  explain {len(x_ex)} images, {n_b} blocks of {block}x{block}; train explainers on {len(x_tr)} images")
    print(f"  samples: LIME {args.lime_samples}, SHAP {args.shap_samples} (paper: 10000 each), IG steps {args.ig_steps}, "
          f"DeepSHAP background {args.deepshap_background}")
    print()

    # ---------------------------------------------------------------- Omega throughput vs its limit
    with torch.no_grad():
        model(x_tr[:8])  # warm-up
    x_om = x_tr[: args.n_omega]
    (_, t_all) = timed(lambda: C.compute_omega(model, x_om, y_tr[: args.n_omega], block, batch_size=args.batch_size,
                                                skip_unchanged=False))
    (_, t_omega) = timed(lambda: C.compute_omega(model, x_om, y_tr[: args.n_omega], block, batch_size=args.batch_size))
    plain_inputs = x_om.repeat_interleave(n_b + 1, dim=0)
    (_, t_plain) = timed(lambda: A.predict_logits(model, plain_inputs, args.batch_size))
    n_inputs = len(plain_inputs)
    masked = x_om.unsqueeze(1) * ~A.block_masks(x_om.shape, block)[None, :, None]  # zero masking, every block
    n_needed = len(x_om) + int((masked != x_om.unsqueeze(1)).flatten(2).any(-1).sum())
    print(f"Omega throughput on {len(x_om)} images = {n_inputs} forward inputs (batch {args.batch_size}); "
          f"{n_needed} of them differ from their original (the rest are skipped by default):")
    print(f"  compute_omega, all copies    {t_all:8.2f} s  ({n_inputs / t_all:8.0f} inputs/s)")
    print(f"  compute_omega, skip unchanged{t_omega:8.2f} s  ({n_inputs / t_omega:8.0f} inputs/s equivalent)")
    print(f"  plain forward (limit)        {t_plain:8.2f} s  ({n_inputs / t_plain:8.0f} inputs/s)")
    print(f"  ratio compute_omega(all copies) / plain forward = {t_all / t_plain:.2f}  "
          "(1.00 = no overhead beyond the forward passes)")
    print(f"  speed-up from skipping unchanged copies = {t_all / t_omega:.2f}  (ideal {n_inputs / n_needed:.2f})")
    if args.reference:
        from lib.reference.cxplain_ref import reference_omega

        (_, t_ref) = timed(lambda: reference_omega(model, x_om, y_tr[: args.n_omega], block))
        print(f"  reference cxplain Omega  {t_ref:8.2f} s  ratio reference / ours = {t_ref / t_omega:.2f}")
    print()

    # ---------------------------------------------------------------- CXPlain training
    results: list[tuple[str, float, np.ndarray]] = []
    extra: list[str] = []
    need_cx = any(m.startswith("cxplain") for m in args.methods)
    if need_cx:
        (omega_tr, t_om_tr) = timed(lambda: C.compute_omega(model, x_tr, y_tr, block, batch_size=args.batch_size))
        extra.append(f"Omega precomputation for {len(x_tr)} training images: {t_om_tr:.1f} s")
        builders = {
            "cxplain_mlp": (lambda: C.MLPExplainer((1, 28, 28), block, hidden=args.mlp_hidden, dropout=0.0401), dict(lr=1e-3, batch_size=100)),
            "cxplain_unet": (lambda: C.UNetExplainer((1, 28, 28), block, base_filters=args.unet_filters, dropout=1e-5), dict(lr=2e-3, batch_size=128)),
        }
        for name in [m for m in args.methods if m.startswith("cxplain")]:
            make, kw = builders[name]
            torch.manual_seed(args.seed)
            explainer = make()
            (_, t_train) = timed(lambda: C.train_explainer(explainer, x_tr, omega_tr, max_epochs=args.epochs, patience=args.epochs,
                                                           seed=args.seed, progress=False, **kw))
            exp = C.explain(explainer, x_ex)
            results.append((name, exp.seconds, exp.importance.numpy()))
            extra.append(f"{name}: training {t_train:.1f} s ({args.epochs} epochs max)")

    # ---------------------------------------------------------------- baselines
    baseline_fns: dict[str, Callable[[], object]] = {
        "lime": lambda: A.lime_blocks(model, x_ex, block, num_samples=args.lime_samples, seed=args.seed),
        "shap": lambda: A.shap_blocks(model, x_ex, block, nsamples=args.shap_samples, seed=args.seed),
        "deepshap": lambda: A.deepshap_blocks(model, x_ex, x_tr[: args.deepshap_background], block),
        "saliency": lambda: A.saliency_blocks(model, x_ex, block),
        "ig": lambda: A.integrated_gradients_blocks(model, x_ex, block, n_steps=args.ig_steps),
    }
    A.saliency_blocks(model, x_ex[:2], block)  # untimed warm-up of autograd (first backward is slow)
    for name in [m for m in args.methods if not m.startswith("cxplain")]:
        (imp, secs) = timed(baseline_fns[name])
        results.append((name, secs, np.asarray(imp)))

    # ---------------------------------------------------------------- report
    g = torch.Generator().manual_seed(args.seed + 1)
    bounds = {
        "random (bound)": torch.rand(len(x_ex), n_b, generator=g).numpy(),
        "true Omega (bound)": C.compute_omega(model, x_ex, y_ex, block, loss="ce_pred", batch_size=args.batch_size).numpy(),
    }
    print(f"Time to explain {len(x_ex)} images and drop in log-odds after masking the top {args.fraction:.0%} blocks:")
    print(f"  {'method':22s} {'seconds':>9s} {'ms/image':>9s} {'rel. to fastest CXPlain':>24s} {'dlog-odds mean':>15s} {'std':>7s}")
    cx_times = [s for n, s, _ in results if n.startswith("cxplain")]
    ref_t = min(cx_times) if cx_times else None
    for name, secs, imp in results + [(k, float("nan"), v) for k, v in bounds.items()]:
        d = A.delta_log_odds(model, x_ex, torch.as_tensor(imp), args.fraction, block).numpy()
        rel = f"{secs / ref_t:24.1f}" if ref_t and secs == secs else f"{'':24s}"
        t_str = f"{secs:9.3f} {1000 * secs / len(x_ex):9.2f}" if secs == secs else f"{'':9s} {'':9s}"
        print(f"  {name:22s} {t_str} {rel} {d.mean():15.3f} {d.std():7.3f}")
    print()
    for line in extra:
        print("  " + line)
    print("  (true Omega uses the model's own prediction as label; it is the masking metric's near-optimum, not a method)")


if __name__ == "__main__":
    main()
