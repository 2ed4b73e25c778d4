#!/usr/bin/env bash
# vhost against Hugging Face transformers on the same checkpoints and tokenizers
# (tests/interop/hf_transformers.py; also tests/reference/hf_compare.py on the reference
# test's checkpoints). Needs a python with torch 2.x and transformers: $VHOST_HF_PYTHON, or the
# torch2 venv (scripts/torch2-env.sh installs transformers there; `make test-torch2` makes it).
# A CTest skip where there is none (the default build on a fresh machine, before make test-torch2).
#   hf_transformers.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
py=$(hf_python torch transformers)
[ -n "$py" ] || { echo "SKIP: no python with torch 2.x and transformers (make test-torch2 makes build-torch2/venv)"; exit 0; }
"$py" "$src/tests/interop/hf_transformers.py" "$vhost" "$scratch" "$src/../shared" 2>&1 | grep -v -i 'warn' | tee hf.txt
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
# The reference test's checkpoints (GQA; tied, rope_theta 5e5, sharded, bf16 on disk) against
# transformers itself, not only against llama_reference.py's formulas (hf_compare.sh).
"$build/bin/vhost_llama_tests" 'forward matches an independent Python implementation*' >/dev/null
ref=$build/tests/tmp/llama/reference
"$py" "$src/tests/reference/hf_compare.py" "$ref/gqa" "$ref/tied" 2>&1 | grep -v -i 'warn' | tee -a hf.txt
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
echo "hf_transformers: ok"
