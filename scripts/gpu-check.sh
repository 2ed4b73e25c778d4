#!/usr/bin/env bash
# The GPU check: builds vhost on a lent GPU host against the host's own PyTorch (its libtorch
# with CUDA and NCCL), then checks and measures what the CUDA path does, printing one table and
# exiting non-zero on any failure. Meant for one device call of at most ~8 minutes:
#
#   here:   ../shared/device/pack-deps.sh .device-deps
#   device: run(command="bash scripts/gpu-check.sh", carry=[".device-deps"], timeout_s=540)
#
# Rows (each PASS, FAIL or INFO):
#   build       cmake + ninja against the host's torch (CUDA ON, NCCL)
#   backend     the cuda backend's describe(): GPU, bf16, peak TFLOP/s
#   logits      a GQA checkpoint's logits from vhost on the GPU (bench_device logits) against HF
#               transformers' LlamaForCausalLM on the GPU (tests/reference/hf_compare.py), float32
#               (judged: 1e-4, and 64 greedy tokens equal) and bfloat16 (max |diff| reported)
#   decode      bench_device decode: tokens/s at batch 1, 16 and 64 on a 1B- and a 7B-shaped bf16
#               checkpoint (random weights made on the spot, bf16 on disk), batch 1 as a share of
#               the HBM bound (weight bytes / the device's copy bandwidth measured in the same
#               run), beside HF transformers' generate() on the same checkpoint (bench/hf_generate.py)
#   serve       vhost serve --backend cuda on the GQA checkpoint: 8 concurrent completions through
#               the continuous-batching engine (its logits sampled on the device), half greedy,
#               half with top-k / top-p / a presence penalty and four seeds: 32 tokens each, the
#               sampled texts not all one; a greedy and a seeded request alone twice the same text
#   train       20 steps of a ~1B shape at 2048 tokens, bf16 compute, gradient checkpointing:
#               the loss falls; tokens/s and MFU from metrics.jsonl; the attention kernel the
#               train stage names; peak allocated memory
#   resume      SIGTERM after a checkpoint, then the same command: it resumes and the losses of
#               the resumed steps equal the uninterrupted run's (within 2e-3)
# Work goes to ${GPU_CHECK_DIR:-/tmp/vhost-gpu-check}; the table also lands in $OUT when set.
#
# The dry run (tests/integration/gpu_check_dry.sh): GPU_CHECK_DEVICE=cpu GPU_CHECK_BUILD=BUILD_DIR
# runs the same rows on the CPU with an existing build, small shapes and short runs, and
# llama_reference.py's formulas where transformers is absent: the script's own logic is tested
# before a GPU minute is spent on it. GPU_CHECK_PYTHON names a python with torch (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
src=$PWD
dev=${GPU_CHECK_DEVICE:-cuda}
work=${GPU_CHECK_DIR:-/tmp/vhost-gpu-check}
mkdir -p "$work"
table=()
failed=0
row() {  # row NAME STATUS TEXT
  table+=("$(printf '%-8s %-5s %s' "$1" "$2" "$3")")
  [ "$2" = FAIL ] && failed=1
  echo "[gpu-check] $1 $2 $3"
}
finish() {
  {
    echo "== vhost GPU check on $dev ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
    printf '%s\n' "${table[@]}"
  } | tee "$work/table.txt"
  [ -n "${OUT:-}" ] && cp "$work/table.txt" "$OUT/gpu-check.txt"
  exit $failed
}
case $dev in
  cuda) backend=cuda shapes=full ;;
  cpu) backend=cpu shapes=dry ;;
  *) echo "gpu-check: GPU_CHECK_DEVICE=$dev: cuda (the check) or cpu (its dry run)" >&2; exit 2 ;;
esac
python=${GPU_CHECK_PYTHON:-python3}  # the one with torch (the GPU host's plain python3)
py() { PYTHONUNBUFFERED=1 "$python" "$@"; }

