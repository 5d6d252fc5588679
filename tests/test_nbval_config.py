"""The nbval set-up used on the executed chapters catches a changed number but ignores timings."""
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
SANITIZE = REPO / "ci" / "nbval_sanitize.cfg"

CELLS = [
    'print("CNN: 2 epochs, final training loss 0.2707, test accuracy 0.9440")',
    'print("cem-mnist-cnn: trained in 218 s and cached (key 60444a15a34d1a420b33)")',
    'print("[REPRODUCED] cem.pn_success: ours 1 | paper 9")',
]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, kernel_name="python3").execute()
    return nb


def nbval(nb, tmp_path) -> int:
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", str(path),
                            "--nbval-sanitize-with", str(SANITIZE), "--nbval-current-env"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def planted(nb, cell: int, old: str, new: str):
    nb = nbformat.from_dict(nb)
    out = nb.cells[cell].outputs[0]
    assert old in out.text
    out.text = out.text.replace(old, new)
    return nb


def test_unchanged_notebook_passes(executed, tmp_path):
    assert nbval(executed, tmp_path) == 0


def test_a_changed_result_fails(executed, tmp_path):
    assert nbval(planted(executed, 0, "0.9440", "0.9441"), tmp_path) != 0


def test_a_changed_verdict_fails(executed, tmp_path):
    assert nbval(planted(executed, 2, "REPRODUCED", "NOT REPRODUCED"), tmp_path) != 0


def test_a_changed_training_time_and_cache_state_pass(executed, tmp_path):
    nb = planted(executed, 1, "trained in 218 s and cached", "loaded from cache")
    assert nbval(nb, tmp_path) == 0
