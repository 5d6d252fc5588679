"""Execute the book's chapters (papermill, quick profile by default) and build the HTML book.

    python ci/build_book.py                 # execute what changed, then jupyter-book build
    python ci/build_book.py --execute-only  # only (re-)execute chapters
    python ci/build_book.py --force         # re-execute every chapter

Each chapter listed in ``_toc.yml`` with a ``chapters/<name>.md`` source is executed into
``chapters/<name>.ipynb`` (a git-ignored build product, the jupytext pair of the source). A
chapter is re-executed only when its execution key changes: a hash of the chapter source, every
file under ``lib/``, ``requirements.txt`` and the parameters. So, unlike Jupyter Book's own
cache (which keys on code cells only), a change in ``lib/`` re-executes the chapters.
The HTML book is then built by Jupyter Book from the executed notebooks, with warnings as errors.

Each execution writes the chapter's run record to ``_build/records/`` (a new file every time;
the executed notebook's metadata names it, and ``ci/baselines.py`` checks it against the
committed regression baseline).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_chapter  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HEADLESS_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "MKL_CBWR": "AVX2", "TQDM_DISABLE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"}


def chapters_in_toc() -> list[Path]:
    """Chapter sources (``chapters/*.md``) in the order of ``_toc.yml``."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    return [REPO / f"{f}.md" for f in files if f.startswith("chapters/") and (REPO / f"{f}.md").exists()]


# Chapters that read the other chapters' run records: their key includes the keys of the chapters
# before them, so they are re-executed whenever one of those is.
AGGREGATES = {"scorecard"}


def _git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def execution_key(source: Path, params: dict, upstream: str = "") -> str:
    h = hashlib.sha256()
    h.update(upstream.encode())
    # committed run records a chapter reads: its own folder under results/ (e.g. the CEM chapter shows its
    # full-data run beside the quick verdicts); an aggregate (the scorecard) reads all of them
    results = REPO / "results" if source.stem in AGGREGATES else REPO / "results" / source.stem
    records = sorted(results.rglob("*.record.json")) if results.exists() else []
    if source.stem in AGGREGATES:
        # the scorecard marks committed records stale from git history: a new commit can change its page
        h.update(_git_head().encode())
    for path in [source, REPO / "requirements.txt", *sorted((REPO / "lib").rglob("*.py")), *records]:
        h.update(str(path.relative_to(REPO)).encode())
        h.update(path.read_bytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    h.update(json.dumps(HEADLESS_ENV, sort_keys=True).encode())
    return h.hexdigest()[:16]


def stored_key(notebook: Path) -> str | None:
    try:
        return nbformat.read(notebook, as_version=4).metadata.get("xai_book", {}).get("execution_key")
    except (OSError, ValueError):
        return None


def execute(source: Path, params: dict, force: bool, upstream: str = "") -> tuple[str, float]:
    """Execute one chapter if needed; returns (status, seconds)."""
    out = source.with_suffix(".ipynb")
    key = execution_key(source, params, upstream if source.stem in AGGREGATES else "")
    if not force and out.exists() and stored_key(out) == key:
        return "up to date", 0.0
    tmp = out.with_name(f".{out.stem}.running.ipynb")
    args = [a for k, v in params.items() for a in ("-p", k, str(v))]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    record = REPO / "_build" / "records" / f"{source.stem}.{stamp}-{secrets.token_hex(3)}.record.json"
    t0 = time.perf_counter()
    code = run_chapter.run(source, tmp, args + ["--no-progress-bar"], env={**HEADLESS_ENV, "XAI_RECORD_PATH": str(record)})
    seconds = time.perf_counter() - t0
    if code != 0:
        failed = REPO / "_build" / "failed" / out.name
        failed.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            os.replace(tmp, failed)
        raise SystemExit(f"build_book: {source.relative_to(REPO)} failed after {seconds:.0f} s; the partly executed notebook is {failed}")
    if not record.exists():
        raise SystemExit(f"build_book: {source.relative_to(REPO)} ran but wrote no run record ({record}); "
                         "every chapter must end with log.save()")
    nb = nbformat.read(tmp, as_version=4)
    nb.metadata["xai_book"] = {"execution_key": key, "parameters": params, "seconds": round(seconds, 1),
                               "record": str(record.relative_to(REPO))}
    nbformat.write(nb, tmp)
    os.replace(tmp, out)
    return "executed", seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--execute-only", action="store_true", help="do not build the HTML")
    ap.add_argument("--force", action="store_true", help="re-execute every chapter")
    ap.add_argument("--profile", default="quick", choices=["quick", "full"])
    args = ap.parse_args()

    total = time.perf_counter()
    keys = []
    for source in chapters_in_toc():
        status, seconds = execute(source, {"profile": args.profile}, args.force, upstream="".join(keys))
        keys.append(stored_key(source.with_suffix(".ipynb")) or "")
        print(f"build_book: {source.relative_to(REPO)}: {status}" + (f" in {seconds:.0f} s" if seconds else ""), flush=True)
    if not args.execute_only:
        t0 = time.perf_counter()
        cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(REPO), "--warningiserror", "--keep-going", "--quiet"]
        code = subprocess.call(cmd, cwd=REPO, env={**os.environ, **HEADLESS_ENV})
        if code != 0:
            raise SystemExit(f"build_book: jupyter-book build failed (exit {code}); see the messages above")
        print(f"build_book: HTML built in {time.perf_counter() - t0:.0f} s -> {REPO / '_build/html/index.html'}")
    print(f"build_book: total {time.perf_counter() - total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
