#!/usr/bin/env bash
# Builds llama.cpp's own benchmark tools (llama-bench, llama-batched-bench, llama-quantize) from
# the llama.cpp sources inside PyPI's llama-cpp-python sdist (pinned), into
# build/llamacpp/cmake-build/bin: the peer bench/large_model.sh measures vhost against. Nothing
# of llama.cpp is vendored into the project. ~10 minutes on 2 cores; idempotent.
#   scripts/llama-cpp-tools.sh [OUT_DIR]     prints the bin folder on its last line
set -euo pipefail
version=0.3.36
out=${1:-build/llamacpp}
bin=$out/cmake-build/bin
if [ -x "$bin/llama-bench" ] && [ -x "$bin/llama-batched-bench" ] && [ -x "$bin/llama-quantize" ]; then echo "$bin"; exit 0; fi
mkdir -p "$out"
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)
if [ ! -d "$out/llama_cpp_python-$version" ]; then
  "$py" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$out" >&2 ||
    { echo "llama-cpp-tools: cannot download llama-cpp-python $version (is PyPI reachable?)" >&2; exit 3; }
  tar xzf "$out/llama_cpp_python-$version.tar.gz" -C "$out"
fi
cmake -S "$out/llama_cpp_python-$version/vendor/llama.cpp" -B "$out/cmake-build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$out/cmake-build" -j"$(nproc)" --target llama-bench llama-batched-bench llama-quantize >&2
echo "$bin"
