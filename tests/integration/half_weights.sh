#!/usr/bin/env bash
# A bfloat16 / float16 checkpoint on the CPU keeps its stored weights (dtype "auto"): `info`
# says so (2 bytes a weight, float32 activations, the kernel), greedy text equals the float32
# copy's (dtype = "float32") over 12 tokens (then the bf16 KV cache, which the float32 copy does
# not have, may tip a near tie of this random model: the logits' equality is test_llama_core's),
# and all 48 tokens equal the GGUF's that `model convert` writes of it (BF16 matrices read in
# place from the mapped file). A GGUF cut inside a tensor is refused naming that tensor.
#   half_weights.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
pipeline() {  # pipeline PATH DTYPE [MAX_TOKENS [MAX_BATCH [DECODE_DTYPE]]] > p.toml
  cat <<TOML
[pipeline]
stages = ["info", "generate"]
[models.m]
plugin = "llama"
path = "$1"
dtype = "$2"
max_batch = ${4:-0}
decode_dtype = "${5:-float32}"
[stages.generate]
prompts = ["Once upon a time", "The model"]
max_tokens = ${3:-48}
temperature = 0.0
TOML
}
text() { sed -n '/stage .generate. (generate)/,/tokens in/p' "$1" | grep -v "stage 'generate'\|tokens in"; }
# The tokenizer's text is made here, the same on every run: trained on a project file, the
# random model changed with each edit of that file, and an edit of README.md once tipped a near
# tie within the 12 tokens compared below.
python3 - > corpus.txt <<'PY'
import random
words = ("the model reads weights in place from its file and decodes them in registers while the cache "
         "keeps keys and values for every layer so that each new token costs one pass over the weights").split()