# ---- build (the dry run takes an existing one)
if [ -n "${GPU_CHECK_BUILD:-}" ]; then
  build=$GPU_CHECK_BUILD
  [ -x "$build/bin/vhost" ] && [ -x "$build/bin/bench_device" ] || { row build FAIL "$build has no bin/vhost and bin/bench_device"; finish; }
  row build INFO "the build in $build"
else
  if [ -f .device-deps/unpack.sh ]; then
    bash .device-deps/unpack.sh >/dev/null && source .device-deps/env.sh
  fi
  prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
  build=$work/build
  t0=$(date +%s)
  if cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DVHOST_BUILD_TESTS=OFF \
       -DCMAKE_PREFIX_PATH="$prefix${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}" \
       -DCMAKE_LIBRARY_PATH="$prefix/../../lib" > "$work/cmake.log" 2>&1 &&
     { [ $dev = cpu ] || grep -q "cuda backend: CUDA" "$work/cmake.log"; } &&
     cmake --build "$build" -j "$(nproc)" > "$work/build.log" 2>&1; then
    row build PASS "$(( $(date +%s) - t0 )) s, torch $("$python" -c 'import torch; print(torch.__version__)')"
  else
    tail -20 "$work/cmake.log" "$work/build.log"
    row build FAIL "see $work/build.log"
    finish
  fi
fi
vhost=$build/bin/vhost
bench=$build/bin/bench_device

# ---- checkpoints (bf16 on disk), a tokenizer and data
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out "$work/tok" >/dev/null ||
  { row setup FAIL "vhost model init failed"; finish; }
py - "$work" "$dev" "$shapes" <<'PY'
import json, os, sys, torch
work, dev, shapes = sys.argv[1:4]
tok = open(os.path.join(work, "tok", "tokenizer.model"), "rb").read()
def make(name, d, f, layers, heads, kv, vocab=32000, ctx=4096):
    out = os.path.join(work, name)
    if os.path.exists(os.path.join(out, "config.json")): return
    os.makedirs(out, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d,
           "intermediate_size": f, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": ctx,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
           "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
    open(os.path.join(out, "tokenizer.model"), "wb").write(tok)
    g = torch.Generator(device=dev).manual_seed(0)
    hd = d // heads
    shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,), "lm_head.weight": (vocab, d)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (heads * hd, d), p + "self_attn.k_proj.weight": (kv * hd, d),
                       p + "self_attn.v_proj.weight": (kv * hd, d), p + "self_attn.o_proj.weight": (d, heads * hd),
                       p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                       p + "mlp.down_proj.weight": (d, f), p + "input_layernorm.weight": (d,),
                       p + "post_attention_layernorm.weight": (d,)})
    header, off = {}, 0
    for n, s in shapes.items():
        nb = 2 * (s[0] * (s[1] if len(s) > 1 else 1))
        header[n] = {"dtype": "BF16", "shape": list(s), "data_offsets": [off, off + nb]}
        off += nb
    h = json.dumps(header).encode(); h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as fo:
        fo.write(len(h).to_bytes(8, "little") + h)
        for n, s in shapes.items():
            t = torch.ones(s, dtype=torch.bfloat16, device=dev) if len(s) == 1 else \
                (torch.randn(s, generator=g, device=dev) * 0.02).to(torch.bfloat16)
            fo.write(t.cpu().view(torch.int16).numpy().tobytes())
make("gqa", 256, 688, 4, 8, 2, vocab=512, ctx=512)
if shapes == "full":
    make("m1b", 2048, 5632, 22, 32, 4)
    make("m7b", 4096, 11008, 32, 32, 32)
    words_a_reply, conversations = 3000, 256
else:  # the dry run: the same rows on small shapes
    make("m1b", 128, 344, 2, 4, 2, ctx=512)
    make("m7b", 256, 688, 2, 4, 4, ctx=512)
    words_a_reply, conversations = 300, 32
