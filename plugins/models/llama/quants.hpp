// llama.cpp's (ggml's) quantized block formats, as GGUF files store them: the layouts, a scalar
// dequantiser for each (the reference the decode kernels are tested against, and what a model
// loaded dequantised uses), and the quantisers vhost writes with `model convert --quantize`.
//
// A matrix [N, K] of one of these types is N rows of K / block_elems blocks; a block never crosses
// a row. In a LlamaModel such a matrix is a uint8 tensor [N, K / block_elems, block_bytes]: the
// block size tells the type apart, since no two formats share one (18, 20, 22, 24, 34, 144, 176,
// 210 bytes).
//
// Kept free of torch headers: the decode kernels include it.
#pragma once

#include <cstdint>
#include <string>

namespace vhost::llama {

// The element type of a weight matrix the decode kernels read (decode_kernels.hpp): float32,
// bfloat16 or float16 bits, or blocks of one of the formats below.
// q4_0x8, q8_0x8, q4_kx8, q6_kx8, q5_kx8 and q4_1x8 are Q4_0, Q8_0, Q4_K, Q6_K, Q5_K and Q4_1 matrices with eight rows
// interleaved (below), the layout the decode kernels read fastest; no file stores them.
enum class WeightType : uint8_t { f32, bf16, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, q4_0x8, q8_0x8, q4_kx8, q6_kx8, q5_kx8, q4_1x8 };

// The blocks, byte for byte as ggml lays them out (ggml-common.h); d, dmin, m are float16 bits.
// 32 weights: d * (q - 8), q a nibble: qs[j] holds element j (low nibble) and j + 16 (high).
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[16];
};
// 32 weights: d * q + m.
struct BlockQ4_1 {
  uint16_t d, m;
  uint8_t qs[16];
};
// 32 weights: d * (q - 16), q five bits: the nibbles as Q4_0, bit j of qh (little-endian) the
// fifth bit of element j.
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[16];
};
// 32 weights: d * q + m, q as Q5_0's.
struct BlockQ5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[16];
};
// 32 weights: d * q, q int8.
struct Q8Block {
  uint16_t d;
  int8_t q[32];
};
// 256 weights in 8 sub-blocks of 32: d * sc_i * q - dmin * m_i, q a nibble, the 6-bit sc_i and m_i
// packed in scales (get_scale_min_k4). Sub-blocks 2c and 2c + 1 are the low and high nibbles of
// qs[32c .. 32c + 32).
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[128];
};
// As Q4_K with a fifth bit: bit i of qh[l] is that of element l of sub-block i.
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
// 256 weights in 16 groups of 16: d * scales_g * (q - 32), q six bits (four in ql, two in qh; see
// dequantize).
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 &&
                  sizeof(BlockQ5_1) == 24 && sizeof(Q8Block) == 34 && sizeof(BlockQ4_K) == 144 &&
                  sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210,
              "ggml's block sizes");

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block's scales[12] (ggml's
// get_scale_min_k4).
inline void scale_min_k4(int j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}
// The other way: eight 6-bit scales and mins (0..63) into scales[12].
inline void put_scale_min_k4(const int sc[8], const int m[8], uint8_t* q) {
  for (int s = 0; s < 4; ++s) {
    q[s] = static_cast<uint8_t>(sc[s] | (sc[s + 4] >> 4) << 6);
    q[s + 4] = static_cast<uint8_t>(m[s] | (m[s + 4] >> 4) << 6);
    q[s + 8] = static_cast<uint8_t>((sc[s + 4] & 15) | (m[s + 4] & 15) << 4);
  }
}

