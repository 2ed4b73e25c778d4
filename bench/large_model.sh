#!/usr/bin/env bash
# bench/large_model.sh: a LLaMA-7B-shaped checkpoint (random bf16 weights, made on the spot) on
# this machine, each step's peak RSS beside the weights' bytes, and decoding speed beside
# llama.cpp on the same GGUF file in the same run.
#
#   bench/large_model.sh [--preset 7b] [--dir DIR] [--threads 2] [--tokens 8] [--batch 16] [--rounds 3]
#                        [--keep] [--reuse] [--quantize q8_0] [--prompt 256] [--decode-dtype auto|float32|bfloat16]
#                        [--dtype bfloat16|float16|float32]
#   --keep: leave DIR/m.gguf; --reuse: start from it; --quantize: convert with it (vhost decodes
#   the Q8_0 blocks in place, llama.cpp runs the same file); --prompt N: also the prefill of one
#   N-token prompt, beside llama-bench's "pp N"; --decode-dtype: as the llama plugin's decode_dtype,
#   bfloat16: vhost's products of a bf16 file with bf16-rounded activations (llama.cpp's arithmetic
#   for BF16), float32: float32 activations, auto (the default, as the plugin's): bfloat16 where
#   the CPU has AVX512-BF16 (vdpbf16ps), float32 elsewhere; --dtype: the checkpoint's (and so the
#   GGUF's) dtype, bfloat16 by default (float32: the stories15M float32 row, e.g. --preset stories15m
#   --dtype float32 --tokens 128)
#
# Steps (peak RSS of each from /usr/bin/time):
#   1. vhost model init --preset P --dtype D   (HF folder, shard by shard)
#   2. vhost model convert HF -> GGUF (D's matrices, F32 norms: what llama.cpp's converter writes)
#   3. the HF folder is removed (disk: two copies of 7B are 27 GB)
#   4. bench_generate --model the GGUF: batch 1 and --batch, tokens/s of the decoding steps, and the
#      memory bound of batch 1: the weights a step reads, streamed by the same threads right after
#      (in 5 the bound is measured again right before llama-bench and its batch 1 set beside it)
#   5. llama.cpp on the same GGUF, alternating with 4 for --rounds rounds: llama-bench (batch 1) and llama-batched-bench (--batch
#      sequences), when its tools are found: LLAMA_CPP_BIN, else build/llamacpp/cmake-build/bin
#      (llama.cpp's own sources from PyPI's llama-cpp-python sdist, built by
#      scripts/llama-cpp-tools.sh). Without them the script says so and prints vhost's numbers only.
# Needs ~14 GB of free disk (7b) and about 16 GB of memory; takes ~15 minutes on 2 cores.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
preset=7b dtype=bfloat16 dir= threads=2 tokens=8 batch=16 keep=0 rounds=3 reuse=0 quantize= prompt=0 bf16act=(--decode-dtype auto)
while [ $# -gt 0 ]; do
  case $1 in
    --preset) preset=$2; shift 2 ;;
    --dtype)
      case $2 in
        bfloat16|float16|float32) dtype=$2 ;;
        *) echo "large_model.sh: --dtype: bfloat16, float16 or float32, got '$2'" >&2; exit 2 ;;
      esac
      shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --rounds) rounds=$2; shift 2 ;;
    --reuse) reuse=1; shift ;;
    --quantize) quantize=$2; shift 2 ;;
    --prompt) prompt=$2; shift 2 ;;
    --decode-dtype)
      case $2 in
        auto|float32|bfloat16) bf16act=(--decode-dtype "$2") ;;
        *) echo "large_model.sh: --decode-dtype: auto, float32 or bfloat16, got '$2'" >&2; exit 2 ;;
      esac
      shift 2 ;;
    *) echo "large_model.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
build=${VHOST_BUILD:-$here/build}
vhost=$build/bin/vhost
bench=$build/bench/bench_generate
[ -x "$bench" ] || bench=$(find "$build" -name bench_generate -type f -perm -u+x | head -1)
for f in "$vhost" "$bench"; do
  [ -x "$f" ] || { echo "large_model.sh: $f is not built (cmake --build build)" >&2; exit 2; }
