#!/usr/bin/env bash
# Slow and greedy clients cannot lock `vhost serve` (slowloris, huge Content-Length, oversized
# headers, many connections from one address), and a client that gives up on a non-streamed
# request frees its batch row. The checks are in slow_clients.py; bad listening options are
# refused naming the option.
#   serve_slow_clients.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out tiny >/dev/null
# A long context, so that a long answer runs for many seconds unless its client's leaving ends it.
python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); c["max_position_embeddings"]=32768; json.dump(c,open(sys.argv[1],"w"))' tiny/config.json
pipeline() {  # pipeline FILE OPTIONS...: serve tiny with these serve-stage options
  local f=$1; shift
  printf '[pipeline]\nstages = ["serve"]\n[models.tiny]\nplugin = "llama"\npath = "tiny"\nmax_batch = 4\n[stages.serve]\ntype = "serve"\nport = 0\n' > "$f"
  for o in "$@"; do echo "$o" >> "$f"; done
}
pids=()
trap 'kill ${pids[*]} 2>/dev/null || true' EXIT
serve() {  # serve FILE LOG: start it, print its port
  "$vhost" run "$1" > "$2" 2>&1 & pids+=($!)
  port_of "$2" $!
}

pipeline main.toml "request_timeout = 3"
PORT=$(serve main.toml main.log)
python3 "$src/tests/integration/slow_clients.py" main "$PORT" 3

pipeline bound.toml "client_connections = 4"
PORT=$(serve bound.toml bound.log)
python3 "$src/tests/integration/slow_clients.py" bound "$PORT" 4

# Malformed options: refused at start, naming the option (never served with a default).
for bad in "request_timeout = 0" "client_connections = -1" 'request_timeout = "x"'; do
  pipeline bad.toml "$bad"
  status=0
  timeout 30 "$vhost" run bad.toml > bad.log 2>&1 || status=$?
  key=${bad%% *}
  if [ "$status" != 2 ] || ! grep -q "stages.serve.$key" bad.log; then
    echo "'$bad' gave exit $status, wanted 2 naming stages.serve.$key:"; cat bad.log; exit 1
  fi
done
echo "slow clients: bad request_timeout / client_connections refused naming the option"