// Eight rows of Q4_0 or Q8_0 interleaved: block b of rows 8g .. 8g + 7 of a matrix as one
// BlockQ4_0x8 / BlockQ8_0x8 (the group's blocks in order, groups in order). d[j] is row j's scale
// and qs holds the rows' quants four bytes at a time: qs[32 c + 4 j + i] = row j's qs[4 c + i].
// A 32-byte load at 32 c then has row j's bytes 4c .. 4c + 3 in its int32 lane j, so one integer
// dot product instruction against four activation bytes broadcast to every lane sums four
// products of each of the eight rows, and eight rows' block sums come out in one vector: no
// horizontal sums, one scale multiply for eight rows (the layout llama.cpp repacks Q4_0 into on
// x86; vhost's own packing, decode_kernels.hpp). Same bytes as the eight rows' blocks.
struct BlockQ4_0x8 {
  uint16_t d[8];
  uint8_t qs[128];
};
struct BlockQ8_0x8 {
  uint16_t d[8];
  int8_t qs[256];
};
// Eight rows of Q4_1: BlockQ4_0x8's layout with the rows' mins after their scales.
struct BlockQ4_1x8 {
  uint16_t d[8], m[8];
  uint8_t qs[128];
};
// Eight rows of Q4_K: superblock b of rows 8g .. 8g + 7 (groups in order, superblocks in order).
// The quants as BlockQ4_0x8's, qs[32 c + 4 j + i] = row j's qs[4 c + i] (c = 0..31), so int32 lane
// j of a 32-byte load holds row j's bytes: low nibbles of sub-block 2 (c / 8), high ones of
// sub-block 2 (c / 8) + 1. The rows' 6-bit sub-block scales and mins unpacked from ggml's 12 bytes
// into one order each that vector instructions read without shuffles, in the same 96 bytes: the
// scale of sub-block s of row j is value v = 8 s + j (eight rows' scales of a sub-block are eight
// consecutive values), the min of sub-block s = 2 p + t of row j is value v = 16 p + 2 j + t (a
// pair of sub-blocks' mins side by side, as vpmaddwd multiplies them by the activations' sums).
// Value v's low four bits are the low (v < 32) or high (v >= 32) nibble of sl / ml [v % 32], its
// top two bits are bits 2 (v / 16) .. 2 (v / 16) + 1 of sh / mh [v % 16].
struct BlockQ4_Kx8 {
  uint16_t d[8], dmin[8];
  uint8_t sl[32], ml[32], sh[16], mh[16];
  uint8_t qs[1024];
};
// Eight rows of Q5_K: BlockQ4_Kx8's fields, and the rows' fifth bits interleaved the same way,
// qh[32 c + 4 j + i] = row j's qh[4 c + i] (c = 0..7): lane j of the 32-byte load at 32 c holds the
// fifth bits of the elements whose nibbles the loads at 32 (8 s + c) hold, bit s of each byte for
// sub-block s. qh before qs: the kernel reads it beside the first 256 bytes of qs.
struct BlockQ5_Kx8 {
  uint16_t d[8], dmin[8];
  uint8_t sl[32], ml[32], sh[16], mh[16];
  uint8_t qh[256];
  uint8_t qs[1024];
};
// Eight rows of Q6_K: d[j] row j's, scales[8 g + j] = row j's scale of group g (the eight rows'
// scales of a group side by side), then ql and qh in 32-byte chunks of four bytes of each row in
// turn as the quants above, in the order the kernel reads them, so that it reads the block from
// front to back (jumping between ql and qh, it outran the hardware prefetchers: 14 GB/s against
// 34 for the plain blocks): for t = 0..15 (h = t / 8, c = t % 8), q[96 t ..] holds ql's bytes
// 4 (16 h + c) .. + 3 of each row (q[96 t + 4 j + i] = row j's ql[4 (16 h + c) + i]), then ql's
// bytes 4 (16 h + 8 + c) .., then qh's bytes 4 (8 h + c) ...
struct BlockQ6_Kx8 {
  uint16_t d[8];
  int8_t scales[128];
  uint8_t q[1536];
};
static_assert(sizeof(BlockQ4_0x8) == 8 * sizeof(BlockQ4_0) && sizeof(BlockQ8_0x8) == 8 * sizeof(Q8Block) &&
                  sizeof(BlockQ4_1x8) == 8 * sizeof(BlockQ4_1) &&
                  sizeof(BlockQ4_Kx8) == 8 * sizeof(BlockQ4_K) && sizeof(BlockQ5_Kx8) == 8 * sizeof(BlockQ5_K) &&
                  sizeof(BlockQ6_Kx8) == 8 * sizeof(BlockQ6_K),
              "a packed block holds eight blocks' bytes");
