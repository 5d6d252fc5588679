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
