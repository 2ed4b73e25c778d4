#!/usr/bin/env bash
# A judge over HTTPS: a local TLS endpoint (the scripted judge) with a certificate from a CA made
# here. Trusted through SSL_CERT_FILE (OpenSSL's default verify paths) or the judge's ca_file, the
# eval stage grades through it; untrusted, nothing is graded and the run says it is the
# certificate; a ca_file that is not there is refused naming it.
#   judge_https.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
command -v openssl > /dev/null || { echo "SKIP: no openssl command"; exit 0; }
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=vhost test CA" 2> ssl.log
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>> ssl.log
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf 2>> ssl.log
SCRIPTED_TLS=server.pem:server.key python3 "$src/tests/integration/scripted_openai.py" > server.log 2>&1 &
SPID=$!
trap 'kill $SPID 2>/dev/null || true' EXIT
PORT=$(port_of server.log $SPID)
grep -q "https://127.0.0.1:$PORT" server.log || { cat server.log; exit 1; }
echo '{"question_id": 1, "category": "writing", "turns": ["Write a haiku."]}' > questions.jsonl
echo '{"question_id": 1, "model_id": "m", "choices": [{"index": 0, "turns": ["Leaves fall."]}]}' > m.jsonl
pipeline() {  # pipeline OUT [OPTION LINE]
  cat <<TOML
[pipeline]
name = "https"
stages = ["eval"]
[judges.j]
plugin = "openai"
base_url = "https://127.0.0.1:$PORT/v1"
api_key = "test"
backoff_s = 0.01
max_retries = 1
${2:-}
[stages.eval]
questions = "$scratch/questions.jsonl"
answers = ["$scratch/m.jsonl"]
mode = "single"
out = "$scratch/$1"
TOML
}
graded() { python3 -c "import json,sys; s = json.load(open('$1/report.json'))['single']['m']; assert s['judged'] == 1 and s['mean'] == 7, s"; }
pipeline env > env.toml
SSL_CERT_FILE="$scratch/ca.pem" "$vhost" run env.toml > env.log 2>&1 || { cat env.log; exit 1; }
graded env
pipeline option "ca_file = \"$scratch/ca.pem\"" > option.toml
"$vhost" run option.toml > option.log 2>&1 || { cat option.log; exit 1; }
graded option
echo "  the test CA trusted (SSL_CERT_FILE, or the judge's ca_file): graded over HTTPS"
# Untrusted: not graded, and the log says why in words (no retry mends a certificate).
pipeline untrusted > untrusted.toml
"$vhost" run untrusted.toml > untrusted.log 2>&1 || true
grep -q "its TLS certificate could not be verified" untrusted.log || { echo "untrusted HTTPS: no word of the certificate"; cat untrusted.log; exit 1; }
python3 -c "import json; s = json.load(open('untrusted/report.json'))['single']['m']; assert s['judged'] == 0 and s['errors'] == 1, s"
echo "  untrusted: not graded; the run says the certificate could not be verified"
# A ca_file that is not there is refused before anything runs (exit 2), naming the option.
pipeline missing 'ca_file = "/nonexistent/ca.pem"' > missing.toml
rc=0; "$vhost" run missing.toml > missing.log 2>&1 || rc=$?
[ "$rc" = 2 ] && grep -q "ca_file" missing.log || { echo "a missing ca_file: exit $rc"; cat missing.log; exit 1; }
echo "judge_https: ok"
