"""GCE training step: ours (lib.gce, every n_alpha x n_beta decode and classifier pass in one batch)
vs the limit (one batched forward + backward of those passes alone) and vs the authors' estimator
(``causaleffect.joint_uncond``: a Python loop over alpha, one batch of n_beta per alpha), side by
side in one run, same weights.

    .venv/bin/python benchmarks/bench_gce.py [--n-alpha 100] [--n-beta 25] [--steps 3] [--reference DIR]

``--reference DIR``: a checkout of siplab-gt/generative-causal-explanations (its ``causaleffect.py``
is imported from there, unchanged); without it the reference column is skipped. The full-profile
estimate multiplies the measured step time by the reference's 8,000 steps.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from lib.gce import GCEConfig, GCEExplainer, information_flow, train_gce  # noqa: E402  (lib.gce_core, re-exported)
from lib.models.gce_cnn import GCEClassifier, reference_init_  # noqa: E402
from timing import timed  # noqa: E402  (benchmarks/timing.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-alpha", type=int, default=100)
    ap.add_argument("--n-beta", type=int, default=25)
    ap.add_argument("--K", type=int, default=1)
    ap.add_argument("--L", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3, help="timed repetitions")
    ap.add_argument("--reference", help="folder with the authors' causaleffect.py")
    ap.add_argument("--threads", type=int, help="torch threads (on an oversubscribed shared CPU, 1 thread avoided a "
                    "15-60x slow-down of 2-thread runs that we measured while other jobs kept 13 processes runnable)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clf = GCEClassifier(2).eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    ex = reference_init_(GCEExplainer(args.K, args.L))
    x = torch.rand(512, 1, 28, 28)
    n_img = args.n_alpha * args.n_beta
    classify = lambda imgs: torch.softmax(clf(imgs), 1)

    cfg = GCEConfig(K=args.K, L=args.L, lam=0.05, steps=1, n_alpha=args.n_alpha, n_beta=args.n_beta)
    ours = timed(lambda: train_gce(ex, clf, x, cfg, progress=False), args.steps)

    def limit():
        z = torch.randn(n_img, args.K + args.L)
        p = classify(ex.decoder(z))
        p.sum().backward()
    lim = timed(limit, args.steps)

    def ours_estimator():
        info = information_flow(ex.decoder, classify, args.K, args.L, args.n_alpha, args.n_beta)
        info.backward()
    est = timed(ours_estimator, args.steps)

    rows = [("ours: one training step (batched estimator + VAE batch + Adam)", ours),
            ("ours: I(alpha;Y) estimate, forward + backward", est),
            (f"limit: {n_img} decoder + classifier passes, one batch, forward + backward", lim)]
    if args.reference:
        sys.path.insert(0, args.reference)
        import causaleffect  # the authors' module, unchanged

        wrapped = lambda imgs: (classify(imgs), None)  # their classifier returns (probabilities, logits)
        params = {"Nalpha": args.n_alpha, "Nbeta": args.n_beta, "K": args.K, "L": args.L, "z_dim": args.K + args.L, "M": 2}

        def reference():
            neg, _ = causaleffect.joint_uncond(params, ex.decoder, wrapped, "cpu")
            neg.backward()
        rows.append(("reference: causaleffect.joint_uncond, forward + backward", timed(reference, args.steps)))
    print(f"threads {torch.get_num_threads()}, n_alpha {args.n_alpha}, n_beta {args.n_beta}, K {args.K}, L {args.L}")
    for name, sec in rows:
        print(f"{sec:8.2f} s  {sec / lim:5.2f} x limit  {name}")
    if args.reference:
        print(f"reference / ours (estimator): {rows[-1][1] / est:.2f}")
    print(f"full profile (8,000 steps) at this step time: {8000 * ours / 3600:.1f} h on this machine")


if __name__ == "__main__":
    main()
