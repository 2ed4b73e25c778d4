#!/usr/bin/env bash
# A custom conversation template goes the whole way: data prepared with it (vhost prepare
# --templates), a model trained on that data (the checkpoint keeps conversation_template.json),
# and the trained model served with it — the chat prompt /tokenize renders is the custom one,
# with no template named when serving. `vhost serve --templates --template` serves one by name;
# a malformed conversation_template.json and an unknown template are refused by name.
#   custom_template.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out model >/dev/null
cat > templates.toml <<'TOML'
[pirate]
style = "add_colon_two"
roles = ["CAPTAIN", "CREW"]
system_message = "Arr, a ship's log."
sep = " "
sep2 = "</s>"
TOML
"$vhost" prepare "$src/examples/data/sharegpt_demo.json" --model model --out data --templates templates.toml \
  --template pirate --max-length 128 > prepare.log
grep -q '"template": "pirate"' data/stats.json || { cat data/stats.json; exit 1; }
cat > train.toml <<EOF
$(pipeline_head custom '["train"]')
[stages.train]
data = "$scratch/data"
out = "$scratch/out"
max_steps = 2
batch_size = 2
micro_batch_size = 2
save_every = 1
EOF
"$vhost" run train.toml > train.log 2>&1 || { cat train.log; exit 1; }
python3 - out/model/conversation_template.json <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
assert t["name"] == "pirate" and t["definition"]["roles"] == ["CAPTAIN", "CREW"], t
PY
# A checkpoint of an intermediate step keeps it too.
ls -d out/checkpoints/step-*/ | head -1 | xargs -I{} test -f {}conversation_template.json

# serve_check DIR USER_ROLE ASSISTANT_ROLE ARGS...: serves DIR, renders a chat through /tokenize
# and /detokenize, checks the prompt is the template's, and that chat completions answer.
serve_check() {
  local dir=$1 user=$2 assistant=$3; shift 3
  "$vhost" serve "$dir" --port 0 --threads 1 "$@" > serve.log 2>&1 &
  PID=$!
  trap 'kill $PID 2>/dev/null || true' EXIT
  PORT=$(port_of serve.log $PID)
  python3 - "http://127.0.0.1:$PORT" "$user" "$assistant" <<'PY'
import json, sys, urllib.request
url, user, assistant = sys.argv[1:]
def post(path, body):
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))
model = json.load(urllib.request.urlopen(url + "/v1/models"))["data"][0]["id"]
msgs = [{"role": "user", "content": "Where is the treasure?"}]
ids = post("/tokenize", {"messages": msgs})["tokens"]
text = post("/detokenize", {"tokens": ids})["prompt"]
assert text.endswith(f"{user}: Where is the treasure? {assistant}:"), text
r = post("/v1/chat/completions", {"model": model, "messages": msgs, "max_tokens": 4, "temperature": 0})
assert r["choices"][0]["message"]["role"] == "assistant", r
print(f"  served prompt: {text!r}")
PY
  kill -TERM $PID; wait $PID
}
# The trained model, no template named: the one it was trained with.
serve_check out/model CAPTAIN CREW
# The base model: vicuna_v1.1; with --templates and --template: the custom one, by name.
serve_check model USER ASSISTANT
serve_check model CAPTAIN CREW --templates templates.toml --template pirate

# Bad input: an unknown template, a broken conversation_template.json: named, no crash.
if "$vhost" serve model --port 0 --template nope > bad.log 2>&1; then cat bad.log; exit 1; fi
grep -q "unknown conversation template 'nope'" bad.log || { cat bad.log; exit 1; }
cp -r out/model broken
echo '{"name": "pirate", "definition": {"style": "sideways"}}' > broken/conversation_template.json
if "$vhost" serve broken --port 0 > bad.log 2>&1; then cat bad.log; exit 1; fi
grep -q "broken/conversation_template.json: style: unknown style 'sideways'" bad.log || { cat bad.log; exit 1; }
echo '{"name": ' > broken/conversation_template.json
if "$vhost" serve broken --port 0 > bad.log 2>&1; then cat bad.log; exit 1; fi
grep -q "broken/conversation_template.json: not valid JSON" bad.log || { cat bad.log; exit 1; }
echo "custom_template: ok"