# Long ShareGPT conversations: 2048-token sequences for the training row (256 in the dry run).
import random
rng = random.Random(1)
words = "the model reads each token and writes the next one while the loss falls step by step".split()
convs = [{"id": str(i), "conversations": [
    {"from": "human", "value": " ".join(rng.choice(words) for _ in range(40))},
    {"from": "gpt", "value": " ".join(rng.choice(words) for _ in range(words_a_reply))}]} for i in range(conversations)]
json.dump(convs, open(os.path.join(work, "long.json"), "w"))
PY
[ $? -eq 0 ] || { row setup FAIL "making checkpoints failed"; finish; }
if [ $shapes = full ]; then seq_len=2048 steps=20 batch=8 save=5; else seq_len=256 steps=8 batch=2 save=3; fi

pipeline() {  # pipeline FILE MODEL STAGES EXTRA...
  local file=$1 model=$2 stages=$3; shift 3
  cat > "$file" <<EOF
[pipeline]
name = "$(basename "$file" .toml)"
stages = $stages
work_dir = "$work/runs/$(basename "$file" .toml)"
[backends.gpu]
plugin = "$backend"
dtype = "bfloat16"
[models.m]
plugin = "llama"
path = "$work/$model"
backend = "gpu"
EOF
  for l in "$@"; do echo "$l" >> "$file"; done
}

