#!/usr/bin/env bash
# Install mtsearch with its test extra and run the test suite. CI runs exactly this (.ci/run).
# torch==2.13.0 is installed first when torch is missing, so pip never pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install torch==2.13.0
fi
"$PY" -m pip install -q -e '.[test]'
set +e
"$PY" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
