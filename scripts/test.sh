#!/usr/bin/env bash
# Install mtsearch with its test extra and run the test suite. CI runs exactly this (.ci/run).
# torch==2.13.0 is installed first when torch is missing, so pip never pulls a CUDA build.
# The suite runs in MTSEARCH_TEST_WORKERS processes (default 2, pytest-xdist), each test file in
# one of them: most of a search test's time is spent waiting (Ray start-up, epochs that sleep), so
# two share two cores well. MTSEARCH_TEST_WORKERS=1 runs it in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install torch==2.13.0
fi
"$PY" -m pip install -q -e '.[test]'
WORKERS=${MTSEARCH_TEST_WORKERS:-2}
PARALLEL=()
if [ "$WORKERS" -gt 1 ]; then
  PARALLEL=(-n "$WORKERS" --dist loadfile)
fi
set +e
"$PY" -m pytest ${PARALLEL[@]+"${PARALLEL[@]}"} "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
