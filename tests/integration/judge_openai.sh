#!/usr/bin/env bash
# The openai judge against a scripted endpoint (timeouts, 429, 500, truncated JSON, missing
# content, a 400), its cache (a second run pays nothing), against vhost's own server (real
# HTTP, the local judge of the demo), and as a serve stage's moderator.
#   judge_openai.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
start_scripted_judge

pipeline() {  # pipeline PROMPT: a probe of the scripted endpoint
  cat > p.toml <<TOML
[pipeline]
name = "judge"
stages = ["probe"]
[judges.j]
plugin = "openai"
base_url = "http://127.0.0.1:$PORT/v1"
model = "gpt-4"
api_key = "test"
timeout_s = 1.0
max_retries = 3
backoff_s = 0.01
cache = "$scratch/cache.jsonl"
[stages.probe]
prompt = "$1"
TOML
}
ok() { pipeline "$1"; "$vhost" run p.toml > out.log 2>&1 || { echo "$1: failed"; cat out.log; exit 1; }; grep -q "scores: 8 9" out.log; }
fails() { pipeline "$1"; if "$vhost" run p.toml > out.log 2>&1; then echo "$1: expected a failure"; cat out.log; exit 1; fi; grep -q "$2" out.log || { cat out.log; exit 1; }; }

ok "OK"
ok "429#2"
ok "500#3"
ok "TRUNC#1"
ok "SLOW#1"
fails "NOCONTENT" "no usable reply after 4 attempts; last: malformed reply"
fails "500#9" "no usable reply after 4 attempts; last: HTTP 500"
before=$(calls)
fails "BAD" "HTTP 400: max_tokens is too large"
[ $(( $(calls) - before )) -eq 1 ] || { echo "a 400 must not be retried"; exit 1; }
echo "  retries, timeouts and malformed replies: ok"

before=$(calls)
ok "OK"; ok "429#2"; ok "TRUNC#1"
[ "$(calls)" = "$before" ] || { echo "cached judgments were requested again"; exit 1; }
echo "  a second run is answered from the cache: ok"

pipeline "x"; sed -i 's|^base_url = .*|base_url = "ftp://nowhere"|' p.toml
rc=0; "$vhost" run p.toml > out.log 2>&1 || rc=$?
[ $rc -eq 2 ] && grep -q "judges.j.base_url" out.log || { cat out.log; exit 1; }
pipeline "x"; sed -i '/^api_key/d; s|^base_url = .*|base_url = "https://api.openai.com/v1"|' p.toml
rc=0; env -u OPENAI_API_KEY "$vhost" run p.toml > out.log 2>&1 || rc=$?
[ $rc -eq 2 ] && grep -q "needs a key: set OPENAI_API_KEY" out.log || { cat out.log; exit 1; }
echo "  bad configuration: ok"

# The local judge: vhost serves a model in the background, the judge falls back to it.
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out tiny >/dev/null
cat > local.toml <<TOML
[pipeline]
name = "local"
stages = ["serve", "probe"]
[backends.cpu]
plugin = "cpu"
threads = 1
[models.tiny]
plugin = "llama"
path = "$scratch/tiny"
max_batch = 4
[judges.local]
plugin = "openai"
fallback_url = "http://127.0.0.1:0/v1"
fallback_model = "tiny"
[stages.serve]
background = true
port = 0
[stages.probe]
prompt = "Rate this answer from 1 to 10."
max_tokens = 8
TOML
# Port 0 cannot be known in advance: ask for a free one first.
LPORT=$(free_port)
sed -i "s|127.0.0.1:0/v1|127.0.0.1:$LPORT/v1|; s|^port = 0|port = $LPORT|" local.toml
env -u OPENAI_API_KEY "$vhost" run local.toml > local.log 2>&1 || { cat local.log; exit 1; }
grep -q "serving in the background on http://127.0.0.1:$LPORT" local.log
grep -q "judges.local replied in" local.log
echo "  a local judge served by vhost: ok"

