"""CEM explanation time per instance: ours (torch, lib.cem) vs the reference (alibi 0.9.6, TensorFlow),
measured side by side in one run, on the same classifier weights, instances and hyper-parameters.

    .venv/bin/python benchmarks/bench_cem.py [--n 8] [--c-steps 2] [--iterations 100] [--threads 2]
    .venv/bin/python benchmarks/bench_cem.py --layouts [--n 8] [--iterations 100]
    .venv/bin/python benchmarks/bench_cem.py --search-length [--n 10] [--lengths 100 300 1000]
    .venv/bin/python benchmarks/bench_cem.py --chapter-search [--n 2] [--iterations 100]

Both implementations run a fixed number of FISTA iterations (no early stopping), so the time per
explanation does not depend on the weights: the models are freshly initialised (seeded) and the
instances are real MNIST test digits. alibi explains one instance per call (its supported mode);
ours is timed both one instance per call and batched over all instances.

``--layouts`` times our batched search in float32 (contiguous and channels-last memory layout) and
in float64, without alibi. ``--search-length`` loads (or trains) the CEM chapter's quick-profile models
(CNN 5 epochs, auto-encoder 4, float64, committed MNIST sample, seed 0; the chapter's cache), runs
the chapter's PN and PP search (hinge on logits, gamma 100, 10 values of c) with each number of
iterations per c, and prints, per length, the mean elastic-net distance of the best explanations,
their mean number of pixels changed by more than 0.1, and for how many digits the class differs
from the longest search's: the evidence for not shortening the search in the quick profile.

``--chapter-search`` times the quick profile's search as the CEM chapter runs it (float64; PN and PP
with the auto-encoder term for the seed digit and ``--n`` digits, PN without it for the ``--n``
digits; freshly initialised models): the three searches one after another (one batched call each),
the same as one :func:`lib.cem.cem_explain_many` call split over the cores, in both memory layouts, and
the limit: the model passes alone that one FISTA iteration needs (CNN and auto-encoder forward and
backward at y, CNN forward at x) for the same rows, on one core and divided by the number of cores.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from lib.cem import CEMConfig, cem_explain, cem_explain_many  # noqa: E402
from lib.data import load_mnist  # noqa: E402
from lib.models.cem_mnist import CEMAutoencoder, CEMClassifier  # noqa: E402
from lib.reference import alibi_cem as ref  # noqa: E402


def layouts(args) -> None:
    """Batched search time per instance and iteration: float32 contiguous, float32 channels-last, float64."""
    torch.manual_seed(0)
    x = load_mnist(verbose=False).x_test[: args.n] - 0.5
    cfg = CEMConfig(gamma=args.gamma, c_steps=1, max_iterations=args.iterations, scores="logits")
    print(f"{args.n} MNIST digits, {args.iterations} FISTA iterations (PN, gamma={args.gamma}), {torch.get_num_threads()} thread(s)")
    for name, dtype, fmt in (("float32", torch.float32, torch.contiguous_format),
                             ("float32 channels-last", torch.float32, torch.channels_last),
                             ("float64", torch.float64, torch.contiguous_format)):
        cnn = CEMClassifier().eval().to(dtype=dtype, memory_format=fmt)
        ae = CEMAutoencoder().eval().to(dtype=dtype, memory_format=fmt)
        xx = x.to(dtype).contiguous(memory_format=fmt)
        cem_explain(cnn, xx, "PN", CEMConfig(**{**cfg.asdict(), "max_iterations": 2}), autoencoder=ae)  # warm-up
        t0 = time.perf_counter()
        cem_explain(cnn, xx, "PN", cfg, autoencoder=ae)
        ms = (time.perf_counter() - t0) / (args.iterations * args.n) * 1e3
        print(f"{name:22} {ms:7.2f} ms per instance and iteration")


def search_length(args) -> None:
    """How the chapter's explanations change with the number of FISTA iterations per value of c."""
    import copy

    import torch.nn.functional as F

    from lib.cem import sparsity
    from lib.data import stratified_indices
    from lib.train import fit, predict

    import lib.train
    from lib.cache import cached_model

    ds = load_mnist(verbose=False)
    x_train, x_test, y_train, y_test = ds.x_train - 0.5, ds.x_test - 0.5, ds.y_train, ds.y_test
    # the chapter's quick-profile models (same cache keys: loaded if the chapter ran, else trained)
    cnn, _ = cached_model(
        "cem-mnist-cnn", {"arch": "CEMClassifier", "n_blocks": 2, "epochs": 5, "batch_size": 64, "lr": 1e-3, "seed": 0,
                          "dtype": "float64"}, lambda: CEMClassifier(n_blocks=2),
        lambda m: fit(m, x_train, y_train, F.cross_entropy, epochs=5, batch_size=64, lr=1e-3, seed=0, desc="CNN",
                      dtype=torch.float64),
        data_fingerprint=ds.fingerprint, code=[lib.train])
    ae, _ = cached_model(
        "cem-mnist-ae", {"arch": "CEMAutoencoder", "epochs": 4, "batch_size": 128, "lr": 1e-3, "seed": 0, "dtype": "float64"},
        CEMAutoencoder,
        lambda m: fit(m, x_train, x_train, F.mse_loss, epochs=4, batch_size=128, lr=1e-3, seed=0, desc="AE",
                      dtype=torch.float64),
        data_fingerprint=ds.fingerprint, code=[lib.train])
    logits = predict(cnn, x_test)
    correct = (logits.argmax(1) == y_test).nonzero().squeeze(1)
    x = x_test[correct[stratified_indices(y_test[correct], args.n, seed=0)]].float()
    cnn32, ae32 = copy.deepcopy(cnn).float().eval(), copy.deepcopy(ae).float().eval()
    print(f"{args.n} digits; PN and PP, hinge on logits, gamma 100, 10 values of c; {torch.get_num_threads()} thread(s)")
    for mode in ("PN", "PP"):
        results = {}
        for k in args.lengths:
            cfg = CEMConfig(gamma=100.0, c_steps=10, max_iterations=k, scores="logits")
            t0 = time.perf_counter()
            results[k] = cem_explain(cnn32, x, mode, cfg, autoencoder=ae32)
            results[k].seconds = time.perf_counter() - t0
        longest = results[max(args.lengths)]
        for k, r in results.items():
            ok = r.found
            pixels = sparsity(x, r, tol=0.1)["L0"][ok].mean().item()
            print(f"{mode} {k:5d} iterations per c: found {int(ok.sum())}/{len(x)}, mean distance "
                  f"{r.distance[ok].mean().item():.3f}, mean pixels (> 0.1) {pixels:.1f}, class differs from the "
                  f"{max(args.lengths)}-iteration search for {int((r.pred != longest.pred).sum())} digits ({r.seconds:.0f} s)")


