"""Shared plumbing of the XAI reproducibility book: data, models, training with caching, metrics,
claims and plotting. One module per method studied (``lib.cem``, ``lib.cxplain``, ...)."""
import os

# With 2 cores and any other busy process, OpenMP's default spin-waiting makes torch's small ops
# up to 50x slower; a passive wait policy avoids that. Effective only if set before torch starts,
# so the ci/ scripts export it too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# MKL (torch's BLAS on x86) picks its kernels by CPU: the same float64 matrix product gives other
# roundings on an AMD EPYC and on an Intel Xeon, and CEM's 10,000-iteration searches amplify that into
# other explanations (measured: one of the quick chapter's six PN searches ended in another class).
# MKL's conditional numerical reproducibility mode fixes its code path: with the AVX2 branch, every CPU
# with AVX2 (Intel since 2013, AMD since 2015) gives bitwise the same results. MKL reads it at its first
# call, so setting it here, after torch may have been imported, is early enough.
os.environ.setdefault("MKL_CBWR", "AVX2")
