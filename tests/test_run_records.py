"""A rerun of a chapter writes its own run record next to its output (or where --record-dir says)
and never replaces another run's record, the book's included."""
import json

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MINI = REPO / "tests" / "fixtures" / "mini_chapter.md"


def run(out: Path, *extra: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XAI_RECORD")}
    subprocess.run([sys.executable, str(REPO / "ci" / "run_chapter.py"), str(MINI), str(out), "--no-progress-bar", *extra],
                   check=True, capture_output=True, env=env, timeout=600)


def test_reruns_write_new_records_next_to_their_output(tmp_path):
    out = tmp_path / "runs" / "mine.ipynb"
    run(out, "-p", "seed", "3")
    run(out, "-p", "seed", "3")
    recs = sorted((tmp_path / "runs").glob("mine.*.record.json"))
    assert len(recs) == 2  # the second run did not replace the first record
    doc = json.loads(recs[0].read_text())
    assert doc["chapter"] == "mini" and doc["seed"] == 3 and doc["parameters"]["seed"] == 3


def test_record_dir_option(tmp_path):
    run(tmp_path / "o.ipynb", "--record-dir", str(tmp_path / "elsewhere"))
    assert len(list((tmp_path / "elsewhere").glob("o.*.record.json"))) == 1
    assert not list(tmp_path.glob("*.record.json"))


def test_book_record_paths_reads_the_executed_notebooks(tmp_path):
    import nbformat

    from lib.records import BookRecordError, book_record_paths

    (tmp_path / "chapters").mkdir()
    rec = tmp_path / "_build" / "records" / "a.1.record.json"
    rec.parent.mkdir(parents=True)
    rec.write_text("{}")
    nb = nbformat.v4.new_notebook()
    nb.metadata["xai_book"] = {"record": "_build/records/a.1.record.json"}
    nbformat.write(nb, tmp_path / "chapters" / "a.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "chapters" / "b.ipynb")  # built before records existed
    assert book_record_paths(repo=tmp_path, strict=False) == {"a": rec}
    with pytest.raises(BookRecordError, match="b.ipynb names no run record"):
        book_record_paths(repo=tmp_path)
    with pytest.raises(BookRecordError, match="c.ipynb is missing"):
        book_record_paths([tmp_path / "chapters" / "c.md"], repo=tmp_path)


def test_record_names_the_commit_at_the_start_of_the_run(monkeypatch, tmp_path):
    from lib import records
    from lib.claims import ClaimLog

    monkeypatch.setenv("XAI_RECORD_DIR", str(tmp_path))
    commits = iter([{"commit": "aaa", "dirty": False}, {"commit": "bbb", "dirty": True}])
    monkeypatch.setattr(records, "git_commit", lambda: next(commits))
    log = ClaimLog("mini", params={"profile": "quick", "seed": 0})  # the run starts at commit aaa
    assert log.record()["git"] == {"commit": "aaa", "dirty": False}  # the tree moved on to bbb meanwhile