def chapter_search(args) -> None:
    """The chapter's three searches: sequential vs cem_explain_many vs the model passes they need."""
    import copy

    x = (load_mnist(verbose=False).x_test[: args.n + 1] - 0.5).double()
    cfg = CEMConfig(gamma=100.0, c_steps=1, max_iterations=args.iterations, scores="logits")
    cfg0 = CEMConfig(**{**cfg.asdict(), "gamma": 0.0})
    torch.manual_seed(0)
    cnn0, ae0 = CEMClassifier().eval().double(), CEMAutoencoder().eval().double()
    n_rows = 2 * len(x) + (len(x) - 1)
    cores = os.cpu_count() or 1
    print(f"{len(x)} digits: {n_rows} explanations (PN, PP with gamma 100; PN with gamma 0 for {len(x) - 1}), "
          f"{args.iterations} FISTA iterations, float64, {cores} CPU cores")
    print(f"{'layout':13} {'what':34} {'wall ms/expl-iter':>18} {'CPU ms/expl-iter':>17} {'wall / limit':>13}")
    for name, fmt in (("contiguous", torch.contiguous_format), ("channels-last", torch.channels_last)):
        cnn, ae = copy.deepcopy(cnn0).to(memory_format=fmt), copy.deepcopy(ae0).to(memory_format=fmt)
        xx = x.contiguous(memory_format=fmt)
        searches = [(xx, "PN", cfg), (xx, "PP", cfg), (xx[1:], "PN", cfg0)]

        def limit_pass():
            with torch.enable_grad():
                y = torch.cat([xx, xx]).requires_grad_(True)  # the PN and the PP rows with the auto-encoder
                torch.autograd.grad(cnn(y).sum() + (ae(y) - y).pow(2).sum(), y)
                y0 = xx[1:].clone().requires_grad_(True)
                torch.autograd.grad(cnn(y0).sum(), y0)  # the PN rows without it
            with torch.no_grad():
                cnn(torch.cat([xx, xx, xx[1:]]))  # the success checks of all rows

        outer = torch.get_num_threads()
        torch.set_num_threads(1)
        limit_pass()
        t0 = time.perf_counter()
        for _ in range(args.iterations):
            limit_pass()
        limit_1 = (time.perf_counter() - t0) / args.iterations / n_rows * 1e3
        torch.set_num_threads(outer)
        rows = [("model passes alone, 1 core", limit_1, limit_1), (f"... divided by {cores} cores", limit_1 / cores, limit_1)]
        for what, run in (("3 calls, one after another", lambda: [cem_explain(cnn, a, m, c, autoencoder=ae) for a, m, c in searches]),
                          ("cem_explain_many", lambda: cem_explain_many(cnn, searches, autoencoder=ae))):
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            wall = (time.perf_counter() - t0) / args.iterations / n_rows * 1e3
            cpu = (time.process_time() - c0) / args.iterations / n_rows * 1e3
            rows.append((what, wall, cpu))
        for what, wall, cpu in rows:
            print(f"{name:13} {what:34} {wall:18.2f} {cpu:17.2f} {wall / (limit_1 / cores):12.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="instances")
    ap.add_argument("--c-steps", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--gamma", type=float, default=100.0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--layouts", action="store_true", help="time float32 / channels-last / float64 searches (no alibi)")
    ap.add_argument("--search-length", action="store_true", help="explanations vs iterations per c (chapter's models)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--chapter-search", action="store_true", help="the CEM chapter's three searches: sequential, "
                    "cem_explain_many, and the model passes they need")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.layouts:
        return layouts(args)
    if args.search_length:
        return search_length(args)
    if args.chapter_search:
        return chapter_search(args)
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
