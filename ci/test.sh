#!/usr/bin/env bash
# README's second command: set up the environment, then run every test.
#   1. unit tests of lib/ and the ci/ scripts (tests/)
#   2. execute every chapter (quick profile, papermill) and build the HTML book (warnings are errors),
#      with the network unreachable and the full datasets absent (the committed samples are used);
#      each execution writes a run record to _build/records/
#   3. regression check: every number and verdict each chapter reported against its committed
#      baseline ci/baselines/<chapter>.json (tolerances and their reasons in that file); a moved
#      number fails and is named with both values. Accept intended changes with
#      `python ci/baselines.py accept CHAPTER` and review `git diff ci/baselines`.
#   4. nbval: re-execute each chapter and compare every output with the first execution of this run
#      (determinism on this machine; timings and cache messages are sanitised by ci/nbval_sanitize.cfg)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash ci/setup.sh
export OMP_WAIT_POLICY=PASSIVE MKL_CBWR=AVX2 TQDM_DISABLE=1 TF_CPP_MIN_LOG_LEVEL=3 PYTHONHASHSEED=0
.venv/bin/python -m pytest tests -q -p no:cacheprovider --durations=5
# the book must build without a network and without the full datasets: the loaders then fall back to
# the committed samples, and the regression check verifies that every such page says so
offline_data=$(mktemp -d)
trap 'rm -rf "$offline_data"' EXIT
offline=(env -u XAI_DATA_MNIST -u XAI_DATA_FASHION_MNIST -u XAI_DATA_CIFAR10 -u XAI_DATA_STL10 XAI_DATA_HOME="$offline_data"
         http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9)
"${offline[@]}" .venv/bin/python ci/build_book.py
.venv/bin/python -m pytest ci/check_regression.py -q -p no:cacheprovider
"${offline[@]}" .venv/bin/python -m pytest -q -p no:cacheprovider --nbval chapters/*.ipynb \
  --nbval-sanitize-with ci/nbval_sanitize.cfg --nbval-current-env --nbval-cell-timeout=1800
echo "test: everything passed in $(( $(date +%s) - start )) s"