// The plain types that have an interleaved layout, each beside it.
struct X8Pair {
  WeightType plain, packed;
};
inline constexpr X8Pair kX8Pairs[] = {{WeightType::q4_0, WeightType::q4_0x8},
                                      {WeightType::q8_0, WeightType::q8_0x8},
                                      {WeightType::q4_k, WeightType::q4_kx8},
                                      {WeightType::q5_k, WeightType::q5_kx8},
                                      {WeightType::q6_k, WeightType::q6_kx8},
                                      {WeightType::q4_1, WeightType::q4_1x8}};
// The interleaved type of a plain one (q4_0 -> q4_0x8, ...), and back; f32 where there is none.
constexpr WeightType packed_x8(WeightType plain) {
  for (const X8Pair& p : kX8Pairs)
    if (p.plain == plain) return p.packed;
  return WeightType::f32;
}
constexpr WeightType plain_of_x8(WeightType packed) {
  for (const X8Pair& p : kX8Pairs)
    if (p.packed == packed) return p.plain;
  return WeightType::f32;
}
// N rows (a multiple of 8) of K / block_elems blocks of a plain type into its interleaved layout
// at dst (the same number of bytes), or back (unpack_x8: dst gets the plain rows). With `order`,
// packed row r is src's row order[r] (a reordering of the rows on the way; N entries). Throws
// std::invalid_argument for another type or N not a multiple of 8.
void pack_x8(WeightType plain, const void* src, int64_t N, int64_t K, void* dst, const int64_t* order = nullptr);
void unpack_x8(WeightType packed, const void* src, int64_t N, int64_t K, void* dst);

struct QuantFormat {
  WeightType type;
  uint32_t ggml_type;  // GGUF's tensor type number
  const char* name;    // "q4_0", "q4_k", ... (GGUF / llama-quantize spell them in capitals)
  int64_t block_elems;
  int64_t block_bytes;
};
// The format of a quantized type, by WeightType, GGUF type number, or block size in bytes;
// nullptr for a float type or an unknown one.
const QuantFormat* quant_format(WeightType t);
const QuantFormat* quant_format_ggml(uint32_t ggml_type);
const QuantFormat* quant_format_bytes(int64_t block_bytes);
const QuantFormat* quant_format_name(const std::string& name);  // "q4_0" or "Q4_0"

// n weights (a multiple of the block size) from their blocks, as ggml's dequantize_row_*.
void dequantize(WeightType t, const void* blocks, int64_t n, float* out);

// The blocks of x [n] (n a multiple of the block size), computed as the `gguf` Python package's
// quantizer (and llama.cpp's reference one) computes them, in float32 arithmetic, so a file vhost
// writes is byte for byte the one they write: q8_0, q4_0, q4_1, q5_0, q5_1; and q4_k, q5_k, q6_k
// as llama.cpp's reference K-quantizer (quantize_row_q4_K_ref / _q5_K_ref / _q6_K_ref, without an
// importance matrix: its per-sub-block scale search; the gguf package has no K-quantizer).
// Returns false for a type it cannot make (the eight-row packed ones).
bool quantize(WeightType t, const float* x, int64_t n, uint8_t* out);

// The formats quantize writes, by name ("q4_k" or "Q4_K"); nullptr for any other.
const QuantFormat* quant_format_writable(const std::string& name);
// The format a matrix whose rows are not whole blocks of f is written in instead, as llama.cpp's
// quantizer falls back: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; f itself for the others.
const QuantFormat* quant_fallback(const QuantFormat* f);

float fp16_to_float(uint16_t h);
uint16_t fp16_from_float(float f);  // round to nearest even, as F16C and numpy

}  // namespace vhost::llama
