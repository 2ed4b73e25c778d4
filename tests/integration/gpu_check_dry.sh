#!/usr/bin/env bash
# scripts/gpu-check.sh has only a lent GPU's minutes to run in, so its logic is run here first:
# GPU_CHECK_DEVICE=cpu, this build, small shapes. Every row must come out as on the GPU (logits
# and greedy tokens judged against llama_reference.py's formulas, decode rows at batch 1, 16 and
# 64 beside the bound, training whose loss falls, SIGTERM and resume with the same losses). Then
# bench_device's refusals: a device this libtorch has not, bad flags, a missing checkpoint, each
# one line naming what is wrong, exit status 2.
#   gpu_check_dry.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
# With transformers (the torch2 venv of make test-torch2, or $VHOST_HF_PYTHON), the rows that use
# it run as on the GPU host: HF's logits, greedy tokens and generate(). Else Debian's python3-torch
# and llama_reference.py's formulas.
py=$(hf_python torch transformers numpy)
[ -n "$py" ] || py=/usr/bin/python3
$py -c 'import torch, numpy' 2>/dev/null || { echo "SKIP: $py has no torch/numpy (Debian: python3-torch)"; exit 0; }
bench=$build/bin/bench_device

rc=0
GPU_CHECK_DEVICE=cpu GPU_CHECK_BUILD=$build GPU_CHECK_PYTHON=$py GPU_CHECK_DIR=$scratch/gc bash "$src/scripts/gpu-check.sh" > check.log 2>&1 || rc=$?
sed -n '/^== vhost GPU check/,$p' check.log
[ $rc = 0 ] || { cat check.log; echo "the dry run exited $rc"; exit 1; }
t=gc/table.txt
expect() {  # expect PATTERN: a line of the table matches
  grep -Eq "$1" $t || { echo "no row matches: $1"; exit 1; }
}
expect '^logits +PASS +float32 against (transformers|llama_reference.py).*max \|logit difference\|.*greedy tokens equal for 64 of 64'
expect '^logits +PASS +bfloat16 against'
for m in m1b m7b; do
  expect "^decode +INFO +$m: .* MiB of weights a step, .* bound .* tokens/s at batch 1"
  expect "^decode +INFO +$m batch 1: [0-9.]+ tokens/s .*% of the HBM bound"
  expect "^decode +INFO +$m batch 16: [0-9.]+ tokens/s"
  expect "^decode +INFO +$m batch 64: [0-9.]+ tokens/s"
done
if $py -c 'import transformers' 2>/dev/null; then
  expect '^decode +INFO +m7b batch 16: .*HF generate\(\) [0-9.]+: [0-9.]+x'
else
  expect '^decode +INFO +m7b batch 16: .*HF generate\(\) not run \(no transformers here\)'
fi
expect '^decode .*m7b batch 1: .*goal \(>= 70% of the bound, >= 3x HF\) (met|NOT met)'
expect '^serve +PASS +8 concurrent completions on cpu .* 32 tokens each'
expect '^train +PASS +loss .* -> .* in 8 steps.*; attention kernel: (math|flash_attention|efficient_attention|cudnn_attention)'
expect '^resume +PASS +8 losses after SIGTERM and resume'
if grep -q FAIL $t; then echo "a row failed"; exit 1; fi

# The greedy tokens in a logits file that no longer match: hf_compare.py fails the float32 row.
$py - gc/logits-float32.json <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); j["greedy"][10] = (j["greedy"][10] + 1) % 512
json.dump(j, open("moved.json", "w"))
PY
if $py "$src/tests/reference/hf_compare.py" --formulas --vhost moved.json gc/gqa > moved.txt 2>&1; then
  cat moved.txt; echo "a moved greedy token passed"; exit 1
fi
grep -q 'greedy tokens equal for 10 of 64  FAIL' moved.txt || { cat moved.txt; exit 1; }

# bench_device's refusals.
refused() {  # refused PATTERN ARGS...: exit status 2 and PATTERN on stderr
  local pat=$1 rc=0; shift
  "$bench" "$@" > out.txt 2> err.txt || rc=$?
  [ $rc = 2 ] && grep -q -- "$pat" err.txt || { echo "bench_device $*: exit $rc"; cat out.txt err.txt; exit 1; }
}
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
  refused "--device cuda:0: no CUDA device visible" decode gc/gqa --device cuda:0
fi
refused "--device: 'gpu0' is not a device" decode gc/gqa --device gpu0
refused "--dtype: 'int8' is not" logits gc/gqa --device cpu --dtype int8 --out x.json
refused "--batch: '1,,4' is not a list" decode gc/gqa --device cpu --batch 1,,4
refused "--tokens: 'many' is not a whole number" decode gc/gqa --device cpu --tokens many
refused "--out FILE is required" logits gc/gqa --device cpu
refused "--ids: token 999 is outside the vocabulary of 512" logits gc/gqa --device cpu --out x.json --ids '[[1, 999]]'
refused "--ids: not a JSON array" logits gc/gqa --device cpu --out x.json --ids '[[1, 2'
refused "--greedy: needs a value" logits gc/gqa --device cpu --out x.json --greedy
refused "--batch: not a flag of bench_device logits" logits gc/gqa --device cpu --out x.json --batch 4
refused "nowhere: " decode nowhere --device cpu
refused "usage: bench_device decode|logits" train gc/gqa
echo "gpu-check.sh's dry run: every row as on a GPU; bench_device refuses bad input naming it"
