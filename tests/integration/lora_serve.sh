#!/usr/bin/env bash
# Multi-LoRA serving over HTTP, without fixtures or a venv: a tiny model, a LoRA adapter vhost
# trains on it (method = "lora"), `vhost serve BASE --adapter NAME=DIR`:
#  1. /v1/models lists the adapter as a model of its own, with the base as its parent;
#  2. its greedy completion equals `vhost generate BASE --adapter DIR` (the adapter merged), and
#     differs from the base's; requests for both at once each get their own; through a controller,
#     a worker advertises the adapter and the API server routes it to the same text;
#  3. bad input: --adapter without NAME=, a missing folder, an adapter named as the base, an
#     unknown model id, training an instance that merges an adapter: clear errors.
#   lora_serve.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out tiny >/dev/null
"$vhost" prepare "$src/examples/data/sharegpt_demo.json" --model tiny --out data --max-length 256 >/dev/null
cat > train.toml <<TOML
[pipeline]
name = "lora"
stages = ["train"]
work_dir = "$scratch/work"
[models.m]
plugin = "llama"
path = "$scratch/tiny"
load_weights = false
[stages.train]
data = "$scratch/data"
out = "$scratch/out"
method = "lora"
r = 4
alpha = 8
target_modules = ["q_proj", "v_proj", "gate_proj", "down_proj"]
max_steps = 3
batch_size = 4
micro_batch_size = 2
lr = 0.02
warmup_steps = 0
TOML
"$vhost" run train.toml > train.log 2>&1 || { cat train.log; exit 1; }
test -f out/adapter/adapter_config.json

"$vhost" serve tiny --adapter ad=out/adapter --port 0 --threads 2 --max-batch 4 > serve.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
PORT=$(port_of serve.log $PID)
url=http://127.0.0.1:$PORT
grep -q "serving ad, tiny on" serve.log || { cat serve.log; exit 1; }
curl -sf "$url/v1/models" > models.json
python3 - models.json <<'PY'
import json, sys
d = {m["id"]: m.get("parent") for m in json.load(open(sys.argv[1]))["data"]}
assert d == {"tiny": None, "ad": "tiny"}, d
PY
complete() {  # complete MODEL OUT: a greedy completion's text
  curl -sf "$url/v1/completions" -d "{\"model\": \"$1\", \"prompt\": \"The plugin\", \"max_tokens\": 16, \"temperature\": 0, \"ignore_eos\": true}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["text"])' > "$2"
}
complete ad ad.txt
complete tiny base.txt
if cmp -s ad.txt base.txt; then echo "the adapter changed nothing: $(cat ad.txt)"; exit 1; fi
"$vhost" generate tiny --adapter out/adapter --prompt "The plugin" --max-tokens 16 --temperature 0 > gen.log 2> gen.err ||
  { cat gen.log gen.err; exit 1; }
python3 - ad.txt gen.log <<'PY'
import sys
served = open(sys.argv[1]).read().rstrip("\n")
merged = open(sys.argv[2]).read().split("\n")[0]
assert merged == "The plugin" + served, (served, merged)
PY
# Both at once, several times: each gets its own text.
for i in 1 2 3; do complete ad "ad$i.txt" & complete tiny "base$i.txt" & done
wait %2 %3 %4 %5 %6 %7 2>/dev/null || true
for i in 1 2 3; do cmp ad.txt "ad$i.txt"; cmp base.txt "base$i.txt"; done
code=$(curl -s -o body.json -w '%{http_code}' "$url/v1/completions" -d '{"model": "nope", "prompt": "x", "max_tokens": 1}')
[ "$code" = 404 ] && grep -q "does not exist" body.json || { echo "unknown model: $code"; cat body.json; exit 1; }
kill $PID; wait $PID 2>/dev/null || true

# Several hosts: a worker advertises its adapters to the controller; the API server routes them.
"$vhost" controller --port 0 > controller.log 2>&1 &
CPID=$!
trap 'kill $PID $CPID ${WPID:-} ${APID:-} 2>/dev/null || true' EXIT
CPORT=$(port_of controller.log $CPID)
"$vhost" worker tiny --adapter ad=out/adapter --port 0 --threads 2 --max-batch 4 --controller "http://127.0.0.1:$CPORT" \
  --heartbeat 0.2 > worker.log 2>&1 &
WPID=$!
"$vhost" api --controller "http://127.0.0.1:$CPORT" --port 0 > api.log 2>&1 &
APID=$!
url=http://127.0.0.1:$(port_of api.log $APID)
for _ in $(seq 1 200); do
  curl -s "$url/v1/models" | grep -q '"ad"' && break
  sleep 0.05
done
curl -s "$url/v1/models" | grep -q '"ad"' || { echo "the adapter was not advertised"; cat worker.log; exit 1; }
complete ad ad_cluster.txt
cmp ad.txt ad_cluster.txt || { echo "through the API server: $(cat ad_cluster.txt)"; exit 1; }
kill $APID $WPID $CPID; wait $APID $WPID $CPID 2>/dev/null || true

refused() {  # refused PATTERN ARGS...: vhost serve exits nonzero, its output matching PATTERN
  local pat=$1 rc=0; shift
  timeout 60 "$vhost" serve "$@" --port 0 > bad.log 2>&1 || rc=$?
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "$pat" bad.log || { echo "expected an error matching '$pat' (rc $rc)"; cat bad.log; exit 1; }
}
refused "expected NAME=DIR" tiny --adapter out/adapter
refused "adapters.b" tiny --adapter b=/nonexistent/adapter
refused "has the name of another served model" tiny --adapter tiny=out/adapter
# Training an instance that merges an adapter at load would silently start from the base alone.
sed -e "s|load_weights = false|adapter = \"$scratch/out/adapter\"|" -e "s|out = \"$scratch/out\"|out = \"$scratch/out2\"|" \
  train.toml > train2.toml
rc=0; "$vhost" run train2.toml > train2.log 2>&1 || rc=$?
[ $rc -ne 0 ] && grep -q "merges the adapter .*vhost model merge" train2.log || { echo "train on a merged instance: rc $rc"; cat train2.log; exit 1; }
echo "lora_serve: ok"
