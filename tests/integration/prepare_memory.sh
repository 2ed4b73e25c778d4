#!/usr/bin/env bash
# `vhost prepare` on a ShareGPT record with one 50 MB message: peak resident memory stays bounded
# (measured by /usr/bin/time: it was 11.9 GB, the message tokenized whole before it was
# truncated), the run is quick, and the record still becomes one truncated sequence.
#   prepare_memory.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
[ -x /usr/bin/time ] || { echo "SKIP: /usr/bin/time is not installed"; exit 0; }
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out tiny >/dev/null
python3 - <<'PY'
import json
words = ("the plugin loads a model and the host knows kinds not internals " * 800000)[: 50 * 1024 * 1024]
json.dump([{"id": "huge", "conversations": [{"from": "human", "value": "Summarise this: " + words},
                                              {"from": "gpt", "value": "It is about plugins."}]},
           {"id": "small", "conversations": [{"from": "human", "value": "Hello, how are you today?"}, {"from": "gpt", "value": "I am fine, thank you for asking."}]}],
          open("huge.json", "w"))
PY
/usr/bin/time -f '%M %e' -o time.txt "$vhost" prepare huge.json --model tiny --out data --max-length 512 --log-level warn > prepare.log 2>&1 ||
  { cat prepare.log; exit 1; }
read -r kb secs < time.txt
echo "  50 MB message: peak RSS $((kb / 1024)) MB, $secs s"
[ "$kb" -lt $((1024 * 1024)) ] || { echo "peak RSS $kb KB is over 1 GB"; exit 1; }
python3 - data/stats.json <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
assert s["conversations_out"] == 2 and s["sequences"] == 2, s
assert s["truncated_sequences"] == 1 and s["longest_sequence"] == 512, s
assert s["changes"].get("long_messages_cut_before_tokenizing") == 1, s["changes"]
PY
echo "prepare_memory: ok"
