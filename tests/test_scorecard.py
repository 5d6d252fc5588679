"""lib.scorecard: rows from run records, verdicts combined over seeds, counts."""
import pytest

from lib.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED
from lib.scorecard import combine, rows, verdict_counts


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
