#!/usr/bin/env bash
# The libtorch 2.x build against the 1.13 build, in one run: bench_generate (stories15M shape,
# float32, batch 1 and 16) and bench_train (the trainer's step tokens/s) of both build folders,
# alternated ROUNDS times; prints each measurement and the ratio of the medians (2.x / 1.13).
# With PREFILL=N (e.g. PREFILL=1024), also the prefill of one N-token prompt on a 1B-shaped bf16
# checkpoint made on the spot (TinyLlama's shape, 2.2 GB in a temporary folder; ~1 minute a
# round): where 2.x runs scaled_dot_product_attention's kernels and 1.13 the maths.
#   bench/torch_versions.sh [BUILD_1_13=build] [BUILD_2X=build-torch2/build] [ROUNDS=2]
set -euo pipefail
old=${1:-build} new=${2:-build-torch2/build} rounds=${3:-2} prefill=${PREFILL:-0}
for b in "$old" "$new"; do
  [ -x "$b/bin/bench_generate" ] && [ -x "$b/bin/bench_train" ] || { echo "no benchmarks in $b (build it first)"; exit 2; }
done
case $prefill in ''|*[!0-9]*) echo "PREFILL: a number of tokens, got '$prefill'"; exit 2 ;; esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ "$prefill" -gt 0 ]; then
  tokenizer=$(dirname "$0")/../../shared/models/llama2_tokenizer.model
  [ -f "$tokenizer" ] || { echo "PREFILL needs ../shared/models/llama2_tokenizer.model for the checkpoint"; exit 2; }
  "$old/bin/vhost" model init --out "$tmp/m1b" --preset 1b --dtype bfloat16 --tokenizer "$tokenizer" > /dev/null
fi
for r in $(seq 1 "$rounds"); do
  for b in "$old" "$new"; do
    tag=$(echo "$b" | tr '/' '_')
    "$b/bin/bench_generate" > "$tmp/gen-$tag-$r.txt" 2>&1
    "$b/bin/bench_train" > "$tmp/train-$tag-$r.txt" 2>&1
    if [ "$prefill" -gt 0 ]; then
      "$b/bin/bench_generate" --model "$tmp/m1b" --tokens 2 --batch 1 --prompt "$prefill" > "$tmp/prefill-$tag-$r.txt" 2>&1
    fi
  done
done
python3 - "$tmp" "$old" "$new" "$rounds" <<'PY'
import re, statistics, sys
tmp, old, new, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = [("generate, batch 1", "gen", r"vhost generate, batch 1:\s+([0-9.]+)"),
        ("generate, batch 16", "gen", r"vhost generate, batch 16\s+([0-9.]+)"),
        ("train step", "train", r"vhost trainer[:,][^0-9]*?([0-9.]+) tokens/s"),
        ("train step, checkpointing", "train", r"(?:vhost trainer, checkpointing:\s+|with checkpointing )([0-9.]+)"),
        ("prefill, 1b shape", "prefill", r"prompt [0-9]+\s+([0-9.]+) tokens/s")]
def values(build, kind, pattern):
    tag = build.replace("/", "_")
    out = []
    for r in range(1, rounds + 1):
        try:
            m = re.search(pattern, open(f"{tmp}/{kind}-{tag}-{r}.txt").read())
        except FileNotFoundError:  # no PREFILL
            continue
        if m: out.append(float(m.group(1)))
    return out
libs = {}
for b in (old, new):
    m = re.search(r"libtorch ([0-9][^\s,)]*)", open(f"{tmp}/train-{b.replace('/', '_')}-1.txt").read())
    libs[b] = m.group(1) if m else "?"
print(f"libtorch {libs[new]} ({new}) against libtorch {libs[old]} ({old}), {rounds} alternating rounds, tokens/s:")
for name, kind, pat in rows:
    a, b = values(old, kind, pat), values(new, kind, pat)
    if not a or not b:
        print(f"  {name:28s} not measured"); continue
    ratio = statistics.median(b) / statistics.median(a)
    print(f"  {name:28s} {' '.join(f'{x:8.0f}' for x in a)}  |  {' '.join(f'{x:8.0f}' for x in b)}   ratio {ratio:.2f}x")
PY
