"""Claims and run records: every chapter records what it tested, and code (not prose) decides the verdict.

A chapter makes one :class:`ClaimLog` right after its parameters are resolved (this starts the run's
clock), reports the numbers it shows, records each claim of the paper with the evidence for it, and
saves the run record at the end::

    log = ClaimLog("cem", params=P, data=ds)
    log.report("cnn_test_accuracy", test_acc)                      # shown, regression-checked
    log.claim("cem.pn_success", "CEM finds a PN for almost every digit",
              ours=proportion(k, n), rule=AtLeast(0.9, why="..."), paper="PNs shown for all examples",
              source="Dhurandhar et al. 2018, Sec. 4, Fig. 2")
    log.table()      # shown in the chapter
    log.save()       # the run record (lib.records), read by the scorecard and the regression check

``ours`` is an :class:`lib.stats.Estimate` (value with a 95 % interval over the explained
instances), a :class:`lib.stats.TestResult` (one-sided tests), or a plain value for what has no
sampling error (a class, a flag, an exact count on fixed inputs). Verdicts:

* ``reproduced``: the evidence supports the claim at the stated level (the whole interval on the
  claimed side of the threshold, or the one-sided test significant);
* ``not reproduced``: the evidence contradicts it (the whole interval on the other side, or the
  opposite one-sided test significant, or an exact value that fails);
* ``inconclusive``: neither, at this ``n`` (the detail says what was measured);
* ``not testable here``: no measurement, an explicit :class:`NotTestable` reason, or a claim about
  paper scale measured on a quick run or on a data sample (our value is still shown).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lib import records
from lib.stats import ALPHA, Estimate, TestResult, exact

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE = "reproduced", "not reproduced", "inconclusive", "not testable here"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE)


def _plain(v: Any) -> Any:
    """numpy/torch scalars and containers to plain Python (JSON-able) values."""
    if isinstance(v, (Estimate, TestResult)):
        return v.asdict()
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        return v.item()
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, (Estimate, TestResult)):
        return str(v)
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _interval(ours: Any) -> Estimate:
    if isinstance(ours, Estimate):
        return ours
    if isinstance(ours, (int, float)) and not isinstance(ours, bool):
        return exact(ours)
    raise TypeError(f"this rule needs a number or an lib.stats.Estimate, got {type(ours).__name__}")


class Rule:
    """Decides a verdict from our evidence and the paper's value. Subclasses implement ``judge``.

    ``why``: the reason for a threshold that is the book's own (shown with the rule).
    """

    why: str = ""

    def judge(self, ours: Any, paper: Any) -> tuple[str, str]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _side(est: Estimate, threshold: float, at_least: bool) -> tuple[str, str]:
    """Verdict of 'est >= threshold' (or '<=') with its interval."""
    if math.isnan(est.value):
        return NOT_TESTABLE, "no measurement in this run"
    op, neg = (">=", "<") if at_least else ("<=", ">")
    if est.n is None:
        ok = est.value >= threshold if at_least else est.value <= threshold
        return (REPRODUCED if ok else NOT_REPRODUCED), f"{est.value:.4g} {op if ok else neg} {threshold:g} (exact)"
    lo, hi = est.low, est.high
    supported = lo >= threshold if at_least else hi <= threshold
    contradicted = hi < threshold if at_least else lo > threshold
    ival = f"{est.value:.4g}, 95% interval [{lo:.4g}, {hi:.4g}], n={est.n}"
    if supported:
        return REPRODUCED, f"{ival}: whole interval {op} {threshold:g}"
    if contradicted:
        return NOT_REPRODUCED, f"{ival}: whole interval {neg} {threshold:g}"
    return INCONCLUSIVE, f"{ival}: the interval contains {threshold:g}"


@dataclass(frozen=True)
class AtLeast(Rule):
    """ours >= threshold, for the whole interval (reproduced) or for none of it (not reproduced)."""

    threshold: float
    why: str = ""

    def judge(self, ours, paper):
        return _side(_interval(ours), self.threshold, at_least=True)

    def describe(self):
        return f">= {self.threshold:g}"


@dataclass(frozen=True)
class AtMost(Rule):
    """ours <= threshold, for the whole interval (reproduced) or for none of it (not reproduced)."""

    threshold: float
    why: str = ""

    def judge(self, ours, paper):
        return _side(_interval(ours), self.threshold, at_least=False)

    def describe(self):
        return f"<= {self.threshold:g}"


@dataclass(frozen=True)
class Within(Rule):
    """|ours - paper| <= tol (absolute; or tol * |paper| when ``relative``).

    Reproduced when the whole interval lies in the band paper ± tol, not reproduced when it lies
    wholly outside, inconclusive when it straddles an edge.
    """

    tol: float
    relative: bool = False
    why: str = ""

    def judge(self, ours, paper):
        est = _interval(ours)
        if math.isnan(est.value):
            return NOT_TESTABLE, "no measurement in this run"
        bound = self.tol * abs(paper) if self.relative else self.tol
        lo_b, hi_b = paper - bound, paper + bound
        band = f"band {paper:.4g} ± {bound:.3g} = [{lo_b:.4g}, {hi_b:.4g}]"
        if est.n is None:
            ok = lo_b <= est.value <= hi_b
            return (REPRODUCED if ok else NOT_REPRODUCED), f"{est.value:.4g} {'inside' if ok else 'outside'} the {band}"
        ival = f"{est.value:.4g}, 95% interval [{est.low:.4g}, {est.high:.4g}], n={est.n}"
        if lo_b <= est.low and est.high <= hi_b:
            return REPRODUCED, f"{ival}: inside the {band}"
        if est.high < lo_b or est.low > hi_b:
            return NOT_REPRODUCED, f"{ival}: outside the {band}"
        return INCONCLUSIVE, f"{ival}: straddles an edge of the {band}"

    def describe(self):
        return f"within {self.tol:.2%} of the paper" if self.relative else f"within ±{self.tol:g} of the paper"


@dataclass(frozen=True)
class Equals(Rule):
    """ours == paper, for values without sampling error (a class, a flag)."""

    why: str = ""

    def judge(self, ours, paper):
        ok = ours == paper
        return (REPRODUCED if ok else NOT_REPRODUCED), f"{_fmt(ours)} {'==' if ok else '!='} {_fmt(paper)}"

    def describe(self):
        return "equal to the paper's"


@dataclass(frozen=True)
class Significant(Rule):
    """A one-sided test (:class:`lib.stats.TestResult`): reproduced when the claimed direction is
    significant at ``alpha``, not reproduced when the opposite direction is, inconclusive otherwise."""

    alpha: float = ALPHA
    why: str = ""

    def judge(self, ours, paper):
        if not isinstance(ours, TestResult):
            raise TypeError(f"Significant needs a lib.stats.TestResult, got {type(ours).__name__}")
        if math.isnan(ours.p):
            return NOT_TESTABLE, "no measurement in this run"
        d = f"{ours.method}: p = {ours.p:.3g} (opposite direction {ours.p_opposite:.3g}), effect {ours.effect:.4g}, n={ours.n}"
        if ours.p < self.alpha:
            return REPRODUCED, f"{d}; significant at {self.alpha:g}"
        if ours.p_opposite < self.alpha:
            return NOT_REPRODUCED, f"{d}; the opposite direction is significant at {self.alpha:g}"
        return INCONCLUSIVE, f"{d}; neither direction significant at {self.alpha:g}"

    def describe(self):
        return f"one-sided test, alpha = {self.alpha:g}"


@dataclass(frozen=True)
class NotTestable(Rule):
    """The claim cannot be tested here; ``reason`` says why (unreachable data, GPU-only scale)."""

    reason: str

    def judge(self, ours, paper):
        return NOT_TESTABLE, self.reason

    def describe(self):
        return "not testable here"


@dataclass
class Claim:
    id: str
    statement: str
    ours: Any
    paper: Any
    source: str
    rule: str
    why: str
    verdict: str
    detail: str
    requires_full: bool = False


@dataclass
class ClaimLog:
    """The claims and reported numbers of one chapter run, and its run record.

    ``params``: the chapter's resolved parameters (must include ``profile`` and ``seed``);
    ``data``: the :class:`lib.data.Dataset` the run used (or ``None``; then ``full_data`` says).
    """

    chapter: str
    params: Mapping[str, Any] = field(default_factory=dict)
    data: Any = None
    full_data: bool | None = None
    claims: list[Claim] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        for need in ("profile", "seed"):
            if need not in self.params:
                raise ValueError(f"ClaimLog({self.chapter!r}): params must include {need!r} (pass the resolved parameters P)")
        self._t0 = time.perf_counter()
        self._started = records.now_utc()
        # the commit of the code this run imported: read at the start, since the working tree may
        # change while a long run executes
        self._git = records.git_commit()
        if self.data is not None:
            self.add_data(self.data)

    @property
    def profile(self) -> str:
        return self.params["profile"]

    def add_data(self, ds: Any, name: str | None = None) -> None:
        """Record a dataset the run used (full or sample, fingerprint, sizes)."""
        info = {"name": getattr(ds, "name", name), "source": getattr(ds, "source", None),
                "sample": bool(getattr(ds, "is_sample", False)), "fingerprint": getattr(ds, "fingerprint", None)}
        for split in ("x_train", "x_test"):
            if hasattr(ds, split):
                info[f"n_{split[2:]}"] = len(getattr(ds, split))
        self.datasets[name or info["name"] or f"data{len(self.datasets)}"] = info
        self.full_data = all(not d["sample"] for d in self.datasets.values())

    @property
    def full_scale(self) -> bool:
        return self.profile == "full" and bool(self.full_data)

    def report(self, name: str, value: Any) -> Any:
        """Record a number (or a small table of numbers) the chapter shows; it is regression-checked."""
        if name in self.outputs:
            raise ValueError(f"output {name!r} reported twice")
        self.outputs[name] = _plain(value)
        return value

    def claim(
        self,
        id: str,
        statement: str,
        ours: Any,
        *,
        rule: Rule,
        paper: Any = None,
        source: str = "",
        requires_full: bool = False,
        below_scale: str | None = None,
        verbose: bool = True,
    ) -> Claim:
        """Record one claim; the verdict is computed by ``rule`` from ``ours`` (see the module docstring).

        ``source`` names where the claim and the paper's value come from: the paper and its
        section/figure, or a repository file with its commit. ``requires_full``: the claim is about
        paper-scale training or data, so a quick run or a run on the committed sample is reported as
        "not testable here" (our value and what the verdict would be are still shown).
        ``below_scale``: with ``requires_full``, why this run's own settings are below the paper's scale
        for this claim although it is a full-profile run on the full data (e.g. an explainer trained
        for fewer steps than the reference to fit a CPU); such a run is "not testable here" too.
        """
        if any(c.id == id for c in self.claims):
            raise ValueError(f"claim id {id!r} recorded twice")
        if not source and not isinstance(rule, NotTestable):
            raise ValueError(f"claim {id!r}: name its source (paper section/figure, or repository file and commit)")
        if "issue" in source.lower():
            raise ValueError(f"claim {id!r}: cite the paper or the reference code, not an issue ({source!r})")
        if isinstance(rule, NotTestable):
            verdict, detail = NOT_TESTABLE, rule.reason
        elif ours is None or (isinstance(ours, float) and math.isnan(ours)):
            verdict, detail = NOT_TESTABLE, "no measurement in this run"
        else:
            verdict, detail = rule.judge(ours, paper)
            if requires_full and verdict != NOT_TESTABLE and not self.full_scale:
                detail = (
                    f"{detail}; would be '{verdict}', but the claim is about paper scale and this run is "
                    f"profile={self.profile} on {'the full data' if self.full_data else 'the committed data sample'}"
                )
                verdict = NOT_TESTABLE
            elif requires_full and verdict != NOT_TESTABLE and below_scale:
                detail = f"{detail}; would be '{verdict}', but the claim is about paper scale and {below_scale}"
                verdict = NOT_TESTABLE
        c = Claim(id, statement, _plain(ours), _plain(paper), source, rule.describe(), getattr(rule, "why", ""),
                  verdict, detail, requires_full)
        self.claims.append(c)
        if verbose:
            ref = f" | paper {_fmt(c.paper)} ({source})" if paper is not None else ""
            print(f"[{verdict.upper()}] {id}: {detail}{ref}")
        return c

    def table(self):
        """The claims as a pandas DataFrame (one row per claim)."""
        import pandas as pd

        def ours_text(c: Claim) -> str:
            o = c.ours
            if isinstance(o, dict) and {"value", "low", "high", "n"} <= set(o):
                return str(Estimate(**o))
            if isinstance(o, dict) and {"p", "p_opposite", "n"} <= set(o):
                return str(TestResult(**o))
            return _fmt(o)

        rows = [
            {
                "claim": c.id,
                "statement": c.statement,
                "paper": _fmt(c.paper) if c.paper is not None else "",
                "ours": ours_text(c),
                "rule": c.rule + (f" ({c.why})" if c.why else ""),
                "verdict": c.verdict,
                "source": c.source,
            }
            for c in self.claims
        ]
        return pd.DataFrame(rows).set_index("claim")

    def verdict_counts(self) -> dict[str, int]:
        return {v: sum(c.verdict == v for c in self.claims) for v in VERDICTS}

    def record(self) -> dict:
        """The run record (see :mod:`lib.records`)."""
        return {
            "schema": records.SCHEMA,
            "chapter": self.chapter,
            "profile": self.profile,
            "seed": self.params["seed"],
            "parameters": _plain(dict(self.params)),
            "data": self.datasets,
            "full_data": self.full_data,
            "versions": records.versions(),
            "hardware": records.hardware(),
            "git": self._git,
            "started": self._started.isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - self._t0, 1),
            "outputs": self.outputs,
            "claims": [asdict(c) for c in self.claims],
            "verdicts": self.verdict_counts(),
        }

    @property
    def elapsed(self) -> float:
        """Seconds since this log was created (the chapter's start)."""
        return time.perf_counter() - self._t0

    def save(self) -> Path:
        """Write the run record to a new file (never replacing another run's); return its path."""
        return records.write_record(records.record_path(self.chapter, self._started), self.record())


def load_claims(folder: Path | str | None = None) -> list[dict]:
    """The run records under ``folder`` (default: the book's own, ``_build/records``), oldest first."""
    return records.load_records(folder)
