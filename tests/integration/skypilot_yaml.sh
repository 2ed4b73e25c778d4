#!/usr/bin/env bash
# examples/skypilot/vicuna-7b.yaml as SkyPilot itself reads it (the `skypilot` package from
# PyPI, in a venv cached in the build folder; parsing needs no cloud account): it parses, asks
# for 8 GPUs on spot, mounts the checkpoint bucket MOUNT_CACHED (MOUNT has no rename, which
# atomic checkpoints need), runs the pipeline on the cuda backend, and a malformed task is
# refused by the same parser. Skips when the package cannot be installed (no PyPI).
#   skypilot_yaml.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"

venv=$build/venv-skypilot
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sky' 2>/dev/null; then
  rm -rf "$venv"
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check skypilot; } > pip.log 2>&1; then
    tail -3 pip.log
    echo "SKIP: the skypilot package could not be installed from PyPI"
    exit 0
  fi
fi

grep -q 'plugin = "cuda"' "$src/examples/vicuna-7b.toml" || { echo "vicuna-7b.toml does not use the cuda backend"; exit 1; }
"$venv/bin/python" - "$src/examples/skypilot/vicuna-7b.yaml" <<'PY'
import sys
import sky
from sky.data.storage import StorageMode
task = sky.Task.from_yaml(sys.argv[1])
(res,) = task.resources
assert res.accelerators == {"A100-80GB": 8}, res.accelerators
assert res.use_spot, "not on spot instances"
mode = task.storage_mounts["/checkpoint"].mode
assert mode == StorageMode.MOUNT_CACHED, f"checkpoints mounted {mode}: MOUNT has no atomic rename"
assert "examples/vicuna-7b.toml" in task.run and "vhost launch" in task.run, task.run
assert "/checkpoint/train" in task.run, "checkpoints do not go to the bucket"
print(f"  {task.name}: {res}, /checkpoint {mode.name}")
PY

# The same parser refuses a malformed task.
sed 's/^num_nodes: 1/num_nodes: one/' "$src/examples/skypilot/vicuna-7b.yaml" > bad.yaml
if "$venv/bin/python" -c 'import sys, sky; sky.Task.from_yaml(sys.argv[1])' bad.yaml > bad.log 2>&1; then
  echo "a malformed task was accepted"; exit 1
fi
grep -qi "num_nodes" bad.log || { cat bad.log; exit 1; }
echo "skypilot_yaml: ok"
