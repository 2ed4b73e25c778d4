#!/usr/bin/env bash
# The web chat page in headless Chromium, through its own controls: send, regenerate, stop (the
# server frees the row), side by side with a vote that lands in the conversation log.
#   web_chat.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out tiny >/dev/null
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --seed 7 --out other >/dev/null
# A long context, so that a long answer runs for many seconds unless Stop ends it.
for m in tiny other; do
  python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); c["max_position_embeddings"]=32768; json.dump(c,open(sys.argv[1],"w"))' $m/config.json
done
"$vhost" serve tiny other --port 0 --threads 2 --max-batch 2 --log chat.jsonl > serve.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
PORT=$(port_of serve.log $PID)
python3 "$src/tests/integration/web_chat.py" "http://127.0.0.1:$PORT" "$scratch/web_chat.png" | tee page.txt
grep -q '^SKIP:' page.txt && exit 0
python3 - chat.jsonl <<'PY' || { tail -3 chat.jsonl; exit 1; }
import json, sys
votes = [json.loads(l)["vote"] for l in open(sys.argv[1]) if '"vote"' in l]
assert len(votes) == 2, votes
v = votes[0]
assert v["vote"] == "A" and sorted(v["models"]) == ["other", "tiny"] and not v["anonymous"], v
assert [m["role"] for m in v["conversation"][0]] == ["user", "assistant"] and v["conversation"][1][1]["content"], v
v = votes[1]
assert v["vote"] == "B" and sorted(v["models"]) == ["other", "tiny"] and v["anonymous"] is True, v
assert v["conversation"][0][0]["content"] == "Who are you?", v
PY
# The votes are battles: the arena leaderboard reads them from the log.
"$vhost" arena report chat.jsonl --bootstrap 20 --json > arena.json 2> arena.err || { cat arena.err; exit 1; }
python3 - arena.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["battles"] == 2 and r["anonymous_battles"] == 1, r
assert sorted(m["model"] for m in r["models"]) == ["other", "tiny"], r
PY
kill -TERM $PID; wait $PID
echo "web_chat: ok"
