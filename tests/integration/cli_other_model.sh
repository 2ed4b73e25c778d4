#!/usr/bin/env bash
# The CLI's shortcuts with a model plugin that is not llama (tests/plugins/bytes_model.cpp: byte
# tokens, answers with the prompt's last word reversed, none of llama's engine options): serve,
# generate and chat reach it with --plugin, its options with --model-option; an engine flag or an
# option it does not have is refused naming the flag (exit 2). --backend likewise (cuda without a
# GPU: refused in words).
#   cli_other_model.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
plugins=(--plugin-dir "$build/tests/plugins")
mkdir -p m

"$vhost" serve m --plugin bytes "${plugins[@]}" --model-option greeting=hi- --port 0 > serve.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
PORT=$(port_of serve.log $PID)
status=$(curl -s -o r.json -w '%{http_code}' "http://127.0.0.1:$PORT/v1/completions" \
  -d '{"model": "m", "prompt": "hello world", "max_tokens": 20}') || status=curl-failed
[ "$status" = 200 ] || { echo "completions: HTTP $status"; cat r.json serve.log; exit 1; }
python3 -c 'import json,sys; t=json.load(open("r.json"))["choices"][0]["text"]; assert t == "hi-dlrow", t'
kill -TERM $PID
wait $PID || { echo "serve did not stop cleanly"; cat serve.log; exit 1; }

# A model plugin built for ABI 1.6 (tests/plugins/c_model16.c, no capabilities slot): what it
# offers is read from its tokenizer_info, as 1.6 reported it: max_batch 3, context 777, chatml.
"$vhost" serve m --plugin c16 "${plugins[@]}" --port 0 > serve16.log 2>&1 &
PID=$!
PORT=$(port_of serve16.log $PID)
curl -sf "http://127.0.0.1:$PORT/v1/models" > models.json || { echo "c16: /v1/models failed"; cat serve16.log; exit 1; }
curl -sf "http://127.0.0.1:$PORT/tokenize" -d '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}' > tok.json ||
  { echo "c16: /tokenize failed"; cat serve16.log; exit 1; }
python3 - <<'PY'
import json
m = json.load(open("models.json"))["data"][0]
assert m["max_batch"] == 3, m
t = json.load(open("tok.json"))
assert t["max_model_len"] == 777, t
text = bytes(i - 3 for i in t["tokens"] if i >= 3).decode()
assert text.startswith("<|im_start|>") and "<|im_start|>user\nhi" in text, text
PY
kill -TERM $PID
wait $PID || { echo "serve (c16) did not stop cleanly"; cat serve16.log; exit 1; }
# chat reads the template from what the model offers alone (c16 answers with the prompt it got)
printf 'hello\n' | "$vhost" chat m --plugin c16 "${plugins[@]}" > chat16.txt 2> chat16.err || { cat chat16.err; exit 1; }
grep -qF '<|im_start|>user' chat16.txt || { echo "chat (c16) did not use its chatml template:"; cat chat16.txt; exit 1; }

# generate and chat through the same plugin
"$vhost" generate m --plugin bytes "${plugins[@]}" --prompt "one two" --max-tokens 8 > gen.txt 2> gen.err ||
  { cat gen.err; exit 1; }
grep -q "owt" gen.txt || { echo "generate: $(cat gen.txt)"; exit 1; }
printf 'alpha beta\n' | "$vhost" chat m --plugin bytes "${plugins[@]}" --model-option greeting=re: > chat.txt 2> chat.err ||
  { cat chat.err; exit 1; }
grep -q "re:TNATSISSA" chat.txt || { echo "chat: $(cat chat.txt)"; exit 1; }

# Refused, naming the flag: an engine flag the plugin has no option for, an option it does not
# have, a malformed --model-option, a plugin that does not exist.
refused() {  # refused MESSAGE ARGS...
  local want=$1; shift
  local rc=0
  timeout 30 "$vhost" serve m "${plugins[@]}" "$@" --port 0 > bad.log 2>&1 || rc=$?  # a serve not refused would run on
  [ "$rc" = 2 ] || { echo "serve $*: exit $rc, not 2"; cat bad.log; exit 1; }
  grep -qF -- "$want" bad.log || { echo "serve $*: wanted '$want'"; cat bad.log; exit 1; }
}
refused "--max-batch: the model plugin 'bytes' has no option max_batch" --plugin bytes --max-batch 4
refused "--decode-dtype: the model plugin 'bytes' has no option decode_dtype" --plugin bytes --decode-dtype bfloat16
refused "--model-option colour=red" --plugin bytes --model-option colour=red
refused "--model-option =x: expected KEY=VALUE" --plugin bytes --model-option =x
refused "no model plugin named 'nosuch'" --plugin nosuch

# --backend picks the backend plugin the same way; --threads only where it has that option.
refused "--threads: the backend plugin 'cuda' has no option threads" --plugin bytes --backend cuda --threads 2
refused "--backend nosuch: backends.nosuch.plugin: no backend plugin named 'nosuch'" --plugin bytes --backend nosuch
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out tiny >/dev/null
rc=0; "$vhost" generate tiny --backend cuda --prompt hi --max-tokens 4 > cuda.log 2>&1 || rc=$?
if [ "$rc" = 0 ]; then
  echo "  a GPU is visible: generate --backend cuda ran on it"
else  # no GPU (or a libtorch without CUDA): refused in words, exit 2, never a crash
  [ "$rc" = 2 ] && grep -q "no CUDA device visible" cuda.log || { echo "--backend cuda: exit $rc"; cat cuda.log; exit 1; }
fi
echo "cli_other_model: ok"
