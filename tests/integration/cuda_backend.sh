#!/usr/bin/env bash
# The cuda backend on a machine without a GPU (CI's): `vhost plugins` lists it, the Vicuna-7B
# pipeline that names it validates, and a pipeline that creates it fails with a clear
# "no CUDA device visible: ..." (exit status 2, a configuration error) instead of crashing;
# bad options are refused naming the key. Where a GPU is visible, it says so and skips (the GPU
# check is scripts/gpu-check.sh).
#   cuda_backend.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"

"$vhost" plugins > plugins.txt
grep -Eq "cuda .*backend|backend.*cuda" plugins.txt || { cat plugins.txt; echo "cuda backend not listed"; exit 1; }
"$vhost" validate "$src/examples/vicuna-7b.toml" > validate.txt 2>&1 || { cat validate.txt; exit 1; }

if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q GPU; then
  echo "SKIP: a GPU is visible here; this test covers machines without one (run scripts/gpu-check.sh)"
  exit 0
fi

cat > gpu.toml <<EOF
[pipeline]
name = "gpu"
stages = ["info"]
work_dir = "$scratch/work"
[backends.gpu]
plugin = "cuda"
dtype = "bfloat16"
EOF
rc=0
"$vhost" run gpu.toml > gpu.log 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "expected exit status 2, got $rc"; cat gpu.log; exit 1; }
grep -q "no CUDA device visible: " gpu.log || { cat gpu.log; exit 1; }
grep -q "gpu.toml" gpu.log || { echo "the error does not name the file"; cat gpu.log; exit 1; }
echo "  $(grep -o 'no CUDA device visible: .*' gpu.log | cut -c1-160)"

# Malformed options: named with file, line and key before anything starts.
cat > bad.toml <<EOF
[pipeline]
stages = ["info"]
work_dir = "$scratch/work"
[backends.gpu]
plugin = "cuda"
dtype = "fp8"
peak_tflops = -1
EOF
rc=0
"$vhost" validate bad.toml > bad.log 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "expected exit status 2, got $rc"; cat bad.log; exit 1; }
grep -q "bad.toml:6:.*dtype" bad.log || { cat bad.log; exit 1; }
grep -q "bad.toml:7:.*peak_tflops" bad.log || { cat bad.log; exit 1; }
echo "cuda_backend: ok"
