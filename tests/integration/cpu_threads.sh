#!/usr/bin/env bash
# The cpu backend's default thread count leaves out cores that other processes keep busy (an
# OpenMP barrier waits for a thread descheduled on a shared core: bench_generate measures it):
# with every core spinning in other processes it picks 1 thread and says why; `threads = N`
# is taken as given.
#   cpu_threads.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
cat > p.toml <<'TOML'
[pipeline]
stages = ["info"]
[backends.cpu]
plugin = "cpu"
TOML
spinners=()
trap 'kill ${spinners[*]} 2>/dev/null || true' EXIT
cores=$(nproc)
for _ in $(seq 1 "$cores"); do sh -c 'while :; do :; done' & spinners+=($!); done
sleep 0.5
"$vhost" run p.toml > busy.log 2>&1 || { cat busy.log; exit 1; }
grep -q "threads: 1$" busy.log || { echo "with every core busy the default is not 1 thread:"; cat busy.log; exit 1; }
grep -q "threads_from: $cores usable cores, [1-9][0-9]* busy with other processes at start" busy.log || { cat busy.log; exit 1; }
"$vhost" run p.toml --set backends.cpu.threads=3 > set.log 2>&1 || { cat set.log; exit 1; }
grep -q "threads: 3$" set.log && grep -q "threads_from: set" set.log || { cat set.log; exit 1; }
kill "${spinners[@]}"; wait "${spinners[@]}" 2>/dev/null || true
spinners=()
echo "cpu_threads: ok (every one of $cores cores busy: 1 thread; threads = 3: 3)"
