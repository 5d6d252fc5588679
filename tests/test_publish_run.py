"""ci/publish_run.py: a committed run becomes a page that says where and when it ran."""
import json
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ci"))
import publish_run  # noqa: E402


def test_published_page_names_hardware_commit_and_data(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# CEM: pertinent negatives\n\nText."), nbformat.v4.new_code_cell("1 + 1")]
    nb_path = tmp_path / "cem-full.ipynb"
    nbformat.write(nb, nb_path)
    record = {"chapter": "cem", "profile": "full", "seed": 0, "started": "2026-11-25T17:00:00+00:00", "duration_s": 1800,
              "parameters": {"profile": "full", "n_explain": 20}, "git": {"commit": "abcdef1234567", "dirty": False},
              "hardware": {"cpu": "Some CPU", "cores": 2, "torch_threads": 2, "gpu": None},
              "data": {"mnist": {"sample": False, "n_train": 60000, "n_test": 10000, "fingerprint": "f00"}}}
    rec_path = tmp_path / "cem-full.20261125T170000Z-abc.record.json"
    rec_path.write_text(json.dumps(record))
    out = publish_run.publish(nb_path, rec_path, repo=tmp_path)
    assert out == tmp_path / "results" / "cem" / "cem-full.ipynb"
    assert (tmp_path / "results" / "cem" / rec_path.name).exists()
    page = nbformat.read(out, as_version=4)
    head = page.cells[0].source
    assert head.startswith("# CEM: pertinent negatives: full-data run of 2026-11-25")
    for text in ("Some CPU", "abcdef1234", "30.0 min", "full dataset", "not re-executed", "`n_explain` | `20`"):
        assert text in head, text
    assert not page.cells[1].source.startswith("# ")  # one title per page
    assert "ONEDNN" not in head
    record["hardware"].update(ONEDNN_MAX_CPU_ISA="AVX2", MKL_CBWR="AVX2")
    assert "`ONEDNN_MAX_CPU_ISA=AVX2`, `MKL_CBWR=AVX2`" in publish_run.provenance(record, rec_path.name)
    assert head.partition("\n")[0].endswith("run of 2026-11-25, Some CPU")
    rec_path.write_text(json.dumps(record))
    capped = nbformat.read(publish_run.publish(nb_path, rec_path, repo=tmp_path, name="capped"), as_version=4)
    assert capped.cells[0].source.partition("\n")[0].endswith("run of 2026-11-25, Some CPU capped to AVX2")
    labelled = nbformat.read(publish_run.publish(nb_path, rec_path, repo=tmp_path, name="l", label="100 images"), as_version=4)
    assert labelled.cells[0].source.partition("\n")[0].endswith("Some CPU capped to AVX2 (100 images)")


def test_progress_bar_updates_collapse_to_their_final_state():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("train()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="\rCNN:   0%|  | 0/3"),
                    nbformat.v4.new_output("stream", name="stderr", text="\rCNN:  33%|# | 1/3"),
                    nbformat.v4.new_output("stream", name="stderr", text="\rCNN: 100%|##| 3/3\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="trained in 5 s\n"),
                    nbformat.v4.new_output("execute_result", data={"text/plain": "0.99"}, execution_count=1)]
    nb.cells = [cell]
    assert publish_run.collapse_progress(nb) == 2
    outs = nb.cells[0].outputs
    assert [o.get("name") for o in outs] == ["stderr", "stdout", None]
    assert outs[0].text == "CNN: 100%|##| 3/3\n"
    assert outs[1].text == "trained in 5 s\n"
