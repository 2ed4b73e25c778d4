#!/usr/bin/env bash
# vhost and llama.cpp on the same GGUF files, llama.cpp from PyPI (llama-cpp-python compiles it;
# scripts/llamacpp-env.sh): greedy text over 64 tokens equal on
#   1. stories260K.gguf (../shared: llama.cpp's own F32 file, a real pretrained model),
#   2. that model quantized by llama.cpp's own quantizer to Q8_0 (Q8_0 blocks beside the F16
#      and F32 tensors it falls back to),
#   3. the GGUF vhost writes of it (GGUF -> HF folder -> GGUF), which llama.cpp must run,
#   4. the Q8_0 GGUF `vhost model convert --quantize q8_0` writes of it: block for block what the
#      gguf package's quantizer makes of the same F32 tensors, and llama.cpp runs it.
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
"$vhost" model convert hf ours-q8.gguf --quantize q8_0 > conv3.log 2>&1 || { cat conv3.log; exit 1; }
"$py" "$check" same-q8 ours.gguf ours-q8.gguf || exit 1
same ours-q8.gguf
# Refused before anything is written: an unknown type, and quantizing from a GGUF.
rc=0; "$vhost" model convert hf q4.gguf --quantize q4_0 > bad1.log 2>&1 || rc=$?
[ "$rc" = 2 ] && grep -q "quantize" bad1.log && [ ! -e q4.gguf ] || { echo "--quantize q4_0: exit $rc"; cat bad1.log; exit 1; }
rc=0; "$vhost" model convert "$model" again.gguf --quantize q8_0 > bad2.log 2>&1 || rc=$?
[ "$rc" = 2 ] && grep -q "only an HF folder" bad2.log && [ ! -e again.gguf ] || { echo "--quantize from a GGUF: exit $rc"; cat bad2.log; exit 1; }
echo "llama_cpp_interop: ok (llama.cpp's F32 and Q8_0 files, vhost's own F32 and Q8_0 GGUFs: 64 greedy tokens equal; vhost's Q8_0 = gguf's quantizer)"
