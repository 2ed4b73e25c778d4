#!/usr/bin/env bash
# Distributed serving on loopback: a controller, two workers of one model and a third of another,
# and the API server in front. The official OpenAI client talks to the API server; then a worker
# is killed (its requests go to the other; it leaves /v1/models' worker list within the expiry),
# and the controller is restarted (the workers register again on their own).
#   serve_cluster.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
openai_client
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out tiny >/dev/null
"$vhost" model init --preset tiny --seed 5 --tokenizer-text "$src/docs/plugins.md" --out other >/dev/null
pids=()
trap 'kill ${pids[*]} 2>/dev/null || true' EXIT
workers() { curl -s "http://127.0.0.1:$CPORT/workers" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["workers"]))'; }
wait_workers() {  # wait_workers N
  for _ in $(seq 1 200); do [ "$(workers)" = "$1" ] && return 0; sleep 0.05; done
  echo "expected $1 workers, have $(workers)"; exit 1
}

"$vhost" controller --port 0 --expiry 2 > controller.log 2>&1 & pids+=($!)
CPORT=$(port_of controller.log)
for w in 1 2; do
  "$vhost" worker tiny --port 0 --threads 1 --max-batch 4 --controller "http://127.0.0.1:$CPORT" --heartbeat 0.2 > w$w.log 2>&1 &
  pids+=($!); eval "W${w}PID=$!"
done
"$vhost" worker other --port 0 --threads 1 --controller "http://127.0.0.1:$CPORT" --heartbeat 0.2 > w3.log 2>&1 & pids+=($!); W3PID=$!
"$vhost" api --controller "http://127.0.0.1:$CPORT" --port 0 --log votes.jsonl > api.log 2>&1 & pids+=($!)
APORT=$(port_of api.log)
wait_workers 3
# Past the controller's first expiry (2 s) an unknown model is a 404; before it, while workers may
# still be registering, a retryable 503 (checked after the restart below).
sleep 2
models=$(curl -s "http://127.0.0.1:$APORT/v1/models" | python3 -c 'import json,sys; print(",".join(sorted(m["id"] for m in json.load(sys.stdin)["data"])))')
[ "$models" = "other,tiny" ] || { echo "models: $models"; exit 1; }

# The full client suite through the API server (one model is asked for; the test expects it alone).
sed -i 's/assert.deepEqual(models.data.map(m => m.id), \[model\]);/assert.ok(models.data.map(m => m.id).includes(model));/' openai_client.mjs
node openai_client.mjs "http://127.0.0.1:$APORT" tiny
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APORT/v1/chat/completions" -d '{"model":"nope","messages":[{"role":"user","content":"x"}]}')" = 404 ] ||
  { echo "an unknown model is not a 404"; exit 1; }
# A worker's error reply to a streamed request keeps its status and OpenAI-shaped body.
code=$(curl -s -o bad.json -w '%{http_code}' "http://127.0.0.1:$APORT/v1/completions" -d '{"model":"tiny","prompt":"Hi","stream":true,"temperature":-1}')
[ "$code" = 400 ] && grep -q '"param":"temperature"' bad.json || { echo "HTTP $code"; cat bad.json; exit 1; }

