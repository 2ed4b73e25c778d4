#!/usr/bin/env bash
# `vhost serve` over real HTTP: the official OpenAI client library (node, vendored npm package)
# for models, chat and completions, streamed and not, typed errors, concurrency; curl for the chat
# page (web_chat.sh drives it in Chromium), API keys, moderation, malformed and oversized bodies, /metrics; SIGTERM ends it cleanly.
#   serve_openai.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
openai_client
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out tiny >/dev/null

start() {  # start LOG ARGS...: runs vhost serve, sets PID and PORT
  local log=$1; shift
  "$vhost" serve tiny --port 0 --threads 2 "$@" > "$log" 2>&1 &
  PID=$!
  PORT=$(port_of "$log" $PID)
}

start serve.log --max-batch 4 --log conversations.jsonl
trap 'kill $PID 2>/dev/null || true' EXIT
node openai_client.mjs "http://127.0.0.1:$PORT" tiny
code() { curl -s -o body.json -w '%{http_code}' "$@"; }
[ "$(code "http://127.0.0.1:$PORT/v1/chat/completions" -d '{"model": "tiny", "messages": [')" = 400 ]
grep -q '"type":"invalid_request_error"' body.json
head -c 2000000 /dev/zero | tr '\0' 'a' > big.txt
[ "$(code "http://127.0.0.1:$PORT/v1/completions" --data-binary @big.txt)" = 413 ]
grep -q 'too large' body.json
[ "$(code "http://127.0.0.1:$PORT/v1/nothing")" = 404 ]
[ "$(code "http://127.0.0.1:$PORT/")" = 200 ] && grep -q '<title>vhost chat</title>' body.json || { echo "no chat page"; exit 1; }
[ "$(code "http://127.0.0.1:$PORT/metrics")" = 200 ] && grep -q '^vhost_requests_total [1-9]' body.json || { cat body.json; exit 1; }
[ "$(code "http://127.0.0.1:$PORT/health")" = 200 ]
# Streaming with the defaults (after the first token, a write per 16 tokens or 20 ms); checked
# against --stream-interval 1 and against a 5 s flush below: the same SSE events every way.
sse='{"model": "tiny", "prompt": "Hi", "max_tokens": 21, "ignore_eos": true, "stream": true, "temperature": 0}'
curl -s -N "http://127.0.0.1:$PORT/v1/completions" -d "$sse" > sse2.txt
[ "$(wc -l < conversations.jsonl)" -ge 6 ]
# The streamed request is logged whole, as the non-streamed ones are (it was logged with an empty
# id, model and prompt and time 0: the stream outlived what its record pointed to).
python3 - conversations.jsonl sse2.txt <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
sid = json.loads(open(sys.argv[2]).read().split("\n")[0][6:])["id"]
r = [x for x in recs if x.get("id") == sid]
assert len(r) == 1, (sid, recs[-2:])
r = r[0]
assert r["model"] == "tiny" and r["prompt"] == "Hi" and r["endpoint"] == "completions" and r["time"] > 1.7e9, r
assert len(r["choices"]) == 1 and r["choices"][0], r
chats = [x for x in recs if x.get("endpoint") == "chat"]
assert chats and all(x["id"].startswith("chatcmpl") and x["prompt"] for x in chats), chats
PY
curl -s "http://127.0.0.1:$PORT/metrics" > metrics.txt
# The client's eight concurrent streams shared decode steps: a mean batch above 1 (static
# one-at-a-time serving gives exactly 1).
python3 - metrics.txt <<'PY' || { cat metrics.txt; exit 1; }
import re, sys
m = re.search(r'^vhost_model_mean_batch\{model="tiny"\} ([0-9.e+-]+)$', open(sys.argv[1]).read(), re.M)
assert m and float(m.group(1)) > 1.0, m and m.group(1)
PY
kill -TERM $PID; wait $PID
grep -q "stopped serving" serve.log

# A bad option is refused by name before anything is served.
if "$vhost" serve tiny --port 0 --stream-interval 0 > badopt.log 2>&1; then cat badopt.log; exit 1; fi
grep -q -- '--stream-interval: must be an integer in \[1, 256\], got .0.' badopt.log || { cat badopt.log; exit 1; }
if "$vhost" serve tiny --port 0 --stream-flush-ms -1 > badopt.log 2>&1; then cat badopt.log; exit 1; fi
grep -q -- '--stream-flush-ms: must be an integer in \[0, .*got .-1.' badopt.log || { cat badopt.log; exit 1; }

# Tokens held for a 5 s flush still all arrive, and the end of the request cuts the wait short.
start held.log --stream-interval 256 --stream-flush-ms 5000
t0=$(date +%s.%N)
curl -s -N "http://127.0.0.1:$PORT/v1/completions" -d "$sse" > sse_held.txt
python3 -c "import sys; d = float(sys.argv[2]) - float(sys.argv[1]); assert d < 3, d" "$t0" "$(date +%s.%N)"
kill -TERM $PID; wait $PID

# A full queue is HTTP 429 "overloaded": one row, no queue, six long requests sent at once.
# Each either runs to its end (200, all 450 tokens) or is refused; at least one runs, and one
# that arrives while another holds the row is refused. (The tiny model decodes a request in tens
# of milliseconds, so six in one go rarely arrive one after another's end; if they all do, try
# again, up to 20 times. A single probe timed off /metrics missed that window on fast machines.)
start busy.log --max-batch 1 --max-queue 0
long='{"model": "tiny", "prompt": "Hi", "max_tokens": 450, "ignore_eos": true}'
refused=0
for attempt in $(seq 1 20); do
  pids=()
  for i in 1 2 3 4 5 6; do
    curl -s -o "long$i.json" -w '%{http_code}' "http://127.0.0.1:$PORT/v1/completions" -d "$long" > "long$i.code" &
    pids+=($!)
  done
  wait "${pids[@]}"
  rc=0
  python3 - long{1..6} <<'PY' || rc=$?
import json, sys
ran = refused = 0
for f in sys.argv[1:]:
    code, body = open(f + ".code").read(), json.load(open(f + ".json"))
    if code == "200" and body["usage"]["completion_tokens"] == 450:
        ran += 1
    elif code == "429" and body["error"]["code"] == "overloaded":
        refused += 1
    else:
        print(f, code, body)
        sys.exit(2)
if not ran:
    print("none of the six ran")
    sys.exit(2)
sys.exit(0 if refused else 1)  # 1: all six ran one after another; try again
PY
  [ $rc = 1 ] && continue
  [ $rc = 0 ] || exit 1
  refused=1
  break
done
[ $refused = 1 ] || { echo "never refused while the row was taken"; exit 1; }
echo "  a full queue answers 429 overloaded; the running request completes"
kill -TERM $PID; wait $PID

start keyed.log --api-key sesame --blocked-word "Forbidden Topic" --stream-interval 1
curl -s -N -H 'Authorization: Bearer sesame' "http://127.0.0.1:$PORT/v1/completions" -d "$sse" > sse1.txt
python3 - sse1.txt sse2.txt sse_held.txt <<'PY'
import json, sys
def events(f):
    ev = [l[6:] for l in open(f).read().split("\n") if l.startswith("data: ")]
    assert ev[-1] == "[DONE]", ev[-3:]
    return [json.loads(e)["choices"][0]["text"] for e in ev[:-1]]
one, two, held = events(sys.argv[1]), events(sys.argv[2]), events(sys.argv[3])
assert one == two == held and len(one) > 10, (one, two, held)
PY
echo "  the default stream coalescing and a 5 s flush send the same SSE events as writing every token"
[ "$(code -H 'Authorization: Bearer sesame' "http://127.0.0.1:$PORT/v1/chat/completions" -d '{"model": "tiny", "messages": [{"role": "user", "content": "tell me about the forbidden topic"}]}')" = 400 ]
grep -q '"code":"content_filter"' body.json
[ "$(code "http://127.0.0.1:$PORT/v1/models")" = 401 ] && grep -q invalid_api_key body.json || { echo "no key: not 401"; cat body.json; exit 1; }
[ "$(code -H 'Authorization: Bearer wrong' "http://127.0.0.1:$PORT/v1/models")" = 401 ] || { echo "wrong key: not 401"; exit 1; }
[ "$(code -H 'Authorization: Bearer sesame' "http://127.0.0.1:$PORT/v1/models")" = 200 ]
kill -TERM $PID; wait $PID
echo "serve_openai: ok"
