"""Claims API: every chapter records what it tested, and code (not prose) decides the verdict.

A chapter makes one :class:`ClaimLog` and records each claim of the paper it reproduces::

    log = ClaimLog("cem", profile=P.profile, full_data=not ds.is_sample)
    log.claim("cem.accuracy", "The MNIST CNN reaches the reference test accuracy",
              ours=acc, paper=0.9892, source="alibi CEM MNIST example",
              rule=Within(0.005))
    log.table()      # shown in the chapter
    log.save()       # _build/claims/cem.json, read by the scorecard chapter

Verdicts: ``reproduced``, ``not reproduced``, or ``not testable here`` (the rule cannot be
applied: no measurement, or a claim about paper scale measured on a quick run or a data sample,
or an explicit :class:`NotTestable` reason).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "not reproduced", "not testable here"


def _plain(v: Any) -> Any:
    """numpy/torch scalars and containers to plain Python (JSON-able) values."""
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
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


class Rule:
    """Decides whether our value reproduces the paper's. Subclasses implement ``judge``."""

    def judge(self, ours: Any, paper: Any) -> tuple[bool, str]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Within(Rule):
    """|ours - paper| <= tol (absolute), or <= tol * |paper| when ``relative``."""

    tol: float
    relative: bool = False

    def judge(self, ours, paper):
        bound = self.tol * abs(paper) if self.relative else self.tol
        gap = abs(ours - paper)
        return gap <= bound, f"|{_fmt(ours)} - {_fmt(paper)}| = {gap:.3g} {'<=' if gap <= bound else '>'} {bound:.3g}"

    def describe(self):
        return f"within {self.tol:.0%} of the paper" if self.relative else f"within ±{self.tol:g} of the paper"


@dataclass(frozen=True)
class AtLeast(Rule):
    """ours >= threshold (the paper's value is shown for reference only)."""

    threshold: float

    def judge(self, ours, paper):
        ok = ours >= self.threshold
        return ok, f"{_fmt(ours)} {'>=' if ok else '<'} {self.threshold:g}"

    def describe(self):
        return f">= {self.threshold:g}"


@dataclass(frozen=True)
class AtMost(Rule):
    """ours <= threshold."""

    threshold: float

    def judge(self, ours, paper):
        ok = ours <= self.threshold
        return ok, f"{_fmt(ours)} {'<=' if ok else '>'} {self.threshold:g}"

    def describe(self):
        return f"<= {self.threshold:g}"


@dataclass(frozen=True)
class Equals(Rule):
    """ours == paper (e.g. a predicted class)."""

    def judge(self, ours, paper):
        ok = ours == paper
        return ok, f"{_fmt(ours)} {'==' if ok else '!='} {_fmt(paper)}"

    def describe(self):
        return "equal to the paper's"


@dataclass(frozen=True)
class Ordering(Rule):
    """``ours`` maps names to values; the names sorted by value (descending unless ``ascending``)
    must start with the order the paper reports, given as ``paper`` (a list of names)."""

    ascending: bool = False

    def judge(self, ours, paper):
        ranked = sorted(ours, key=lambda k: ours[k], reverse=not self.ascending)
        ok = ranked[: len(paper)] == list(paper)
        return ok, "our order: " + " > ".join(ranked) if not self.ascending else "our order: " + " < ".join(ranked)

    def describe(self):
        return "same ranking as the paper" + (" (ascending)" if self.ascending else "")


@dataclass(frozen=True)
class NotTestable(Rule):
    """The claim cannot be tested here; ``reason`` says why (shown in the table)."""

    reason: str

    def judge(self, ours, paper):
        return False, self.reason

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
    verdict: str
    detail: str
    requires_full: bool = False


@dataclass
class ClaimLog:
    """The claims of one chapter run, with the context needed to read them."""

    chapter: str
    profile: str
    full_data: bool
    results_dir: Path | None = None
    claims: list[Claim] = field(default_factory=list)

    @property
    def full_scale(self) -> bool:
        return self.profile == "full" and self.full_data

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
        verbose: bool = True,
    ) -> Claim:
        """Record one claim; the verdict is computed by ``rule``.

        ``requires_full``: the paper's value is about paper-scale training/data, so a quick run
        or a run on the committed data sample is reported as "not testable here" (our value is
        still shown).
        """
        if any(c.id == id for c in self.claims):
            raise ValueError(f"claim id {id!r} recorded twice")
        if paper is not None and not source and not isinstance(rule, NotTestable):
            raise ValueError(f"claim {id!r}: a paper value needs its source")
        ours, paper = _plain(ours), _plain(paper)
        if isinstance(rule, NotTestable):
            verdict, detail = NOT_TESTABLE, rule.reason
        elif ours is None or (isinstance(ours, float) and math.isnan(ours)):
            verdict, detail = NOT_TESTABLE, "no measurement in this run"
        else:
            ok, detail = rule.judge(ours, paper)
            verdict = REPRODUCED if ok else NOT_REPRODUCED
            if requires_full and not self.full_scale:
                detail = (
                    f"{detail}; would be '{verdict}', but the claim is about paper scale and this run is "
                    f"profile={self.profile} on {'the full data' if self.full_data else 'the committed data sample'}"
                )
                verdict = NOT_TESTABLE
        c = Claim(id, statement, ours, paper, source, rule.describe(), verdict, detail, requires_full)
        self.claims.append(c)
        if verbose:
            ref = f" | paper {_fmt(paper)} ({source})" if paper is not None else ""
            print(f"[{verdict.upper()}] {id}: ours {_fmt(ours)}{ref} -- {detail}")
        return c

    def table(self):
        """The claims as a pandas DataFrame (one row per claim)."""
        import pandas as pd

        rows = [
            {
                "claim": c.id,
                "statement": c.statement,
                "paper": _fmt(c.paper) if c.paper is not None else "",
                "ours": _fmt(c.ours),
                "rule": c.rule,
                "verdict": c.verdict,
                "source": c.source,
            }
            for c in self.claims
        ]
        return pd.DataFrame(rows).set_index("claim")

    def save(self) -> Path:
        """Write the claims to ``<results_dir>/<chapter>.json`` atomically; return the path."""
        folder = Path(self.results_dir or os.environ.get("XAI_RESULTS_DIR", REPO_ROOT / "_build" / "claims"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.chapter}.json"
        doc = {
            "chapter": self.chapter,
            "profile": self.profile,
            "full_data": self.full_data,
            "claims": [asdict(c) for c in self.claims],
        }
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, default=str)
        os.replace(tmp, path)
        return path


def load_claims(results_dir: Path | None = None) -> list[dict]:
    """All saved chapter claim files (for the scorecard chapter)."""
    folder = Path(results_dir or os.environ.get("XAI_RESULTS_DIR", REPO_ROOT / "_build" / "claims"))
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
