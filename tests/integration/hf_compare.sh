#!/usr/bin/env bash
# tests/reference/hf_compare.py, the comparison of vhost's logits with HF transformers that runs
# where transformers is installed (the lent GPU host; Debian 12 has no package of it), exercised
# here against the formulas of llama_reference.py instead: the reference test writes vhost's
# logits beside its checkpoints, the script finds them within its tolerance, and it fails on
# logits that are off and on a checkpoint without them.
#   hf_compare.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
py=/usr/bin/python3
"$build/bin/vhost_llama_tests" 'forward matches an independent Python implementation*' >/dev/null
ref=$build/tests/tmp/llama/reference
$py "$src/tests/reference/hf_compare.py" --formulas "$ref/gqa" "$ref/tied" | tee ok.txt
grep -q 'gqa: llama_reference.py on cpu in float32: max |logit difference|' ok.txt

# One logit moved by 1e-3: the comparison fails and says which checkpoint.
cp -r "$ref/gqa" off
$py - <<'PY'
import json
j = json.load(open("off/vhost_logits.json"))
j["logits"][1][3][7] += 1e-3
json.dump(j, open("off/vhost_logits.json", "w"))
PY
if $py "$src/tests/reference/hf_compare.py" --formulas off > off.txt 2>&1; then cat off.txt; echo "a moved logit passed"; exit 1; fi
grep -q '^off: .*FAIL' off.txt || { cat off.txt; exit 1; }

# No vhost_logits.json, and a malformed one: exit status 2 with the file named.
refused() {  # refused DIR: the script exits 2 naming DIR/vhost_logits.json
  local rc=0
  $py "$src/tests/reference/hf_compare.py" --formulas "$1" > "$1.txt" 2>&1 || rc=$?
  [ $rc = 2 ] && grep -q "$1/vhost_logits.json" "$1.txt" || { echo "exit $rc"; cat "$1.txt"; exit 1; }
}
mkdir -p empty
refused empty
cp -r "$ref/gqa" bad && echo '{"ids": [[1, 2]], "logits": ' > bad/vhost_logits.json
refused bad
echo "hf_compare.py: passes vhost's logits, fails a moved one, names a missing or malformed file"
