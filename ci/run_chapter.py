"""Run one chapter headless with papermill: ``python ci/run_chapter.py SOURCE.md OUTPUT.ipynb [papermill options]``.

The chapter's MyST markdown source is converted to a notebook with jupytext, then executed by
papermill with the given parameters, e.g.::

    python ci/run_chapter.py chapters/cem.md cem-full.ipynb -p profile full -p seed 3

Every option after the two paths is passed to papermill unchanged (``-p NAME VALUE``,
``-y YAML``, ``-f params.yaml``, ``--cwd``...). The chapter runs with ``chapters/`` as its
working directory unless ``--cwd`` is given. A bad parameter stops the run at the chapter's
parameter check with a message naming the parameter and its valid values.

The chapter's run record (parameters, data fingerprint, versions, hardware, commit, duration,
claims; see ``lib/records.py``) is written next to the output notebook as
``OUTPUT-STEM.<start time>-<random>.record.json``, or into the folder given by
``--record-dir DIR`` (an option of this script, not of papermill). A record never replaces another.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat

REPO = Path(__file__).resolve().parent.parent


def to_notebook(source: Path) -> nbformat.NotebookNode:
    """The chapter as an (unexecuted) notebook with the book's Python kernel."""
    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def run(source: Path, output: Path, papermill_args: list[str], env: dict | None = None, record_dir: Path | None = None,
        log: Path | None = None) -> int:
    """Execute ``source`` into ``output``; returns papermill's exit code.

    The run record goes to ``record_dir`` (default: the output's folder) unless ``env`` sets
    ``XAI_RECORD_PATH`` or ``XAI_RECORD_DIR`` itself. ``log``: write papermill's output to this file.
    """
    if not source.exists():
        print(f"run_chapter: {source} does not exist", file=sys.stderr)
        return 2
    if source.suffix != ".md":
        print(f"run_chapter: expected a chapter's .md source, got {source}", file=sys.stderr)
        return 2
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        unexecuted = Path(tmp) / (source.stem + ".ipynb")
        nbformat.write(to_notebook(source), unexecuted)
        args = [sys.executable, "-m", "papermill", str(unexecuted), str(output), "--kernel", "python3"]
        if "--cwd" not in papermill_args:
            args += ["--cwd", str(source.resolve().parent)]
        base = {k: v for k, v in os.environ.items() if k != "XAI_RECORD_PATH"}
        record_env = {"XAI_RECORD_DIR": str((record_dir or output.parent).resolve()), "XAI_RECORD_NAME": output.stem}
        if log is None:
            return subprocess.call(args + papermill_args, env={**base, **record_env, **(env or {})})
        with open(log, "w") as f:
            return subprocess.call(args + papermill_args, env={**base, **record_env, **(env or {})}, stdout=f, stderr=subprocess.STDOUT)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    rest, record_dir = list(argv[2:]), None
    if "--record-dir" in rest:
        i = rest.index("--record-dir")
        if i + 1 >= len(rest):
            print("run_chapter: --record-dir needs a folder", file=sys.stderr)
            return 2
        record_dir = Path(rest[i + 1])
        del rest[i : i + 2]
    return run(Path(argv[0]), Path(argv[1]), rest, record_dir=record_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
