#!/usr/bin/env bash
# Installs vhost's build and test dependencies from Debian 12 packages. Idempotent: packages
# already present are not fetched again, and apt is not touched at all when nothing is missing.
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build ccache pkg-config git
  python3                 # test scripts
  python3-venv            # the venvs of make test-torch2 (PyTorch 2.x) and the skypilot test
  libtorch-dev            # tensors and autograd (1.13 on Debian; CUDA hosts bring 2.x)
  libopenblas0-openmp     # libtorch-dev links the generic libblas.so.3; without this the
                          # reference BLAS answers (25x slower matmuls). OpenMP build: it shares
                          # libtorch's OpenMP thread pool instead of oversubscribing the cores.
  libboost-dev            # Boost.DLL: plugin loading (header-only with std::filesystem)
  libtomlplusplus-dev     # pipeline files
  nlohmann-json3-dev      # JSON (configs of checkpoints, API bodies, reports)
  libcli11-dev            # command line
  libspdlog-dev           # logging
  libsentencepiece-dev    # tokenizer
  libcpp-httplib-dev      # HTTP server and client
  libgumbo-dev            # HTML5 parser: ShareGPT's HTML answers back to Markdown
  libcld2-dev             # language detection for the dataset's language filter
  libgloo-dev             # Gloo headers: libtorch's CPU process group (multi-process training)
  catch2                  # tests
  python3-torch           # tests: an independent reference forward pass (tests/reference/)
  nodejs                  # tests: the official OpenAI client library (npm, vendored) against vhost serve
  chromium                # tests: the web chat page in a headless browser
  time                    # tests: /usr/bin/time measures peak memory (prepare_memory, fsdp_memory)
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
