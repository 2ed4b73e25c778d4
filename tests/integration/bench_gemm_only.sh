#!/usr/bin/env bash
# bench_generate --gemm's --only and --reps (the A/B harness of the integer kernels): the formats
# named are measured alone (no float rows, no other format), and a name it does not know is
# refused (exit status 2, naming it) rather than measuring nothing. --only bf16 gives the bf16
# rows alone; --kernels runs a named kernel set (avx2 wherever AVX2 is) and refuses an unknown one.
#   bench_gemm_only.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
bench=$build/bin/bench_generate

"$bench" --gemm 16 256 --threads 1 --only q4_k,q6_k --reps 2 > only.txt
grep -q '^  q4_k x8 ' only.txt || { cat only.txt; echo "no q4_k x8 row"; exit 1; }
grep -q '^  q6_k x8 ' only.txt || { cat only.txt; echo "no q6_k x8 row"; exit 1; }
if grep -Eq '^  (float32|bfloat16|float16|q4_0|q8_0)' only.txt; then
  cat only.txt; echo "--only q4_k,q6_k measured other formats"; exit 1
fi

rc=0
"$bench" --gemm 16 256 --only q4_k,bogus > out.txt 2> err.txt || rc=$?
[ "$rc" = 2 ] || { cat out.txt err.txt; echo "--only bogus: exit $rc, want 2"; exit 1; }
grep -q "'bogus' is not one of" err.txt || { cat err.txt; echo "the refusal does not name 'bogus'"; exit 1; }
"$bench" --gemm 16 256 --threads 1 --only bf16 --reps 2 > bf16.txt
grep -q '^  bfloat16 ' bf16.txt || { cat bf16.txt; echo "no bfloat16 row"; exit 1; }
if grep -Eq '^  (float32|float16|q4_k)' bf16.txt; then
  cat bf16.txt; echo "--only bf16 measured other formats"; exit 1
fi

if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  "$bench" --gemm 16 256 --threads 1 --only q4_0 --reps 2 --kernels avx2 > k.txt
  grep -q 'small_gemm (avx2)' k.txt || { cat k.txt; echo "--kernels avx2 did not run the avx2 set"; exit 1; }
fi
rc=0
"$bench" --gemm 16 256 --kernels sse9 > out.txt 2> err.txt || rc=$?
[ "$rc" = 2 ] || { cat out.txt err.txt; echo "--kernels sse9: exit $rc, want 2"; exit 1; }
grep -q -- "--kernels sse9: not runnable" err.txt || { cat err.txt; echo "the refusal does not name sse9"; exit 1; }
rc=0
"$bench" --gemm 16 256 --decode-dtype int4 > out.txt 2> err.txt || rc=$?
[ "$rc" = 2 ] || { cat out.txt err.txt; echo "--decode-dtype int4: exit $rc, want 2"; exit 1; }
grep -q -- "--decode-dtype int4: expected auto, float32 or bfloat16" err.txt || { cat err.txt; echo "the refusal does not name int4"; exit 1; }
echo "bench_gemm_only: ok"
