"""CEM explanation time per instance: ours (torch, lib.cem) vs the reference (alibi 0.9.6, TensorFlow),
measured side by side in one run, on the same classifier weights, instances and hyper-parameters.

    .venv/bin/python benchmarks/bench_cem.py [--n 8] [--c-steps 2] [--iterations 100] [--threads 2]

Both implementations run a fixed number of FISTA iterations (no early stopping), so the time per
explanation does not depend on the weights: the models are freshly initialised (seeded) and the
instances are real MNIST test digits. alibi explains one instance per call (its supported mode);
ours is timed both one instance per call and batched over all instances.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from lib.cem import CEMConfig, cem_explain  # noqa: E402
from lib.data import load_mnist  # noqa: E402
from lib.models.cem_mnist import CEMAutoencoder, CEMClassifier  # noqa: E402
from lib.reference import alibi_cem as ref  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="instances")
    ap.add_argument("--c-steps", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--gamma", type=float, default=100.0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cnn, ae = CEMClassifier().eval(), CEMAutoencoder().eval()
    x = load_mnist(verbose=False).x_test[: args.n] - 0.5
    cfg = CEMConfig(gamma=args.gamma, c_steps=args.c_steps, max_iterations=args.iterations)
    ref.tf_session()
    tf = ref.tf_session()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    print(f"{args.n} MNIST digits, {args.c_steps} x {args.iterations} FISTA iterations, gamma={args.gamma}, "
          f"{args.threads} thread(s); torch {torch.__version__}, tensorflow {tf.__version__}")
    rows = []
    for mode in ("PN", "PP"):
        t0 = time.perf_counter()
        for i in range(args.n):
            cem_explain(cnn, x[i : i + 1], mode, cfg, autoencoder=ae)
        ours_single = (time.perf_counter() - t0) / args.n
        t0 = time.perf_counter()
        cem_explain(cnn, x, mode, cfg, autoencoder=ae)
        ours_batch = (time.perf_counter() - t0) / args.n
        theirs = ref.alibi_cem(cnn, x, mode, cfg, autoencoder=ae).seconds_per_instance
        rows.append((mode, ours_single, ours_batch, theirs))
    print(f"{'mode':4} {'ours, 1/call':>14} {'ours, batched':>14} {'alibi, 1/call':>14} {'alibi/ours(1)':>14} {'alibi/ours(batch)':>18}")
    for mode, s, b, t in rows:
        print(f"{mode:4} {s:13.3f}s {b:13.3f}s {t:13.3f}s {t / s:13.2f}x {t / b:17.2f}x")


if __name__ == "__main__":
    main()
