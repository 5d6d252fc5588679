"""Progress bars for long loops (training, explanation batches), with one switch for headless runs.

``progress_bar(..., enabled=...)`` is ``tqdm`` (text bars, which work in terminals and notebooks
without ipywidgets) that is also disabled when ``TQDM_DISABLE`` is set in the environment, as
the book's headless builds do (a bar's timing text would differ between two executions of a
chapter). Used by lib.train, lib.data and the method modules.
"""
from __future__ import annotations

import os

from tqdm import tqdm


def headless() -> bool:
    return os.environ.get("TQDM_DISABLE", "").lower() in {"1", "true", "yes"}


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A ``tqdm`` bar, shown unless ``enabled`` is False or ``TQDM_DISABLE`` is set."""
    return tqdm(iterable, disable=(not enabled) or headless(), **kwargs)