# ---- backend
pipeline "$work/info.toml" gqa '["info"]' 'dtype = "bfloat16"'
if "$vhost" run "$work/info.toml" > "$work/info.log" 2>&1; then
  row backend PASS "$(grep -o '"\(gpu\|cpu\)": *"[^"]*"' "$work/runs/info/run.json" | head -1), peak $(grep -o '"peak_tflops": *[0-9.]*' "$work/runs/info/run.json" | head -1 | grep -o '[0-9.]*$') TFLOP/s"
else
  tail -5 "$work/info.log"; row backend FAIL "the info stage failed"; finish
fi

# ---- logits: vhost on the device against HF transformers on the device (llama_reference.py's
# formulas where transformers is absent: the dry run on a machine without it)
if py -c 'import transformers' 2>/dev/null; then ref=(); against=transformers; else ref=(--formulas); against="llama_reference.py (no transformers here)"; fi
for dt in float32 bfloat16; do
  if "$bench" logits "$work/gqa" --device "$dev" --dtype $dt --greedy 64 --out "$work/logits-$dt.json" > "$work/logits-$dt.log" 2>&1 &&
     py "$src/tests/reference/hf_compare.py" "${ref[@]}" --vhost "$work/logits-$dt.json" "$work/gqa" > "$work/compare-$dt.log" 2>&1; then
    row logits PASS "$dt against $against: $(grep -o 'max |logit difference| .*' "$work/compare-$dt.log" | head -1); $(grep -o 'greedy tokens equal for .*' "$work/compare-$dt.log" | head -1)"
  else
    cat "$work/logits-$dt.log" "$work/compare-$dt.log" | tail -8
    row logits FAIL "$dt against $against: $(grep -h -o 'max |logit difference| .*\|greedy tokens equal for .*\|bench_device: .*' "$work/logits-$dt.log" "$work/compare-$dt.log" | tr '\n' ';')"
  fi
done

# ---- decode: bench_device beside HF generate() on the same checkpoint, batch 1, 16, 64
for m in m1b m7b; do
  if ! "$bench" decode "$work/$m" --device "$dev" --dtype bfloat16 --batch 1,16,64 --tokens 64 > "$work/decode-$m.jsonl" 2> "$work/decode-$m.log"; then
    tail -5 "$work/decode-$m.log"; row decode FAIL "$m: bench_device decode failed"; continue
  fi
  if [ "$against" = transformers ]; then
    py "$src/bench/hf_generate.py" "$work/$m" --device "$dev" --dtype bfloat16 --batch 1,16,64 --tokens 64 > "$work/hf-$m.jsonl" 2> "$work/hf-$m.log" ||
      { tail -5 "$work/hf-$m.log"; row decode FAIL "$m: bench/hf_generate.py failed"; }
  fi
  while IFS= read -r line; do row decode INFO "$line"; done < <(py - "$m" "$work/decode-$m.jsonl" "$work/hf-$m.jsonl" <<'PY'
import json, os, sys
m, ours, theirs = sys.argv[1:4]
rows = [json.loads(l) for l in open(ours) if l.strip()]
head, steps = rows[0], {r["batch"]: r for r in rows[1:]}
hf = {}
if os.path.exists(theirs):
    hf = {r["batch"]: r for r in (json.loads(l) for l in open(theirs) if l.strip()) if "batch" in r}
print(f"{m}: {head['step_weight_bytes'] / 2**20:.0f} MiB of weights a step, {head['copy_bytes_per_s'] / 1e9:.0f} GB/s copy "
      f"bandwidth: bound {head['bound_tokens_per_s']:.0f} tokens/s at batch 1")
for b, r in sorted(steps.items()):
    text = f"{m} batch {b}: {r['tokens_per_s']:.1f} tokens/s ({r['step_ms']:.2f} ms a step"
    text += f", {100 * r['bound_fraction']:.0f}% of the HBM bound)" if b == 1 else ")"
    if b in hf:
        ratio = r["tokens_per_s"] / hf[b]["tokens_per_s"]
        text += f"; HF generate() {hf[b]['tokens_per_s']:.1f}: {ratio:.2f}x"
    else:
        text += "; HF generate() not run (no transformers here)"
    if m == "m7b" and b == 1:  # the issue's goals
        ok = r["bound_fraction"] >= 0.7 and (b in hf and r["tokens_per_s"] >= 3 * hf[b]["tokens_per_s"])
        text += "; goal (>= 70% of the bound, >= 3x HF) " + ("met" if ok else "NOT met")
    print(text)
PY
)
done

# ---- serve: the continuous-batching engine on the device (each step's logits sampled there),
# through the OpenAI API: 8 concurrent completions of 32 tokens, half greedy, half sampled with
# top-k, top-p, a presence penalty and a seed each (the four differ); a greedy request and a
# seeded one alone, twice each, give the same text.
"$vhost" serve "$work/gqa" --backend "$backend" --port 0 --max-batch 8 > "$work/serve.log" 2>&1 &
spid=$!
port=
for _ in $(seq 1 1200); do
  port=$(sed -n 's/.*127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$work/serve.log" | head -1)
  [ -n "$port" ] && break
  kill -0 $spid 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then
  tail -5 "$work/serve.log"; row serve FAIL "vhost serve --backend $backend did not start"
else
  verdict=$(py - "$port" "$backend" <<'PY'
import json, sys, threading, time, urllib.request
port, backend = sys.argv[1:3]
def ask(body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)
base = {"model": "gqa", "prompt": "the model reads each token", "max_tokens": 32, "ignore_eos": True}
greedy = dict(base, temperature=0)
sampled = dict(base, temperature=0.8, top_p=0.9, top_k=40, presence_penalty=0.5, seed=7)
alone = [ask(greedy)["choices"][0]["text"] for _ in range(2)]
seeded = [ask(sampled)["choices"][0]["text"] for _ in range(2)]
out, errors = [None] * 8, []
def run(i):
    try:
        out[i] = ask(greedy if i % 2 == 0 else dict(sampled, seed=i))
    except Exception as e:
        errors.append(f"request {i}: {e}")
t0 = time.time()
threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
secs = time.time() - t0
if errors:
    print("FAIL " + "; ".join(errors[:2])); sys.exit()
lengths = {o["usage"]["completion_tokens"] for o in out}
texts = [o["choices"][0]["text"] for o in out]
problems = []
if alone[0] != alone[1]: problems.append("a greedy request alone gave two texts")
if seeded[0] != seeded[1]: problems.append("a seeded sampled request alone gave two texts")
if lengths != {32}: problems.append(f"completion lengths {sorted(lengths)}, want 32")
if len(set(texts[1::2])) < 2: problems.append("four sampled requests with four seeds gave one text")
print(("FAIL " + "; ".join(problems)) if problems else
      f"PASS 8 concurrent completions on {backend} (4 greedy, 4 sampled with 4 seeds: top-k, top-p, presence "
      f"penalty), 32 tokens each in {secs:.2f} s, {len(set(texts[1::2]))} distinct sampled texts; "
      f"greedy and seeded requests alone twice the same")
PY
) || verdict="FAIL the requests could not be made"
  row serve "${verdict%% *}" "${verdict#* }"
  kill $spid 2>/dev/null; wait $spid 2>/dev/null
fi

# ---- train and resume
"$vhost" prepare "$work/long.json" --model "$work/m1b" --out "$work/data" --max-length $seq_len > "$work/prepare.log" 2>&1 ||
  { tail -5 "$work/prepare.log"; row train FAIL "prepare failed"; finish; }
train_toml() {  # train_toml NAME OUT EXTRA...
  local n=$1 o=$2; shift 2
  pipeline "$work/$n.toml" m1b '["train"]' 'load_weights = false' '[stages.train]' "data = \"$work/data\"" \
    "out = \"$work/$o\"" "max_steps = $steps" "batch_size = $batch" 'micro_batch_size = 1' 'lr = 1e-4' 'warmup_steps = 2' \
    'gradient_checkpointing = true' 'log_every = 1' "$@"
}
train_toml train out-train
if timeout 300 "$vhost" run "$work/train.toml" > "$work/train.log" 2>&1; then
  verdict=$(py - "$work/out-train/metrics.jsonl" <<'PY'
import json, sys
m = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
first, last = m[0]["loss"], m[-1]["loss"]
tps = sorted(x["tokens_per_s"] for x in m[2:])[len(m[2:]) // 2]
mfu = sorted(x.get("mfu", 0) for x in m[2:])[len(m[2:]) // 2]
print(("PASS" if last < first else "FAIL") + f" loss {first:.3f} -> {last:.3f} in {len(m)} steps; median {tps:.0f} tokens/s, MFU {100 * mfu:.1f}%")
PY
) || verdict="FAIL no losses in $work/out-train/metrics.jsonl"
  kernel=$(sed -n 's/^attention kernel: //p' "$work/train.log" | head -1)
  row train "${verdict%% *}" "${verdict#* }; attention kernel: ${kernel:-not named}"
  grep -o '"peak_allocated_bytes": *[0-9]*' "$work/runs/train/run.json" | head -1 | sed 's/^/  /'
else
  tail -10 "$work/train.log"; row train FAIL "training failed"
fi
train_toml cut out-cut "save_every = $save"
timeout 300 "$vhost" run "$work/cut.toml" > "$work/cut1.log" 2>&1 &
pid=$!
for _ in $(seq 1 3000); do
  [ -d "$work/out-cut/checkpoints/step-$(printf %08d $save)" ] && [ "$(grep -c '"loss"' "$work/out-cut/metrics.jsonl" 2>/dev/null)" -ge $((save + 2)) ] && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
kill -TERM $pid 2>/dev/null; wait $pid
if timeout 300 "$vhost" run "$work/cut.toml" > "$work/cut2.log" 2>&1 && grep -q "resumed from" "$work/cut2.log"; then
  verdict=$(py - "$work/out-train/metrics.jsonl" "$work/out-cut/metrics.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l)["loss"] for l in open(f) if '"loss"' in l] for f in sys.argv[1:3])
worst = max(abs(x - y) / max(1, abs(x)) for x, y in zip(a, b))
print(("PASS" if len(a) == len(b) and worst <= 2e-3 else "FAIL") + f" {len(b)} losses after SIGTERM and resume, worst relative difference {worst:.1e}")
PY
) || verdict="FAIL the losses of the two runs could not be compared"
  row resume "${verdict%% *}" "${verdict#* }"
else
  tail -10 "$work/cut2.log"; row resume FAIL "the resumed run failed"
fi
finish
