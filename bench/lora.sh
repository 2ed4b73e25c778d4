#!/usr/bin/env bash
# bench/lora.sh: LoRA against full fine-tuning and multi-LoRA serving against the base alone, on
# the stories15M shape (dim 288, 6 layers, vocabulary 32000; random weights: speed and memory do
# not depend on their values), each pair measured in the same run, alternating:
#  1. the train stage, method = "full" vs "lora" (r 8, q_proj + v_proj, FastChat's default), same
#     data, batch and steps: peak RSS of the process and median step tokens/s;
#  2. `vhost serve` with 4 LoRA adapters (each a model id; the 64 clients spread over them)
#     against the same server serving the base alone: output tokens/s of 64 concurrent clients.
#
#  3. with --large FILE (a 7B checkpoint, e.g. bench/large_model.sh --keep's bf16 GGUF): two LoRA
#     steps of one 128-token sequence on it: peak RSS against the checkpoint's own size, tokens/s.
#
#   bench/lora.sh [--build DIR] [--rounds 2] [--steps 8] [--clients 64] [--tokens 128] [--threads 2]
#                 [--large FILE]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=$src/build rounds=2 steps=8 clients=64 tokens=128 threads=2 large=
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2 ;; --rounds) rounds=$2 ;; --steps) steps=$2 ;; --clients) clients=$2 ;;
    --tokens) tokens=$2 ;; --threads) threads=$2 ;; --large) large=$(realpath "$2") ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
vhost=$build/bin/vhost
work=$build/bench-lora
rm -rf "$work"; mkdir -p "$work"; cd "$work"
tok="$src/../shared/models/llama2_tokenizer.model"
if [ -f "$tok" ]; then
  "$vhost" model init --preset stories15m --tokenizer "$tok" --out model >/dev/null
else
  "$vhost" model init --preset stories15m --tokenizer-text "$src/README.md" --out model >/dev/null
fi
"$vhost" prepare "$src/examples/data/sharegpt_demo.json" --model model --out data --max-length 256 --log-level warn >/dev/null

train_toml() {  # train_toml NAME METHOD
  cat > "$1.toml" <<TOML
[pipeline]
name = "$1"
stages = ["train"]
work_dir = "$work/work-$1"
[backends.cpu]
plugin = "cpu"
threads = $threads
[models.m]
plugin = "llama"
path = "$work/model"
load_weights = false
[stages.train]
data = "$work/data"
out = "$work/out-$1"
method = "$2"
max_steps = $steps
batch_size = 8
micro_batch_size = 4
lr = 1e-4
warmup_steps = 0
TOML
}
measure() {  # measure NAME: prints "peak_rss_bytes median_tokens_per_s"
  rm -rf "out-$1" "work-$1"
  "$vhost" run "$1.toml" > "$1.log" 2>&1 || { cat "$1.log"; exit 1; }
  python3 - "work-$1/run.json" "out-$1/metrics.jsonl" <<'PY'
import json, statistics, sys
run = json.load(open(sys.argv[1]))
rss = next(s["output"]["peak_rss_bytes"] for s in run["stages"] if "peak_rss_bytes" in s.get("output", {}))
tps = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[2]) if '"tokens_per_s"' in l][1:]  # step 1 warms up
print(rss, statistics.median(tps))
PY
}
train_toml full full
train_toml lora lora
echo "== training, stories15M shape, $steps steps of 8 sequences (micro-batch 4), $threads threads"
for r in $(seq 1 "$rounds"); do
  read -r frss ftps < <(measure full)
  read -r lrss ltps < <(measure lora)
  python3 -c "
f_rss, f_tps, l_rss, l_tps = $frss, $ftps, $lrss, $ltps
print(f'round $r: full peak RSS {f_rss/1e6:7.1f} MB, {f_tps:6.0f} tokens/s | LoRA peak RSS {l_rss/1e6:7.1f} MB, {l_tps:6.0f} tokens/s'
      f' | LoRA/full: RSS {l_rss/f_rss:.2f}x, tokens/s {l_tps/f_tps:.2f}x')"
