"""Run records: what ran, where, on what, for how long, and what it found.

Every executed chapter writes one JSON record (see :meth:`lib.claims.ClaimLog.save`): chapter,
parameters, seed, profile, data (full or sample, fingerprint), library versions, hardware, commit,
start, duration, the numbers it reported and its claims. Records are never overwritten: each file
name carries the start time and a random suffix, and the file is created exclusively.

Where a record goes:

* ``XAI_RECORD_DIR`` (set by ``ci/run_chapter.py``: next to the output notebook, or
  ``--record-dir``; set by ``ci/build_book.py`` to ``_build/records`` for the book's own runs);
* otherwise ``<repo>/_build/records/interactive`` (a chapter run by hand in Jupyter).

``XAI_RECORD_NAME`` (optional) is the stem of the file name (the output notebook's name), and
``XAI_RECORD_PATH`` (optional) an exact path, which must not exist yet.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import secrets
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA = 1

# Distributions whose versions a record lists (those installed; the rest are skipped).
_PACKAGES = ("torch", "numpy", "scipy", "pandas", "scikit-learn", "captum", "shap", "lime", "tensorflow", "tf-keras",
             "alibi", "cxplain", "papermill", "matplotlib")


def versions() -> dict[str, str]:
    """Python and the installed versions of the book's main libraries."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in flags)
    except OSError:
        pass
    return []


def hardware() -> dict[str, Any]:
    """CPU model and vector extensions, cores, torch threads, GPU; the ISA caps set in the environment."""
    import torch

    hw: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for var in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS"):
        if os.environ.get(var):
            hw[var] = os.environ[var]
    return hw


def git_commit() -> dict[str, Any]:
    """The repository's commit and whether the work tree differs from it (``None`` outside git)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", "lib", "chapters", "ci", "requirements.txt")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def now_utc() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def record_path(chapter: str, started: _dt.datetime) -> Path:
    """A fresh, unused path for a run record of ``chapter`` (see the module docstring)."""
    exact_path = os.environ.get("XAI_RECORD_PATH")
    if exact_path:
        return Path(exact_path)
    folder = Path(os.environ.get("XAI_RECORD_DIR") or REPO_ROOT / "_build" / "records" / "interactive")
    stem = os.environ.get("XAI_RECORD_NAME") or chapter
    return folder / f"{stem}.{started.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}.record.json"


def _finite(v: Any) -> Any:
    """NaN and infinities as None (null): records are strict JSON."""
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def write_record(path: Path, doc: dict) -> Path:
    """Write ``doc`` to ``path``, which must not exist: a record never replaces another one.
    NaN and infinite numbers are written as null, so the file is strict JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(doc), indent=1, default=str, allow_nan=False)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise FileExistsError(f"run record {path} exists already; records are never overwritten "
                              "(unset XAI_RECORD_PATH or choose a new path)") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def load_records(folder: Path | str | None = None, chapter: str | None = None) -> list[dict]:
    """Every run record under ``folder`` (default ``_build/records``), oldest first; optionally one chapter's."""
    root = Path(folder or REPO_ROOT / "_build" / "records")
    docs = []
    for p in sorted(root.rglob("*.record.json")):
        doc = json.loads(p.read_text())
        if chapter is None or doc.get("chapter") == chapter:
            doc["_path"] = str(p)
            docs.append(doc)
    return sorted(docs, key=lambda d: d.get("started", ""))



class BookRecordError(RuntimeError):
    """The executed book names no usable run record for a chapter (not built, or built before records)."""


def book_record_paths(chapters: list[Path] | None = None, repo: Path = REPO_ROOT, strict: bool = True) -> dict[str, Path]:
    """chapter -> the run record of its last execution by ``ci/build_book.py`` (named in the executed
    notebook's metadata, ``xai_book.record``).

    ``chapters``: chapter sources (``chapters/<name>.md``) to look up; default every executed notebook
    under ``chapters/``. With ``strict``, a missing notebook or record raises :class:`BookRecordError`
    saying how to fix it; otherwise such chapters are left out.
    """
    import nbformat

    notebooks = [c.with_suffix(".ipynb") for c in chapters] if chapters is not None else sorted((repo / "chapters").glob("*.ipynb"))
    found: dict[str, Path] = {}
    for nb_path in notebooks:
        rel = nb_path.relative_to(repo) if nb_path.is_relative_to(repo) else nb_path
        problem = None
        if not nb_path.exists():
            problem = f"{rel} is missing: build the book first (python ci/build_book.py)"
        else:
            meta = nbformat.read(nb_path, as_version=4).metadata.get("xai_book", {})
            if "record" not in meta:
                problem = f"{rel} names no run record: rebuild it (python ci/build_book.py --force)"
            elif not (repo / meta["record"]).exists():
                problem = f"{rel} names the run record {meta['record']}, which is gone: re-execute it (python ci/build_book.py --force)"
            else:
                found[nb_path.stem] = repo / meta["record"]
        if problem and strict:
            raise BookRecordError(problem)
    return found
