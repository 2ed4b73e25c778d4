#!/usr/bin/env bash
# Makes the venv that the libtorch 2.x build compiles against (and, beside torch, HF transformers
# for the interoperability test): PyTorch's PyPI wheel carries a
# full libtorch (CUDA 13, c10d with NCCL and Gloo, TorchConfig.cmake). The venv is the
# project's own (default build-torch2/venv, ignored by git), never system-wide; pip's cache
# (~/.cache/pip) makes a second run on the same machine quick. Idempotent.
#   scripts/torch2-env.sh [VENV_DIR]    prints the Torch cmake prefix on its last line
set -euo pipefail
TORCH_VERSION=${VHOST_TORCH2_VERSION:-2.11.0}  # the GPU host runs 2.11.0+cu130: the same ABI
venv=${1:-build-torch2/venv}
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv" >&2
fi
have=$("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
if [ "${have%%+*}" != "$TORCH_VERSION" ]; then
  echo "torch2-env: installing torch==$TORCH_VERSION into $venv (about 3.5 GB with its CUDA libraries)" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION" >&2
fi
# HF transformers and PEFT beside it, for the interoperability tests (tests/integration/hf_transformers.sh,
# peft_lora.sh).
HF_PINS=("transformers==5.25.0" "tokenizers==0.23.3" "sentencepiece==0.2.3" "protobuf==7.36.2" "peft==0.21.2")
have_hf=$("$venv/bin/python" -c 'import transformers, peft; print(transformers.__version__, peft.__version__)' 2>/dev/null || true)
if [ "$have_hf" != "5.25.0 0.21.2" ]; then
  echo "torch2-env: installing ${HF_PINS[*]} into $venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "${HF_PINS[@]}" >&2 ||
    echo "torch2-env: transformers could not be installed; tests/integration/hf_transformers.sh will skip" >&2
fi
"$venv/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)'
