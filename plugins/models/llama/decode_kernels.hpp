// CPU kernels for a decoding step (one new token per row of a batch), float32.
//
// small_gemm: C = A · Wᵀ for the few rows of a decoding step. A decoding step of a batch multiplies M = batch rows (1..32) by each weight matrix. BLAS gemm
// is built for large M: OpenBLAS repacks the whole weight matrix on every call, which took a
// third of a batch-16 step of the stories15M shape here (bench/generate). This kernel reads the
// weights in their stored layout ([N, K], as torch::linear), once per call, with each row of W
// dotted against every row of A while it is in cache; no copy, no extra memory.
//
// Kept free of torch headers: the model includes it, and so do tests and benchmarks.
#pragma once

#include "quants.hpp"

#include <cstdint>
#include <cstdlib>
#include <memory>

namespace vhost::llama {

// The instruction set small_gemm uses on this CPU: "avx512", "avx2", or "" when neither is
// available (then small_gemm returns false and the caller uses BLAS).
const char* small_gemm_isa();

// Picks the kernels by name: "avx512", "avx2" (where this CPU has it), "" (none: libtorch and
// BLAS), or nullptr (the best this CPU has, the default). For tests and A/B runs; not thread-safe
// with running kernels. Returns false when this CPU cannot run the named ones (then the best
// available below them are used).
bool select_kernels(const char* name);

// The weights of a product: row-major [N, K] elements of one type, read in place (a tensor's
// memory, a memory-mapped checkpoint). bfloat16 and float16 (their bits) are widened to float32
// in registers: half the bytes of float32 weights per call and no copy of them; the products and
// sums stay float32, so the result is the float32 product of the stored weights (up to the order
// of the sums). float16 needs F16C (every AVX2 CPU vhost has met has it).
// Quantized blocks (quants.hpp: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K), K a multiple of
// the block size, are dequantised in registers, block by block, and multiplied in float32: the
// result is the float32 product of the dequantised weights (up to the order of the sums), at
// 0.56 (Q4_0, Q4_K) to 1.06 (Q8_0) bytes a weight.
struct WeightsRef {
  const void* data = nullptr;
  WeightType type = WeightType::f32;
  bool int8 = true;  // the quantized formats: integer dot products allowed (set_int8_activations); false: float32 path
  // bf16 weights: the activations rounded to bfloat16 and multiplied by vdpbf16ps where the CPU has
  // AVX512-BF16 (bf16_dot_isa), llama.cpp's arithmetic for a BF16 model: twice the multiply-adds an
  // instruction of the widened float32 path (batches, prompts). false (the default): widened.
  bool bf16_activations = false;
  WeightsRef() = default;
  WeightsRef(const float* p) : data(p), type(WeightType::f32) {}  // NOLINT: a float matrix as before
  WeightsRef(const void* p, WeightType t, bool int8_ok = true, bool bf16_act = false)
      : data(p), type(t), int8(int8_ok), bf16_activations(bf16_act) {}
};

// C[m, n] = sum_k A[m, k] * W[n, k] for row-major contiguous A [M, K], W [N, K], C [M, N]
// (with `accumulate`, C[m, n] += that sum: a residual connection without another pass).
// Runs on at::get_num_threads() threads. Returns false, touching nothing, when this CPU has no
// kernel for it (see small_gemm_isa; small_gemm_supports for the weight type).
bool small_gemm(const float* A, int64_t M, WeightsRef W, int64_t N, int64_t K, float* C, bool accumulate = false);
// Whether the kernels in use read weights of this type.
bool small_gemm_supports(WeightType t);

// Quantized weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K): by default (where the CPU has AVX2) each call rounds
// the rows of A to Q8_0 blocks (a scale per 32 values, max|a| / 127, and int8; for the K-quants
// ggml's Q8_K, a scale per 256) and multiplies them by the weights' integers in integer dot
// products, scaled by both blocks' scales (Q4_1, Q5_1: plus the block's min times the rounded
// activations' block sum, which llama.cpp's Q8_1 blocks keep in float16): llama.cpp's arithmetic, 2-4x fewer instructions a
// weight than widening the weights to float32 (bench_generate --gemm; bench/large_model.sh). The result is the product with 8-bit-rounded activations (about
// 0.4% of each element's magnitude per block, as llama.cpp's). Off (here for the process, or per
// product with WeightsRef::int8), these types take the float32 path of the others (exact float32
// activations). Not thread-safe with running kernels.
void set_int8_activations(bool on);
// Whether this CPU's integer kernels read Q4_0 / Q4_1 / Q8_0 / Q4_K / Q5_K / Q6_K matrices with eight rows interleaved
// (quants.hpp's pack_x8: WeightType::q4_0x8, q4_1x8, q8_0x8, q4_kx8, q5_kx8, q6_kx8), the layout a model packs such matrices into
// at load. Interleaved weights take the float32 path too (unpacked a group at a time, slower).
bool packs_x8(WeightType plain);
// The integer kernels in use for those types: "avx512vnni" (vpdpbusd on 256-bit vectors; on 512-bit
// ones for eight-row groups from two rows of activations, four for the K-quants), "avx2"
// (vpmaddubsw), or "" (off, or none on this CPU).
const char* int8_dot_isa();
// The kernel that multiplies bf16 weights by bf16-rounded activations (WeightsRef::bf16_activations):
// "avx512bf16" (vdpbf16ps on 512-bit vectors, rows of W read in place), or "" (none on this CPU:
// such products take the widened float32 path).
const char* bf16_dot_isa();

// Several products of the same A, C_i = A · W_iᵀ (W_i [N_i, K], C_i [M, N_i]), in one parallel
// region: the query, key and value projections of a layer.
struct GemmOutput {
  WeightsRef W;
  int64_t N;
  float* C;
};
bool small_gemm_many(const float* A, int64_t M, int64_t K, const GemmOutput* outs, int n);

// LLaMA's MLP input: C = silu(A · Wgᵀ) * (A · Wuᵀ), Wg and Wu [N, K] of one type, C [M, N],
// tile by tile (neither product is written out).
bool gate_up_silu(const float* A, int64_t M, int64_t K, WeightsRef Wg, WeightsRef Wu, int64_t N, float* C);

// decode_attention: one query per row against its KV cache, in place of broadcast-multiply,
// sum, mask, softmax, broadcast-multiply, sum as separate libtorch ops (a dozen passes over
// [B, H, S, hd] temporaries, about 1 ms of a batch-16 step of the stories15M shape here).
struct DecodeAttention {
  const float* q;     // [B, H, hd], rotated
  const float* k;     // [B, KV, capacity, hd]: the cache, slots 0..S-1 filled
  const float* v;     // same layout as k
  const int64_t* pad;  // [B] left padding: slots < pad[b] are not attended (nullptr: none)
  float* out;          // [B, H, hd]
  int64_t B, H, KV, hd, capacity, S;
  float scale;         // 1/sqrt(hd)
  // A bfloat16 cache instead (its bits, same layout; k and v unused): read widened to float32.
  const uint16_t* k16 = nullptr;
  const uint16_t* v16 = nullptr;
};
// Query head h reads kv head h / (H / KV). Softmax in float32, max subtracted, as libtorch's.
// Returns false when this CPU has no kernel (see small_gemm_isa).
bool decode_attention(const DecodeAttention& a);

// out[r, :] = w * (x[r, :] / sqrt(mean(x[r, :]^2) + eps)) for R rows of D floats: LLaMA's RMSNorm
// in float32, as HF computes it (up to the order of the sum of squares).
void rms_norm_rows(const float* x, const float* w, int64_t R, int64_t D, float eps, float* out);

// Greedy decoding: out[r] = the first index of the largest of row r of x [R, n], as libtorch's
// argmax on finite rows (a NaN is never the largest here), on at::get_num_threads() threads.
// 16 x 32000 took 0.14 ms through libtorch's max(-1).
void argmax_rows(const float* x, int64_t R, int64_t n, int64_t* out);

// Sampling one token at temperature t from logits x [n]: the first index whose cumulative weight
// exceeds u * total, weights exp((x[i] - max x) / t) (softmax up to its normalisation), u in
// [0, 1). A vector max, a vector exp, sums of blocks of 16, then one walk over the blocks (in
// double), single-threaded: a batch's rows each take microseconds, where libtorch's softmax and
// cumsum cost a parallel region each.
// Never returns an index of weight 0 while another has weight.
int64_t softmax_draw(const float* x, int64_t n, float inv_t, double u);

// ---- bfloat16 weights (bf16_kernels.cpp): AMX, AVX512-BF16, or widened on AVX-512/AVX2 -----
// A decoding step's products with the weights in bfloat16, packed in AMX tile order, and the
// activations rounded to bfloat16; sums in float32. Half the bytes of float32 weights per step:
// the bf16 decode of docs/models.md. Four kernels read the same packing: AMX tiles (Intel
// Sapphire Rapids and later); vdpbf16ps on 512-bit vectors (AVX512-BF16: AMD Zen 4 and later,
// Intel Cooper Lake and later, and Sapphire Rapids where the kernel grants no tile state); and,
// on any other x86 CPU with AVX-512F or AVX2, the bf16 widened to float32 in registers and
// multiplied in float32 (the bytes of bf16 at the arithmetic rate of float32).

// The weights of C = A · Wᵀ (W [N, K]) in AMX tile order (see bf16_kernels.cpp), zero-padded to
// whole tiles. With silu_pairs, the fused MLP input silu(A · Wgᵀ) * (A · Wuᵀ) (C [M, N]).
class PackedBF16 {
 public:
  PackedBF16(int64_t n, int64_t k, bool gate_up_pairs);
  int64_t N = 0, K = 0, Kp = 0;  // Kp: K rounded up to 32, the row stride of A
  int64_t groups = 0;            // of 64 packed columns
  bool silu_pairs = false;
  uint16_t* data() const { return data_.get(); }

