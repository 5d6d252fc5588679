"""Chapters run headless through ci/run_chapter.py (jupytext + papermill); bad parameters fail early and clearly."""
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((REPO / "chapters").glob("*.md"))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_a_parameters_cell_with_the_common_parameters(chapter):
    nb = jupytext.read(chapter)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for name in ("profile", "seed", "device"):
        assert f"\n{name} = " in "\n" + tagged[0].source, f"parameters cell lacks {name}"
    assert not any(c.outputs for c in nb.cells if c.cell_type == "code" and "outputs" in c), "no outputs in sources"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_bad_parameter_fails_before_any_compute_with_a_clear_message(chapter, tmp_path):
    out = tmp_path / "out.ipynb"
    proc = subprocess.run(
        [sys.executable, str(REPO / "ci" / "run_chapter.py"), str(chapter), str(out), "-p", "profile", "fast",
         "-p", "seed", "-2", "--no-progress-bar"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "ParameterError" in text
    assert "profile='fast'" in text and "one of 'quick', 'full'" in text
    assert "seed=-2" in text


def test_run_chapter_rejects_a_missing_source(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "ci" / "run_chapter.py"), str(tmp_path / "nope.md"),
                           str(tmp_path / "o.ipynb")], capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
