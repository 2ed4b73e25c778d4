# Shared by the integration scripts: `source "$(dirname "$0")/lib.sh" "$@"` after `set -euo pipefail`.
# Sets build, src, scratch and vhost from BUILD_DIR SOURCE_DIR SCRATCH_DIR, and makes SCRATCH_DIR a
# fresh, current directory.
build=$1 src=$2 scratch=$3
vhost=$build/bin/vhost
rm -rf "$scratch"; mkdir -p "$scratch"; cd "$scratch"
# The CLI's shortcuts write their work folders under $TMPDIR ($TMPDIR/vhost-serve, ...): each test
# gets its own, so tests run side by side (ctest -j) never write or read another's.
export TMPDIR=$scratch/tmp; mkdir -p "$TMPDIR"

# port_of LOG [PID]: prints the first 127.0.0.1 port LOG names, waiting up to 15 s for it; fails
# with the log when PID exits first or the time is up.
port_of() {
  local p
  for _ in $(seq 1 300); do
    p=$(sed -n 's/.*127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$1" | head -1)
    [ -n "$p" ] && { echo "$p"; return 0; }
    if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then break; fi
    sleep 0.05
  done
  echo "no port in $1" >&2; cat "$1" >&2; exit 1
}

# free_port: prints a TCP port on 127.0.0.1 that nothing listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_scripted_judge: runs scripted_openai.py (a fake OpenAI endpoint with known replies);
# sets SPID and PORT and kills it on exit; calls() prints how many requests it has answered.
start_scripted_judge() {
  python3 "$src/tests/integration/scripted_openai.py" > server.log 2>&1 &
  SPID=$!
  trap 'kill $SPID 2>/dev/null || true' EXIT
  PORT=$(port_of server.log $SPID)
}
calls() { curl -s "http://127.0.0.1:$PORT/count" | python3 -c 'import json,sys; print(json.load(sys.stdin)["calls"])'; }

# openai_client: unpacks the vendored OpenAI JS client beside openai_client.mjs, or skips the
# test (exit 0 with "SKIP:") where node is missing.
openai_client() {
  if ! command -v node >/dev/null; then echo "SKIP: node is not installed (scripts/install-deps.sh installs nodejs)"; exit 0; fi
  mkdir -p node_modules/openai
  tar -xzf "$src/tests/vendor/openai-6.30.1.tgz" -C node_modules/openai --strip-components=1
  cp "$src/tests/integration/openai_client.mjs" .
}

# pipeline_head NAME STAGES: the [pipeline] table (work_dir scratch/work-NAME), a one-thread cpu
# backend and the model at scratch/model whose weights the trainer reads: what the training
# tests' pipelines share. Their stage tables follow it.
pipeline_head() {
  cat <<EOF
[pipeline]
name = "$1"
stages = $2
work_dir = "$scratch/work-$1"
[backends.cpu]
plugin = "cpu"
threads = 1
[models.m]
plugin = "llama"
path = "$scratch/model"
backend = "cpu"
load_weights = false
EOF
}

# eval_pipeline FILE MODE OUT BASELINE ANSWERS...: a one-stage eval pipeline graded by the
# scripted judge at $PORT (start_scripted_judge), on $scratch/questions.jsonl.
eval_pipeline() {
  local file=$1 mode=$2 out=$3 baseline=$4; shift 4
  local answers=""
  for a in "$@"; do answers+="${answers:+, }\"$scratch/$a\""; done
  cat > "$file" <<TOML
[pipeline]
name = "eval"
stages = ["eval"]
[judges.j]
plugin = "openai"
base_url = "http://127.0.0.1:$PORT/v1"
api_key = "test"
backoff_s = 0.01
[stages.eval]
questions = "$scratch/questions.jsonl"
answers = [$answers]
baseline = "$baseline"
mode = "$mode"
out = "$scratch/$out"
concurrency = 4
TOML
}

# hf_python MODULES...: prints a python that imports all MODULES (torch 2.x with transformers and
# friends): $VHOST_HF_PYTHON, the build's sibling venv, or the torch2 venv (scripts/torch2-env.sh,
# made by `make test-torch2`); prints nothing where there is none.
hf_python() {
  local c imports
  imports=$(IFS=,; echo "$*")
  for c in "${VHOST_HF_PYTHON:-}" "$build/../venv/bin/python" "$src/build-torch2/venv/bin/python"; do
    if [ -n "$c" ] && [ -x "$c" ] && "$c" -c "import $imports" 2>/dev/null; then echo "$c"; return 0; fi
  done
  return 0
}

# need_shared PATH...: skips the test (exit 0, "SKIP: ...") unless every ../shared/PATH exists (the
# real fixtures: CI has them, a fresh clone may not).
need_shared() {
  local p
  for p in "$@"; do
    [ -e "$src/../shared/$p" ] || { echo "SKIP: ../shared/$p is absent"; exit 0; }
  done
}