# The chat page's votes reach --log through the API server too (they were a 404 there).
vote='{"models": ["tiny", "other"], "vote": "A", "conversation": [[{"role": "user", "content": "hi"}]]}'
[ "$(curl -s -o vote.json -w '%{http_code}' "http://127.0.0.1:$APORT/v1/votes" -d "$vote")" = 200 ] || { cat vote.json; exit 1; }
python3 -c "import json; r = [json.loads(l) for l in open('votes.jsonl')]; assert len(r) == 1 and r[0]['vote']['vote'] == 'A' and r[0]['time'] > 1.7e9, r"
[ "$(curl -s -o vote.json -w '%{http_code}' "http://127.0.0.1:$APORT/v1/votes" -d '{"models": []}')" = 400 ] && grep -q '"param":"vote"' vote.json ||
  { echo "a vote without 'vote' was not refused"; cat vote.json; exit 1; }
curl -s "http://127.0.0.1:$CPORT/metrics" | grep -q '^vhost_controller_model_workers{model="tiny"} 2'
# API keys on vhost api (untested before): none or a wrong one is a 401 on every endpoint; the
# key lets a request through to a worker.
"$vhost" api --controller "http://127.0.0.1:$CPORT" --port 0 --api-key sesame > keyed-api.log 2>&1 & pids+=($!); KPID=$!
KPORT=$(port_of keyed-api.log $KPID)
[ "$(curl -s -o k.json -w '%{http_code}' "http://127.0.0.1:$KPORT/v1/models")" = 401 ] &&
  grep -q invalid_api_key k.json || { echo "no key on /v1/models: not 401"; cat k.json; exit 1; }
[ "$(curl -s -o k.json -w '%{http_code}' "http://127.0.0.1:$KPORT/v1/completions" -d '{"model":"tiny","prompt":"Hi","max_tokens":2}')" = 401 ] &&
  grep -q invalid_api_key k.json || { echo "no key on /v1/completions: not 401"; cat k.json; exit 1; }
[ "$(curl -s -o k.json -w '%{http_code}' -H 'Authorization: Bearer wrong' "http://127.0.0.1:$KPORT/v1/models")" = 401 ] ||
  { echo "a wrong key was let in"; exit 1; }
[ "$(curl -s -o k.json -w '%{http_code}' -H 'Authorization: Bearer sesame' "http://127.0.0.1:$KPORT/v1/completions" \
     -d '{"model":"tiny","prompt":"Hi","max_tokens":2}')" = 200 ] || { echo "the key was refused"; cat k.json; exit 1; }
kill "$KPID"
echo "  vhost api --api-key: 401 without or with a wrong key, 200 with it"

echo "== a worker dies under load: its requests are retried on the other, it leaves within the expiry"
# 12 requests on two workers of 4 rows: each has a full batch and a queue when it is killed (with
# 6, a fast machine could finish the victim's share between the check below and the kill).
for i in $(seq 1 12); do
  curl -s --max-time 60 -o "load$i.json" -w '%{http_code}\n' "http://127.0.0.1:$APORT/v1/completions" \
       -d "{\"model\":\"tiny\",\"prompt\":\"Hi\",\"max_tokens\":480,\"ignore_eos\":true,\"seed\":$i}" > "load$i.code" &
done
# Kill a tiny worker that is busy with some of them (whichever the controller picked).
W1PORT=$(sed -n 's/^serving tiny on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' w1.log)  # not the controller's URL, also in the log
W2PORT=$(sed -n 's/^serving tiny on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' w2.log)
victim=""
for _ in $(seq 1 400); do
  for w in 1 2; do
    port=$([ $w = 1 ] && echo "$W1PORT" || echo "$W2PORT")
    if grep -q '^vhost_model_running{model="tiny"} [1-9]' <(curl -s "http://127.0.0.1:$port/metrics"); then victim=$w; break 2; fi
  done
  sleep 0.01
done
[ -n "$victim" ] || { echo "no tiny worker ever got a request"; exit 1; }
eval "kill -KILL \$W${victim}PID"
for i in $(seq 1 12); do
  for _ in $(seq 1 1200); do [ -s "load$i.code" ] && break; sleep 0.05; done
  [ "$(cat "load$i.code")" = 200 ] || { echo "request $i under load: HTTP $(cat "load$i.code")"; cat "load$i.json"; exit 1; }
  python3 -c "import json; assert json.load(open('load$i.json'))['usage']['completion_tokens'] == 480"
done
retries=$(curl -s "http://127.0.0.1:$APORT/metrics" | sed -n 's/^vhost_api_retries_total //p')
[ "${retries:-0}" -ge 1 ] || { echo "the killed worker had no request in flight: the test proves nothing"; exit 1; }
echo "  12 requests in flight when a worker was killed: all answered ($retries retried on the other worker)"
for i in 1 2 3 4 5 6; do
  code=$(curl -s -o out.json -w '%{http_code}' "http://127.0.0.1:$APORT/v1/completions" -d "{\"model\":\"tiny\",\"prompt\":\"Hi\",\"max_tokens\":4,\"seed\":$i}")
  [ "$code" = 200 ] || { echo "request $i after the kill: HTTP $code"; cat out.json; exit 1; }
  # Streamed too: a dead worker picked before it expires is skipped before the stream starts.
  curl -s -N "http://127.0.0.1:$APORT/v1/completions" -d "{\"model\":\"tiny\",\"prompt\":\"Hi\",\"max_tokens\":4,\"seed\":$i,\"stream\":true}" > out.sse
  tail -n 2 out.sse | grep -q '^data: \[DONE\]' && ! grep -q '"error"' out.sse || { echo "stream $i after the kill:"; cat out.sse; exit 1; }
done
wait_workers 2

echo "== the controller restarts: workers register again"
kill -TERM "${pids[0]}"; wait "${pids[0]}" || true
"$vhost" controller --port "$CPORT" --expiry 2 > controller2.log 2>&1 & pids+=($!)
port_of controller2.log >/dev/null
# Until its workers have registered again, a model the new controller does not know yet is a
# retryable 503, never a 404 (the OpenAI SDK retries 503, not 404): "nope" just after the start,
# and "other" all through its re-registration.
code=$(curl -s -o nope.json -w '%{http_code}' "http://127.0.0.1:$APORT/v1/completions" -d '{"model":"nope","prompt":"Hi","max_tokens":1}')
[ "$code" = 503 ] && grep -q "no worker serves 'nope' yet" nope.json || { echo "just after a controller restart: HTTP $code"; cat nope.json; exit 1; }
for i in $(seq 1 20); do
  code=$(curl -s -o out.json -w '%{http_code}' "http://127.0.0.1:$APORT/v1/completions" -d '{"model":"other","prompt":"Hi","max_tokens":1}')
  [ "$code" = 200 ] || [ "$code" = 503 ] || { echo "during re-registration: HTTP $code"; cat out.json; exit 1; }
done
wait_workers 2
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APORT/v1/completions" -d '{"model":"other","prompt":"Hi","max_tokens":3}')" = 200 ]

echo "== a worker that answers with a failure of its own: the request goes to another worker"
# A stand-in worker registers for tiny with a capacity that makes the controller pick it first,
# and answers every request with a 503 (as a worker going down does) or a 500.
cat > broken_worker.py <<'PY'
import http.server, json, sys, threading, time, urllib.request
controller = sys.argv[1]
hits = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global hits
        hits += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status = 503 if hits % 2 else 500
        body = json.dumps({"error": {"message": "worker failure %d" % hits, "type": "server_error", "param": None, "code": None}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with open("broken_hits", "w") as f: f.write(str(hits))
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
me = "http://127.0.0.1:%d" % srv.server_address[1]
def beat():
    path = "/register"
    while True:
        req = urllib.request.Request(controller + path, json.dumps({"address": me, "models": ["tiny"], "capacity": 1000, "queue": 0}).encode(), {"Content-Type": "application/json"})
        urllib.request.urlopen(req).read()
        path = "/heartbeat"
        time.sleep(0.2)
threading.Thread(target=beat, daemon=True).start()
srv.serve_forever()
PY
python3 broken_worker.py "http://127.0.0.1:$CPORT" & pids+=($!); BROKEN=$!
wait_workers 3
before=$(curl -s "http://127.0.0.1:$APORT/metrics" | sed -n 's/^vhost_api_retries_total //p')
for i in 1 2 3; do
  code=$(curl -s -o out.json -w '%{http_code}' "http://127.0.0.1:$APORT/v1/completions" -d "{\"model\":\"tiny\",\"prompt\":\"Hi\",\"max_tokens\":4,\"seed\":$i}")
  [ "$code" = 200 ] || { echo "request $i beside a failing worker: HTTP $code"; cat out.json; exit 1; }
  curl -s -N "http://127.0.0.1:$APORT/v1/completions" -d "{\"model\":\"tiny\",\"prompt\":\"Hi\",\"max_tokens\":4,\"seed\":$i,\"stream\":true}" > out.sse
  tail -n 2 out.sse | grep -q '^data: \[DONE\]' && ! grep -q '"error"' out.sse || { echo "stream $i beside a failing worker:"; cat out.sse; exit 1; }
done
after=$(curl -s "http://127.0.0.1:$APORT/metrics" | sed -n 's/^vhost_api_retries_total //p')
hits=$(cat broken_hits 2>/dev/null || echo 0)
[ "$hits" -ge 6 ] && [ "$((after - before))" -ge 6 ] || { echo "the failing worker got $hits requests, $((after - before)) retries"; exit 1; }
echo "  6 requests first sent to a failing worker: all answered by the other ($((after - before)) retries)"
# The model's only workers failing: the client gets the last failure as it was, not a generic one.
eval "kill -KILL \$W$((3 - victim))PID"
code=$(curl -s -o out.json -w '%{http_code}' "http://127.0.0.1:$APORT/v1/completions" -d '{"model":"tiny","prompt":"Hi","max_tokens":4}')
[ "$code" = 503 ] || [ "$code" = 500 ] || { echo "only failing workers: HTTP $code"; cat out.json; exit 1; }
grep -q '"message": *"worker failure' out.json || { echo "only failing workers:"; cat out.json; exit 1; }
kill "$BROKEN"
# A worker stopped with SIGTERM leaves its controller at once (not after its expiry).
before=$(workers)
kill -TERM "$W3PID"; wait "$W3PID" || true
grep -q "left http://127.0.0.1:$CPORT" w3.log || { echo "the worker did not say it left"; cat w3.log; exit 1; }
grep -q "worker .* left" controller2.log || { echo "the controller did not drop the leaving worker"; cat controller2.log; exit 1; }
[ "$(workers)" = "$((before - 1))" ] || { echo "the stopped worker is still listed"; curl -s "http://127.0.0.1:$CPORT/workers"; exit 1; }
echo "  a worker stopped with SIGTERM leaves its controller at once"
echo "serve_cluster: ok"
