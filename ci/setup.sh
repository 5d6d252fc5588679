#!/usr/bin/env bash
# Create or refresh the book's virtual environment in .venv (idempotent: a second run with the same
# requirements does nothing). Needs Python 3.11 (set PYTHON=/path/to/python3.11 if it is not on PATH).
# On machines without a local CPU wheel of torch, set
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# to avoid pip pulling the multi-GB CUDA build of torch 2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "ci/setup.sh: $PY not found. Install Python 3.11 or set PYTHON=/path/to/python3.11." >&2
  exit 2
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "ci/setup.sh: $PY is Python $("$PY" -c 'import platform; print(platform.python_version())'); the pinned stack needs 3.11." >&2
  exit 2
fi
want=$(cat requirements.txt ci/constraints.txt | sha256sum | cut -c1-64)
stamp=.venv/.requirements.sha256
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "setup: environment .venv is up to date"
  exit 0
fi
echo "setup: installing the pinned environment into .venv (a few minutes the first time)"
start=$(date +%s)
"$PY" -m venv .venv
# pip's notices about this machine's local package folders are noise; real errors still fail the script.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -c ci/constraints.txt 2>&1 \
  | { grep -v "^WARNING: Location 'file:" || true; }
# make the repository's lib/ importable from the chapters, tests and scripts
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
pwd > "$site/xai_book_repo.pth"
echo "$want" > "$stamp"
echo "setup: done in $(( $(date +%s) - start )) s"