 private:
  struct Free {
    void operator()(uint16_t* p) const { std::free(p); }
  };
  std::shared_ptr<uint16_t> data_{nullptr, Free{}};
};
PackedBF16 pack_bf16(const float* W, int64_t N, int64_t K);
PackedBF16 pack_bf16_gate_up(const float* Wg, const float* Wu, int64_t N, int64_t K);

// out [M, Kp] = x [M, K] rounded to bfloat16 (nearest even), zero past K.
void to_bf16_rows(const float* x, int64_t M, int64_t K, uint16_t* out, int64_t Kp);

// The bfloat16 product kernel in use, best first: "amx" (the CPU has AMX-BF16 and the kernel
// granted the tile state), "avx512bf16", "avx512" and "avx2" (widened to float32), or "" (none:
// bf16_gemm declines and bf16 decoding is off).
const char* bf16_gemm_isa();
// Picks the kernel: nullptr the best this CPU runs, "" none, or one of the names above. False,
// with none picked, when the one asked for cannot run here. For tests and A/B runs.
bool select_bf16_gemm(const char* name);

struct Bf16Output {
  const PackedBF16* W;
  float* C;         // [M, W->N], row-major
  bool accumulate;  // C += the product (not for silu_pairs)
};
// C_i (+)= A · W_iᵀ for each output, A [M, Kp] bfloat16 (the same Kp for all), any M (16 rows
// at a time), on at::get_num_threads() threads in one parallel region. False, touching nothing,
// when no kernel is picked.
bool bf16_gemm(const uint16_t* A, int64_t M, const Bf16Output* outs, int n);

}  // namespace vhost::llama
