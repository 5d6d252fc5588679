"""Run a grid of chapter executions (chapters x seeds x parameters) as Ray tasks.

    python ci/sweep.py --chapters cem cxplain --seeds 0 1 2 --out runs/seeds
    python ci/sweep.py --chapters cem --seeds 0 --grid n_explain=6,12 --param n_sensitivity=0 --out runs/cem-n
    python ci/sweep.py --chapters cem cxplain --seeds 0 1 2 3 4 --param profile=full --param device=cuda \\
        --address auto --out /shared/runs/full          # an existing cluster; one GPU per task

Each grid point is one ``ci/run_chapter.py`` execution: its executed notebook and its run record
go to ``OUT/<chapter>/<point>.ipynb`` and ``OUT/<chapter>/<point>.<time>-<id>.record.json``. A point is
keyed by chapter + parameters + commit; a rerun skips the points that finished at this commit
(``<point>.done``), so an interrupted sweep resumes. A failing point does not stop the others:
failures are collected in ``OUT/failures.json`` and reported, and the exit status is 1.

Ray: a local instance by default (``--num-cpus``, default all cores), or ``--address`` for an
existing cluster. Tasks with ``device=cuda`` request one GPU each (``--gpus-per-task``), so a
cluster schedules one chapter per GPU. The scorecard aggregates a sweep:
``python ci/run_chapter.py chapters/scorecard.md OUT/scorecard.ipynb -p runs OUT``.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "ci"))


def parse_value(text: str):
    """A parameter value as papermill would read it from YAML (numbers, booleans, lists, strings)."""
    return yaml.safe_load(text)


def parse_assignments(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"sweep: {flag} {item!r}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def grid_points(chapters: list[str], seeds: list[int], fixed: dict[str, str], grid: dict[str, str]) -> list[dict]:
    """Every (chapter, parameters) combination, parameters as papermill values."""
    names = sorted(grid)
    choices = [[parse_value(v) for v in grid[n].split(",")] for n in names]
    points = []
    for chapter in chapters:
        for seed in seeds:
            for combo in itertools.product(*choices) if names else [()]:
                params = {k: parse_value(v) for k, v in fixed.items()}
                params.update(dict(zip(names, combo)))
                params["seed"] = seed
                points.append({"chapter": chapter, "params": params})
    return points


def point_key(point: dict, head: str) -> str:
    blob = json.dumps({"chapter": point["chapter"], "params": point["params"], "commit": head}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def point_name(point: dict, key: str) -> str:
    parts = [f"{k}-{v}" for k, v in sorted(point["params"].items()) if k != "device"]
    name = "_".join(parts)[:80].replace("/", "-").replace(" ", "")
    return f"{name}_{key}"


def source_of(chapter: str) -> Path:
    path = Path(chapter)
    if path.suffix == ".md" and path.exists():
        return path.resolve()
    candidate = REPO / "chapters" / f"{chapter}.md"
    if not candidate.exists():
        raise SystemExit(f"sweep: no chapter {chapter!r} (expected {candidate.relative_to(REPO)} or a path to a .md source)")
    return candidate


def run_point(source: str, out_dir: str, name: str, params: dict) -> dict:
    """Execute one grid point (inside a Ray task); never raises."""
    import run_chapter

    t0 = time.perf_counter()
    out = Path(out_dir) / f"{name}.ipynb"
    log = Path(out_dir) / f"{name}.log"
    args = ["-y", json.dumps(params), "--no-progress-bar", "--log-output"]  # JSON is YAML: lists and numbers keep their type
    env = {"OMP_WAIT_POLICY": "PASSIVE", "MKL_CBWR": "AVX2", "TQDM_DISABLE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"}
    try:
        code = run_chapter.run(Path(source), out, args, env=env, log=log)
    except Exception as err:  # a task must report, not crash the sweep
        return {"name": name, "ok": False, "error": f"{type(err).__name__}: {err}", "seconds": time.perf_counter() - t0}
    tail = log.read_text(errors="replace").splitlines()[-15:]
    return {"name": name, "ok": code == 0, "exit": code, "seconds": round(time.perf_counter() - t0, 1),
            "error": None if code == 0 else "\n".join(tail), "log": str(log)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chapters", nargs="+", required=True, help="chapter names (cem, cxplain) or paths to .md sources")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a fixed parameter of every run")
    ap.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2", help="a swept parameter")
    ap.add_argument("--out", required=True, type=Path, help="folder for notebooks, records and failures.json")
    ap.add_argument("--address", help="Ray cluster address (default: start a local instance)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local instance (default: all)")
    ap.add_argument("--cpus-per-task", type=float, default=1.0)
    ap.add_argument("--gpus-per-task", type=float, default=1.0, help="GPUs per task when device=cuda")
    args = ap.parse_args(argv)

    fixed, grid = parse_assignments(args.param, "--param"), parse_assignments(args.grid, "--grid")
    if "seed" in fixed or "seed" in grid:
        raise SystemExit("sweep: give seeds with --seeds, not as a parameter")
    points = grid_points(args.chapters, args.seeds, fixed, grid)
    sources = {ch: source_of(ch) for ch in args.chapters}
    head = commit()
    out = args.out.resolve()
    todo, skipped = [], 0
    for p in points:
        key = point_key(p, head)
        folder = out / Path(p["chapter"]).stem
        folder.mkdir(parents=True, exist_ok=True)
        name = point_name(p, key)
        if (folder / f"{name}.done").exists():
            skipped += 1
            continue
        todo.append((p, folder, name))
    print(f"sweep: {len(points)} runs ({skipped} finished at this commit and skipped), {len(todo)} to run; out {out}", flush=True)

    results = []
    if todo:
        import ray

        started_here = args.address is None
        if started_here:
            ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
                     object_store_memory=200 * 1024**2, runtime_env={"env_vars": {"PYTHONPATH": str(REPO / "ci")}})
        else:
            ray.init(address=args.address, log_to_driver=False)
        try:
            remote = ray.remote(run_point)
            refs = {}
            for p, folder, name in todo:
                gpus = args.gpus_per_task if str(p["params"].get("device", "cpu")).startswith("cuda") else 0
                ref = remote.options(num_cpus=args.cpus_per_task, num_gpus=gpus).remote(
                    str(sources[p["chapter"]]), str(folder), name, p["params"])
                refs[ref] = (p, folder, name)
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                p, folder, name = refs[done[0]]
                try:
                    res = ray.get(done[0])
                except Exception as err:  # the task itself died (e.g. a worker crash)
                    res = {"name": name, "ok": False, "error": f"{type(err).__name__}: {err}"}
                res.update({"chapter": Path(p["chapter"]).stem, "params": p["params"]})
                results.append(res)
                if res["ok"]:
                    (folder / f"{name}.done").write_text(json.dumps({"commit": head, **res}, indent=1))
                status = "ok" if res["ok"] else "FAILED"
                print(f"sweep: [{len(results)}/{len(todo)}] {res['chapter']} {p['params']}: {status} ({res.get('seconds', '?')} s)", flush=True)
        finally:
            ray.shutdown()
    failures = [r for r in results if not r["ok"]]
    (out / "failures.json").write_text(json.dumps(failures, indent=1, default=str))
    for f in failures:
        print(f"sweep: FAILED {f['chapter']} {f['params']}:\n{f.get('error')}\n", flush=True)
    print(f"sweep: {len(results) - len(failures)} ran, {len(failures)} failed, {skipped} skipped; "
          f"aggregate: python ci/run_chapter.py chapters/scorecard.md {out}/scorecard.ipynb -p runs {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