rng = random.Random(20261205)
for _ in range(1200):
    print(" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + ".")
PY
for dt in bfloat16 float16; do
  "$vhost" model init --preset tiny --dtype $dt --out $dt --tokenizer-text corpus.txt > init.log 2>&1 || { cat init.log; exit 1; }
  pipeline $dt auto 12 > auto.toml
  "$vhost" run auto.toml > auto.log 2>&1 || { cat auto.log; exit 1; }
  if grep -q "kernel: libtorch" auto.log; then echo "SKIP: no decode kernel on this CPU reads $dt weights"; exit 0; fi
  for want in "dtype: $dt" "bytes_per_weight: 2.0" "activations: float32" "kernel: avx.*, $dt widened to float32 in registers" \
              "decode_dtype: float32 ($dt weights)"; do
    grep -q "$want" auto.log || { echo "$dt info lacks '$want':"; cat auto.log; exit 1; }
  done
  pipeline $dt float32 12 > f32.toml
  "$vhost" run f32.toml > f32.log 2>&1 || { cat f32.log; exit 1; }
  grep -q "dtype: float32" f32.log && grep -q "bytes_per_weight: 4.0" f32.log || { cat f32.log; exit 1; }
  [ -n "$(text auto.log)" ] || { echo "no generated text:"; cat auto.log; exit 1; }
  [ "$(text auto.log)" = "$(text f32.log)" ] || { echo "$dt weights in place and their float32 copy decode differently:"; diff <(text auto.log) <(text f32.log); exit 1; }
done
# The GGUF of the bf16 checkpoint: read in place, the same text.
"$vhost" model convert bfloat16 m.gguf > conv.log 2>&1 || { cat conv.log; exit 1; }
pipeline m.gguf auto > gguf.toml
"$vhost" run gguf.toml > gguf.log 2>&1 || { cat gguf.log; exit 1; }
grep -q "dtype: bfloat16" gguf.log && grep -q "bytes_per_weight: 2.0" gguf.log || { cat gguf.log; exit 1; }
pipeline bfloat16 auto > auto.toml
"$vhost" run auto.toml > auto.log 2>&1 || { cat auto.log; exit 1; }
[ "$(text gguf.log)" = "$(text auto.log)" ] || { echo "the GGUF decodes differently from its folder:"; diff <(text gguf.log) <(text auto.log); exit 1; }
# The serving engine (continuous batching) on the mapped GGUF: the same text.
pipeline m.gguf auto 48 4 > engine.toml
"$vhost" run engine.toml > engine.log 2>&1 || { cat engine.log; exit 1; }
grep -q "max_batch: 4" engine.log || { echo "the engine did not run:"; cat engine.log; exit 1; }
[ "$(text engine.log)" = "$(text gguf.log)" ] || { echo "the engine decodes the GGUF differently:"; diff <(text engine.log) <(text gguf.log); exit 1; }
# decode_dtype = "bfloat16" on the bf16 GGUF: products with bf16-rounded activations on the mapped
# weights (vdpbf16ps where the CPU has AVX512-BF16), no packed copy; info says so.
pipeline m.gguf auto 12 0 bfloat16 > bf.toml
"$vhost" run bf.toml > bf.log 2>&1 || { cat bf.log; exit 1; }
for want in "activations: bfloat16" "decode_dtype: bfloat16 (" "kernel: avx.*, bfloat16 against bfloat16-rounded activations: " \
            "bytes_per_weight: 2.0"; do
  grep -q "$want" bf.log || { echo "decode_dtype bfloat16: info lacks '$want':"; cat bf.log; exit 1; }
done
[ "$(text bf.log | wc -l)" -ge 2 ] || { echo "no text with bf16 activations:"; cat bf.log; exit 1; }
# decode_dtype = "auto" (the default): bf16-rounded activations exactly where vdpbf16ps multiplies
# them (the text of decode_dtype = "bfloat16" above), float32 ones elsewhere (the text of
# decode_dtype = "float32"); a float16 checkpoint stays float32 on every CPU.
pipeline m.gguf auto 12 | sed '/^decode_dtype/d' > dflt.toml
"$vhost" run dflt.toml > dflt.log 2>&1 || { cat dflt.log; exit 1; }
pipeline m.gguf auto 12 0 float32 > f12.toml
"$vhost" run f12.toml > f12.log 2>&1 || { cat f12.log; exit 1; }
if grep -q "decode_dtype: bfloat16 (vdpbf16ps" bf.log; then want="decode_dtype: bfloat16 (vdpbf16ps" same=bf.log
else want="decode_dtype: float32 (bfloat16 weights)" same=f12.log; fi
grep -q "$want" dflt.log || { echo "decode_dtype auto: info lacks '$want':"; cat dflt.log; exit 1; }
[ "$(text dflt.log)" = "$(text $same)" ] ||
  { echo "decode_dtype auto decodes differently from $same:"; diff <(text dflt.log) <(text $same); exit 1; }
pipeline float16 auto 4 | sed '/^decode_dtype/d' > f16d.toml
"$vhost" run f16d.toml > f16d.log 2>&1 || { cat f16d.log; exit 1; }
grep -q "decode_dtype: float32 (float16 weights)" f16d.log || { echo "decode_dtype auto on float16 weights:"; cat f16d.log; exit 1; }
# A Q8_0 GGUF (vhost's own quantizer): decoded from its blocks (1.06 bytes a Q8_0 weight; the
# tiny preset's down projection, 172 wide, stays F32, so 1.8 on the whole). With
# quant_activations = "float32" the same text as the same file dequantised to float32
# (dtype = "float32"); by default (int8: llama.cpp's arithmetic) through the integer kernels.
"$vhost" model convert float16 q8.gguf --quantize q8_0 > convq.log 2>&1 || { cat convq.log; exit 1; }
pipeline q8.gguf auto 12 | sed 's/^dtype = "auto"$/dtype = "auto"\nquant_activations = "float32"/' > q8.toml
"$vhost" run q8.toml > q8.log 2>&1 || { cat q8.log; exit 1; }
grep -q "kernel: avx.*, q8_0 x [0-9]*\( ([0-9]* with eight rows interleaved)\)\? blocks dequantised in registers$" q8.log && grep -q "bytes_per_weight: 1\\." q8.log ||
  { echo "the Q8_0 file is not decoded from its blocks:"; cat q8.log; exit 1; }
pipeline q8.gguf float32 12 > q8f.toml
"$vhost" run q8f.toml > q8f.log 2>&1 || { cat q8f.log; exit 1; }
grep -q "bytes_per_weight: 4.0" q8f.log || { cat q8f.log; exit 1; }
[ "$(text q8.log)" = "$(text q8f.log)" ] || { echo "Q8_0 blocks and their float32 values decode differently:"; diff <(text q8.log) <(text q8f.log); exit 1; }
pipeline q8.gguf auto 12 > q8i.toml
"$vhost" run q8i.toml > q8i.log 2>&1 || { cat q8i.log; exit 1; }
if grep -q "avx512\|avx2" q8i.log; then
  grep -q "kernel: avx.*, q8_0 x [0-9]* ([0-9]* with eight rows interleaved) blocks dequantised in registers; q4_0/q4_1/q5_0/q5_1/q8_0/q4_k/q5_k/q6_k by integer dot products" q8i.log ||
    { echo "the Q8_0 file is not decoded by the integer kernels:"; cat q8i.log; exit 1; }
fi
[ "$(text q8i.log | wc -l)" -ge 2 ] || { echo "no text from the integer kernels:"; cat q8i.log; exit 1; }
# A quant_activations that is neither is refused naming the option.
pipeline q8.gguf auto 12 | sed 's/^dtype = "auto"$/dtype = "auto"\nquant_activations = "int4"/' > q8bad.toml
rc=0; "$vhost" run q8bad.toml > q8bad.log 2>&1 || rc=$?
[ "$rc" = 2 ] && grep -q "quant_activations" q8bad.log || { echo "quant_activations = int4: exit $rc"; cat q8bad.log; exit 1; }
# Malformed: the GGUF cut in the middle of its last tensor.
size=$(stat -c %s m.gguf)
head -c $((size - 100)) m.gguf > cut.gguf
pipeline cut.gguf auto > cut.toml
rc=0; "$vhost" run cut.toml > cut.log 2>&1 || rc=$?
[ "$rc" != 0 ] || { echo "a truncated GGUF was accepted:"; cat cut.log; exit 1; }
grep -q "cut.gguf: tensor '.*': offset .* runs past the end of the file" cut.log || { echo "no clear error:"; cat cut.log; exit 1; }
echo "half_weights: ok (bf16 and f16 weights read in place decode as their float32 copy; the bf16 GGUF too)"
