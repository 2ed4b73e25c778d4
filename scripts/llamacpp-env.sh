#!/usr/bin/env bash
# Makes the venv with llama.cpp's Python binding (llama-cpp-python: its build compiles
# llama.cpp, ~5 minutes on 2 cores) and the `gguf` package, pinned: the peers the llama.cpp
# interoperability test checks vhost's GGUF reading and writing against. The project's own venv
# (default build/venv-llamacpp, ignored by git), never system-wide. Idempotent. Exit 3 when it
# cannot be made (no PyPI, no compiler): the test then reports a CTest skip.
#   scripts/llamacpp-env.sh [VENV_DIR]    prints the venv's python on its last line
set -euo pipefail
venv=${1:-build/venv-llamacpp}
pins=("llama-cpp-python==0.3.36" "gguf==0.19.0" "numpy==2.4.6")
stamp="$venv/.vhost-pins"
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)
want=$(printf '%s\n' "${pins[@]}")
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  exec 9>"${venv%/}.lock"
  flock 9
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "llamacpp-env: installing ${pins[*]} into $venv (compiles llama.cpp)" >&2
    { "$py" -m venv "$venv" >&2 &&
      CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}" >&2 &&
      printf '%s\n' "$want" > "$stamp"; } || { echo "llamacpp-env: cannot make $venv (is PyPI reachable? a C++ compiler?)" >&2; exit 3; }
  fi
fi
echo "$venv/bin/python"
