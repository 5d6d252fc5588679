"""lib.scorecard: rows from run records, verdicts combined over seeds, counts."""
import pytest

from lib.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED
from lib.scorecard import combine, machine, row_key, rows, varies_with, verdict_counts


@pytest.mark.parametrize("verdicts, expected", [
    ([REPRODUCED, REPRODUCED, REPRODUCED], REPRODUCED),
    ([NOT_REPRODUCED], NOT_REPRODUCED),
    ([REPRODUCED, NOT_REPRODUCED], INCONCLUSIVE),
    ([REPRODUCED, INCONCLUSIVE], INCONCLUSIVE),
    ([NOT_TESTABLE, NOT_TESTABLE], NOT_TESTABLE),
    ([], NOT_TESTABLE),
])
def test_combine(verdicts, expected):
    assert combine(verdicts) == expected


def record(seed, value, verdict, started, chapter="demo"):
    return {"chapter": chapter, "profile": "quick", "seed": seed, "full_data": False, "started": started,
            "parameters": {"profile": "quick", "seed": seed}, "hardware": {"cpu": "cpu X"}, "git": {"commit": None},
            "claims": [{"id": f"{chapter}.c", "statement": "s", "source": "paper, Sec. 1", "paper": 1.0, "rule": ">= 0.5",
                        "why": "because", "verdict": verdict, "detail": "d",
                        "ours": {"value": value, "low": value - 0.1, "high": value + 0.1, "n": 20, "method": "m"}}]}


def test_rows_combine_seeds_and_keep_the_newest_record_per_seed():
    recs = [record(0, 0.7, REPRODUCED, "2026-01-01"), record(0, 0.9, REPRODUCED, "2026-01-02"),
            record(1, 0.4, NOT_REPRODUCED, "2026-01-01"), record(0, 0.8, REPRODUCED, "2026-01-01", chapter="other")]
    table = {r["chapter"]: r for r in rows(recs)}
    demo = table["demo"]
    assert demo["seeds"] == [0, 1] and demo["verdicts"] == [REPRODUCED, NOT_REPRODUCED]
    assert demo["verdict"] == INCONCLUSIVE and "0.9" in demo["ours"] and "0.4" in demo["ours"]
    assert demo["spread"] == pytest.approx(0.25)
    assert table["other"]["ours"].startswith("0.8 [0.7, 0.9]") and table["other"]["verdict"] == REPRODUCED
    counts = verdict_counts(list(table.values()))
    assert counts["demo"][INCONCLUSIVE] == 1 and counts["other"][REPRODUCED] == 1


def test_rows_keep_other_settings_apart_and_label_them():
    small = record(0, 0.6, REPRODUCED, "2026-01-03")
    small["parameters"] = {"profile": "quick", "seed": 0, "n": 5, "draws": 512}
    big = record(0, 0.9, REPRODUCED, "2026-01-02")
    big["parameters"] = {"profile": "quick", "seed": 0, "n": 50, "draws": 32}
    table = rows([small, big])
    assert len(table) == 2
    by_setting = {r["setting"]: r for r in table}
    assert set(by_setting) == {"draws=512, n=5", "draws=32, n=50"}
    assert by_setting["draws=32, n=50"]["ours"].startswith("0.9") and by_setting["draws=512, n=5"]["ours"].startswith("0.6")
    assert row_key(by_setting["draws=512, n=5"]) == "demo.c (quick, sample, draws=512, n=5)"
    assert rows([big])[0]["setting"] == "" and row_key(rows([big])[0]) == "demo.c (quick, sample)"


