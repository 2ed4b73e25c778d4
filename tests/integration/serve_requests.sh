#!/usr/bin/env bash
# Malformed and unsupported request parameters against `vhost serve`: each is an OpenAI-shaped
# 400 naming the parameter (never a 500, never silently ignored), and the server logs nothing
# as an internal error. Then presence/frequency penalties reach the model.
#   serve_requests.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out tiny >/dev/null
"$vhost" serve tiny --port 0 --threads 2 > serve.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
PORT=$(port_of serve.log $PID)
url="http://127.0.0.1:$PORT/v1"

# expect STATUS PARAM ENDPOINT BODY [MESSAGE]: the body (printf-expanded, so \xff is a raw byte)
# is answered STATUS with error.param PARAM ("-": null) and, if given, MESSAGE in error.message.
fails=0
expect() {
  local status=$1 param=$2 endpoint=$3 body=$4 message=${5:-}
  printf "$body" > body.bin
  local got
  got=$(curl -s -o reply.json -w '%{http_code}' "$url/$endpoint" -H 'Content-Type: application/json' --data-binary @body.bin)
  if ! python3 - "$status" "$param" "$message" "$got" reply.json <<'PY'; then
import json, sys
status, param, message, got, f = sys.argv[1:]
assert got == status, f"HTTP {got}, wanted {status}: {open(f, 'rb').read()[:300]!r}"
if status != "200":
    e = json.load(open(f))["error"]
    assert e["type"] == "invalid_request_error", e
    assert e["param"] == (None if param == "-" else param), e
    assert message in e["message"], e
PY
    echo "FAILED: $endpoint $body"; fails=$((fails + 1))
  fi
}
c=completions ch=chat/completions
# Bodies the JSON parser refuses (these were 500s): raw invalid UTF-8, a number out of range.
expect 400 - $ch '{"model":"tiny","messages":[{"role":"user","content":"a\xff\xfeb"}],"max_tokens":2}' "UTF-8"
expect 400 - $c '{"model":"tiny","prompt":"hi","temperature":1e400,"max_tokens":2}' "number overflow"
# Wrong types and ranges (were 500s or accepted).
expect 400 include_usage $c '{"model":"tiny","prompt":"hi","stream":true,"stream_options":{"include_usage":"x"}}' "true or false"
expect 400 stream_options $c '{"model":"tiny","prompt":"hi","stream":true,"stream_options":"x"}' "must be an object"
expect 400 stream_options $c '{"model":"tiny","prompt":"hi","stream_options":{"include_usage":true}}' "only allowed when"
expect 400 max_tokens $c '{"model":"tiny","prompt":"hi","max_tokens":2.5}' "integer"
expect 400 seed $c '{"model":"tiny","prompt":"hi","max_tokens":2,"seed":1180591620717411303424}' "integer"
expect 400 seed $c '{"model":"tiny","prompt":"hi","max_tokens":2,"seed":9223372036854775808}' "integer"
expect 400 n $c '{"model":"tiny","prompt":"hi","max_tokens":2,"n":"2"}' "integer"
expect 400 stream $c '{"model":"tiny","prompt":"hi","max_tokens":2,"stream":"yes"}' "true or false"
expect 400 temperature $c '{"model":"tiny","prompt":"hi","temperature":"hot"}' "a number"
expect 400 presence_penalty $c '{"model":"tiny","prompt":"hi","presence_penalty":3}' "[-2, 2]"
expect 400 frequency_penalty $ch '{"model":"tiny","messages":[{"role":"user","content":"x"}],"frequency_penalty":-2.5}' "[-2, 2]"
expect 400 top_k $c '{"model":"tiny","prompt":"hi","top_k":-2}' "top_k"
expect 400 repetition_penalty $c '{"model":"tiny","prompt":"hi","repetition_penalty":0}' "repetition_penalty"
# Parameters this server does not implement: refused by name unless they have their neutral value.
for p in '"best_of":3' '"suffix":"x"' '"logit_bias":{"5":10}'; do
  name=$(echo "$p" | sed 's/^"\([a-z_]*\)".*/\1/')
  expect 400 "$name" $c "{\"model\":\"tiny\",\"prompt\":\"hi\",$p}" "not supported"
done
for p in '"tools":[{"type":"function","function":{"name":"f"}}]' \
         '"tool_choice":"auto"' '"response_format":{"type":"json_object"}' '"logit_bias":{"5":10}'; do
  name=$(echo "$p" | sed 's/^"\([a-z_]*\)".*/\1/')
  expect 400 "$name" $ch "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],$p}" "not supported"
