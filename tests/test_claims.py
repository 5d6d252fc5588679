"""lib.claims and lib.stats: verdicts are computed by the rules from evidence with its sampling error,
and every run writes its own record."""
import json

import numpy as np
import pytest

from lib.claims import (INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, AtLeast, AtMost, ClaimLog, Equals,
                        NotTestable, Significant, Within, load_claims)
from lib.stats import bootstrap_mean, bootstrap_ratio, exact, one_sample_test, paired_test, proportion


def log(profile="full", sample=False):
    lg = ClaimLog("demo", params={"profile": profile, "seed": 0})
    lg.full_data = not sample
    return lg


@pytest.mark.parametrize(
    "ours, paper, rule, verdict",
    [
        # exact values (no sampling error) against thresholds
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
        (None, 1.0, Within(0.1), NOT_TESTABLE),
        (float("nan"), 1.0, Within(0.1), NOT_TESTABLE),
        (1.0, 1.0, NotTestable("needs ImageNet"), NOT_TESTABLE),
        # intervals: supported / contradicted / undecided at this n
        (proportion(200, 200), None, AtLeast(0.9), REPRODUCED),
        (proportion(19, 20), None, AtLeast(0.9), INCONCLUSIVE),  # 95 % of 20 cannot exclude 0.9
        (proportion(10, 20), None, AtLeast(0.9), NOT_REPRODUCED),
        (proportion(9890, 10000), 0.9892, Within(0.005), REPRODUCED),
        (proportion(1870, 2000), 0.9892, Within(0.005), NOT_REPRODUCED),
        (proportion(196, 200), 0.9892, Within(0.005), INCONCLUSIVE),
        (bootstrap_mean([0.1, 0.2, 0.3, 0.2, 0.25]), None, AtMost(0.5), REPRODUCED),
        (bootstrap_mean([0.2, 0.9, 0.4, 0.8]), None, AtMost(0.5), INCONCLUSIVE),
        (bootstrap_mean([0.7, 0.9, 0.8, 0.8]), None, AtMost(0.5), NOT_REPRODUCED),
        # one-sided tests: the claimed direction, the opposite one, neither
        (paired_test(np.arange(10) + 1.0, np.zeros(10)), None, Significant(), REPRODUCED),
        (paired_test(np.zeros(10), np.arange(10) + 1.0), None, Significant(), NOT_REPRODUCED),
        (paired_test([1.0, -1.0, 2.0, -2.0], [0.0] * 4), None, Significant(), INCONCLUSIVE),
    ],
)
def test_verdicts(ours, paper, rule, verdict):
    c = log().claim("x", "statement", ours, paper=paper, source="src", rule=rule, verbose=False)
    assert c.verdict == verdict, c.detail


def test_clopper_pearson_matches_known_values():
    est = proportion(19, 20)
    assert est.low == pytest.approx(0.7513, abs=1e-4) and est.high == pytest.approx(0.9987, abs=1e-4)
    assert proportion(0, 10).low == 0.0 and proportion(10, 10).high == 1.0
    with pytest.raises(ValueError):
        proportion(3, 2)


def test_bootstrap_is_seeded_and_covers_the_mean():
    v = np.random.default_rng(0).normal(1.0, 1.0, 200)
    a, b = bootstrap_mean(v, seed=3), bootstrap_mean(v, seed=3)
    assert a == b and a.low < v.mean() < a.high and a.n == 200
    se = v.std(ddof=1) / np.sqrt(200)
    assert a.high - a.low == pytest.approx(2 * 1.96 * se, rel=0.1)
    r = bootstrap_ratio(2 * v + 10, v + 5)
    assert r.value == pytest.approx(2.0) and r.low <= 2.0 <= r.high


def test_sign_test_and_one_sample_test():
    t = paired_test([2, 3, 4, 5, 6, 7], [1] * 6, method="sign")
    assert t.p == pytest.approx(1 / 64) and t.p_opposite == pytest.approx(1.0)
    t = one_sample_test([-0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7], alternative="greater")
    assert t.p > 0.5 and t.p_opposite < 0.05


def test_paper_scale_claims_are_not_testable_on_quick_runs_or_samples():
    for profile, sample in [("quick", False), ("full", True), ("quick", True)]:
        c = log(profile, sample).claim("acc", "s", 0.99, paper=0.99, source="p", rule=Within(0.01), requires_full=True, verbose=False)
        assert c.verdict == NOT_TESTABLE and "would be 'reproduced'" in c.detail
    c = log("full", False).claim("acc", "s", 0.99, paper=0.99, source="p", rule=Within(0.01), requires_full=True, verbose=False)
    assert c.verdict == REPRODUCED


