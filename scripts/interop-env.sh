#!/usr/bin/env bash
# Makes the venv of the ecosystem's own tools that the interoperability tests drive vhost with:
# the official openai Python client, lm-evaluation-harness (its API models), prometheus_client,
# FastChat's llm_judge (fschat, without its dependencies).
# Pinned; the project's own venv (default build/venv-interop, ignored by git), never
# system-wide; pip's cache makes a second run quick. Idempotent; no torch (lm-eval's API models
# need none). Exit 3 when it cannot be made (no PyPI): the tests then report a CTest skip.
# Profile fastchat-api: FastChat's gen_api_answer.py as it runs, with the openai 0.28 client it
# was written for, on Debian's torch (python3-torch: the venv sees the system's packages;
# fastchat.model imports torch, transformers and accelerate at load).
#   scripts/interop-env.sh [VENV_DIR [PROFILE]]    prints the venv's python on its last line
set -euo pipefail
venv=${1:-build/venv-interop}
profile=${2:-interop}
venv_flags=()
pins=("lm-eval[api]==0.4.13" "openai==3.60.0" "prometheus-client==0.26.0"
      # FastChat's data scripts (clean_sharegpt.py's HTML converter; split_long_conversation's counts)
      "markdownify==0.11.6" "beautifulsoup4==4.12.3" "sentencepiece==0.2.0" "tqdm==4.67.1")
nodeps=("fschat==0.2.36")  # FastChat's llm_judge scripts only (its dependencies would pull in far more)
# optional_clean.py's language detector: PyICU and pycld2 compile from source (libicu-dev, g++);
# tried once per venv, and a failure only leaves the language comparison out.
langs=("polyglot==16.7.4" "pycld2==0.42" "PyICU==2.17")
if [ "$profile" = fastchat-api ]; then
  venv_flags=(--system-site-packages)
  pins=("openai==0.28.1" "anthropic==0.39.0" "shortuuid==1.0.13" "psutil==7.1.3" "transformers==4.37.2")
  nodeps=("fschat==0.2.36" "accelerate==0.27.2")
  langs=()
  /usr/bin/python3 -c "import torch" 2>/dev/null || { echo "interop-env: Debian's python3-torch is missing" >&2; exit 3; }
elif [ "$profile" != interop ]; then
  echo "interop-env: unknown profile '$profile' (interop, fastchat-api)" >&2; exit 2
fi
stamp="$venv/.vhost-pins"
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)
want=$(printf '%s\n' "${pins[@]}" "${nodeps[@]}")
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # One maker at a time (the tests that need it may start together).
  exec 9>"${venv%/}.lock"
  flock 9
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "interop-env: installing ${pins[*]} into $venv" >&2
    { "$py" -m venv "${venv_flags[@]}" "$venv" >&2 &&
      "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}" >&2 &&
      "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "${nodeps[@]}" >&2 &&
      printf '%s\n' "$want" > "$stamp"; } || { echo "interop-env: cannot make $venv (is PyPI reachable?)" >&2; exit 3; }
  fi
fi
if [ ${#langs[@]} -gt 0 ] && [ ! -e "$venv/.vhost-langs" ]; then
  exec 9>"${venv%/}.lock"
  flock 9
  if [ ${#langs[@]} -gt 0 ] && [ ! -e "$venv/.vhost-langs" ]; then
    echo "interop-env: installing ${langs[*]} into $venv (optional)" >&2
    if "$venv/bin/pip" install -q --disable-pip-version-check "${langs[@]}" >&2; then
      printf '%s\n' "${langs[@]}" > "$venv/.vhost-langs"
    else
      echo "interop-env: ${langs[*]} could not be installed: FastChat's language filter is not compared" >&2
      echo failed > "$venv/.vhost-langs"
    fi
  fi
fi
echo "$venv/bin/python"
