"""Test isolation: every test session gets its own data cache, artifact cache and run-record folder,
and never downloads (tests that exercise downloads serve files from a local folder)."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XAI_DATA_HOME", str(tmp_path / "data-cache"))
    monkeypatch.setenv("XAI_CACHE_DIR", str(tmp_path / "artifacts"))
    monkeypatch.setenv("XAI_RECORD_DIR", str(tmp_path / "records"))
    monkeypatch.delenv("XAI_RECORD_PATH", raising=False)
    monkeypatch.delenv("XAI_RECORD_NAME", raising=False)
    monkeypatch.setenv("XAI_OFFLINE", "1")
    for var in [v for v in os.environ if v.startswith("XAI_DATA_") and v != "XAI_DATA_HOME"]:
        monkeypatch.delenv(var)
    yield


@pytest.fixture
def single_thread():
    """Tiny models run much faster on one thread (and do not fight other processes for cores)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def float64_default():
    """torch's default dtype float64 for the test (exact comparisons with Monte Carlo and closed forms)."""
    import torch
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
