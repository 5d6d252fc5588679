"""Independent pieces of work on the CPU's cores, one thread each with single-threaded torch kernels.

Explanation methods often run long loops of small batched model calls (a CEM search over a few
digits, RDE's projected gradient descent on a few images). At such batch sizes torch's kernels
gain nothing from a second thread: they either stay on one core or pay OpenMP's fork-join on every
small operation (with ``OMP_WAIT_POLICY=PASSIVE``, which :mod:`lib` sets so that a busy machine does
not make spinning threads 50x slower, each region then also wakes a sleeping thread: measured on a
2-core VM, RDE's iteration took 586 ms with 2 threads and 251 ms with 1). What uses the other cores
is running independent pieces (rows of a batch, values of a hyper-parameter) side by side. Torch
releases the GIL inside its operations, so threads suffice and share the models without copying.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Sequence, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def default_workers(device: torch.device | str = "cpu") -> int:
    """One worker per CPU core on the CPU; one on an accelerator (its kernels are already parallel)."""
    return (os.cpu_count() or 1) if torch.device(device).type == "cpu" else 1


def map_on_cores(fn: Callable[[T], R], items: Sequence[T] | Iterable[T], workers: int | None = None) -> list[R]:
    """``[fn(item) for item in items]``, the items spread over ``workers`` threads (default: the cores).

    Each thread runs torch single-threaded; the caller's torch thread count is restored afterwards.
    With one worker (or one item) everything runs in the caller's thread with its own settings. The
    results are those of a sequential run, in order: each item must be independent of the others.
    """
    items = list(items)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    workers = min(workers, len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    outer = torch.get_num_threads()

    def run(item: T) -> R:
        torch.set_num_threads(1)  # this thread's own OpenMP setting
        return fn(item)

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(run, items))
    finally:
        torch.set_num_threads(outer)


def balanced_chunks(costs: Sequence[float], workers: int) -> list[list[int]]:
    """Indices 0..n-1 split into at most ``workers`` groups of about equal total cost (greedy: the
    costliest item goes to the least loaded group); each group keeps its indices in order and empty
    groups are dropped."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    load = [0.0] * workers
    groups: list[list[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(costs)), key=lambda i: -float(costs[i])):
        w = min(range(workers), key=lambda w: load[w])
        groups[w].append(i)
        load[w] += float(costs[i])
    return [sorted(g) for g in groups if g]
