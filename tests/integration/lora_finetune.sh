#!/usr/bin/env bash
# LoRA fine-tuning of a real pretrained model (stories260K, GGUF, ../shared) on the ShareGPT
# sample, through the CLI:
#  1. method = "lora" lowers the loss and writes a PEFT adapter folder (out/adapter);
#  2. a run stopped at step 8 and resumed gives the losses and adapter of the uninterrupted run;
#  3. 2 processes (FSDP on Gloo, `vhost launch`) give the losses of 1 process, dropout included;
#  4. `vhost model merge` writes a whole checkpoint that generates what base + adapter
#     (`adapter =` on the model) generates;
#  5. bad input: r = 0, an unknown target module, an adapter for another base: clear errors.
# Skips with a message without the fixtures.
#   lora_finetune.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
gguf="$src/../shared/models/stories260K.gguf"
sample="$src/../shared/data/sharegpt_sample.json"
need_shared models/stories260K.gguf data/sharegpt_sample.json
"$vhost" prepare "$sample" --model "$gguf" --out data --max-length 256 --eval-fraction 0.1 --log-level warn > prepare.log

pipeline() {  # pipeline NAME OUT [extra train lines...]
  local name=$1 out=$2
  shift 2
  cat > "$name.toml" <<TOML
[pipeline]
name = "$name"
stages = ["train"]
work_dir = "$scratch/work-$name"
[backends.cpu]
plugin = "cpu"
threads = 1
[models.s]
plugin = "llama"
path = "$gguf"
load_weights = false
[stages.train]
data = "$scratch/data"
out = "$scratch/$out"
method = "lora"
r = 8
alpha = 16
dropout = 0.05
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
max_steps = 20
batch_size = 16
micro_batch_size = 8
lr = 1e-2
warmup_steps = 2
log_every = 10
TOML
  for line in "$@"; do echo "$line" >> "$name.toml"; done
}
losses() { python3 -c 'import json,sys; print(" ".join(repr(json.loads(l)["loss"]) for l in open(sys.argv[1]) if "\"loss\"" in l))' "$1"; }

echo "== 1. LoRA lowers the loss and writes a PEFT folder"
pipeline full out-full
"$vhost" run full.toml > full.log 2>&1 || { cat full.log; exit 1; }
grep -q "LoRA: .* adapter parameters train" full.log || { cat full.log; exit 1; }
grep -q "adapter: $scratch/out-full/adapter" full.log || { cat full.log; exit 1; }
python3 - out-full <<'PY'
import json, sys
d = sys.argv[1]
rows = [json.loads(l) for l in open(d + "/metrics.jsonl")]
loss = [r["loss"] for r in rows if "loss" in r]
first, last = sum(loss[:4]) / 4, sum(loss[-4:]) / 4
print(f"  stories260K + LoRA (r 8, all projections): mean loss of steps 1-4 {first:.3f} -> steps 17-20 {last:.3f}")
assert len(loss) == 20, len(loss)
assert last < first - 0.3, (first, last)
cfg = json.load(open(d + "/adapter/adapter_config.json"))
assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 16, cfg
assert sorted(cfg["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
PY
test -f out-full/adapter/adapter_model.safetensors
test ! -e out-full/model

echo "== 2. stopped at step 8 and resumed: the same losses and adapter"
pipeline cut out-cut 'save_every = 4'
sed 's/^save_every = 4$/save_every = 4\nstop_at_step = 8/' cut.toml > cut1.toml
"$vhost" run cut1.toml > cut1.log 2>&1 || { cat cut1.log; exit 1; }
grep -q "stopped at step 8" cut1.log || { cat cut1.log; exit 1; }
"$vhost" run cut.toml > cut2.log 2>&1 || { cat cut2.log; exit 1; }
grep -q "resumed from .*step-00000008" cut2.log || { cat cut2.log; exit 1; }
[ "$(losses out-full/metrics.jsonl)" = "$(losses out-cut/metrics.jsonl)" ] ||
  { echo "resumed losses differ"; losses out-full/metrics.jsonl; losses out-cut/metrics.jsonl; exit 1; }
cmp out-full/adapter/adapter_model.safetensors out-cut/adapter/adapter_model.safetensors

echo "== 3. 2 processes (Gloo) give the losses of 1"
pipeline two out-two
"$vhost" launch --nproc-per-node 2 --log-dir logs two.toml > two.log 2>&1 || { cat two.log logs/* 2>/dev/null; exit 1; }
grep -q "x 2 processes" two.log || { cat two.log; exit 1; }
python3 - out-full/metrics.jsonl out-two/metrics.jsonl <<'PY'
import json, sys
a, b = ([json.loads(l)["loss"] for l in open(f) if '"loss"' in l] for f in sys.argv[1:])
assert len(a) == len(b) == 20, (len(a), len(b))
worst = max(abs(x - y) for x, y in zip(a, b))
print(f"  20 losses of 2 processes agree with 1 process within {worst:.1e}")
assert worst <= 1e-4, worst
PY

echo "== 4. merged checkpoint == base + adapter"
"$vhost" model merge "$gguf" out-full/adapter merged > merge.log 2>&1 || { cat merge.log; exit 1; }
grep -q "35 matrices + rank-8 updates" merge.log || { cat merge.log; exit 1; }
first_line() { "$@" > out.txt 2>/dev/null || { cat out.txt; exit 1; }; head -1 out.txt; }
first_line "$vhost" generate merged --prompt "Once upon a time" --max-tokens 24 --temperature 0 > merged.txt
cat > adapter.toml <<TOML
[pipeline]
name = "adapter"
stages = ["generate"]
work_dir = "$scratch/work-adapter"
[models.s]
plugin = "llama"
path = "$gguf"
adapter = "$scratch/out-full/adapter"
[stages.generate]
prompts = ["Once upon a time"]
max_tokens = 24
temperature = 0
TOML
first_line "$vhost" run adapter.toml > adapter.txt
first_line "$vhost" generate "$gguf" --prompt "Once upon a time" --max-tokens 24 --temperature 0 > base.txt
echo "  base:           $(cat base.txt)"
echo "  base + adapter: $(cat adapter.txt)"
cmp merged.txt adapter.txt || { echo "merged: $(cat merged.txt)"; exit 1; }
if cmp -s base.txt adapter.txt; then echo "the adapter changed nothing"; exit 1; fi

echo "== 5. bad input"
pipeline bad1 out-bad 'r = 0'
sed -i '0,/^r = 8$/{/^r = 8$/d}' bad1.toml
rc=0; "$vhost" run bad1.toml > bad1.log 2>&1 || rc=$?
[ $rc -eq 2 ] && grep -q "stages.train.r" bad1.log || { echo "r = 0: rc $rc"; cat bad1.log; exit 1; }
pipeline bad2 out-bad
sed -i 's/^target_modules = .*/target_modules = ["q_proj", "c_attn"]/' bad2.toml
rc=0; "$vhost" run bad2.toml > bad2.log 2>&1 || rc=$?
[ $rc -ne 0 ] && grep -q "unknown target module 'c_attn'" bad2.log || { echo "c_attn: rc $rc"; cat bad2.log; exit 1; }
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out other >/dev/null
rc=0; "$vhost" model merge other out-full/adapter m2 > bad3.log 2>&1 || rc=$?
[ $rc -ne 0 ] && grep -q "adapter_model.safetensors: .*another base model" bad3.log || { echo "other base: rc $rc"; cat bad3.log; exit 1; }
test ! -e m2/model.safetensors
echo "lora_finetune: ok"
