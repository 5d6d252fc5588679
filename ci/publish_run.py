"""Publish a chapter run (e.g. a full-data run) as a page of the book, rendered from its execution.

    python ci/publish_run.py RUN.ipynb RUN.<time>-<id>.record.json [--name cem-full] [--label "50 digits"]

copies the run record to ``results/<chapter>/`` and writes the executed notebook there as
``results/<chapter>/<name>.ipynb`` with a first cell that says where and when it ran (start time,
duration, CPU, GPU, commit, profile, parameters, data), taken from the record. Add the page to
``_toc.yml`` under "Full-data runs" (``- file: results/<chapter>/<name>``). The book renders it as
it is: ``ci/build_book.py`` executes only ``chapters/``, so a committed run is never re-executed at
build time, and the scorecard reads its record from ``results/``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from lib.scorecard import ISA_CAPS  # noqa: E402  (the caps the scorecard tells machines apart by)


def provenance(record: dict, record_name: str) -> str:
    """Markdown: where, when and how the run was made, from its record."""
    hw, git = record.get("hardware", {}), record.get("git", {})
    data = record.get("data") or {}
    data_txt = "; ".join(
        f"{name}: {'committed sample' if d.get('sample') else 'full dataset'} ({d.get('n_train')} train / {d.get('n_test')} test, "
        f"fingerprint `{d.get('fingerprint')}`)" for name, d in data.items() if isinstance(d, dict)) or "none"
    params = record.get("parameters", {})
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in params.items())
    minutes = (record.get("duration_s") or 0) / 60
    # settings that change a CPU's numerics or speed: name them, so a capped run is not read as the plain CPU's
    env = [f"`{k}={hw[k]}`" for k in (*ISA_CAPS, "MKL_CBWR", "OMP_NUM_THREADS") if hw.get(k)]
    return (
        f"```{{admonition}} A committed run, not re-executed by the book's build\n"
        f":class: note\n"
        f"This page is the executed notebook of one run of the chapter `{record.get('chapter')}`, rendered as it was "
        f"saved. It started {record.get('started')} and took {minutes:.1f} min on {hw.get('cpu', 'an unknown CPU')} "
        f"({hw.get('cores', '?')} cores, {hw.get('torch_threads', '?')} torch threads, GPU: {hw.get('gpu') or 'none'}"
        f"{'; ' + ', '.join(env) if env else ''}), "
        f"commit `{str(git.get('commit'))[:10]}`{' with uncommitted changes' if git.get('dirty') else ''}, "
        f"profile `{record.get('profile')}`, seed {record.get('seed')}. Data: {data_txt}. Its run record is "
        f"`{record_name}` beside this page; the scorecard reads it and marks it stale once the chapter's code has "
        f"changed since that commit.\n```\n\n| parameter | value |\n| --- | --- |\n{rows}\n"
    )


def _final_lines(text: str) -> str:
    """What a terminal shows after ``text``: each line's part after its last carriage return (a progress bar's
    final state), lines left blank by a cleared bar dropped."""
    out = []
    for line in text.split("\n"):
        shown = line.rsplit("\r", 1)[-1]
        if shown.strip() or "\r" not in line:
            out.append(shown)
    return "\n".join(out)


def collapse_progress(nb) -> int:
    """Merge each code cell's consecutive stream outputs of one stream and keep only what a terminal would show
    at the end, so a page keeps a progress bar's last state, not its thousands of updates (an 80-epoch training
    loop writes about 12,000). Returns the number of stream outputs removed."""
    removed = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged = []
        for out in cell.get("outputs", []):
            if (out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                    and merged[-1].get("name") == out.get("name")):
                merged[-1]["text"] += out["text"]
                removed += 1
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream":
                out["text"] = _final_lines(out["text"])
        cell["outputs"] = [o for o in merged if o.get("output_type") != "stream" or o["text"].strip()]
        removed += len(merged) - len(cell["outputs"])
    return removed


def publish(notebook: Path, record_path: Path, name: str | None = None, repo: Path = REPO, label: str | None = None) -> Path:
    record = json.loads(record_path.read_text())
    chapter = record["chapter"]
    out_dir = repo / "results" / chapter
    out_dir.mkdir(parents=True, exist_ok=True)
    if record_path.resolve().parent != out_dir.resolve():
        shutil.copy2(record_path, out_dir / record_path.name)
    nb = nbformat.read(notebook, as_version=4)
    collapse_progress(nb)
    # the page title: the chapter's first heading, marked as this run
    title = f"{chapter}: {record.get('profile')} profile run"
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("# "):
            first, _, rest = cell.source.lstrip().partition("\n")
            title = first[2:].strip()
            cell.source = rest
            break
    date = str(record.get("started", ""))[:10]
    full = not any(isinstance(d, dict) and d.get("sample") for d in (record.get("data") or {}).values())
    hw = record.get("hardware") or {}
    isa = next((hw[k] for k in ISA_CAPS if hw.get(k)), None)
    where = f", {hw.get('cpu', 'unknown CPU')}" + (f" capped to {isa}" if isa else "")
    if label:  # tells apart runs of one chapter, day and machine, e.g. by the setting they ran
        where += f" ({label})"
    header = nbformat.v4.new_markdown_cell(
        f"# {title}: {'full-data' if full else 'sample-data'} run of {date}{where}\n\n" + provenance(record, record_path.name))
    nb.cells.insert(0, header)
    nb.metadata.setdefault("xai_book", {})["published_record"] = record_path.name
    target = out_dir / f"{name or notebook.stem}.ipynb"
    nbformat.write(nb, target)
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook", type=Path)
    ap.add_argument("record", type=Path)
    ap.add_argument("--name", help="file name of the page under results/<chapter>/ (default: the notebook's)")
    ap.add_argument("--label", help="appended to the page title, e.g. the setting that tells this run apart")
    args = ap.parse_args(argv)
    for p in (args.notebook, args.record):
        if not p.exists():
            print(f"publish_run: {p} does not exist", file=sys.stderr)
            return 2
    target = publish(args.notebook, args.record, args.name, label=args.label)
    print(f"publish_run: wrote {target.relative_to(REPO)}; add '- file: {target.relative_to(REPO).with_suffix('')}' "
          f"to _toc.yml under 'Full-data runs' and commit it with its record")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
