"""Shared plumbing of the XAI reproducibility book: data, models, training with caching, metrics,
claims and plotting. One module per method studied (``lib.cem``, ``lib.cxplain``, ...)."""
import os

# With 2 cores and any other busy process, OpenMP's default spin-waiting makes torch's small ops
# up to 50x slower; a passive wait policy avoids that. Effective only if set before torch starts,
# so the ci/ scripts export it too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
