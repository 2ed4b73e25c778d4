#!/usr/bin/env bash
# bench/large_model.sh end to end on the tiny preset (seconds, not the 7B's 15 minutes): model init
# in the --dtype asked for, convert to GGUF, bench_generate on it, each step's peak RSS; llama.cpp's
# tools pointed away (LLAMA_CPP_BIN), so it says they were not run. Malformed flags are refused with
# exit 2 naming the flag and the values it takes.
#   large_model_script.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
script=$src/bench/large_model.sh
[ -x /usr/bin/time ] || { echo "SKIP: /usr/bin/time is missing (scripts/install-deps.sh installs time)"; exit 0; }

export VHOST_BUILD=$build LLAMA_CPP_BIN=$scratch/no-llama-cpp
bash "$script" --preset tiny --dtype float32 --tokens 4 --batch 2 --rounds 1 --dir "$scratch/m" --keep > run.txt 2>&1 ||
  { cat run.txt; echo "large_model.sh failed"; exit 1; }
for want in 'preset tiny, float32' '1. model init (tiny, float32)' '2. model convert HF -> GGUF' \
            'bench/generate --model .*: float32' 'batch 1 ' 'batch 2 ' '5. llama.cpp: not run'; do
  grep -q -- "$want" run.txt || { cat run.txt; echo "no '$want' in the output"; exit 1; }
done
[ -f "$scratch/m/m.gguf" ] || { echo "--keep did not keep m/m.gguf"; exit 1; }

# bench_generate on that file: more tokens than the model's context, or no such file, is an error
# message and exit 2 (it was std::terminate's "terminate called after throwing").
rc=0; "$build/bin/bench_generate" --model "$scratch/m/m.gguf" --tokens 100000 --batch 1 > ctx.txt 2>&1 || rc=$?
[ "$rc" = 2 ] && grep -q '^bench_generate: .*exceeds the context' ctx.txt || { cat ctx.txt; echo "--tokens 100000: exit $rc"; exit 1; }
rc=0; "$build/bin/bench_generate" --model "$scratch/none.gguf" > none.txt 2>&1 || rc=$?
[ "$rc" = 2 ] && grep -q '^bench_generate: .*none.gguf' none.txt || { cat none.txt; echo "a missing file: exit $rc"; exit 1; }

refused() {  # refused MESSAGE ARGS...
  local want=$1; shift
  local rc=0
  bash "$script" "$@" > bad.txt 2>&1 || rc=$?
  [ "$rc" = 2 ] || { cat bad.txt; echo "large_model.sh $*: exit $rc, want 2"; exit 1; }
  grep -qF -- "$want" bad.txt || { cat bad.txt; echo "large_model.sh $*: wanted '$want'"; exit 1; }
}
refused "--dtype: bfloat16, float16 or float32, got 'int8'" --preset tiny --dtype int8
refused "--decode-dtype: auto, float32 or bfloat16, got 'f64'" --decode-dtype f64
refused "unknown argument '--dtypes'" --dtypes float32
echo "large_model_script: ok"
