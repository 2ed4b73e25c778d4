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

# Every other part's /metrics through the same parser: a controller, a worker behind it and the
# API server, after two chat requests through the API server.
pids=()
trap 'kill ${pids[*]} 2>/dev/null || true' EXIT
"$vhost" controller --port 0 > controller.log 2>&1 & pids+=($!)
CPORT=$(port_of controller.log)
"$vhost" worker tiny --port 0 --threads 1 --controller "http://127.0.0.1:$CPORT" --heartbeat 0.2 > worker.log 2>&1 & pids+=($!)
WPORT=$(port_of worker.log)
"$vhost" api --controller "http://127.0.0.1:$CPORT" --port 0 > api.log 2>&1 & pids+=($!)
APORT=$(port_of api.log)
for _ in $(seq 1 200); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APORT/v1/chat/completions" \
        -d '{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":3}')" = 200 ] && break
  sleep 0.05
done
curl -sf "http://127.0.0.1:$APORT/v1/chat/completions" -d '{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":3}' >/dev/null ||
  { echo "the API server does not answer"; cat api.log; exit 1; }
for part in controller:$CPORT worker:$WPORT api:$APORT; do curl -s "http://127.0.0.1:${part#*:}/metrics" > "metrics-${part%%:*}.txt"; done
"$py" "$src/tests/integration/prometheus_check.py" metrics-worker.txt tiny 2 || { cat metrics-worker.txt; exit 1; }
"$py" - metrics-controller.txt metrics-api.txt <<'PY'
import sys
from prometheus_client.parser import text_string_to_metric_families
def parse(path):  # raises on malformed text
    return {s.name + (str(sorted(s.labels.items())) if s.labels else ""): s.value
            for f in text_string_to_metric_families(open(path).read()) for s in f.samples}
c, a = parse(sys.argv[1]), parse(sys.argv[2])
assert c["vhost_controller_workers"] == 1, c
assert c["vhost_controller_dispatched_total"] >= 2, c
assert c["vhost_controller_model_workers[('model', 'tiny')]"] == 1, c
assert a["vhost_api_requests_total"] >= 2 and a["vhost_api_errors_total"] == 0, a
print(f"  controller, worker and API server /metrics parse with prometheus_client ({len(c)} and {len(a)} samples)")
PY
