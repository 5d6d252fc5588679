"""Regression baselines: every number a chapter reports, checked against a committed copy.

    python ci/baselines.py check                 # compare the book's last execution with ci/baselines/*.json
    python ci/baselines.py check cem             # one chapter
    python ci/baselines.py check --record R.json # any run record against its chapter's baseline
    python ci/baselines.py accept cem            # take the last execution's numbers as cem's new baseline

A chapter's run record (``lib/records.py``) holds the numbers it showed (``log.report``) and its
claims (value, interval, test, verdict). They are flattened into named outputs
(``outputs.cnn_accuracy``, ``claim.cem.pn_success.low``, ``claim.cem.pn_success.verdict``...) and
compared with ``ci/baselines/<chapter>.json``:

* text, booleans and verdicts must be equal; integers too, unless a tolerance names them;
* numbers must satisfy ``|new - baseline| <= max(abs, rel * |baseline|)``, with the file's
  ``default`` tolerance or the first matching pattern in its ``tolerances`` (each with its reason);
* an output that appears or disappears fails too;
* a pattern with ``"ignore": true`` exempts a value that cannot be reproduced by construction (a
  measured time); its reason is stated like any tolerance's, and the verdict built on it is still
  checked.

A failure names the chapter, the output and both values. ``accept`` rewrites the values (and the
parameters and data fingerprint they were made with) and keeps the tolerances and their reasons,
so ``git diff ci/baselines`` shows exactly which numbers moved: review it, then commit.
The test command runs ``check`` through pytest (``ci/check_regression.py``).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lib.records import BookRecordError, book_record_paths  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BASELINES = REPO / "ci" / "baselines"

# The target: a change that moves any reported number by more than 5 % must fail. The
# default is tighter (1 %): quick-profile models are trained in float64, so numbers agree across
# x86 CPUs to far better than that; a chapter widens a tolerance only with a stated reason.
DEFAULT_TOLERANCE = {"rel": 0.01, "abs": 1e-9,
                     "why": "1 %: numbers are computed in float64 where training is chaotic, so CPUs agree far better; "
                            "any change of the computation that moves a number by more than this fails"}


def flatten(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """Nested dicts and lists as (dotted name, scalar) pairs."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from flatten(v, f"{prefix}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from flatten(v, f"{prefix}.{i}")
    else:
        yield prefix, value


def outputs_of(record: dict) -> dict[str, Any]:
    """The regression-checked outputs of a run record, by name."""
    out: dict[str, Any] = {}
    for name, v in flatten(record.get("outputs", {}), "outputs"):
        out[name] = v
    for c in record.get("claims", []):
        out[f"claim.{c['id']}.verdict"] = c["verdict"]
        ours = c.get("ours")
        for name, v in flatten(ours, f"claim.{c['id']}" if isinstance(ours, dict) else f"claim.{c['id']}.ours"):
            if not name.endswith(".method"):  # the description of an interval, not a number
                out[name] = v
    return out


@dataclass
class Problem:
    chapter: str
    output: str
    message: str

    def __str__(self) -> str:
        return f"{self.chapter}: output {self.output!r} {self.message}"


def _tolerance(baseline: dict, name: str) -> dict:
    for pattern, tol in baseline.get("tolerances", {}).items():
        if fnmatch.fnmatchcase(name, pattern):
            return tol
    return baseline.get("default", DEFAULT_TOLERANCE)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compare_one(chapter: str, name: str, old: Any, new: Any, baseline: dict) -> Problem | None:
    """None when ``new`` matches ``old`` under the baseline's tolerance for ``name``."""
    tol = _tolerance(baseline, name)
    if tol.get("ignore") and not name.endswith(".verdict"):
        return None  # e.g. a measured time: its verdict is checked, its value cannot be
    named = any(fnmatch.fnmatchcase(name, p) for p in baseline.get("tolerances", {}))
    if _number(old) and _number(new) and (isinstance(old, float) or isinstance(new, float) or named):
        if isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new):
            return None
        allowed = max(float(tol.get("abs", 0.0)), float(tol.get("rel", 0.0)) * abs(old))
        gap = abs(new - old)
        if gap <= allowed or (math.isinf(old) and old == new):
            return None
        rel = f", {gap / abs(old):.2%} of it" if old else ""
        return Problem(chapter, name, f"changed: baseline {old!r}, now {new!r} (difference {gap:.3g}{rel}; "
                                      f"allowed {allowed:.3g}: {tol.get('why', 'default tolerance')})")
    if old == new:
        return None
    return Problem(chapter, name, f"changed: baseline {old!r}, now {new!r} (must be equal)")


