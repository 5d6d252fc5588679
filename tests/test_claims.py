"""lib.claims: verdicts are computed by the rules, and saved for the scorecard."""
import json

import pytest

from lib.claims import (NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, AtLeast, AtMost, ClaimLog, Equals, NotTestable,
                        Ordering, Within, load_claims)


def log(profile="full", full_data=True):
    return ClaimLog("demo", profile=profile, full_data=full_data)


@pytest.mark.parametrize(
    "ours, paper, rule, verdict",
    [
        (0.985, 0.9892, Within(0.005), REPRODUCED),
        (0.980, 0.9892, Within(0.005), NOT_REPRODUCED),
        (110.0, 100.0, Within(0.05, relative=True), NOT_REPRODUCED),
        (104.0, 100.0, Within(0.05, relative=True), REPRODUCED),
        (0.95, None, AtLeast(0.9), REPRODUCED),
        (0.85, None, AtLeast(0.9), NOT_REPRODUCED),
        (0.4, None, AtMost(0.5), REPRODUCED),
        (0.6, None, AtMost(0.5), NOT_REPRODUCED),
        (9, 9, Equals(), REPRODUCED),
        (7, 9, Equals(), NOT_REPRODUCED),
        ({"a": 3, "b": 2, "c": 1}, ["a", "b"], Ordering(), REPRODUCED),
        ({"a": 1, "b": 2, "c": 3}, ["a", "b"], Ordering(), NOT_REPRODUCED),
        (None, 1.0, Within(0.1), NOT_TESTABLE),
        (float("nan"), 1.0, Within(0.1), NOT_TESTABLE),
        (1.0, 1.0, NotTestable("needs ImageNet"), NOT_TESTABLE),
    ],
)
def test_verdicts(ours, paper, rule, verdict):
    c = log().claim("x", "statement", ours, paper=paper, source="src" if paper is not None else "", rule=rule, verbose=False)
    assert c.verdict == verdict


def test_paper_scale_claims_are_not_testable_on_quick_runs_or_samples():
    for profile, full_data in [("quick", True), ("full", False), ("quick", False)]:
        c = log(profile, full_data).claim("acc", "s", 0.99, paper=0.99, source="p", rule=Within(0.01), requires_full=True, verbose=False)
        assert c.verdict == NOT_TESTABLE and "would be 'reproduced'" in c.detail
    c = log("full", True).claim("acc", "s", 0.99, paper=0.99, source="p", rule=Within(0.01), requires_full=True, verbose=False)
    assert c.verdict == REPRODUCED


def test_paper_value_needs_a_source_and_ids_are_unique():
    lg = log()
    with pytest.raises(ValueError, match="source"):
        lg.claim("a", "s", 1.0, paper=1.0, rule=Within(0.1))
    lg.claim("a", "s", 1.0, paper=1.0, source="p", rule=Within(0.1), verbose=False)
    with pytest.raises(ValueError, match="twice"):
        lg.claim("a", "s", 1.0, paper=1.0, source="p", rule=Within(0.1))


def test_save_and_load_roundtrip(tmp_path):
    import numpy as np

    lg = ClaimLog("demo", profile="quick", full_data=False, results_dir=tmp_path)
    lg.claim("a", "s", np.float32(0.5), paper=0.6, source="p", rule=Within(0.2), verbose=False)
    path = lg.save()
    doc = json.loads(path.read_text())
    assert doc["profile"] == "quick" and doc["claims"][0]["verdict"] == REPRODUCED
    assert isinstance(doc["claims"][0]["ours"], float)
    assert load_claims(tmp_path)[0]["chapter"] == "demo"
    assert list(lg.table().index) == ["a"]
