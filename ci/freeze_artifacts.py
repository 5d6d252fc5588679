"""Commit small quick-profile models: copy cached artifacts into data/artifacts (read-only cache layer).

    python ci/freeze_artifacts.py cxplain-target            # the newest cached artifact of that name
    python ci/freeze_artifacts.py cxplain-target --key KEY  # a given one
    python ci/freeze_artifacts.py rde-masks --key K1 K2 K3  # several artifacts of one name (e.g. one per mu)

A chapter whose float training differs between CPUs trains in float64 and is slow; committing the
artifact that this repository's code produced lets every machine start from the same weights
(``lib.cache.ArtifactCache`` searches ``data/artifacts`` after its own cache, by the same key, so the
committed file is used only for the same configuration, data and code). Older artifacts of the same
name are removed from data/artifacts. Review with ``git status data/artifacts`` and commit.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lib.cache import COMMITTED, cache_dir  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="+")
    ap.add_argument("--key", nargs="+", help="the key(s) to commit (default: the newest cached artifact)")
    args = ap.parse_args(argv)
    for name in args.names:
        folder = cache_dir() / name
        if args.key:
            pts = [folder / f"{k}.pt" for k in args.key]
            missing = [str(p) for p in pts if not p.exists()]
            if missing:
                raise SystemExit(f"freeze: no cached artifact {', '.join(missing)}: run the chapter first")
        else:
            pts = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime)[-1:]
            if not pts:
                raise SystemExit(f"freeze: no cached artifact {folder}/*.pt: run the chapter first")
        dest = COMMITTED / name
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.glob("*"):
            old.unlink()
        for pt in pts:
            digest = pt.with_suffix(".sha256")
            shutil.copy2(pt, dest / pt.name)
            shutil.copy2(digest, dest / digest.name)
            print(f"freeze: {name}/{pt.name} ({pt.stat().st_size / 1e6:.1f} MB) -> {dest.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
