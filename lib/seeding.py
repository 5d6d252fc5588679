"""One seeding call per chapter (fastbook style): ``seed_everything(seed)`` at the top."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed Python, NumPy and torch; make torch deterministic.

    On the CPU, two runs with the same seed, data, thread count and library versions produce
    bit-identical results. On CUDA, ``deterministic=True`` also selects deterministic kernels
    (and sets ``CUBLAS_WORKSPACE_CONFIG`` as cuBLAS requires), at some speed cost.

    Returns a ``torch.Generator`` seeded with ``seed`` for code that wants its own stream.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    g = torch.Generator()
    g.manual_seed(seed)
    return g
