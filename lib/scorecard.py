"""The scorecard: every chapter's claims from its run records, with verdicts combined over seeds.

Reads the run records that every chapter writes (:mod:`lib.records`) and turns them into one row
per (chapter, claim, profile, data): the paper's value and source, our value (with its spread over
seeds where several seeds ran), the rule, the verdict of each seed and a combined verdict:

* every seed gives the same verdict: that verdict;
* seeds disagree between "reproduced" and "not reproduced": **inconclusive** (the verdict depends
  on the seed, so the evidence does not settle the claim);
* otherwise (a mix with "inconclusive" or "not testable here"): "inconclusive", unless every seed
  is "not testable here".

A record is *stale* when, in git, the chapter's source or one of the ``lib`` modules it imports (directly
or through other ``lib`` modules: :func:`lib_dependencies`) changed after the commit it ran at. Staleness
is a property of the repository's history, not a result: the scorecard lists it apart from the findings.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from lib.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, VERDICTS
from lib.records import REPO_ROOT, book_record_paths, load_records


def book_records(repo: Path = REPO_ROOT) -> list[dict]:
    """The records of the book's last build: those named in the executed chapters' metadata."""
    out = []
    for path in book_record_paths(repo=repo, strict=False).values():
        doc = json.loads(path.read_text())
        doc["_path"] = str(path.relative_to(repo))
        out.append(doc)
    return out


def combine(verdicts: Iterable[str]) -> str:
    """One verdict from the verdicts of several seeds (see the module docstring)."""
    vs = list(verdicts)
    if not vs:
        return NOT_TESTABLE
    if len(set(vs)) == 1:
        return vs[0]
    if all(v == NOT_TESTABLE for v in vs):
        return NOT_TESTABLE
    return INCONCLUSIVE


def _value(ours) -> float | None:
    if isinstance(ours, dict):
        for key in ("value", "p"):
            if isinstance(ours.get(key), (int, float)) and not isinstance(ours.get(key), bool):
                return float(ours[key])
        return None
    if isinstance(ours, (int, float)) and not isinstance(ours, bool):
        return float(ours)
    return None


def _text(ours) -> str:
    if isinstance(ours, dict) and {"value", "low", "high"} <= set(ours):
        if ours.get("n") is None:
            return f"{ours['value']:.4g}"
        return f"{ours['value']:.4g} [{ours['low']:.4g}, {ours['high']:.4g}] (n={ours['n']})"
    if isinstance(ours, dict) and "p" in ours:
        return f"p = {ours['p']:.3g} (n={ours.get('n')})"
    if isinstance(ours, float):
        return f"{ours:.4g}"
    return str(ours)


_LIB_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(lib(?:\.\w+)*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]+)|import[ \t]+(lib(?:\.\w+)*))", re.M)


def _module_file(module: str, repo: Path) -> Path | None:
    base = repo.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_modules(text: str, is_python: bool) -> set[str]:
    """The ``lib`` modules a source names in its imports (``from lib.x import y`` names ``lib.x`` and,
    where ``lib.x.y`` is a module, that too)."""
    found: set[str] = set()
    if is_python:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name == "lib" or a.name.startswith("lib.")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                    (node.module == "lib" or node.module.startswith("lib.")):
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        return found
    for m in _LIB_IMPORT.finditer(text):  # a MyST chapter: its code cells' import lines
        if m.group(3):
            found.add(m.group(3))
        else:
            found.add(m.group(1))
            found |= {f"{m.group(1)}.{n.strip()}" for n in re.split(r"[,()\s]+", m.group(2)) if n.strip()}
    return found


def lib_dependencies(chapter_source: str, repo: Path = REPO_ROOT) -> list[str]:
    """The ``lib`` files (relative to ``repo``) that a chapter imports, directly or through other ``lib``
    modules, with each package's ``__init__.py``: what the chapter's numbers can depend on in ``lib``."""
    todo = sorted(_imported_modules((repo / chapter_source).read_text(), chapter_source.endswith(".py")) | {"lib"})
    seen: set[Path] = set()
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # a module's packages are imported with it
            path = _module_file(".".join(parts[:i]), repo)
            if path is None or path in seen:
                continue
            seen.add(path)
            todo.extend(sorted(_imported_modules(path.read_text(), True)))
    return sorted(str(p.relative_to(repo)) for p in seen)


def is_stale(record: dict, chapter_source: str, repo: Path = REPO_ROOT) -> bool | None:
    """True when, in git, the chapter's source or a ``lib`` file it depends on (:func:`lib_dependencies`)
    changed after the record's commit (None if unknown: no commit recorded, or not in this clone's history)."""
    commit = (record.get("git") or {}).get("commit")
    if not commit or not (repo / chapter_source).is_file():
        return None
    try:
        out = subprocess.run(["git", "diff", "--quiet", commit, "HEAD", "--", chapter_source,
                              *lib_dependencies(chapter_source, repo)], cwd=repo,
                             capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode not in (0, 1):
        return None
    return out.returncode == 1


def _stale_memo(record: dict, chapter: str, repo: Path, memo: dict) -> bool | None:
    key = ((record.get("git") or {}).get("commit"), chapter)
    if key not in memo:
        memo[key] = is_stale(record, f"chapters/{chapter}.md", repo)
    return memo[key]


def rows(records: list[dict], repo: Path = REPO_ROOT) -> list[dict]:
    """One row per (chapter, claim, profile, data): values and verdicts over seeds, combined."""
    groups: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    memo: dict[tuple, bool | None] = {}
    latest: dict[tuple, dict] = {}
    # keep the newest record per (chapter, profile, data, seed, parameters)
    for rec in sorted(records, key=lambda r: r.get("started", "")):
        params = json.dumps(rec.get("parameters", {}), sort_keys=True, default=str)
        latest[(rec["chapter"], rec.get("profile"), bool(rec.get("full_data")), rec.get("seed"), params)] = rec
    for (chapter, profile, full, seed, _), rec in sorted(latest.items(), key=lambda kv: str(kv[0])):
        for c in rec.get("claims", []):
            groups[(chapter, c["id"], profile, full)].append((rec, c))
    out = []
    for (chapter, cid, profile, full), items in groups.items():
        items.sort(key=lambda rc: rc[0].get("seed", 0))
        recs = [r for r, _ in items]
        claims = [c for _, c in items]
        values = [v for v in (_value(c["ours"]) for c in claims) if v is not None]
        stale = [_stale_memo(r, chapter, repo, memo) for r in recs]
        hw = sorted({(r.get("hardware") or {}).get("cpu", "?") for r in recs})
        first = claims[0]
        out.append({
            "chapter": chapter,
            "claim": cid,
            "statement": first["statement"],
            "source": first["source"],
            "paper": "" if first.get("paper") is None else str(first["paper"]),
            "ours": _text(first["ours"]) if len(claims) == 1 else
            (f"{np.mean(values):.4g} (seeds: {', '.join(f'{v:.4g}' for v in values)})" if values else
             "; ".join(_text(c["ours"]) for c in claims)),
            "spread": float(np.std(values)) if len(values) > 1 else None,
            "rule": first["rule"] + (f" ({first['why']})" if first.get("why") else ""),
            "seeds": [r.get("seed") for r in recs],
            "verdicts": [c["verdict"] for c in claims],
            "verdict": combine(c["verdict"] for c in claims),
            "detail": claims[0]["detail"] if len(claims) == 1 else "; ".join(f"seed {r.get('seed')}: {c['verdict']}" for r, c in items),
            "profile": profile,
            "data": "full" if full else "sample",
            "hardware": ", ".join(hw),
            "commit": ", ".join(sorted({((r.get("git") or {}).get("commit") or "?")[:10] for r in recs})),
            "stale": any(s for s in stale if s),
        })
    return out


def verdict_counts(table: list[dict]) -> dict[str, dict[str, int]]:
    """chapter -> verdict -> number of claims."""
    counts: dict[str, dict[str, int]] = {}
    for r in table:
        counts.setdefault(r["chapter"], {v: 0 for v in VERDICTS})[r["verdict"]] += 1
    return counts


VERDICT_COLOURS = {REPRODUCED: "#4c9f70", NOT_REPRODUCED: "#c8553d", INCONCLUSIVE: "#e3b23c", NOT_TESTABLE: "#9aa5b1"}


def plot_verdicts(ax, counts: dict[str, dict[str, int]], title: str = "verdicts per paper") -> None:
    """Stacked horizontal bars: number of claims per verdict, one bar per chapter."""
    chapters = list(counts)
    left = np.zeros(len(chapters))
    for v in VERDICTS:
        vals = np.array([counts[c][v] for c in chapters], dtype=float)
        ax.barh(chapters, vals, left=left, color=VERDICT_COLOURS[v], label=v)
        left += vals
    ax.set_xlabel("claims")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.invert_yaxis()


def load(runs: str | Path | None, committed: bool = True) -> list[dict]:
    """The book's own records (``runs=None``) or every record under a folder (a sweep's output).

    With the book's own records, ``committed`` adds the run records committed under ``results/``
    (full-data runs made with ``ci/run_chapter.py`` and published with ``ci/publish_run.py``); they
    form their own rows (profile, data), beside the quick build's. The scorecard's own records are
    left out (they hold no claims, and counting them would make the page depend on whether it ran
    before)."""
    records = book_records() if runs is None else load_records(runs)
    if runs is None and committed and (REPO_ROOT / "results").is_dir():
        records += [dict(r, _committed=True) for r in load_records(REPO_ROOT / "results")]
    return [r for r in records if r.get("chapter") != "scorecard"]
