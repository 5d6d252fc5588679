"""Commit small quick-profile models: copy cached artifacts into data/artifacts (read-only cache layer).

    python ci/freeze_artifacts.py cxplain-target            # the newest cached artifact of that name
    python ci/freeze_artifacts.py cxplain-target --key KEY  # a given one

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
    ap.add_argument("--key")
    args = ap.parse_args(argv)
    for name in args.names:
        folder = cache_dir() / name
        pts = sorted(folder.glob(f"{args.key or '*'}.pt"), key=lambda p: p.stat().st_mtime)
        if not pts:
            raise SystemExit(f"freeze: no cached artifact {folder}/{args.key or '*'}.pt: run the chapter first")
        pt = pts[-1]
        digest = pt.with_suffix(".sha256")
        dest = COMMITTED / name
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.glob("*"):
            old.unlink()
        shutil.copy2(pt, dest / pt.name)
        shutil.copy2(digest, dest / digest.name)
        print(f"freeze: {name}/{pt.name} ({pt.stat().st_size / 1e6:.1f} MB) -> {dest.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
