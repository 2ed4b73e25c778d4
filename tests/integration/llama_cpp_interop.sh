#!/usr/bin/env bash
# vhost and llama.cpp on the same GGUF files, llama.cpp from PyPI (llama-cpp-python compiles it;
# scripts/llamacpp-env.sh): greedy text over 64 tokens equal on
#   1. stories260K.gguf (../shared: llama.cpp's own F32 file, a real pretrained model),
#   2. that model quantized by llama.cpp's own quantizer to Q8_0 (Q8_0 blocks beside the F16
#      and F32 tensors it falls back to),
#   3. the GGUF vhost writes of it (GGUF -> HF folder -> GGUF), which llama.cpp must run.
# Skips without the fixture or the venv.
#   llama_cpp_interop.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
model=$src/../shared/models/stories260K.gguf
[ -f "$model" ] || { echo "SKIP: $model is missing (the shared fixtures)"; exit 0; }
rc=0; py=$("$src/scripts/llamacpp-env.sh" "$build/venv-llamacpp" | tail -1) || rc=$?
[ "$rc" = 0 ] || { echo "SKIP: no llama.cpp venv (scripts/llamacpp-env.sh exit $rc)"; exit 0; }
check="$src/tests/interop/llama_cpp_greedy.py"
prompt="Once upon a time"
same() {  # same FILE: vhost's greedy text equals llama.cpp's on FILE
  "$vhost" generate "$1" --prompt "$prompt" --max-tokens 64 > vhost.out 2> vhost.err || { cat vhost.err; exit 1; }
  "$py" "$check" generate "$1" "$prompt" 64 vhost.out || exit 1
}
same "$model"
"$py" "$check" quantize "$model" q8.gguf q8_0 > quant.log 2>&1 || { cat quant.log; exit 1; }
"$py" "$check" types q8.gguf | tee types.log
grep -q "'Q8_0'" types.log || { echo "llama.cpp wrote no Q8_0 tensor"; exit 1; }
same q8.gguf
"$vhost" model convert "$model" hf > conv1.log 2>&1 || { cat conv1.log; exit 1; }
"$vhost" model convert hf ours.gguf > conv2.log 2>&1 || { cat conv2.log; exit 1; }
same ours.gguf
echo "llama_cpp_interop: ok (llama.cpp's F32 and Q8_0 files and vhost's own GGUF: 64 greedy tokens equal)"