done
[ -x /usr/bin/time ] || { echo "large_model.sh: /usr/bin/time is missing (apt install time)" >&2; exit 2; }
tok=$here/../shared/models/llama2_tokenizer.model
[ -f "$tok" ] || tok=
dir=${dir:-$build/bench-large-$preset}
mkdir -p "$dir"
[ "$keep" = 1 ] || trap 'rm -rf "$dir"' EXIT
llama_bin=${LLAMA_CPP_BIN:-$here/build/llamacpp/cmake-build/bin}

kb=0 secs=0
run() {  # runs CMD... with its output in $dir/out.$$, its peak RSS (kB) in kb and seconds in secs
  local t0=$SECONDS
  /usr/bin/time -f '%M' -o "$dir/time.$$" "$@" > "$dir/out.$$" 2>&1 || { cat "$dir/out.$$" >&2; echo "large_model.sh: $* failed" >&2; exit 1; }
  kb=$(tail -1 "$dir/time.$$") secs=$((SECONDS - t0))
}
report() {  # report LABEL: the last run's peak RSS beside the weights' bytes
  awk -v kb="$kb" -v w="$weights" -v l="$1" -v s="$secs" \
    'BEGIN { printf "%-34s peak RSS %6.2f GB  (%.2fx the weights)  %4d s\n", l, kb * 1024 / 1e9, kb * 1024 / w, s }'
}

echo "bench/large_model.sh: preset $preset, $dtype, $threads threads, $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo) GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
tokarg=(--tokenizer-text "$here/README.md")
[ -n "$tok" ] && tokarg=(--tokenizer "$tok")
weights=$(stat -c %s "$dir/m.gguf" 2>/dev/null || echo 1)
if [ "$reuse" = 1 ] && [ -f "$dir/m.gguf" ]; then
  echo "   reusing $dir/m.gguf (steps 1-3 skipped)"