done

echo "== serving, $clients clients x 2 requests of $tokens tokens, --max-batch $clients"
for i in 0 1 2 3; do cp -r out-lora/adapter "adapter$i"; done
serve_rate() {  # serve_rate LOG MODELS ARGS...: output tokens/s of the load against vhost serve ARGS
  local log=$1 models=$2; shift 2
  "$vhost" serve model --port 0 --threads "$threads" --max-batch "$clients" --max-queue 1024 --log-level warn "$@" > "$log" 2>&1 &
  local pid=$! port=
  for _ in $(seq 1 600); do
    port=$(sed -n 's/.*127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$log" | head -1)
    [ -n "$port" ] && break
    kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.05
  done
  python3 - "$port" "$models" "$clients" "$tokens" <<'PY'
import json, sys, threading, time, urllib.request
port, models, clients, tokens = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
done, failed = [0], [0]
lock = threading.Lock()
def client(c):
    for i in range(2):
        body = {"model": models[(c + i) % len(models)], "prompt": "Once upon a time", "max_tokens": tokens,
                "temperature": 1.0, "seed": c * 2 + i, "ignore_eos": True}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        try:
            n = json.load(urllib.request.urlopen(req, timeout=600))["usage"]["completion_tokens"]
        except Exception as e:
            with lock: failed[0] += 1
            continue
        with lock: done[0] += n
t0 = time.time()
ts = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
[t.start() for t in ts]
[t.join() for t in ts]
print(done[0] / (time.time() - t0), failed[0])
PY
  kill $pid; wait $pid 2>/dev/null || true
}
adapters=(--adapter a0=adapter0 --adapter a1=adapter1 --adapter a2=adapter2 --adapter a3=adapter3)
for r in $(seq 1 "$rounds"); do
  read -r base bf < <(serve_rate base.log model)
  read -r multi mf < <(serve_rate multi.log a0,a1,a2,a3 "${adapters[@]}")
  python3 -c "
b, m = $base, $multi
print(f'round $r: base alone {b:7.0f} tokens/s ($bf failed) | 4 adapters {m:7.0f} tokens/s ($mf failed) | 4 adapters/base {m/b:.2f}x')"
done

[ -n "$large" ] || exit 0
echo "== LoRA on $large: 2 steps of one 128-token sequence, r 8 on q_proj + v_proj"
"$vhost" prepare "$src/examples/data/sharegpt_demo.json" --model "$large" --out data-large --max-length 128 --log-level warn >/dev/null
sed -e "s|path = \"$work/model\"|path = \"$large\"|" -e "s|data = \"$work/data\"|data = \"$work/data-large\"|" \
    -e 's/^max_steps = .*/max_steps = 2/' -e 's/^batch_size = .*/batch_size = 1/' -e 's/^micro_batch_size = .*/micro_batch_size = 1/' \
    lora.toml > large.toml
sed -i 's/^name = "lora"/name = "large"/; s|work-lora|work-large|; s|out-lora|out-large|' large.toml
"$vhost" run large.toml > large.log 2>&1 || { cat large.log; exit 1; }
python3 - work-large/run.json out-large/metrics.jsonl "$large" <<'PY'
import json, os, sys
run = json.load(open(sys.argv[1]))
o = next(s["output"] for s in run["stages"] if "peak_rss_bytes" in s.get("output", {}))
tps = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[2]) if '"tokens_per_s"' in l]
size = os.path.getsize(sys.argv[3])
print(f"peak RSS {o['peak_rss_bytes']/1e9:.2f} GB = {o['peak_rss_bytes']/size:.2f}x the checkpoint ({size/1e9:.2f} GB, read in place); "
      f"{o['trainable_parameters']} trained parameters; step tokens/s {', '.join(f'{t:.2f}' for t in tps)}")
PY
