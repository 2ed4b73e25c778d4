#!/usr/bin/env bash
# The train stage as real processes:
#  1. FSDP on Gloo: 2 processes (`vhost launch`) give the losses and final weights of 1 process
#     with the same global batch, with about half the parameter memory per rank;
#  1b. `prepare` then `train` under `vhost launch`: rank 0 prepares, rank 1 waits at the
#     barrier and trains with it; when rank 0's prepare fails, rank 1 stops with a clear error;
#     a filesystem error is reported as an I/O error;
#  2. a checkpoint written by 2 ranks resumes on 1 and ends where an uninterrupted run ends;
#  3. SIGTERM checkpoints and stops; kill -9 loses only the steps since the last checkpoint; the
#     restarted command resumes, and the loss sequence equals an uninterrupted run's;
#  4. a write limit (ulimit -f, as a full disk) fails the save with a clear error and leaves no
#     torn checkpoint.
#   train_processes.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"

"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out model >/dev/null
"$vhost" prepare "$src/examples/data/sharegpt_demo.json" --model model --out data --max-length 512 >/dev/null

pipeline() {  # pipeline NAME OUT EPOCHS [extra train lines...]
  local name=$1 out=$2 epochs=$3
  shift 3
  { pipeline_head "$name" '["train"]'; cat <<EOF; } > "$name.toml"
[stages.train]
data = "$scratch/data"
out = "$scratch/$out"
epochs = $epochs
batch_size = 4
micro_batch_size = 2
lr = 2e-3
warmup_steps = 2
log_every = 1
EOF
  for line in "$@"; do echo "$line" >> "$name.toml"; done
}