def test_a_full_data_run_below_the_papers_scale_is_not_testable_with_its_reason():
    c = log("full", False).claim("I", "s", 0.99, paper=0.99, source="p", rule=Within(0.01), requires_full=True,
                                 below_scale="the explainer trained 200 of the reference's 8,000 steps", verbose=False)
    assert c.verdict == NOT_TESTABLE and "would be 'reproduced'" in c.detail and "200 of the reference's" in c.detail


def test_sources_are_required_and_never_an_issue_and_ids_are_unique():
    lg = log()
    with pytest.raises(ValueError, match="source"):
        lg.claim("a", "s", 1.0, paper=1.0, rule=Within(0.1))
    with pytest.raises(ValueError, match="issue"):
        lg.claim("a", "s", 1.0, paper=1.0, source="as quoted in this book's issue 3", rule=Within(0.1))
    lg.claim("a", "s", 1.0, paper=1.0, source="p", rule=Within(0.1), verbose=False)
    with pytest.raises(ValueError, match="twice"):
        lg.claim("a", "s", 1.0, paper=1.0, source="p", rule=Within(0.1))
    lg.report("n", 1)
    with pytest.raises(ValueError, match="twice"):
        lg.report("n", 2)


def test_claimlog_needs_profile_and_seed():
    with pytest.raises(ValueError, match="seed"):
        ClaimLog("demo", params={"profile": "quick"})


def test_record_has_context_and_is_never_overwritten(tmp_path, monkeypatch):
    from lib.data import load_mnist

    monkeypatch.setenv("XAI_RECORD_DIR", str(tmp_path))
    monkeypatch.setenv("XAI_RECORD_NAME", "out")
    ds = load_mnist(verbose=False)
    lg = ClaimLog("demo", params={"profile": "quick", "seed": 3, "n": np.int64(5)}, data=ds)
    lg.report("accuracy", np.float32(0.5))
    lg.claim("a", "s", proportion(9, 10), paper=0.6, source="p", rule=AtLeast(0.5), verbose=False)
    p1, p2 = lg.save(), lg.save()
    assert p1 != p2 and p1.parent == tmp_path and p1.name.startswith("out.")
    doc = json.loads(p1.read_text())
    assert doc["chapter"] == "demo" and doc["seed"] == 3 and doc["parameters"]["n"] == 5
    assert doc["data"]["mnist"]["fingerprint"] == ds.fingerprint and doc["full_data"] is (not ds.is_sample)
    assert doc["outputs"]["accuracy"] == 0.5 and doc["claims"][0]["ours"]["n"] == 10
    assert {"torch", "numpy", "python"} <= set(doc["versions"])
    assert doc["hardware"]["cpu"] and doc["hardware"]["cores"] >= 1
    assert "commit" in doc["git"] and doc["duration_s"] >= 0 and doc["started"]
    assert doc["verdicts"][REPRODUCED] == 1
    monkeypatch.setenv("XAI_RECORD_PATH", str(p1))
    with pytest.raises(FileExistsError, match="never overwritten"):
        lg.save()
    monkeypatch.delenv("XAI_RECORD_PATH")
    assert [d["_path"] for d in load_claims(tmp_path)] == sorted([str(p1), str(p2)])
    assert list(lg.table().index) == ["a"]


def test_exact_estimates_have_no_n():
    assert exact(2.0).n is None and str(exact(2.0)) == "2 (exact)"


def test_records_are_strict_json(tmp_path, monkeypatch):
    monkeypatch.setenv("XAI_RECORD_DIR", str(tmp_path))
    lg = ClaimLog("demo", params={"profile": "quick", "seed": 0})
    lg.report("nothing", float("nan"))
    lg.claim("a", "s", bootstrap_mean([]), rule=AtLeast(0.5), source="p", verbose=False)
    doc = json.loads(lg.save().read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert doc["outputs"]["nothing"] is None and doc["claims"][0]["verdict"] == NOT_TESTABLE


def test_small_samples_get_at_least_the_student_t_interval():
    from scipy.stats import t as student_t

    from lib.stats import SMALL_N, bootstrap_mean

    two = bootstrap_mean([1.0, 1.04])
    half = student_t.ppf(0.975, 1) * np.std([1.0, 1.04], ddof=1) / np.sqrt(2)
    assert two.low <= 1.02 - half + 1e-12 and two.high >= 1.02 + half - 1e-12  # the bootstrap alone gives [1.0, 1.04]
    assert "Student-t" in two.method
    one = bootstrap_mean([0.7])
    assert one.low == -np.inf and one.high == np.inf
    assert AtMost(0.5, why="x").judge(one, None)[0] == INCONCLUSIVE
    big = bootstrap_mean(np.linspace(0, 1, SMALL_N))
    assert "Student-t" not in big.method