# Moderation: the serve stage asks the openai judge's moderation endpoint about every prompt.
MPORT=$(free_port)
modpipe() {  # modpipe MODERATORS
  cat > mod.toml <<TOML
[pipeline]
name = "moderated"
stages = ["serve"]
[backends.cpu]
plugin = "cpu"
threads = 1
[models.tiny]
plugin = "llama"
path = "$scratch/tiny"
[judges.mod]
plugin = "openai"
base_url = "http://127.0.0.1:$PORT/v1"
api_key = "test"
max_retries = 1
backoff_s = 0.01
[stages.serve]
port = $MPORT
moderators = $1
TOML
}
modpipe '["judges.mod"]'
"$vhost" run mod.toml > mod.log 2>&1 & MODPID=$!
trap 'kill $SPID $MODPID 2>/dev/null || true' EXIT
port_of mod.log $MODPID > /dev/null
chat() { curl -s -o reply.json -w '%{http_code}' "http://127.0.0.1:$MPORT/v1/chat/completions" \
           -d "{\"model\":\"tiny\",\"max_tokens\":4,\"messages\":[{\"role\":\"user\",\"content\":\"$1\"}]}"; }
before=$(calls)
[ "$(chat "Hello there")" = 200 ] || { cat reply.json; exit 1; }
[ $(( $(calls) - before )) -eq 1 ] || { echo "the moderation endpoint was not asked"; exit 1; }
[ "$(chat "a FORBIDDEN thing")" = 400 ] || { cat reply.json; exit 1; }
python3 - <<'PY'
import json
e = json.load(open("reply.json"))["error"]
assert e["code"] == "content_filter" and "hate, violence" in e["message"], e
PY
code=$(curl -s -o reply.json -w '%{http_code}' "http://127.0.0.1:$MPORT/v1/completions" -d '{"model":"tiny","prompt":"FORBIDDEN","max_tokens":4}')
[ "$code" = 400 ] && grep -q content_filter reply.json || { echo "completions: HTTP $code"; cat reply.json; exit 1; }
# The moderator failing (5xx after its retries, or a malformed reply): refused, not let through.
for bad in MODFAIL MODBAD; do
  [ "$(chat "$bad")" = 503 ] && grep -q moderation_unavailable reply.json || { echo "$bad:"; cat reply.json; exit 1; }
done
[ "$(chat "Hello again")" = 200 ] || { cat reply.json; exit 1; }
kill $MODPID; wait $MODPID 2>/dev/null || true
grep -q "moderation by judges.mod failed" mod.log || { cat mod.log; exit 1; }
# vhost serve --moderation URL: the same, from the command line.
"$vhost" serve "$scratch/tiny" --port 0 --threads 1 --moderation "http://127.0.0.1:$PORT/v1" > cli.log 2>&1 & MODPID=$!
MPORT=$(port_of cli.log $MODPID)
[ "$(chat "Hello there")" = 200 ] || { cat reply.json; exit 1; }
[ "$(chat "FORBIDDEN")" = 400 ] && grep -q content_filter reply.json || { cat reply.json cli.log; exit 1; }
kill $MODPID; wait $MODPID 2>/dev/null || true
# A moderator that is not a judge, or not declared: the configuration is refused before serving.
modpipe '["models.tiny"]'
rc=0; "$vhost" run mod.toml > mod.log 2>&1 || rc=$?
[ $rc -eq 2 ] && grep -q "serve.moderators: 'models.tiny' is a model, not a judge" mod.log || { echo "rc $rc"; cat mod.log; exit 1; }
modpipe '["judges.nope"]'
rc=0; "$vhost" run mod.toml > mod.log 2>&1 || rc=$?
[ $rc -eq 2 ] && grep -q "'judges.nope' is not a declared instance" mod.log || { echo "rc $rc"; cat mod.log; exit 1; }
# A judge that does not moderate (the test plugin echo; older, built for ABI 1.0 before the slot
# existed): refused at start-up, naming it.
for j in echo older; do
  modpipe '["judges.e"]'
  sed -i "s|^\[pipeline\]|[pipeline]\nplugin_dirs = [\"$build/tests/plugins\"]|" mod.toml
  printf '[judges.e]\nplugin = "%s"\nmodel = "m"\n' "$j" >> mod.toml
  rc=0; "$vhost" run mod.toml > mod.log 2>&1 || rc=$?
  [ $rc -eq 2 ] && grep -q "serve.moderators: 'judges.e' cannot moderate: .*does not moderate content" mod.log ||
    { echo "$j: rc $rc"; cat mod.log; exit 1; }
done
echo "  moderation through the judge's moderation endpoint: ok"
echo "judge_openai: ok"