def compare(record: dict, baseline: dict) -> list[Problem]:
    """Every difference between a run record and its chapter's baseline."""
    chapter = record.get("chapter", "?")
    problems = []
    ran = {k: record.get("parameters", {}).get(k) for k in baseline.get("parameters", {})}
    if ran != baseline.get("parameters", {}):
        problems.append(Problem(chapter, "parameters", f"differ: baseline made with {baseline.get('parameters')}, "
                                                       f"this run used {ran}; compare like with like"))
        return problems
    new, old = outputs_of(record), baseline.get("values", {})
    for name in old:
        if name not in new:
            problems.append(Problem(chapter, name, f"disappeared (baseline {old[name]!r})"))
        else:
            p = compare_one(chapter, name, old[name], new[name], baseline)
            if p:
                problems.append(p)
    for name in new:
        if name not in old:
            problems.append(Problem(chapter, name, f"is new (now {new[name]!r}) and not in the baseline"))
    return problems


def baseline_path(chapter: str) -> Path:
    return BASELINES / f"{chapter}.json"


def load_baseline(chapter: str) -> dict:
    path = baseline_path(chapter)
    if not path.exists():
        raise SystemExit(f"baselines: {path.relative_to(REPO)} does not exist; create it with "
                         f"`python ci/baselines.py accept {chapter}` after building the book, review it and commit it")
    return json.loads(path.read_text())


def book_records() -> dict[str, Path]:
    """chapter -> the run record of its last execution by ``ci/build_book.py``."""
    sys.path.insert(0, str(REPO / "ci"))
    import build_book

    try:
        return book_record_paths(build_book.chapters_in_toc(), repo=REPO)
    except BookRecordError as err:
        raise SystemExit(f"baselines: {err}") from None


def accept(chapter: str, record_path: Path) -> list[str]:
    """Write ``chapter``'s baseline from a record, keeping tolerances; return the names whose value changed."""
    record = json.loads(record_path.read_text())
    path = baseline_path(chapter)
    old = json.loads(path.read_text()) if path.exists() else {}
    params = record.get("parameters", {})
    doc = {
        "chapter": chapter,
        "about": "Regression baseline: the numbers this chapter reported (quick profile). Check: python ci/baselines.py check; "
                 "accept new numbers: python ci/baselines.py accept " + chapter + ", then review git diff.",
        "parameters": {k: params.get(k) for k in ("profile", "seed")},
        "data": {k: v.get("fingerprint") for k, v in record.get("data", {}).items()},
        "default": old.get("default", DEFAULT_TOLERANCE),
        "tolerances": old.get("tolerances", {}),
        "values": outputs_of(record),
    }
    changed = [k for k, v in doc["values"].items() if old.get("values", {}).get(k, object()) != v]
    changed += [k for k in old.get("values", {}) if k not in doc["values"]]
    BASELINES.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, allow_nan=True) + "\n")
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["check", "accept"])
    ap.add_argument("chapters", nargs="*", help="chapter names (default: every chapter of the book)")
    ap.add_argument("--record", type=Path, help="a run record to use instead of the book's last execution")
    args = ap.parse_args(argv)

    if args.record:
        rec = json.loads(args.record.read_text())
        records = {rec["chapter"]: args.record}
    else:
        records = book_records()
    chapters = args.chapters or sorted(records)
    unknown = [c for c in chapters if c not in records]
    if unknown:
        raise SystemExit(f"baselines: no record for {unknown}; chapters with one: {sorted(records)}")
    if args.command == "accept":
        for ch in chapters:
            changed = accept(ch, records[ch])
            print(f"baselines: {baseline_path(ch).relative_to(REPO)} written from {records[ch].name}; "
                  f"{len(changed)} value(s) changed{': ' + ', '.join(changed[:20]) if changed else ''}"
                  f"{' ...' if len(changed) > 20 else ''}")
        print("review with `git diff ci/baselines`, then commit")
        return 0
    failed = 0
    for ch in chapters:
        problems = compare(json.loads(records[ch].read_text()), load_baseline(ch))
        for p in problems:
            print(f"REGRESSION {p}")
        n = len(load_baseline(ch).get("values", {}))
        new = sum(p.message.startswith("is new") for p in problems)
        print(f"baselines: {ch}: {n - (len(problems) - new)} of {n} baseline outputs match; {len(problems) - new} changed or "
              f"disappeared, {new} new" if problems else f"baselines: {ch}: all {n} outputs match")
        failed += bool(problems)
    if failed:
        print("If the change is intended: python ci/baselines.py accept CHAPTER, review `git diff ci/baselines`, commit.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
