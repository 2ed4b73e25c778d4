#!/usr/bin/env bash
# The controller's dispatch, with workers registered by hand (no models needed): lottery picks a
# worker in proportion to its capacity (1000 draws, 1:3), shortest_queue by queue over capacity
# (exactly 1:3 over 400), a model only one worker serves always goes there, a worker may serve
# several models; a malformed registration and an unknown dispatch are refused, naming them.
#   controller_dispatch.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
pids=()
trap 'kill ${pids[*]} 2>/dev/null || true' EXIT
draws() {  # draws PORT MODEL N: how often each worker was picked, as JSON
  python3 - "$@" <<'PY'
import collections, http.client, json, sys
port, model, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
count = collections.Counter()
for _ in range(n):
    c.request("POST", "/get_worker", json.dumps({"model": model}), {"Content-Type": "application/json"})
    count[json.loads(c.getresponse().read())["address"]] += 1
print(json.dumps(count))
PY
}
register() {  # register PORT ADDRESS CAPACITY MODELS_JSON
  [ "$(curl -s -o reg.json -w '%{http_code}' "http://127.0.0.1:$1/register" \
        -d "{\"address\": \"$2\", \"capacity\": $3, \"models\": $4}")" = 200 ] || { cat reg.json; exit 1; }
}
for dispatch in lottery shortest_queue; do
  "$vhost" controller --port 0 --expiry 600 --dispatch $dispatch > $dispatch.log 2>&1 & pids+=($!)
  port=$(port_of $dispatch.log $!)
  register "$port" http://a:1 1 '["m", "n"]'
  register "$port" http://b:1 3 '["m"]'
  draws "$port" m 1000 > $dispatch.json
  draws "$port" n 50 > $dispatch-n.json
  python3 - $dispatch $dispatch.json $dispatch-n.json <<'PY'
import json, sys
d, m, n = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
b = m.get("http://b:1", 0) / 1000
assert n == {"http://a:1": 50}, n  # only a serves n
if d == "lottery":
    assert 0.70 <= b <= 0.80, f"lottery gave the capacity-3 worker {b:.3f} of the draws (want 0.75 +- 0.05)"
else:  # queue / capacity, each pick counted until a heartbeat: exactly 1:3 (+- one)
    assert abs(b - 0.75) <= 0.002, f"shortest_queue gave the capacity-3 worker {b:.3f}"
print(f"  {d}: the capacity-3 worker got {b:.3f} of 1000 draws (capacities 1:3); model n only on its worker")
PY
done
# A registration without an address, and a dispatch that is none, are refused naming them.
[ "$(curl -s -o bad.json -w '%{http_code}' "http://127.0.0.1:$port/register" -d '{"models": ["m"]}')" = 400 ] &&
  grep -q address bad.json || { echo "a registration without an address was accepted"; cat bad.json; exit 1; }
rc=0; "$vhost" controller --port 0 --dispatch random > bad.log 2>&1 || rc=$?
[ "$rc" = 2 ] && grep -q "random not in {shortest_queue,lottery}" bad.log || { echo "--dispatch random: exit $rc"; cat bad.log; exit 1; }
echo "controller_dispatch: ok"
