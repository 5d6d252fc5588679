#!/usr/bin/env bash
# README's first command: set up the environment, execute every chapter (quick profile) and build
# the HTML book into _build/html. A second run reuses the environment, the trained models and the
# executed chapters that did not change.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash ci/setup.sh
.venv/bin/python ci/build_book.py "$@"
echo "book: _build/html/index.html ready in $(( $(date +%s) - start )) s"
