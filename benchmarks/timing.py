"""Timing helper shared by the benchmarks (run as scripts: ``python benchmarks/bench_<method>.py``)."""
from __future__ import annotations

import time
from typing import Callable


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Mean seconds per call of ``fn`` over ``repeats`` calls, after one untimed warm-up call."""
    fn()  # warm-up, untimed
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats
