#!/usr/bin/env bash
# `vhost perplexity` on a real pretrained model (stories260K from ../shared) and a text of the
# project's own (tests/data/perplexity_story.txt, written for it): the float32 file, and vhost's
# own Q8_0 and Q4_0 files of it — Q8_0 may raise the perplexity by at most 1% (issue #24), Q4_0's
# is printed. Bad input (a missing text, one shorter than a chunk, a context past the model's)
# gives an error naming it. llama.cpp's own number for the same text is llama_cpp_interop.sh's.
#   perplexity.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
model=$src/../shared/models/stories260K.gguf
[ -f "$model" ] || { echo "SKIP: $model is missing (the shared fixtures)"; exit 0; }
text=$src/tests/data/perplexity_story.txt
export TMPDIR=$scratch/tmp  # the shortcut's work folder (its perplexity.json) stays in here
mkdir -p "$TMPDIR"
ppl() {  # ppl FILE [FLAGS]: prints the perplexity
  local f=$1; shift
  "$vhost" perplexity "$f" --text "$text" --context 256 "$@" > ppl.out 2> ppl.err || { cat ppl.out ppl.err; exit 1; }
  grep "^perplexity " ppl.out >&2
  sed -n 's/^perplexity \([0-9.]*\) +\/- .*/\1/p' ppl.out
}
f32=$(ppl "$model")
cp "$TMPDIR/vhost-perplexity/perplexity.json" f32.json
python3 - f32.json <<'PY'
import json, math, sys
r = json.load(open(sys.argv[1]))
# 256-token chunks, the last 127 of each scored; the mean NLL is the perplexity's log.
assert r["context"] == 256 and r["chunks"] == r["text_tokens"] // 256 >= 4, r
assert r["tokens_scored"] == 127 * r["chunks"], r
assert abs(math.log(r["perplexity"]) - r["mean_nll"]) < 1e-9 and 1 < r["perplexity"] < 100, r
assert len(r["per_chunk"]) == r["chunks"], r
PY
"$vhost" model convert "$model" hf > conv.log 2>&1 || { cat conv.log; exit 1; }
for kind in q8_0 q4_0; do
  "$vhost" model convert hf $kind.gguf --quantize $kind > conv-$kind.log 2>&1 || { cat conv-$kind.log; exit 1; }
done
q8=$(ppl q8_0.gguf)
q4=$(ppl q4_0.gguf)
echo "perplexity of $(basename "$text"), stories260K: F32 $f32, Q8_0 $q8, Q4_0 $q4"
python3 -c "import sys; f, q8, q4 = map(float, sys.argv[1:]); r8, r4 = q8 / f - 1, q4 / f - 1
print(f'Q8_0 {100 * r8:+.3f}%, Q4_0 {100 * r4:+.3f}% against F32')
sys.exit(0 if r8 <= 0.01 else 'Q8_0 raises the perplexity by more than 1%')" "$f32" "$q8" "$q4"
# --chunks: only the first two.
"$vhost" perplexity "$model" --text "$text" --context 256 --chunks 2 > two.out 2>&1 || { cat two.out; exit 1; }
grep -q "over 254 tokens (2 chunks of 256" two.out || { cat two.out; exit 1; }
# Bad input: named, and no crash.
bad() {  # bad WHAT PATTERN ARGS...: the command fails, its output names PATTERN
  local what=$1 pattern=$2; shift 2
  local rc=0; "$vhost" perplexity "$@" > bad.log 2>&1 || rc=$?
  [ "$rc" != 0 ] && [ "$rc" -lt 128 ] && grep -q -- "$pattern" bad.log || { echo "$what: exit $rc"; cat bad.log; exit 1; }
}
bad "a missing text" "nothing.txt: cannot open" "$model" --text nothing.txt
echo "Once upon a time." > short.txt
bad "a text shorter than a chunk" "short.txt: .* tokens, fewer than one chunk of context = 256" "$model" --text short.txt --context 256
: > empty.txt
bad "an empty text" "empty.txt: 1 tokens, fewer than one chunk" "$model" --text empty.txt
bad "a context past the model's" "perplexity.context: 4096 is longer than the model's context (2048)" "$model" --text "$text" --context 4096
bad "a context below 4 (no token would be scored)" "\-\-context" "$model" --text "$text" --context 3
bad "a model file that is not one" "not-a-model.gguf" not-a-model.gguf --text "$text"
rm -rf hf ./*.gguf
echo "perplexity: ok"