compare() {  # compare A B TOLERANCE: metrics losses and final weights
  python3 - "$1" "$2" "$3" <<'PY'
import array, json, struct, sys
a, b, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
def losses(d):
    return [json.loads(l)["loss"] for l in open(d + "/metrics.jsonl") if '"loss"' in l]
def weights(d):
    raw = open(d + "/model/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n]); base = 8 + n; out = {}
    for k, e in head.items():
        if k == "__metadata__": continue
        s, t = e["data_offsets"]
        assert e["dtype"] == "F32", e["dtype"]
        out[k] = array.array("f", raw[base + s:base + t])
    return out
la, lb = losses(a), losses(b)
assert len(la) == len(lb) and la, f"{len(la)} vs {len(lb)} steps"
for i, (x, y) in enumerate(zip(la, lb)):
    assert abs(x - y) <= tol * max(1, abs(x)), f"step {i + 1}: loss {x} vs {y}"
wa, wb = weights(a), weights(b)
assert wa.keys() == wb.keys()
worst = max(max(abs(x - y) for x, y in zip(wa[k], wb[k])) for k in wa)
assert worst <= tol * 10, f"weights differ by {worst}"
print(f"  {len(la)} losses agree within {tol}; weights within {worst:.2e}")
PY
}

echo "== 1 process vs 2 processes (Gloo), same global batch"
pipeline one out-one 3
pipeline two out-two 3
"$vhost" run one.toml > one.log 2>&1 || { cat one.log; exit 1; }
"$vhost" launch --nproc-per-node 2 --log-dir logs two.toml > two.log 2>&1 || { cat two.log logs/*; exit 1; }
grep -q "x 2 processes" two.log || { echo "2-process run did not say so"; cat two.log; exit 1; }
# The attention kernel is named (libtorch 1.13: the math path; 2.x: the SDPA dispatcher's choice).
grep -Eq "^attention kernel: (math|flash_attention|efficient_attention|cudnn_attention)" one.log ||
  { echo "the train stage did not name its attention kernel"; cat one.log; exit 1; }
compare out-one out-two 1e-5
python3 - work-one/run.json work-two/run.json <<'PY'
import json, sys
def per_rank(f):
    r = json.load(open(f))
    for s in r["stages"]:
        res = s.get("output", {})
        if "param_bytes_per_rank" in res: return res["param_bytes_per_rank"]
    raise SystemExit(f"{f}: no param_bytes_per_rank")
one, two = per_rank(sys.argv[1]), per_rank(sys.argv[2])
ratio = two / one
print(f"  parameter bytes per rank: {one} (1 process), {two} (2 processes): {ratio:.3f}")
assert 0.5 <= ratio <= 0.51, ratio
PY

echo "== prepare then train under vhost launch: rank 0 prepares while rank 1 waits"
two_stage() {  # two_stage NAME DATASET
  { pipeline_head "$1" '["prepare", "train"]'; cat <<EOF; } > "$1.toml"
[datasets.sharegpt]
plugin = "sharegpt"
path = "$2"
max_length = 512
[stages.prepare]
out = "$scratch/data-$1"
[stages.train]
data = "$scratch/data-$1"
out = "$scratch/out-$1"
epochs = 1
batch_size = 4
micro_batch_size = 2
EOF
}
two_stage staged "$src/examples/data/sharegpt_demo.json"
for i in 1 2 3; do
  rm -rf data-staged out-staged work-staged logs
  timeout 120 "$vhost" launch --nproc-per-node 2 --log-dir logs staged.toml > staged.log 2>&1 || { echo "run $i:"; cat staged.log logs/*; exit 1; }
  grep -q '"ran_on": "rank 0"' work-staged/run.rank-1.json || { cat work-staged/run.rank-1.json; exit 1; }
  test -f out-staged/model/model.safetensors
done
grep -q "waiting for rank 0" logs/rank-1.log || { cat logs/rank-1.log; exit 1; }
echo "  3 runs of 3: prepared once, trained on 2 ranks"
# Rank 0's prepare fails: rank 1 stops waiting at once with an error that says so; nothing hangs.
printf '[{"id": "a", "conversations": [' > broken.json
two_stage broken "$scratch/broken.json"
rc=0
timeout 120 "$vhost" launch --nproc-per-node 2 --log-dir logs broken.toml > broken.log 2>&1 || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || { echo "expected a failure, not status $rc"; cat broken.log logs/*; exit 1; }
grep -q "broken.json" broken.log || { cat broken.log; exit 1; }
grep -q "waiting for the rank that runs it" logs/rank-1.log || { cat logs/rank-1.log; exit 1; }
echo "  rank 0's prepare failed: both ranks stopped"
# Several processes need a backend with a process group to wait at: without one, a clear
# configuration error (exit status 2), not a hang.
cat > nobackend.toml <<EOF
[pipeline]
stages = ["info"]
work_dir = "$scratch/work-nobackend"
[models.m]
plugin = "llama"
path = "$scratch/model"
EOF
rc=0
WORLD_SIZE=2 RANK=1 LOCAL_RANK=1 timeout 60 "$vhost" run nobackend.toml > nobackend.log 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "expected status 2, got $rc"; cat nobackend.log; exit 1; }
grep -q "no backend of this pipeline runs a process group" nobackend.log || { cat nobackend.log; exit 1; }
# A filesystem error is an I/O error, not an "internal error".
touch afile
rc=0
"$vhost" run staged.toml --only prepare --set "stages.prepare.out=\"$scratch/afile/data\"" > io.log 2>&1 || rc=$?
[ $rc -eq 1 ] || { echo "expected status 1, got $rc"; cat io.log; exit 1; }
grep -q "I/O error: .*afile" io.log || { cat io.log; exit 1; }
if grep -q "internal error" io.log; then cat io.log; exit 1; fi
echo "  $(grep -o 'I/O error.*' io.log | cut -c1-120)"


echo "== a 2-rank checkpoint resumes on 1 rank"
pipeline cut out-cut 3 "stop_at_step = 4"
"$vhost" launch --nproc-per-node 2 cut.toml > cut.log 2>&1 || { cat cut.log; exit 1; }
grep -q "stopped at step 4" cut.log || { cat cut.log; exit 1; }
test -d out-cut/checkpoints/step-00000004
grep -q '"world_size": 2' out-cut/checkpoints/step-00000004/trainer_state.json
pipeline cut out-cut 3
"$vhost" run cut.toml > cut2.log 2>&1 || { cat cut2.log; exit 1; }
grep -q "resumed from .*step-00000004 at step 4" cut2.log || { cat cut2.log; exit 1; }
compare out-one out-cut 1e-5

echo "== SIGTERM, kill -9, and resuming the same command"
pipeline full out-full 16
pipeline long out-long 16 "save_every = 10"
"$vhost" run full.toml > full.log 2>&1 || { cat full.log; exit 1; }
wait_steps() {  # wait_steps N: until out-long/metrics.jsonl holds N steps
  for _ in $(seq 1 600); do
    [ -f out-long/metrics.jsonl ] && [ "$(grep -c '"loss"' out-long/metrics.jsonl)" -ge "$1" ] && return 0
    sleep 0.05
  done
  echo "training did not reach step $1"; exit 1
}
"$vhost" run long.toml > long1.log 2>&1 &
pid=$!
wait_steps 3
kill -TERM $pid
rc=0; wait $pid || rc=$?
[ $rc -ne 0 ] || { echo "SIGTERM: expected a nonzero exit"; exit 1; }
grep -q "SIGTERM: stopped at step" long1.log || { cat long1.log; exit 1; }
stopped=$(sed -n 's/.*SIGTERM: stopped at step \([0-9]*\).*/\1/p' long1.log)
test -f "out-long/checkpoints/$(printf 'step-%08d' "$stopped")/trainer_state.json"
echo "  SIGTERM at step $stopped: checkpoint written"
"$vhost" run long.toml > long2.log 2>&1 &
pid=$!
wait_steps $((stopped + 15))
kill -KILL $pid
wait $pid || true
"$vhost" run long.toml > long3.log 2>&1 || { cat long3.log; exit 1; }
grep -q "resumed from" long3.log
if ls -d out-long/checkpoints/*.tmp 2>/dev/null; then echo "a torn .tmp checkpoint was left"; exit 1; fi
compare out-full out-long 0
echo "  killed twice, resumed twice: the same losses as one uninterrupted run"

echo "== a write limit while saving: clear error, nothing torn"
pipeline full2 out-limit 1
rc=0
( ulimit -f 300; exec "$vhost" run full2.toml ) > limit.log 2>&1 || rc=$?
[ $rc -ne 0 ] || { echo "expected the save to fail"; cat limit.log; exit 1; }
grep -Eq "saving the checkpoint of step [0-9]+ to .*failed: .*write failed" limit.log || { cat limit.log; exit 1; }
if ls -d out-limit/checkpoints/* 2>/dev/null; then echo "the failed save left files behind"; exit 1; fi
echo "  $(grep -o 'saving the checkpoint.*' limit.log | cut -c1-150)"
echo "train_processes: ok"