else
rm -rf "$dir/hf" "$dir/m.gguf"
run "$vhost" model init --preset "$preset" --dtype "$dtype" --out "$dir/hf" "${tokarg[@]}" --overwrite
weights=$(cat "$dir"/hf/*.safetensors | wc -c)
echo "   checkpoint: $(awk -v w="$weights" 'BEGIN { printf "%.2f GB", w / 1e9 }') in $(ls "$dir/hf" | grep -c 'safetensors$') safetensors files"
report "1. model init ($preset, $dtype)"
run "$vhost" model convert "$dir/hf" "$dir/m.gguf" ${quantize:+--quantize "$quantize"}
report "2. model convert HF -> GGUF${quantize:+ ($quantize)}"
[ -z "$quantize" ] || weights=$(stat -c %s "$dir/m.gguf")  # from here on, against the quantized file
rm -rf "$dir/hf"
echo "3. HF folder removed (the GGUF is $(awk -v b="$(stat -c %s "$dir/m.gguf")" 'BEGIN { printf "%.2f GB", b / 1e9 }'))"
fi
# Decoding, vhost and llama.cpp alternately, $rounds rounds: this machine's memory bandwidth
# drifts (a plain bf16 stream measured 35-65 GB/s at different times), so each ratio compares
# runs minutes apart, never a vhost run of one hour with a llama.cpp run of another.
have_llama=0
[ -x "$llama_bin/llama-bench" ] && [ -x "$llama_bin/llama-batched-bench" ] && have_llama=1
[ "$have_llama" = 1 ] || echo "5. llama.cpp: not run: no llama-bench/llama-batched-bench in $llama_bin (scripts/llama-cpp-tools.sh builds them; or set LLAMA_CPP_BIN)"
for round in $(seq 1 "$rounds"); do
  run env OMP_NUM_THREADS="$threads" "$bench" --model "$dir/m.gguf" --threads "$threads" --tokens "$tokens" --batch "$batch" --prompt "$prompt" ${bf16act[@]+"${bf16act[@]}"}
  report "4. bench_generate (decoding), round $round"
  sed 's/^/   /' "$dir/out.$$"
  v1=$(awk '$1 == "batch" && $2 == 1 { print $3 }' "$dir/out.$$")
  vb=$(awk -v b="$batch" '$1 == "batch" && $2 == b { print $3 }' "$dir/out.$$")
  bound=$(awk '$1 == "memory" && $2 == "bound" { print $3 }' "$dir/out.$$")
  [ "$have_llama" = 1 ] || continue
  # The bound again right before llama.cpp's batch 1 (bandwidth here moves within minutes).
  lbound=$(env OMP_NUM_THREADS="$threads" "$bench" --model "$dir/m.gguf" --threads "$threads" --memory-bound 2>&1 |
    awk '$1 == "memory" && $2 == "bound" { print $3 }')
  "$llama_bin/llama-bench" -m "$dir/m.gguf" -t "$threads" -p 0 -n "$tokens" -r 1 -o csv > "$dir/lb.csv" 2> "$dir/lb.err" ||
    { cat "$dir/lb.err" >&2; echo "large_model.sh: llama-bench failed on vhost's GGUF" >&2; exit 1; }
  l1=$(python3 -c 'import csv,sys; r=list(csv.DictReader(open(sys.argv[1]))); print(r[-1]["avg_ts"])' "$dir/lb.csv")
  "$llama_bin/llama-batched-bench" -m "$dir/m.gguf" -t "$threads" -c $(( (tokens + 2) * batch + 64 )) -npp 1 -ntg "$tokens" -npl "$batch" \
    > "$dir/bb.out" 2> "$dir/bb.err" || { cat "$dir/bb.err" >&2; echo "large_model.sh: llama-batched-bench failed" >&2; exit 1; }
  # The column headed "S_TG t/s" (tokens/s of the generation phase), found by its header: the
  # table's eighth field is T_TG, its time in seconds, which this script read until 2026-12-05.
  lb=$(awk -F'|' '{ for (i = 2; i < NF; ++i) { f = $i; gsub(/^ +| +$/, "", f); if (f == "S_TG t/s") col = i } }
    col && NF > col && $2 ~ /[0-9]/ { f = $col; gsub(/ /, "", f); v = f } END { print v }' "$dir/bb.out")
  [ -n "$lb" ] || { cat "$dir/bb.out" >&2; echo "large_model.sh: no S_TG t/s column in llama-batched-bench's table" >&2; exit 1; }
  awk -v v="$v1" -v l="$l1" -v vb="$vb" -v lb="$lb" -v b="$batch" -v bd="${bound:-0}" -v lbd="${lbound:-0}" 'BEGIN {
    printf "5. llama.cpp, round %d: llama-bench batch 1 %.3f tokens/s, llama-batched-bench %d sequences %.3f tokens/s (S_TG)\n", '"$round"', l, b, lb
    printf "   vhost / llama.cpp: batch 1 %.2fx, batch %d %.2fx\n", v / l, b, vb / lb
    if (bd > 0 && lbd > 0)
      printf "   batch 1 against the memory bound: vhost %.0f%% of %.3f tokens/s (measured after its steps), llama.cpp %.0f%% of %.3f (measured right before); a lead over llama.cpp of %.2fx at most\n",
             100 * v / bd, bd, 100 * l / lbd, lbd, lbd / l }'
  if [ "$prompt" -gt 0 ]; then
    vp=$(awk '$1 == "prompt" { print $3 }' "$dir/out.$$")
    "$llama_bin/llama-bench" -m "$dir/m.gguf" -t "$threads" -p "$prompt" -n 0 -r 1 -o csv > "$dir/lp.csv" 2> "$dir/lb.err" ||
      { cat "$dir/lb.err" >&2; echo "large_model.sh: llama-bench -p failed" >&2; exit 1; }
    lp=$(python3 -c 'import csv,sys; r=list(csv.DictReader(open(sys.argv[1]))); print(r[-1]["avg_ts"])' "$dir/lp.csv")
    awk -v v="$vp" -v l="$lp" -v p="$prompt" 'BEGIN { printf "   prefill of %d tokens: vhost %.1f tokens/s, llama-bench pp%d %.1f tokens/s: %.2fx\n", p, v, p, l, v / l }'
  fi
done