def test_rows_combine_machines_and_name_them_when_they_disagree():
    xeon = record(0, 0.9, REPRODUCED, "2026-01-01")
    xeon["hardware"] = {"cpu": "Xeon"}
    epyc = record(0, 0.4, NOT_REPRODUCED, "2026-01-02")
    epyc["hardware"] = {"cpu": "EPYC"}
    capped = record(0, 0.5, NOT_REPRODUCED, "2026-01-03")
    capped["hardware"] = {"cpu": "EPYC", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    (row,) = rows([xeon, epyc, capped])
    assert row["verdict"] == INCONCLUSIVE and row["seeds"] == [0, 0, 0]
    assert row["runs"] == ["seed 0 on EPYC", "seed 0 on EPYC, ONEDNN_MAX_CPU_ISA=AVX2", "seed 0 on Xeon"]
    assert varies_with(row) == "the machine" and "runs:" in row["ours"]
    (same,) = rows([epyc, capped])
    assert same["verdict"] == NOT_REPRODUCED and varies_with(same) is None
    seeds = [record(0, 0.9, REPRODUCED, "2026-01-01"), record(1, 0.4, NOT_REPRODUCED, "2026-01-01")]
    assert varies_with(rows(seeds)[0]) == "the seed" and rows(seeds)[0]["runs"] == ["seed 0", "seed 1"]
    both = [xeon, epyc, dict(record(1, 0.8, REPRODUCED, "2026-01-01"), hardware={"cpu": "EPYC"})]
    assert varies_with(rows(both)[0]) == "the seed and the machine"


def test_machine_names_the_cpu_the_caps_and_a_gpu_only_when_used():
    rec = record(0, 0.9, REPRODUCED, "2026-01-01")
    rec["hardware"] = {"cpu": "EPYC", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OMP_NUM_THREADS": "2", "gpu": "H100"}
    assert machine(rec) == "EPYC, MKL_ENABLE_INSTRUCTIONS=AVX2"
    rec["parameters"] = dict(rec["parameters"], device="cuda")
    assert machine(rec) == "EPYC, MKL_ENABLE_INSTRUCTIONS=AVX2, H100"


def _git(repo, *args):
    import subprocess
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": __import__("os").environ["PATH"]})
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_lib_dependencies_follow_imports_through_lib(tmp_path):
    from lib.scorecard import lib_dependencies
    _write(tmp_path / "lib/__init__.py", "")
    _write(tmp_path / "lib/a.py", "from lib.b import f\n")
    _write(tmp_path / "lib/b.py", "import numpy\n")
    _write(tmp_path / "lib/unused.py", "")
    _write(tmp_path / "lib/models/__init__.py", "")
    _write(tmp_path / "lib/models/m.py", "from lib import c\n")
    _write(tmp_path / "lib/c.py", "")
    _write(tmp_path / "chapters/x.md", "```{code-cell} ipython3\nfrom lib.a import (f,\n    g)  # comment\n"
                                       "from lib.models import m\nimport lib.missing\n```\n")
    assert lib_dependencies("chapters/x.md", tmp_path) == [
        "lib/__init__.py", "lib/a.py", "lib/b.py", "lib/c.py", "lib/models/__init__.py", "lib/models/m.py"]


def test_a_record_is_stale_only_when_its_chapter_or_its_lib_files_change(tmp_path):
    from lib.scorecard import is_stale
    _git(tmp_path, "init", "-q")
    _write(tmp_path / "lib/__init__.py", "")
    _write(tmp_path / "lib/a.py", "X = 1\n")
    _write(tmp_path / "lib/other.py", "Y = 1\n")
    _write(tmp_path / "chapters/x.md", "from lib.a import X\n")
    _git(tmp_path, "add", "-A")
    first = _git(tmp_path, "commit", "-qm", "one")
    rec = {"git": {"commit": first}}
    assert is_stale(rec, "chapters/x.md", tmp_path) is False
    _write(tmp_path / "lib/other.py", "Y = 2\n")  # a module the chapter does not import
    _git(tmp_path, "commit", "-qam", "two")
    assert is_stale(rec, "chapters/x.md", tmp_path) is False
    _write(tmp_path / "lib/a.py", "X = 2\n")
    _git(tmp_path, "commit", "-qam", "three")
    assert is_stale(rec, "chapters/x.md", tmp_path) is True
    assert is_stale({"git": {"commit": "0" * 40}}, "chapters/x.md", tmp_path) is None  # not in this history
    assert is_stale({"git": {}}, "chapters/x.md", tmp_path) is None


def _chapter_changed_once(repo):
    """A git repository whose chapter x changed once: (commit before, commit after)."""
    _git(repo, "init", "-q")
    _write(repo / "lib/__init__.py", "")
    _write(repo / "chapters/x.md", "one\n")
    _git(repo, "add", "-A")
    old = _git(repo, "commit", "-qm", "one")
    _write(repo / "chapters/x.md", "two\n")
    return old, _git(repo, "commit", "-qam", "two")


def test_a_stale_record_gives_way_to_a_current_one_from_another_machine(tmp_path):
    old, new = _chapter_changed_once(tmp_path)
    xeon = dict(record(0, 0.9, REPRODUCED, "2026-01-01", chapter="x"), hardware={"cpu": "Xeon"}, git={"commit": old})
    epyc = dict(record(0, 0.4, NOT_REPRODUCED, "2026-01-02", chapter="x"), hardware={"cpu": "EPYC"}, git={"commit": new})
    (row,) = rows([xeon, epyc], repo=tmp_path)
    assert row["machines"] == ["EPYC"] and row["verdict"] == NOT_REPRODUCED and not row["stale"]
    (alone,) = rows([xeon], repo=tmp_path)  # the only record of its run stays, marked stale
    assert alone["machines"] == ["Xeon"] and alone["stale"]


def test_a_stale_row_is_superseded_by_a_current_row_of_another_setting(tmp_path):
    old, new = _chapter_changed_once(tmp_path)
    few = dict(record(0, 0.4, NOT_REPRODUCED, "2026-01-01", chapter="x"), git={"commit": old})
    few["parameters"] = {"profile": "quick", "seed": 0, "n": 20}
    many = dict(record(0, 0.45, NOT_REPRODUCED, "2026-01-02", chapter="x"), git={"commit": new})
    many["parameters"] = {"profile": "quick", "seed": 0, "n": 100}
    by_setting = {r["setting"]: r for r in rows([few, many], repo=tmp_path)}
    assert by_setting["n=20"]["stale"] and by_setting["n=20"]["superseded_by"] == "n=100"
    assert not by_setting["n=100"]["stale"] and by_setting["n=100"]["superseded_by"] is None
    assert verdict_counts(list(by_setting.values()))["x"][NOT_REPRODUCED] == 1  # the claim counted once
    (alone,) = rows([few], repo=tmp_path)  # no current row: the stale one is still counted
    assert alone["stale"] and alone["superseded_by"] is None
    assert verdict_counts([alone])["x"][NOT_REPRODUCED] == 1
