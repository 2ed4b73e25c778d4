#!/usr/bin/env bash
# Fine-tuning a real pretrained model: stories260K (GGUF, ../shared) for a few steps on the
# ShareGPT sample lowers its loss on that data, and the result (HF layout, with the GGUF's
# vocabulary as tokenizer.model) loads and generates. Skips with a message without the fixtures.
#   stories260k_finetune.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
gguf="$src/../shared/models/stories260K.gguf"
sample="$src/../shared/data/sharegpt_sample.json"
need_shared models/stories260K.gguf data/sharegpt_sample.json
"$vhost" prepare "$sample" --model "$gguf" --out data --max-length 256 --eval-fraction 0.1 --log-level warn > prepare.log
cat > ft.toml <<TOML
[pipeline]
name = "stories260k-finetune"
stages = ["train"]
[backends.cpu]
plugin = "cpu"
threads = 2
[models.s]
plugin = "llama"
path = "$gguf"
load_weights = false
[stages.train]
data = "$scratch/data"
out = "$scratch/out"
max_steps = 30
batch_size = 16
micro_batch_size = 8
lr = 2e-3
warmup_steps = 2
log_every = 10
TOML
"$vhost" run ft.toml > ft.log 2>&1 || { cat ft.log; exit 1; }
python3 - out/metrics.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
loss = [r["loss"] for r in rows if "loss" in r]
ev = [r["eval_loss"] for r in rows if "eval_loss" in r]
first, last = sum(loss[:5]) / 5, sum(loss[-5:]) / 5
print(f"  stories260K on the ShareGPT sample: mean loss of steps 1-5 {first:.3f} -> steps 26-30 {last:.3f}; eval loss {ev[-1]:.3f}")
assert len(loss) == 30, len(loss)
assert last < first - 0.3, (first, last)
PY
test -f out/model/tokenizer.model
"$vhost" generate out/model --prompt "Once upon a time" --max-tokens 16 > gen.log 2>&1 || { cat gen.log; exit 1; }
grep -q "Once upon a time" gen.log
echo "stories260k_finetune: ok"
