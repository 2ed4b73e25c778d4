#!/usr/bin/env bash
# vhost's LoRA against Hugging Face PEFT on the same adapter files (tests/interop/peft_lora.py):
# PEFT's adapters served by vhost, vhost's adapters loaded by PEFT, merged checkpoints. Needs a
# python with torch 2.x, transformers and peft: $VHOST_HF_PYTHON, or the torch2 venv
# (scripts/torch2-env.sh installs them; `make test-torch2` makes it). A CTest skip where there is
# none (the default build on a fresh machine, before make test-torch2).
#   peft_lora.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
py=$(hf_python torch transformers peft)
[ -n "$py" ] || { echo "SKIP: no python with torch 2.x, transformers and peft (make test-torch2 makes build-torch2/venv)"; exit 0; }
"$py" "$src/tests/interop/peft_lora.py" "$vhost" "$scratch" "$src" 2>&1 | grep -v -i 'warn' | tee peft.txt
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
grep -q "peft_lora: ok" peft.txt
