#!/usr/bin/env bash
# vhost serve through the official openai Python client (openai_python.py), then its /metrics
# through prometheus_client's parser (prometheus_check.py). Skips (CTest) where
# the interop venv cannot be made.
#   openai_python.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
rc=0; py=$("$src/scripts/interop-env.sh" "$build/venv-interop" | tail -1) || rc=$?
[ $rc = 0 ] || { [ $rc = 3 ] && { echo "SKIP: the interop venv cannot be made here"; exit 0; }; exit $rc; }
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out tiny >/dev/null
"$vhost" serve tiny --port 0 --threads 2 --api-key sesame > serve.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
PORT=$(port_of serve.log $PID)
"$py" "$src/tests/integration/openai_python.py" "http://127.0.0.1:$PORT" tiny sesame
# /metrics through prometheus_client's own parser, after the client's 9 successful requests.
curl -s "http://127.0.0.1:$PORT/metrics" > metrics.txt
"$py" "$src/tests/integration/prometheus_check.py" metrics.txt tiny 9 || { cat metrics.txt; exit 1; }
if grep -E '\[error\]' serve.log; then echo "the server logged internal errors"; exit 1; fi
kill -TERM $PID; wait $PID