done
expect 400 messages $c '{"model":"tiny","prompt":"hi","messages":[]}' "not supported on this endpoint"
expect 400 echo $ch '{"model":"tiny","messages":[{"role":"user","content":"x"}],"echo":true}' "not supported on this endpoint"
expect 400 top_logprobs $ch '{"model":"tiny","messages":[{"role":"user","content":"x"}],"top_logprobs":2}' "needs logprobs: true"
expect 400 top_logprobs $ch '{"model":"tiny","messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":21}' "[0, 20]"
expect 400 logprobs $c '{"model":"tiny","prompt":"hi","logprobs":21}' "[0, 20]"
expect 200 - $c '{"model":"tiny","prompt":"hi","logprobs":1,"stream":true,"max_tokens":2}'
expect 400 max_tokens $c '{"model":"tiny","prompt":"hi","max_tokens":0}' "0 only with echo"
# Prompts as lists: of strings, of token ids, of lists of ids; anything else names the prompt.
expect 200 - $c '{"model":"tiny","prompt":["a","b"],"max_tokens":1}'
expect 200 - $c '{"model":"tiny","prompt":[[1,30],[1,40,50]],"max_tokens":1}'
expect 400 prompt $c '{"model":"tiny","prompt":[1,"a"]}' "not a token id"
expect 400 prompt $c '{"model":"tiny","prompt":[1,512]}' "not a token id of this model (0..511)"
expect 400 prompt $c '{"model":"tiny","prompt":[-1]}' "not a token id"
expect 400 prompt $c '{"model":"tiny","prompt":["a",1]}' "must all be strings"
expect 400 prompt $c '{"model":"tiny","prompt":[[1],2]}' "must all be lists"
expect 400 prompt $c '{"model":"tiny","prompt":[]}' "must be a string"
expect 400 prompt $c '{"model":"tiny","prompt":[[]]}' "empty"
expect 400 prompt $c '{"model":"tiny","prompt":["a",""]}' "prompt[1]: the prompt is empty"
expect 400 prompt $c '{"model":"tiny","prompt":{"a":1}}' "must be a string"
# vLLM's tokenizer endpoints: malformed bodies.
expect 400 prompt ../tokenize '{"prompt":5}' "must be a string"
expect 400 messages ../tokenize '{"messages":[]}' "'messages' must be a non-empty array"
expect 400 messages ../tokenize '{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}' "messages[1]: user and assistant messages must alternate"
expect 400 messages ../tokenize '{"messages":[{"role":"tool","content":"a"}]}' "messages[0]: role 'tool' is not one of"
expect 400 prompt ../tokenize '{"messages":[{"role":"user","content":"a"}],"prompt":"x"}' "not both"
expect 400 add_generation_prompt ../tokenize '{"messages":[{"role":"user","content":"a"}],"add_generation_prompt":false}' "not supported"
expect 400 tokens ../detokenize '{"tokens":[1,99999]}' "not a token id"
expect 400 tokens ../detokenize '{"tokens":"x"}' "list of token ids"
expect 404 model ../tokenize '{"prompt":"x","model":"nope"}' "does not exist"
expect 400 frobnicate $c '{"model":"tiny","prompt":"hi","frobnicate":1}' "unrecognized request argument supplied: frobnicate"
# Neutral values of unsupported parameters, and the supported extensions, are accepted.
expect 200 - $c '{"model":"tiny","prompt":"hi","max_tokens":2,"echo":false,"logit_bias":{},"best_of":1,"user":"u","seed":-5}'
expect 200 - $ch '{"model":"tiny","messages":[{"role":"user","content":"x"}],"max_tokens":2,"logprobs":false,"tools":[],"response_format":{"type":"text"}}'
expect 200 - $c '{"model":"tiny","prompt":"hi","max_tokens":2,"top_k":5,"repetition_penalty":1.1,"presence_penalty":0.5,"frequency_penalty":-0.5}'
expect 200 - $c '{"model":"tiny","prompt":"hi","max_tokens":2,"stream":true,"stream_options":{"include_usage":true}}'
[ $fails = 0 ] || { echo "$fails requests were answered wrongly"; exit 1; }
echo "  malformed, unsupported and unknown parameters: 400 naming the parameter; neutral values accepted"

# Penalties reach the sampler: greedy decoding changes under them (their arithmetic is unit-tested).
python3 - "$url" <<'PY'
import json, sys, urllib.request
def complete(**kw):
    body = dict(model="tiny", prompt="the plugin", max_tokens=48, temperature=0, ignore_eos=True, **kw)
    req = urllib.request.Request(sys.argv[1] + "/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["choices"][0]["text"]
plain, penalised = complete(), complete(frequency_penalty=2.0, presence_penalty=1.0)
assert plain != penalised, plain
print("  penalties change greedy decoding:", repr(plain[:40]), "->", repr(penalised[:40]))
PY
if grep -E '\[error\]' serve.log; then echo "the server logged internal errors"; exit 1; fi
kill -TERM $PID; wait $PID
echo "serve_requests: ok"
