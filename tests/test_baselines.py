"""ci/baselines.py: a changed number fails the regression check and the failure names the output and
both values; accepting new numbers rewrites only the values."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "ci"))
import baselines  # noqa: E402

MINI = REPO / "tests" / "fixtures" / "mini_chapter.md"


def record(outputs=None, claims=None, params=None):
    return {"chapter": "demo", "parameters": params or {"profile": "quick", "seed": 0}, "data": {},
            "outputs": outputs or {}, "claims": claims or []}


def claim(value, low, high, verdict="reproduced"):
    return {"id": "demo.c", "verdict": verdict, "ours": {"value": value, "low": low, "high": high, "n": 20, "method": "bootstrap"}}


@pytest.fixture
def baseline_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(baselines, "BASELINES", tmp_path / "baselines")
    return tmp_path


def make_baseline(rec, tmp_path, tolerances=None):
    path = tmp_path / "rec.json"
    path.write_text(json.dumps(rec))
    baselines.accept("demo", path)
    base = baselines.load_baseline("demo")
    if tolerances:
        base["tolerances"] = tolerances
    return base


def test_flattening_names_every_number(baseline_dir):
    rec = record({"acc": 0.9, "table": {"LIME": [1.0, 2.0]}}, [claim(0.5, 0.4, 0.6)])
    names = baselines.outputs_of(rec)
    assert names == {"outputs.acc": 0.9, "outputs.table.LIME.0": 1.0, "outputs.table.LIME.1": 2.0,
                     "claim.demo.c.verdict": "reproduced", "claim.demo.c.value": 0.5, "claim.demo.c.low": 0.4,
                     "claim.demo.c.high": 0.6, "claim.demo.c.n": 20}


def test_changes_beyond_the_tolerance_fail_and_name_output_and_values(baseline_dir):
    rec = record({"acc": 0.9000, "count": 12}, [claim(0.5, 0.4, 0.6)])
    base = make_baseline(rec, baseline_dir)
    assert baselines.compare(rec, base) == []
    near = record({"acc": 0.9000 * 1.005, "count": 12}, [claim(0.5, 0.4, 0.6)])
    assert baselines.compare(near, base) == []  # inside the default 1 %
    moved = record({"acc": 0.9000 * 1.05, "count": 13}, [claim(0.5, 0.4, 0.6, verdict="inconclusive")])
    text = "\n".join(map(str, baselines.compare(moved, base)))
    assert "output 'outputs.acc' changed: baseline 0.9, now 0.945" in text
    assert "output 'outputs.count' changed: baseline 12, now 13 (must be equal)" in text
    assert "output 'claim.demo.c.verdict' changed: baseline 'reproduced', now 'inconclusive'" in text


def test_named_tolerances_apply_and_missing_or_new_outputs_fail(baseline_dir):
    rec = record({"p": 0.010, "count": 12})
    base = make_baseline(rec, baseline_dir, {"outputs.p": {"abs": 0.005, "why": "p-values"}, "outputs.count": {"abs": 1, "why": "k"}})
    assert baselines.compare(record({"p": 0.014, "count": 13}), base) == []
    assert len(baselines.compare(record({"p": 0.016, "count": 12}), base)) == 1
    problems = baselines.compare(record({"p": 0.010, "other": 1}), base)
    assert {p.output for p in problems} == {"outputs.count", "outputs.other"}
    assert any("disappeared" in p.message for p in problems) and any("is new" in p.message for p in problems)


def test_ignored_values_are_not_compared_but_their_verdicts_are(baseline_dir):
    rec = record({"seconds": 3.0}, [claim(5000.0, 5000.0, 5000.0)])
    base = make_baseline(rec, baseline_dir, {"outputs.seconds": {"ignore": True, "why": "a measured time"},
                                             "claim.demo.c.*": {"ignore": True, "why": "a time ratio"}})
    assert baselines.compare(record({"seconds": 9.0}, [claim(900.0, 900.0, 900.0)]), base) == []
    slower = record({"seconds": 9.0}, [claim(9.0, 9.0, 9.0, verdict="not reproduced")])
    assert [p.output for p in baselines.compare(slower, base)] == ["claim.demo.c.verdict"]


def test_other_parameters_are_not_compared(baseline_dir):
    base = make_baseline(record({"acc": 0.9}), baseline_dir)
    problems = baselines.compare(record({"acc": 0.9}, params={"profile": "quick", "seed": 1}), base)
    assert len(problems) == 1 and "compare like with like" in problems[0].message


def test_accept_keeps_tolerances_and_reports_what_changed(baseline_dir):
    make_baseline(record({"acc": 0.9}), baseline_dir, None)
    path = baselines.baseline_path("demo")
    doc = json.loads(path.read_text())
    doc["tolerances"] = {"outputs.acc": {"rel": 0.02, "why": "reason"}}
    path.write_text(json.dumps(doc))
    new = baseline_dir / "new.json"
    new.write_text(json.dumps(record({"acc": 0.95})))
    assert baselines.accept("demo", new) == ["outputs.acc"]
    doc = json.loads(path.read_text())
    assert doc["values"]["outputs.acc"] == 0.95 and doc["tolerances"]["outputs.acc"]["why"] == "reason"


def run_mini(tmp_path: Path, name: str, pythonpath: Path | None = None) -> Path:
    env = {"XAI_RECORD_DIR": str(tmp_path)}
    out = tmp_path / f"{name}.ipynb"
    cmd = [sys.executable, str(REPO / "ci" / "run_chapter.py"), str(MINI), str(out), "--no-progress-bar"]
    full_env = {**os.environ, **env}
    if pythonpath:
        full_env["PYTHONPATH"] = str(pythonpath)
    subprocess.run(cmd, check=True, capture_output=True, env=full_env, timeout=600)
    (rec,) = tmp_path.glob(f"{name}.*.record.json")
    return rec


def test_a_planted_change_in_a_lib_function_fails_the_check(baseline_dir, tmp_path, capsys):
    """End to end: a chapter run, its baseline, then the same chapter with lib.stats.bootstrap_mean
    changed by 6 % (a copy of lib/ first on the path): the check fails and names the output."""
    good = run_mini(tmp_path, "good")
    assert baselines.accept("mini", good)  # every value is new
    assert baselines.main(["check", "--record", str(good)]) == 0

    planted = tmp_path / "planted"
    shutil.copytree(REPO / "lib", planted / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    stats = planted / "lib" / "stats.py"
    src = stats.read_text()
    assert "return Estimate(float(x.mean()), float(lo), float(hi)" in src
    stats.write_text(src.replace("return Estimate(float(x.mean()), float(lo), float(hi)",
                                 "return Estimate(float(x.mean()) * 1.06, float(lo), float(hi)"))
    bad = run_mini(tmp_path, "bad", pythonpath=planted)
    problems = baselines.compare(json.loads(bad.read_text()), baselines.load_baseline("mini"))
    assert [p.output for p in problems] == ["claim.mini.mean_low.value"], problems
    good_value = json.loads(good.read_text())["claims"][0]["ours"]["value"]
    assert f"baseline {good_value!r}, now {good_value * 1.06!r}" in str(problems[0])
    capsys.readouterr()
    assert baselines.main(["check", "--record", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION mini: output 'claim.mini.mean_low.value' changed" in out
    n = len(baselines.load_baseline("mini")["values"])
    assert f"baselines: mini: {n - 1} of {n} baseline outputs match; 1 changed or disappeared, 0 new" in out
