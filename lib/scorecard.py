"""The scorecard: every chapter's claims from its run records, with verdicts combined over runs.

Reads the run records that every chapter writes (:mod:`lib.records`) and turns them into one row
per (chapter, claim, profile, data, setting): the paper's value and source, our value (with its
spread where several runs ran), the rule, the verdict of each run and a combined verdict. A *setting*
is a record's parameters other than the seed and the device: runs with other sizes or budgets (a
sweep's grid, a full-data run at another number of instances) get rows of their own, labelled with
the parameters that tell them apart (:func:`setting_label`), so a small run never dilutes a large one.
The runs of one row are its seeds and its machines: the newest record per (seed, machine), where a
machine is the CPU, the instruction-set caps in force and the device (:func:`machine`). A row's
combined verdict:

* every run gives the same verdict: that verdict;
* runs disagree between "reproduced" and "not reproduced": **inconclusive** (the verdict depends
  on the seed or on the machine, so the evidence does not settle the claim);
* otherwise (a mix with "inconclusive" or "not testable here"): "inconclusive", unless every run
  is "not testable here".

A stale record (below) is dropped from a row when a record of the same seed and setting from
another machine is not stale: an old run on one machine does not outvote a current one on another.
A stale row whose claim has a current row of the same profile and data (another setting, e.g. a
rerun with more instances) is *superseded* (``superseded_by`` names the current setting): it stays in
the table, but :func:`verdict_counts` and the findings count the claim once, by its current row.

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


# environment variables that cap the instruction set a run's kernels use (the book's way of seeing another CPU)
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def machine(record: dict) -> str:
    """What a record's numbers can depend on besides the code and the parameters: the CPU, the
    instruction-set caps that were set (``ONEDNN_MAX_CPU_ISA``...), and the GPU when it ran on one."""
    hw = record.get("hardware") or {}
    parts = [str(hw.get("cpu") or "?")]
    parts += [f"{k}={hw[k]}" for k in ISA_CAPS if hw.get(k)]
    params = record.get("parameters") or {}
    if params.get("device") not in (None, "cpu") and hw.get("gpu"):
        parts.append(str(hw["gpu"]))
    return ", ".join(parts)


def _setting(record: dict) -> dict:
    return {k: v for k, v in (record.get("parameters") or {}).items() if k not in ("seed", "device")}


def setting_label(setting: dict, others: list[dict]) -> str:
    """The parameters in which ``setting`` differs from any of ``others`` (its siblings of the same
    chapter, profile and data), as ``name=value`` joined by commas; "" when there is no other."""
    keys = sorted({k for o in others for k in set(o) | set(setting) if o.get(k) != setting.get(k)})
    return ", ".join(f"{k}={json.dumps(setting.get(k), default=str)}" for k in keys)


def run_label(seed, machine_name: str, with_machine: bool) -> str:
    return f"seed {seed} on {machine_name}" if with_machine else f"seed {seed}"


def rows(records: list[dict], repo: Path = REPO_ROOT) -> list[dict]:
    """One row per (chapter, claim, profile, data, setting): values and verdicts over runs, combined."""
    memo: dict[tuple, bool | None] = {}
    latest: dict[tuple, dict] = {}
    # keep the newest record per (chapter, profile, data, setting, seed, machine)
    for rec in sorted(records, key=lambda r: r.get("started", "")):
        setting = json.dumps(_setting(rec), sort_keys=True, default=str)
        latest[(rec["chapter"], rec.get("profile"), bool(rec.get("full_data")), setting, rec.get("seed"),
                machine(rec))] = rec
    # a stale record gives way to a current one of the same seed and setting from another machine
    by_run: dict[tuple, list[dict]] = defaultdict(list)
    for key, rec in latest.items():
        by_run[key[:5]].append(rec)
    kept: list[dict] = []
    for recs in by_run.values():
        stale = [bool(_stale_memo(r, r["chapter"], repo, memo)) for r in recs]
        kept += [r for r, s in zip(recs, stale) if not s] if not all(stale) else recs
    settings: dict[tuple, list[dict]] = defaultdict(list)
    for rec in kept:
        family = settings[(rec["chapter"], rec.get("profile"), bool(rec.get("full_data")))]
        if _setting(rec) not in family:
            family.append(_setting(rec))
    groups: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    for rec in sorted(kept, key=lambda r: (r.get("seed", 0), machine(r), r.get("started", ""))):
        family = settings[(rec["chapter"], rec.get("profile"), bool(rec.get("full_data")))]
        label = setting_label(_setting(rec), [s for s in family if s != _setting(rec)])
        for c in rec.get("claims", []):
            groups[(rec["chapter"], c["id"], rec.get("profile"), bool(rec.get("full_data")), label)].append((rec, c))
    out = []
    for (chapter, cid, profile, full, label), items in sorted(groups.items(), key=lambda kv: str(kv[0])):
        recs = [r for r, _ in items]
        claims = [c for _, c in items]
        machines = [machine(r) for r in recs]
        with_machine = len(set(machines)) > 1
        runs = [run_label(r.get("seed"), m, with_machine) for r, m in zip(recs, machines)]
        values = [_value(c["ours"]) for c in claims]
        numbers = [v for v in values if v is not None]
        stale = [_stale_memo(r, chapter, repo, memo) for r in recs]
        hw = sorted({(r.get("hardware") or {}).get("cpu", "?") for r in recs})
        first = claims[0]
        varies = "runs" if with_machine else "seeds"
        out.append({
            "chapter": chapter,
            "claim": cid,
            "statement": first["statement"],
            "source": first["source"],
            "paper": "" if first.get("paper") is None else str(first["paper"]),
            "ours": _text(first["ours"]) if len(claims) == 1 else
            (f"{np.mean(numbers):.4g} ({varies}: {', '.join(f'{v:.4g}' for v in numbers)})" if numbers else
             "; ".join(_text(c["ours"]) for c in claims)),
            "spread": float(np.std(numbers)) if len(numbers) > 1 else None,
            "rule": first["rule"] + (f" ({first['why']})" if first.get("why") else ""),
            "seeds": [r.get("seed") for r in recs],
            "machines": machines,
            "runs": runs,
            "verdicts": [c["verdict"] for c in claims],
            "verdict": combine(c["verdict"] for c in claims),
            "detail": claims[0]["detail"] if len(claims) == 1 else "; ".join(f"{run}: {c['verdict']}" for run, c in zip(runs, claims)),
            "profile": profile,
            "setting": label,
            "data": "full" if full else "sample",
            "hardware": ", ".join(hw),
            "commit": ", ".join(sorted({((r.get("git") or {}).get("commit") or "?")[:10] for r in recs})),
            "stale": any(s for s in stale if s),
            "superseded_by": None,
        })
    # a stale row is superseded when the same claim has a current row of the same profile and data
    # (another setting): it stays in the table, marked, but is not counted or listed as a finding twice
    def claim_of(r: dict) -> tuple:
        return r["chapter"], r["claim"], r["profile"], r["data"]

    current: dict[tuple, list[str]] = defaultdict(list)
    for r in out:
        if not r["stale"]:
            current[claim_of(r)].append(r["setting"] or "current")
    for r in out:
        if r["stale"] and current.get(claim_of(r)):
            r["superseded_by"] = ", ".join(current[claim_of(r)])
    return out


def row_key(row: dict) -> str:
    """A row's unique name: the claim id with its profile, data and setting."""
    return f"{row['claim']} ({row['profile']}, {row['data']}{', ' + row['setting'] if row['setting'] else ''})"


def varies_with(row: dict) -> str | None:
    """What a row's verdict depends on, when its runs disagree: "the seed", "the machine", or "the
    seed and the machine" (None when all runs agree)."""
    if len(set(row["verdicts"])) < 2:
        return None
    by_seed = defaultdict(set)
    by_machine = defaultdict(set)
    for s, m, v in zip(row["seeds"], row["machines"], row["verdicts"]):
        by_seed[s].add(v)
        by_machine[m].add(v)
    on_machine = any(len(v) > 1 for v in by_seed.values())  # one seed, other verdicts on other machines
    on_seed = len(set(row["seeds"])) > 1 and any(len(v) > 1 for v in by_machine.values())
    if on_machine and on_seed:
        return "the seed and the machine"
    return "the machine" if on_machine else "the seed"


def verdict_counts(table: list[dict]) -> dict[str, dict[str, int]]:
    """chapter -> verdict -> number of claims (rows), superseded stale rows left out."""
    counts: dict[str, dict[str, int]] = {}
    for r in table:
        if r.get("superseded_by"):
            continue
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
