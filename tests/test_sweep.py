"""ci/sweep.py on a local Ray instance: a tiny grid (2 chapters x 2 seeds), a failure collected
without stopping the rest, finished runs skipped on a rerun, no Ray process left behind."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "ci"))
import sweep  # noqa: E402

FIX = REPO / "tests" / "fixtures"


def ray_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if ("raylet" in line or "gcs_server" in line) and "grep" not in line]


def test_grid_points_and_keys():
    pts = sweep.grid_points(["a", "b"], [0, 1], {"profile": "quick"}, {"n": "2,4"})
    assert len(pts) == 8 and pts[0] == {"chapter": "a", "params": {"profile": "quick", "n": 2, "seed": 0}}
    assert sweep.point_key(pts[0], "c1") != sweep.point_key(pts[0], "c2")  # keyed by commit too
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        sweep.parse_assignments(["oops"], "--param")


@pytest.mark.skipif(bool(ray_processes()), reason="another Ray instance is running on this machine")
def test_local_sweep_collects_failures_skips_finished_runs_and_cleans_up(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["--chapters", str(FIX / "mini_chapter.md"), str(FIX / "failing_chapter.md"), "--seeds", "0", "1",
            "--out", str(out), "--num-cpus", "2"]
    assert sweep.main(argv) == 1  # one planted failure
    failures = json.loads((out / "failures.json").read_text())
    assert [(f["chapter"], f["params"]["seed"]) for f in failures] == [("failing_chapter", 1)]
    assert "planted failure for seed 1" in failures[0]["error"]
    assert len(list((out / "mini_chapter").glob("*.record.json"))) == 2
    assert len(list((out / "failing_chapter").glob("*.record.json"))) == 1
    assert not ray_processes()
    capsys.readouterr()
    assert sweep.main(argv) == 1  # only the failed run is retried
    assert "4 runs (3 finished at this commit and skipped), 1 to run" in capsys.readouterr().out
    assert len(list((out / "mini_chapter").glob("*.record.json"))) == 2
    assert not ray_processes()
