// See decode_kernels.hpp. The kernels are written once with GCC/Clang vector extensions and compiled
// twice, inside functions with target("avx512f") and target("avx2,fma"); the one for this CPU is
// picked at run time, so the binary still runs (through BLAS) on a CPU with neither.
//
// A tile is MR rows of A against NR rows of W: MR*NR vector accumulators over k, V floats wide.
// Each accumulator holds V partial sums of one dot product; a shuffle tree then sums the V
// accumulators of a tile into one vector of V finished dot products (about 3 instructions per
// dot product instead of a full horizontal sum each).
#include "decode_kernels.hpp"
#include "vec_math.hpp"

#include <ATen/Parallel.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// __builtin_shufflevector: GCC 12 and Clang. Older compilers and other CPUs build without the
// kernels, and the model keeps libtorch's ops.
#if defined(__x86_64__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))
#define VHOST_SMALL_GEMM_X86 1
#endif

namespace vhost::llama {

// Weights for softmax_draw: returns max x; unless that is infinite, w[i] = exp((x[i] - max) * inv_t).
using ExpFn = float (*)(const float* x, int64_t n, float inv_t, float* w);

#ifdef VHOST_SMALL_GEMM_X86
namespace {

// One level of the shuffle tree. The two inputs, side by side, hold 2V/G accumulators of G
// partial sums each; output lane j adds partial j%(G/2) of accumulator j/(G/2) to the partial
// G/2 lanes further on, leaving 2V/G accumulators of G/2 partial sums each in one vector.
constexpr int tree_lane(int j, int G, bool upper) { return (j / (G / 2)) * G + j % (G / 2) + (upper ? G / 2 : 0); }

template <int G, typename vec, std::size_t... J>
VHOST_INLINE vec tree_step(vec x, vec y, std::index_sequence<J...>) {
  return __builtin_shufflevector(x, y, tree_lane(static_cast<int>(J), G, false)...) +
         __builtin_shufflevector(x, y, tree_lane(static_cast<int>(J), G, true)...);
}

// a[0..G) hold one accumulator each (at the top level G = V); on return lane j of a[0] is the
// full sum of accumulator j.
template <int V, int G, typename vec>
VHOST_INLINE void tree_reduce(vec* a) {
  if constexpr (G >= 2) {
#pragma GCC unroll 16
    for (int i = 0; i < G / 2; ++i) a[i] = tree_step<G>(a[2 * i], a[2 * i + 1], std::make_index_sequence<V>{});
    tree_reduce<V, G / 2>(a);
  }
}

// The largest and the sum of a vector's V lanes.
template <int V, typename vec>
VHOST_INLINE float lanes_max(vec x) {
  float l[V];
  std::memcpy(l, &x, sizeof l);
  float m = l[0];
  for (int j = 1; j < V; ++j) m = std::max(m, l[j]);
  return m;
}
template <int V, typename vec>
VHOST_INLINE float lanes_sum(vec x) {
  float l[V];
  std::memcpy(l, &x, sizeof l);
  float s = 0;
  for (int j = 0; j < V; ++j) s += l[j];
  return s;
}

// C[r, c] for r < MR, c < NR: A and W advanced to the tile's first rows; both have row stride K.
// With `add` the sums are added to C instead of stored.
// TW: the weights' element, float or bfloat16 bits (widened to float in registers).
// kAhead: `next` is the tile's own rows some way ahead, asked for into L2 (prefetcht2), not L1.
template <int V, int MR, int NR, typename TW, bool kAhead = false>
VHOST_INLINE void tile(const float* A, const TW* W, int64_t K, float* C, int64_t ldc, bool add,
                       const TW* next = nullptr, int pf_rows = NR) {
  typedef float vec __attribute__((vector_size(4 * V)));
  static_assert(MR * NR <= V, "a tile has at most V accumulators");
  vec acc[V] = {};
  const int64_t Kv = K - K % V;
  for (int64_t k = 0; k < Kv; k += V) {
    if (next)
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c)
        if (c < pf_rows) {
          if constexpr (kAhead)
            __builtin_prefetch(next + c * K + k, 0, 1);
          else
            __builtin_prefetch(next + c * K + k);
        }
    vec w[NR];
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) w[c] = load_vec<V, vec>(W + c * K + k);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      vec a;
      std::memcpy(&a, A + r * K + k, sizeof(vec));
      // In a register: else GCC folds the load into each of the NR multiply-adds, NR loads of
      // the same vector (AVX2 4x2: 10 loads for 8 multiply-adds, more than the 2 a cycle).
      __asm__("" : "+v"(a));
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) acc[r * NR + c] += a * w[c];
    }
  }
  if (Kv < K) {  // the last K % V of each row, zero-padded to a vector: no scalar tail per output
    const std::size_t rest = static_cast<std::size_t>(K - Kv);
    vec w[NR];
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) {
      TW part[V] = {};
      std::memcpy(part, W + c * K + Kv, rest * sizeof(TW));
      w[c] = load_vec<V, vec>(part);
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      vec a{};
      std::memcpy(&a, A + r * K + Kv, rest * sizeof(float));
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) acc[r * NR + c] += a * w[c];
    }
  }
  tree_reduce<V, V>(acc);
  float sums[V];
  std::memcpy(sums, &acc[0], sizeof sums);
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) C[r * ldc + c] = add ? C[r * ldc + c] + sums[r * NR + c] : sums[r * NR + c];
}

// bfloat16 weights taken as (k, k+1) pairs: each 32-bit lane of a row of W holds k's bf16 in its
// low half and k+1's in its high half, so shifted up 16 bits it is k's float and masked to its
// high half it is k+1's: 2V weights of a row are one load and two instructions (widening V at a
// time, vpmovzxwd and a shift, takes four). A comes pair-split (split_pairs): each 2V of a row as
// its V values at even k, then its V at odd k, zeros past K. Lane j of an accumulator adds k = 2j
// and 2j + 1 of each 2V: tile()'s products summed in another order.
//
// And k in spans (pair_span): a tile reads its rows of A for every column tile, and 16 rows of
// K = 4096 floats (256 KiB) are not in L1: they streamed from L2 at 4 x 32 bytes a k step, more than
// L2 gives (Zen 3: 16 rows of 11008 x 4096 bf16 on one core 21 ms, ~66% of the multiply-adds'
// peak, however cheap the widening). A span's rows of A are one contiguous block of at most
// kSpanBytes (split_pairs lays A out span after span; rows of a span 16 KiB apart would share L1's
// sets), which stays in L1 while a few column tiles take turns on it. Between spans a tile parks
// its MR*NR vector sums in `carry` and picks them up again: each lane adds the same products in
// the same order as one pass over k, so the result is bit for bit the same however k is split, for
// any number of rows.
//
// Rows [0, MR) of A from k0 on, at `A`: A's blocks of 2V, each block's M rows side by side
// (split_pairs), so row r of the tile at A + r * 2V and the next block `stride` (M * 2V) floats on.
// W advanced to the tile's first row, row stride K. Up to k0 + len; `last`: the span reaching K
// (then the sums go to C; else to carry).
template <int V, int MR, int NR>
VHOST_INLINE void tile_pairs(const float* A, int64_t stride, int64_t len, const uint16_t* W, int64_t K, float* C,
                             int64_t ldc, bool add, const uint16_t* next, int pf_rows, int64_t k0, bool last,
                             float* carry) {
  typedef float vec __attribute__((vector_size(4 * V)));
  typedef typename Widen<V>::word uvec;
  static_assert(MR * NR <= 2 * V, "a tile has at most 2V accumulators");
  vec acc[2 * V] = {};
  if (k0 > 0)
#pragma GCC unroll 16
    for (int i = 0; i < MR * NR; ++i) std::memcpy(&acc[i], carry + i * V, sizeof(vec));
  const uvec high = uvec{} + 0xffff0000u;
  // The 2V of k at w[c] (each column's) and a: k's even half, then its odd half, each column's
  // weights loaded again for the second (from L1), and A's vector in a register for the NR
  // multiply-adds.
  const auto step = [&](const float* a, const uint16_t* const* w) {
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {
      vec wv[NR];
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) {
        uvec u;
        std::memcpy(&u, w[c], sizeof u);
        u = half ? (u & high) : (u << 16);
        std::memcpy(&wv[c], &u, sizeof u);
      }
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        vec av;
        std::memcpy(&av, a + r * 2 * V + half * V, sizeof av);
        __asm__("" : "+v"(av));  // one load (see tile())
#pragma GCC unroll 8
        for (int c = 0; c < NR; ++c) acc[r * NR + c] += av * wv[c];
      }
    }
  };
  const int64_t Kb = K - K % (2 * V), end = last ? Kb : k0 + len;
  const float* a = A;
  int64_t k = k0;
#if defined(__x86_64__)
  if constexpr (V == 8 && MR == 4 && NR == 3) {
    // AVX2's 4x3 tile in assembly: its 12 sums, 3 columns' weights and A's vector take all 16
    // registers, and GCC 12's allocation of the loop above kept several A vectors live at once
    // and spilled sums to the stack (one thread, 16 rows of 11008 x 4096: 23 ms, against 21 for
    // the 4x2 tile before it; this loop alone, A from L2: 4.9 G multiply-adds a second, 4.2 before).
    vec c00 = acc[0], c01 = acc[1], c02 = acc[2], c10 = acc[3], c11 = acc[4], c12 = acc[5], c20 = acc[6],
        c21 = acc[7], c22 = acc[8], c30 = acc[9], c31 = acc[10], c32 = acc[11];
    const uint16_t *w0 = W, *w1 = W + K, *w2 = W + 2 * K;
    for (; k < end; k += 2 * V, a += stride) {
      if (next)
#pragma GCC unroll 8
        for (int c = 0; c < NR; ++c)
          if (c < pf_rows) __builtin_prefetch(next + c * K + k);
// Row r's 8 values at byte offset `at` of a, times the 3 columns' weights in ymm12-14.
#define VHOST_FMA3(at, r)                           \
  "vmovups " #at "(%[a]), %%ymm15\n\t"              \
  "vfmadd231ps %%ymm15, %%ymm12, %[c" #r "0]\n\t"   \
  "vfmadd231ps %%ymm15, %%ymm13, %[c" #r "1]\n\t"   \
  "vfmadd231ps %%ymm15, %%ymm14, %[c" #r "2]\n\t"
      __asm__(
          "vmovdqu %[w0], %%ymm12\n\t"
          "vpslld $16, %%ymm12, %%ymm12\n\t"
          "vmovdqu %[w1], %%ymm13\n\t"
          "vpslld $16, %%ymm13, %%ymm13\n\t"
          "vmovdqu %[w2], %%ymm14\n\t"
          "vpslld $16, %%ymm14, %%ymm14\n\t"
          VHOST_FMA3(0, 0) VHOST_FMA3(64, 1) VHOST_FMA3(128, 2) VHOST_FMA3(192, 3)
          "vmovdqu %[hi], %%ymm15\n\t"
          "vpand %[w0], %%ymm15, %%ymm12\n\t"
          "vpand %[w1], %%ymm15, %%ymm13\n\t"
          "vpand %[w2], %%ymm15, %%ymm14\n\t"
          VHOST_FMA3(32, 0) VHOST_FMA3(96, 1) VHOST_FMA3(160, 2) VHOST_FMA3(224, 3)
          : [c00] "+x"(c00), [c01] "+x"(c01), [c02] "+x"(c02), [c10] "+x"(c10), [c11] "+x"(c11), [c12] "+x"(c12),
            [c20] "+x"(c20), [c21] "+x"(c21), [c22] "+x"(c22), [c30] "+x"(c30), [c31] "+x"(c31), [c32] "+x"(c32)
          : [a] "r"(a), [w0] "m"(*reinterpret_cast<const uvec*>(w0 + k)), [w1] "m"(*reinterpret_cast<const uvec*>(w1 + k)),
            [w2] "m"(*reinterpret_cast<const uvec*>(w2 + k)), [hi] "m"(high),
            "m"(*reinterpret_cast<const float(*)[2 * V * MR]>(a))
          : "xmm12", "xmm13", "xmm14", "xmm15");
#undef VHOST_FMA3
    }
    acc[0] = c00, acc[1] = c01, acc[2] = c02, acc[3] = c10, acc[4] = c11, acc[5] = c12;
    acc[6] = c20, acc[7] = c21, acc[8] = c22, acc[9] = c30, acc[10] = c31, acc[11] = c32;
  }
#endif
  for (; k < end; k += 2 * V, a += stride) {
    if (next)
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c)
        if (c < pf_rows) __builtin_prefetch(next + c * K + k);
    const uint16_t* w[NR];
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) w[c] = W + c * K + k;
    step(a, w);
  }
  if (!last) {
#pragma GCC unroll 16
    for (int i = 0; i < MR * NR; ++i) std::memcpy(carry + i * V, &acc[i], sizeof(vec));
    return;
  }
  if (Kb < K) {  // the last K % 2V of each row, zero-padded (A's copy is zero there already)
    uint16_t part[NR][2 * V] = {};
    const uint16_t* w[NR];
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) {
      std::memcpy(part[c], W + c * K + Kb, static_cast<std::size_t>(K - Kb) * sizeof(uint16_t));
      w[c] = part[c];
    }
    step(a, w);
  }
  tree_reduce<V, V>(acc);
  float sums[2 * V];
  std::memcpy(sums, &acc[0], V * sizeof(float));
  if constexpr (MR * NR > V) {
    tree_reduce<V, V>(acc + V);
    std::memcpy(sums + V, &acc[V], V * sizeof(float));
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) C[r * ldc + c] = add ? C[r * ldc + c] + sums[r * NR + c] : sums[r * NR + c];
}

template <int V>
struct I8;
template <>
struct I8<16> {
  typedef int8_t b __attribute__((vector_size(16), may_alias, aligned(1)));
  typedef uint8_t u __attribute__((vector_size(16), may_alias, aligned(1)));
  typedef int32_t i __attribute__((vector_size(64)));
};
template <>
struct I8<8> {
  typedef int8_t b __attribute__((vector_size(8), may_alias, aligned(1)));
  typedef uint8_t u __attribute__((vector_size(8), may_alias, aligned(1)));
  typedef int32_t i __attribute__((vector_size(32)));
};

// V bytes widened to V int32: sign- or zero-extended by one vpmovsxbd / vpmovzxbd from memory.
// (GCC 12 scalarised __builtin_convertvector of int8 to int32 vectors here: a mov, shift and
// insert per element, 1.1 s a 7B step, not 0.2.)
template <int V>
VHOST_INLINE typename I8<V>::i load_s8(const int8_t* p) {
  typename I8<V>::i q;
#if defined(__x86_64__)
  __asm__("vpmovsxbd %1, %0" : "=v"(q) : "m"(*reinterpret_cast<const typename I8<V>::b*>(p)));
#else
  typename I8<V>::b b8;
  std::memcpy(&b8, p, sizeof b8);
  q = __builtin_convertvector(b8, typename I8<V>::i);
#endif
  return q;
}
template <int V>
VHOST_INLINE typename I8<V>::i load_u8(const uint8_t* p) {
  typename I8<V>::i q;
#if defined(__x86_64__)
  __asm__("vpmovzxbd %1, %0" : "=v"(q) : "m"(*reinterpret_cast<const typename I8<V>::u*>(p)));
#else
  typename I8<V>::u b8;
  std::memcpy(&b8, p, sizeof b8);
  q = __builtin_convertvector(b8, typename I8<V>::i);
#endif
  return q;
}
// 0, 1, ..., V - 1 as int32 lanes.
template <int V>
VHOST_INLINE typename I8<V>::i lane_index() {
  typename I8<V>::i x;
  for (int j = 0; j < V; ++j) x[j] = j;
  return x;
}

// An f16's value (a block's scale), exactly: subnormals, infinities and NaN included.
VHOST_INLINE float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    const float f = static_cast<float>(man) * 5.9604644775390625e-08f;
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Dequantising a quantized block in registers (quants.hpp has the layouts and the scalar
// reference): Quant<B>::group<V> writes elements [32 g, 32 g + 32) of block b as 32 / V float
// vectors, integers widened and converted in registers and scaled (d * q + bias as one
// multiply-add). Blocks of 256 (the K-quants) are 8 groups, each with its own scale.
template <typename B>
struct Quant;
template <>
struct Quant<Q8Block> {
  static constexpr int kElems = 32;
  template <int V, typename vec>
  static VHOST_INLINE void group(const Q8Block& b, int, vec* w) {
    const float d = half_to_float(b.d);
#pragma GCC unroll 4
    for (int h = 0; h < 32 / V; ++h) w[h] = __builtin_convertvector(load_s8<V>(b.q + h * V), vec) * d;
  }
};
// Elements h * V + lane of a 32-element block of nibbles qs[16] (low nibbles are elements 0..15,
// high 16..31), as int32 lanes.
template <int V>
VHOST_INLINE typename I8<V>::i nibbles(const uint8_t* qs, int h) {
  constexpr int H = 32 / V;
  const auto x = load_u8<V>(qs + (h % (H / 2)) * V);
  return h < H / 2 ? (x & 15) : (x >> 4);
}
// The fifth bits of elements h * V + lane of a block with qh (32 bits, bit j for element j).
template <int V>
VHOST_INLINE typename I8<V>::i fifth_bits(const uint8_t* qh8, int h) {
  uint32_t qh;
  std::memcpy(&qh, qh8, 4);
  typename I8<V>::i x = typename I8<V>::i{} + static_cast<int32_t>(qh >> (h * V));
  return ((x >> lane_index<V>()) & 1) << 4;
}
// Q4_0, Q4_1, Q5_0, Q5_1: nibbles (with Q5's fifth bits) times d, plus the block's min m (the
// _1 formats) or minus d times the offset (8 or 16).
template <typename B, bool kMin, bool kFifth>
struct Quant32 {
  static constexpr int kElems = 32;
  template <int V, typename vec>
  static VHOST_INLINE void group(const B& b, int, vec* w) {
    const float d = half_to_float(b.d);
    float bias;
    if constexpr (kMin)
      bias = half_to_float(b.m);
    else
      bias = (kFifth ? -16 : -8) * d;
#pragma GCC unroll 4
    for (int h = 0; h < 32 / V; ++h) {
      auto q = nibbles<V>(b.qs, h);
      if constexpr (kFifth) q |= fifth_bits<V>(b.qh, h);
      w[h] = __builtin_convertvector(q, vec) * d + bias;
    }
  }
};
template <>
struct Quant<BlockQ4_0> : Quant32<BlockQ4_0, false, false> {};
template <>
struct Quant<BlockQ4_1> : Quant32<BlockQ4_1, true, false> {};
template <>
struct Quant<BlockQ5_0> : Quant32<BlockQ5_0, false, true> {};
template <>
struct Quant<BlockQ5_1> : Quant32<BlockQ5_1, true, true> {};
template <typename B, bool kFifth>
struct QuantK45 {
  static constexpr int kElems = 256;
  template <int V, typename vec>
  static VHOST_INLINE void group(const B& b, int g, vec* w) {
    int sc, m;
    scale_min_k4(g, b.scales, sc, m);
    const float d = half_to_float(b.d) * sc, bias = -half_to_float(b.dmin) * m;
    const uint8_t* qs = b.qs + 32 * (g / 2);
#pragma GCC unroll 4
    for (int h = 0; h < 32 / V; ++h) {
      const auto x = load_u8<V>(qs + h * V);
      auto q = g % 2 ? x >> 4 : x & 15;
      if constexpr (kFifth) q |= ((load_u8<V>(b.qh + h * V) >> g) & 1) << 4;
      w[h] = __builtin_convertvector(q, vec) * d + bias;
    }
  }
};
template <>
struct Quant<BlockQ4_K> : QuantK45<BlockQ4_K, false> {};
template <>
struct Quant<BlockQ5_K> : QuantK45<BlockQ5_K, true> {};
template <>
struct Quant<BlockQ6_K> {
  static constexpr int kElems = 256;
  template <int V, typename vec>
  static VHOST_INLINE void group(const BlockQ6_K& b, int g, vec* w) {
    const int c = g / 4, s = g % 4;  // 128-element half, and quarter of it
    const uint8_t* ql = b.ql + 64 * c + (s & 1) * 32;
    const uint8_t* qh = b.qh + 32 * c;
    const float d = half_to_float(b.d);
#pragma GCC unroll 4
    for (int h = 0; h < 32 / V; ++h) {
      const auto x = load_u8<V>(ql + h * V);
      const auto lo = s >= 2 ? x >> 4 : x & 15;
      const auto q = (lo | (((load_u8<V>(qh + h * V) >> (2 * s)) & 3) << 4)) - 32;
      w[h] = __builtin_convertvector(q, vec) * (d * b.scales[8 * c + 2 * s + h * V / 16]);
    }
  }
};

template <typename TW>
constexpr bool kQuantized = !std::is_same_v<TW, float> && !std::is_same_v<TW, uint16_t> && !std::is_same_v<TW, Half>;

// Elements of TW per row of W: K, or K / (block size) blocks.
template <typename TW>
constexpr int64_t w_row(int64_t K) {
  if constexpr (kQuantized<TW>)
    return K / Quant<TW>::kElems;
  else
    return K;
}

// tile() for quantized weights: each block dequantised in registers, 32 weights of each of the
// NR rows at a time, then multiplied into A as float32. The result is the float32 product of the
// dequantised weights (up to the order of the sums).
template <int V, int MR, int NR, typename B>
VHOST_INLINE void tile_quant(const float* A, const B* W, int64_t K, float* C, int64_t ldc, bool add, const B* next,
                             int pf_rows) {
  typedef float vec __attribute__((vector_size(4 * V)));
  static_assert(MR * NR <= V, "a tile has at most V accumulators");
  constexpr int E = Quant<B>::kElems, H = 32 / V;  // weights a block, vectors a group of 32
  vec acc[V] = {};
  const int64_t nb = K / E;
  for (int64_t b = 0; b < nb; ++b) {
    if (next)
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c)
        if (c < pf_rows)
#pragma GCC unroll 4
          for (int off = 0; off < int(sizeof(B)); off += 64)
            __builtin_prefetch(reinterpret_cast<const char*>(next + c * nb + b) + off);
#pragma GCC unroll 2
    for (int g = 0; g < E / 32; ++g) {
      vec w[NR][H];
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) Quant<B>::template group<V, vec>(W[c * nb + b], g, w[c]);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
        for (int h = 0; h < H; ++h) {
          vec a;
          std::memcpy(&a, A + r * K + b * E + g * 32 + h * V, sizeof a);
#pragma GCC unroll 8
          for (int c = 0; c < NR; ++c) acc[r * NR + c] += a * w[c][h];
        }
    }
  }
  tree_reduce<V, V>(acc);
  float sums[V];
  std::memcpy(sums, &acc[0], sizeof sums);
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) C[r * ldc + c] = add ? C[r * ldc + c] + sums[r * NR + c] : sums[r * NR + c];
}

// Whether the tiles of weights TW at V floats a vector are tile_pairs: bfloat16 on AVX2. (On
// AVX-512 bfloat16 keeps tile(): the pairs were measured on a Zen 3 only.)
template <int V, typename TW>
constexpr bool kPairs = std::is_same_v<TW, uint16_t> && V == 8;

// One row of A against bfloat16 weights in tile() (AVX-512): each tile asks for its own rows
// kAheadBf16 elements (2 KiB) ahead into L2, as row_bf16 does (bf16_dot.inc), instead of for the
// next column tile into L1: a batch-1 step streams the weights from memory, and the hardware
// prefetchers alone do not run far enough ahead. On the Zen 4, 7B bf16 at batch 1, float32
// activations, alternating with the L1 form 18 times: faster in 15, median 1.11x (docs/models.md);
// asking once a 64-byte line instead of once a vector measured slower (4 of 4).
constexpr int64_t kAheadBf16 = 1024;
template <int V, typename TW>
constexpr bool kAheadRows = std::is_same_v<TW, uint16_t> && !kPairs<V, TW>;

// The share of k a tile takes (tile_pairs; the others take all of K).
struct Span {
  int64_t k0 = 0, len = 0, stride = 0;
  bool last = true;
  float* carry = nullptr;
  bool ahead = false;  // tile(): `next` is the tile's own rows ahead (kAhead)
};

// A tile of mr <= MR rows by nr <= NR columns, with the sizes made compile-time constants.
template <int V, int MR, int NR, typename TW>
VHOST_INLINE void any_tile(int mr, int nr, const float* A, const TW* W, int64_t K, float* C, int64_t ldc, bool acc,
                           const TW* next, int pf_rows, const Span& span) {
  if constexpr (MR > 1)
    if (mr < MR) return any_tile<V, MR - 1, NR>(mr, nr, A, W, K, C, ldc, acc, next, pf_rows, span);
  if constexpr (NR > 1)
    if (nr < NR) return any_tile<V, MR, NR - 1>(mr, nr, A, W, K, C, ldc, acc, next, pf_rows, span);
  if constexpr (kQuantized<TW>)
    tile_quant<V, MR, NR>(A, W, K, C, ldc, acc, next, pf_rows);
  else if constexpr (kPairs<V, TW>)
    tile_pairs<V, MR, NR>(A, span.stride, span.len, W, K, C, ldc, acc, next, pf_rows, span.k0, span.last, span.carry);
  else if constexpr (std::is_same_v<TW, uint16_t>) {
    if (span.ahead)
      tile<V, MR, NR, TW, true>(A, W, K, C, ldc, acc, next, pf_rows);
    else
      tile<V, MR, NR>(A, W, K, C, ldc, acc, next, pf_rows);
  } else
    tile<V, MR, NR>(A, W, K, C, ldc, acc, next, pf_rows);
}

// ---- integer dot products: activations rounded to 8 bits, as llama.cpp computes ----------
// For Q4_0, Q5_0 and Q8_0 weights the float path above spends most of a batch-1 step converting
// weights to float (7B Q4_0 here: 0.23-0.29 s a token, llama.cpp 0.12). These kernels instead
// round each row of A to Q8_0 blocks once per call (llama.cpp's quantize_row_q8_0: a scale
// max|a| / 127 and int8 per 32 values), and multiply 32 int8 weights by 32 int8 activations in
// one instruction (vpdpbusd with AVX512-VNNI, else vpmaddubsw + vpmaddwd), scaled by the two
// blocks' scales into float32 sums: llama.cpp's own arithmetic, so the result is the product of
// the dequantised weights with the 8-bit-rounded activations (not the float32 ones), ~1e-3
// relative (see decode_kernels.hpp).
struct QuantRows {  // A [M, K] as Q8_0 blocks (for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and Q8_K blocks (for Q4_K, Q5_K, Q6_K)
  const int8_t* q;     // [M, K]
  const float* d;      // [M, K / 32]
  const int32_t* sum;  // [M, K / 32]: the sum of each block's int8
  int64_t K;
  const int8_t* qk = nullptr;  // [M, K]: Q8_K, one scale per 256 (ggml's quantize_row_q8_K)
  const float* dk = nullptr;   // [M, K / 256]
  const int16_t* bs = nullptr;  // [M, K / 32]: sums of 32 of qk
  const int16_t* b16 = nullptr;  // [M, K / 16]: sums of 16 of qk
  const float* ds = nullptr;     // [M, K / 32]: (max|a| / 127) * sum rounded to float16, ggml's Q8_1 s (Q4_1, Q5_1 mins)
  // Rounded to bfloat16 (for bf16 weights on vdpbf16ps: bf16_dot.inc), chunk-major: K in chunks of
  // kBf16Chunk, each chunk's M rows side by side, so element (m, k) of chunk c (n = its length) is at
  // c * kBf16Chunk * M + m * n + k % kBf16Chunk. (One row: row-major.)
  const uint16_t* h = nullptr;
};
constexpr int64_t kBf16Chunk = 1024;
constexpr int kIntNR = 4;  // weight rows in a tile of the integer kernels (its rows of A: int_kernels.inc)

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace int_avx2 {
#define VHOST_INT_VNNI 0
#include "int_kernels.inc"
#undef VHOST_INT_VNNI
}  // namespace int_avx2
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
namespace int_vnni {
#define VHOST_INT_VNNI 1
#include "int_kernels.inc"
#undef VHOST_INT_VNNI
}  // namespace int_vnni
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")

namespace bf16_dot {
#include "bf16_dot.inc"
}  // namespace bf16_dot
#pragma GCC pop_options
#endif

// The spans of k the bfloat16 tiles take for M rows (tile_pairs): the longest multiple of the pair
// block P (2V) whose M rows of floats fit kSpanBytes, or all of K (padded to P) for one row (its A
// is read once a tile as it is, and the weights, its real cost, then stream row after row).
// (One thread, 16 rows of 11008 x 4096 bf16 on Zen 3: 18.8 ms in spans of 16 KiB, 18.7 in 32 KiB,
// 21.4 in one span.)
constexpr int64_t kSpanBytes = 16 << 10;
constexpr int64_t kSpanTiles = 8;  // column tiles taking turns on a span (their carries: 8 x 1.5 KiB, AVX2 at 16 rows)
inline int64_t pair_span(int64_t M, int64_t K, int64_t P) {
  const int64_t Kp = (K + P - 1) / P * P, kc = kSpanBytes / (4 * M) / P * P;
  // (Past ~64 rows a span would be a few steps of k between parking the sums: one span then.)
  return M < 2 || kc < 4 * P ? Kp : std::min(Kp, kc);
}

// The spans of k a product of M rows by weights TW runs in: for bfloat16 pair_span's (A laid out
// span after span by split_pairs), else one span of K (A as it is); and the column tiles taking
// turns on each span.
template <int V, typename TW>
struct Spans {
  int64_t Kp, kc, tiles, row;  // row: floats from one row of A to the next
  Spans(int64_t M, int64_t K, int64_t t0, int64_t t1) {
    if constexpr (kPairs<V, TW>) {
      Kp = (K + 2 * V - 1) / (2 * V) * (2 * V);
      kc = pair_span(M, K, 2 * V);
      row = 2 * V;
    } else {
      Kp = kc = row = K;
    }
    tiles = kc < Kp ? kSpanTiles : std::max<int64_t>(1, t1 - t0);
  }
};

// One row of A against float32 weights with short rows (K <= kRowByRowK): W's rows one after
// another, each summed in one vector as tile() sums it (lane j adds k = j, j + V, ... in order; the
// last K % V zero-padded), V rows' sums reduced by tree_reduce as tile() reduces its own: each
// sum is bit for bit tile()'s, so a batch's row stays the row alone. emit(n, sums, count) for
// rows [n, n + count).
//
// Why: a tile's NR rows side by side are NR streams a row (1152 bytes at K = 288) apart, which
// this machine's prefetchers served at half the rate of one stream, software prefetch or not; one
// row after another is a single sequential stream. Zen 4, 2 threads, 37 MB of float32 weights
// streamed from memory (a stand-alone harness, the two ways alternating 4 times): K = 288 28-30
// against 15-20 GB/s, K = 512 38-40 against 20-24, K = 768 34-39 against 24-26, K = 1024 26-28
// against 22-24, K = 2048 even (17-25 against 23-26), K = 4096 slower on one thread (14-17 against
// 16-21: one chain of V-wide sums a row waits on the multiply-adds' latency). In vhost,
// `bench_generate --gemm 32000 288 --only f32` (stories15M's output layer), one row: 9.8, 18.5 ->
// 28.2, 37.7 GB/s (AVX-512), 15.4, 19.3 -> 32.4, 31.2 (`--kernels avx2`); stories15M float32 batch 1
// 237-330 -> 331-445 tokens/s (builds alternating 5 times; docs/models.md).
constexpr int64_t kRowByRowK = 1024;
template <int V, typename F>
VHOST_INLINE void row_by_row(const float* A, const float* W, int64_t K, int64_t n0, int64_t n1, F&& emit) {
  typedef float vec __attribute__((vector_size(4 * V)));
  const int64_t Kv = K - K % V;
  const std::size_t rest = static_cast<std::size_t>(K - Kv);
  vec a_rest{};
  if (rest) std::memcpy(&a_rest, A + Kv, rest * sizeof(float));
  for (int64_t n = n0; n < n1; n += V) {
    const int count = static_cast<int>(std::min<int64_t>(V, n1 - n));
    vec acc[V] = {};
    for (int i = 0; i < count; ++i) {
      const float* w = W + (n + i) * K;
      vec sum{};
      for (int64_t k = 0; k < Kv; k += V) {
        vec a;
        std::memcpy(&a, A + k, sizeof(vec));
        sum += a * load_vec<V, vec>(w + k);
      }
      if (rest) {
        float part[V] = {};
        std::memcpy(part, w + Kv, rest * sizeof(float));
        sum += a_rest * load_vec<V, vec>(part);
      }
      acc[i] = sum;
    }
    tree_reduce<V, V>(acc);
    float sums[V];
    std::memcpy(sums, &acc[0], sizeof sums);
    emit(n, sums, count);
  }
}
// Whether a product of M rows takes row_by_row (callers: float32 weights only, by if constexpr).
inline bool use_row_by_row(int64_t M, int64_t K) { return M == 1 && K <= kRowByRowK; }

// Column tiles [t0, t1) (NR rows of W each), every row of A against each while it is in cache;
// with k in spans (bfloat16, Spans), kSpanTiles column tiles at a time take turns on each span.
template <int V, int MR, int NR, typename TW>
VHOST_INLINE void column_tiles(const float* A, int64_t M, const TW* W, int64_t N, int64_t K, float* C, bool acc,
                               int64_t t0, int64_t t1) {
  if constexpr (std::is_same_v<TW, float>)
    if (use_row_by_row(M, K))
      return row_by_row<V>(A, W, K, t0 * NR, std::min(N, t1 * NR), [&](int64_t n, const float* sums, int count) {
        for (int i = 0; i < count; ++i) C[n + i] = acc ? C[n + i] + sums[i] : sums[i];
      });
  const int64_t wr = w_row<TW>(K);
  const int64_t blocks = (M + MR - 1) / MR;
  const Spans<V, TW> sp(M, K, t0, t1);
  constexpr int64_t kCarry = MR * NR * V;  // floats a tile parks between spans
  const bool ahead = kAheadRows<V, TW> && M == 1;
  thread_local std::vector<float> carry;
  if (sp.kc < sp.Kp) carry.resize(static_cast<std::size_t>(sp.tiles * blocks * kCarry));
  for (int64_t s0 = t0; s0 < t1; s0 += sp.tiles) {
    const int64_t s1 = std::min(t1, s0 + sp.tiles);
    for (int64_t k0 = 0; k0 < sp.Kp; k0 += sp.kc) {
      const int64_t len = std::min(sp.kc, sp.Kp - k0);
      const float* Ak = A + k0 * M;  // the span's first block (bfloat16), else A
      for (int64_t t = s0; t < s1; ++t) {
        const int64_t n = t * NR;
        const int nr = static_cast<int>(std::min<int64_t>(NR, N - n));
        // The row tiles pull the next column tile's weights toward the cache meanwhile, each its
        // share of the NR rows (one row of A on bfloat16 weights: the tile's own rows ahead).
        const TW* next = ahead ? W + n * wr + kAheadBf16 : n + 2 * NR <= N ? W + (n + NR) * wr : nullptr;
        for (int64_t m = 0, bi = 0; m < M; m += MR, ++bi) {
          const int r0 = static_cast<int>(NR * bi / blocks), r1 = static_cast<int>(NR * (bi + 1) / blocks);
          const Span span{k0, len, M * sp.row, k0 + len >= sp.Kp,
                          sp.kc < sp.Kp ? carry.data() + ((t - s0) * blocks + bi) * kCarry : nullptr, ahead};
          any_tile<V, MR, NR>(static_cast<int>(std::min<int64_t>(MR, M - m)), nr, Ak + m * sp.row, W + n * wr, K,
                              C + m * N + n, N, acc, next && r1 > r0 ? next + r0 * wr : nullptr, r1 - r0, span);
        }
      }
    }
  }
}

// Column tiles [t0, t1) of both Wg and Wu: each tile's two MR x NR blocks of sums, then
// C = silu(gate) * up for them, so the gate and up projections never reach memory. k in spans as
// in column_tiles.
template <int V, int MR, int NR, typename TW>
VHOST_INLINE void gate_up_tiles(const float* A, int64_t M, const TW* Wg, const TW* Wu, int64_t N, int64_t K, float* C,
                                int64_t t0, int64_t t1) {
  typedef float vec __attribute__((vector_size(4 * V)));
  static_assert(MR * NR == V || MR * NR == 2 * V || (kPairs<V, TW> && MR * NR < 2 * V),
                "one tile's sums fill whole vectors");
  constexpr int kSums = MR * NR > V ? 2 * V : V;
  if constexpr (std::is_same_v<TW, float>)
    if (use_row_by_row(M, K)) {  // V rows of each at a time, then silu(gate) * up as below
      for (int64_t n = t0 * NR, end = std::min(N, t1 * NR); n < end; n += V) {
        float g[V] = {}, u[V] = {};
        const int64_t e = std::min(end, n + V);
        row_by_row<V>(A, Wg, K, n, e, [&](int64_t, const float* sums, int count) { std::memcpy(g, sums, count * sizeof(float)); });
        row_by_row<V>(A, Wu, K, n, e, [&](int64_t, const float* sums, int count) { std::memcpy(u, sums, count * sizeof(float)); });
        vec gv, uv;
        std::memcpy(&gv, g, sizeof gv);
        std::memcpy(&uv, u, sizeof uv);
        gv = silu_mul<V>(gv, uv);
        std::memcpy(g, &gv, sizeof gv);
        std::memcpy(C + n, g, static_cast<std::size_t>(e - n) * sizeof(float));
      }
      return;
    }
  const int64_t wr = w_row<TW>(K);
  const int64_t blocks = (M + MR - 1) / MR;
  const Spans<V, TW> sp(M, K, t0, t1);
  constexpr int64_t kCarry = MR * NR * V;
  const bool ahead = kAheadRows<V, TW> && M == 1;  // as in column_tiles
  thread_local std::vector<float> carry;
  if (sp.kc < sp.Kp) carry.resize(static_cast<std::size_t>(sp.tiles * blocks * 2 * kCarry));
  for (int64_t s0 = t0; s0 < t1; s0 += sp.tiles) {
    const int64_t s1 = std::min(t1, s0 + sp.tiles);
    for (int64_t k0 = 0; k0 < sp.Kp; k0 += sp.kc) {
      const int64_t len = std::min(sp.kc, sp.Kp - k0);
      const bool last = k0 + len >= sp.Kp;
      const float* Ak = A + k0 * M;
      for (int64_t t = s0; t < s1; ++t) {
        const int64_t n = t * NR;
        const int nr = static_cast<int>(std::min<int64_t>(NR, N - n));
        const bool more = n + 2 * NR <= N;  // the row tiles prefetch the next column tile, each its share
        for (int64_t m = 0, bi = 0; m < M; m += MR, ++bi) {
          const int mr = static_cast<int>(std::min<int64_t>(MR, M - m));
          const int r0 = static_cast<int>(NR * bi / blocks), r1 = static_cast<int>(NR * (bi + 1) / blocks);
          const bool pf = (more || ahead) && r1 > r0;
          // (Asked for past a matrix's end near its last rows: prefetches do not fault.)
          const TW* ng = !pf ? nullptr : ahead ? Wg + n * wr + kAheadBf16 : Wg + (n + NR + r0) * wr;
          const TW* nu = !pf ? nullptr : ahead ? Wu + n * wr + kAheadBf16 : Wu + (n + NR + r0) * wr;
          float g[kSums] = {}, u[kSums] = {};
          const float* Am = Ak + m * sp.row;
          float* cg = sp.kc < sp.Kp ? carry.data() + ((t - s0) * blocks + bi) * 2 * kCarry : nullptr;
          any_tile<V, MR, NR>(mr, nr, Am, Wg + n * wr, K, g, NR, false, ng, r1 - r0,
                              Span{k0, len, M * sp.row, last, cg, ahead});
          any_tile<V, MR, NR>(mr, nr, Am, Wu + n * wr, K, u, NR, false, nu, r1 - r0,
                              Span{k0, len, M * sp.row, last, cg ? cg + kCarry : nullptr, ahead});
          if (!last) continue;  // the sums parked until the last span
          for (int h = 0; h < kSums; h += V) {
            vec gv, uv;
            std::memcpy(&gv, g + h, sizeof gv);
            std::memcpy(&uv, u + h, sizeof uv);
            gv = silu_mul<V>(gv, uv);
            std::memcpy(g + h, &gv, sizeof gv);
          }
          for (int r = 0; r < mr; ++r)
            for (int c = 0; c < nr; ++c) C[(m + r) * N + n + c] = g[r * NR + c];
        }
      }
    }
  }
}

// The kernels for one weight type, called with the weights as void* (cast back inside).
using RangeFn = void (*)(const float*, int64_t, const void*, int64_t, int64_t, float*, bool, int64_t, int64_t);
using GateUpFn = void (*)(const float*, int64_t, const void*, const void*, int64_t, int64_t, float*, int64_t, int64_t);
using AttendFn = void (*)(const DecodeAttention&, int64_t, int64_t);

// One query row q [hd] against keys K and values V [S, hd] from slot first on, any head size:
// softmax weights in p, the weighted sum of values in o.
template <typename T>
VHOST_INLINE void attend_row(const float* q, const T* K, const T* V, int64_t first, int64_t S, int64_t hd,
                             float scale, float* p, float* o) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t s = first; s < S; ++s) {
    float d = 0;
#pragma omp simd reduction(+ : d)
    for (int64_t i = 0; i < hd; ++i) d += q[i] * as_float(K[s * hd + i]);
    p[s] = d * scale;
    mx = std::max(mx, p[s]);
  }
  float sum = 0;
  for (int64_t s = first; s < S; ++s) sum += p[s] = std::exp(p[s] - mx);
  std::fill(o, o + hd, 0.0f);
  for (int64_t s = first; s < S; ++s) {
    const float w = p[s] / sum;
#pragma omp simd
    for (int64_t i = 0; i < hd; ++i) o[i] += w * as_float(V[s * hd + i]);
  }
}

// One query row against its keys and values, head size D vectors of V floats: scores for V keys
// at once (D multiply-adds per key, then the shuffle tree sums V keys' partials together), a
// vector exp, and the weighted sum of values with the 1/sum applied once at the end.
template <int V, int D, typename T>
VHOST_INLINE void attend_row_vec(const float* q, const T* K, const T* Vv, int64_t first, int64_t S, float scale,
                                 float* p, float* o) {
  typedef float vec __attribute__((vector_size(4 * V)));
  constexpr int64_t hd = int64_t(V) * D;
  vec qv[D];
  for (int d = 0; d < D; ++d) std::memcpy(&qv[d], q + d * V, sizeof(vec));
  auto dot = [&](int64_t s) {
    vec acc{};
#pragma GCC unroll 16
    for (int d = 0; d < D; ++d) {
      acc += qv[d] * load_vec<V, vec>(K + s * hd + d * V);
    }
    return acc;
  };
  // Scores V keys at a time; the last block's missing keys score -inf (weight 0), so no key goes
  // through a scalar path. p has V floats of room past S for that block.
  const float inf = std::numeric_limits<float>::infinity();
  vec vmx = vec{} - inf;
  for (int64_t s = first; s < S; s += V) {
    const int64_t rem = std::min<int64_t>(V, S - s);
    vec acc[V];
    if (rem == V) {
#pragma GCC unroll 16
      for (int j = 0; j < V; ++j) acc[j] = dot(s + j);
    } else {
      for (int j = 0; j < V; ++j) acc[j] = j < rem ? dot(s + j) : vec{};
    }
    tree_reduce<V, V>(acc);
    acc[0] *= scale;
    std::memcpy(p + s, &acc[0], sizeof(vec));
    for (int64_t j = rem; j < V; ++j) p[s + j] = -inf;
    std::memcpy(&acc[0], p + s, sizeof(vec));
    vmx = vmx > acc[0] ? vmx : acc[0];
  }
  const float mx = lanes_max<V>(vmx);
  vec sumv{};
  for (int64_t s = first; s < S; s += V) {
    vec x;
    std::memcpy(&x, p + s, sizeof x);
    x = exp_nonpositive<V>(x - mx);
    std::memcpy(p + s, &x, sizeof x);
    sumv += x;
  }
  const float sum = lanes_sum<V>(sumv);
  // The weighted sum of values: U keys at a time into U sets of accumulators, so that the
  // multiply-adds of consecutive keys do not wait on each other (a single chain waited 4 cycles a
  // key at head size 16).
  constexpr int U = D <= 2 ? 4 : D <= 4 ? 2 : 1;
  vec acc[U][D] = {};
  int64_t s = first;
  for (; s + U <= S; s += U) {
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const vec w = vec{} + p[s + u];
#pragma GCC unroll 16
      for (int d = 0; d < D; ++d) {
        acc[u][d] += w * load_vec<V, vec>(Vv + (s + u) * hd + d * V);
      }
    }
  }
  for (; s < S; ++s) {
    const vec w = vec{} + p[s];
#pragma GCC unroll 16
    for (int d = 0; d < D; ++d) {
      acc[0][d] += w * load_vec<V, vec>(Vv + s * hd + d * V);
    }
  }
  for (int u = 1; u < U; ++u)
    for (int d = 0; d < D; ++d) acc[0][d] += acc[u][d];
  const float inv = 1.0f / sum;
  for (int d = 0; d < D; ++d) {
    acc[0][d] *= inv;
    std::memcpy(o + d * V, &acc[0][d], sizeof(vec));
  }
}

// Rows [r0, r1) of B*H (row r is batch r / H, query head r % H): the vector kernel when the
// head size is whole vectors of V floats (up to 8), else the scalar one. T: the cache's element,
// float or bfloat16 bits.
template <int V, typename T>
VHOST_INLINE void attend_rows(const DecodeAttention& a, const T* kc, const T* vc, int64_t r0, int64_t r1) {
  const int64_t hd = a.hd, rep = a.H / a.KV, D = hd % V == 0 ? hd / V : 0;
  std::vector<float> p(static_cast<std::size_t>(a.S + V));  // attend_row_vec writes whole vectors
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / a.H, kv = (r % a.H) / rep;
    const float* q = a.q + r * hd;
    const T* K = kc + (b * a.KV + kv) * a.capacity * hd;
    const T* Vv = vc + (b * a.KV + kv) * a.capacity * hd;
    const int64_t first = a.pad ? std::min(std::max<int64_t>(a.pad[b], 0), a.S - 1) : 0;  // its own slot always counts
    float* o = a.out + r * hd;
    switch (D) {
      case 1: attend_row_vec<V, 1>(q, K, Vv, first, a.S, a.scale, p.data(), o); break;
      case 2: attend_row_vec<V, 2>(q, K, Vv, first, a.S, a.scale, p.data(), o); break;
      case 3: attend_row_vec<V, 3>(q, K, Vv, first, a.S, a.scale, p.data(), o); break;
      case 4: attend_row_vec<V, 4>(q, K, Vv, first, a.S, a.scale, p.data(), o); break;
      case 5: attend_row_vec<V, 5>(q, K, Vv, first, a.S, a.scale, p.data(), o); break;
      case 6: attend_row_vec<V, 6>(q, K, Vv, first, a.S, a.scale, p.data(), o); break;
      case 7: attend_row_vec<V, 7>(q, K, Vv, first, a.S, a.scale, p.data(), o); break;
      case 8: attend_row_vec<V, 8>(q, K, Vv, first, a.S, a.scale, p.data(), o); break;
      default: attend_row(q, K, Vv, first, a.S, hd, a.scale, p.data(), o);
    }
  }
}
template <int V>
VHOST_INLINE void attend_rows(const DecodeAttention& a, int64_t r0, int64_t r1) {
  if (a.k16)
    attend_rows<V>(a, a.k16, a.v16, r0, r1);
  else
    attend_rows<V>(a, a.k, a.v, r0, r1);
}

// 16 floats a vector, 4x4 tiles: 16 accumulators + 4 weight vectors + 1 of A in 32 registers.
template <typename TW>
__attribute__((target("avx512f,f16c"))) void range_avx512(const float* A, int64_t M, const void* W, int64_t N, int64_t K,
                                                     float* C, bool acc, int64_t t0, int64_t t1) {
  column_tiles<16, 4, 4>(A, M, static_cast<const TW*>(W), N, K, C, acc, t0, t1);
}
template <typename TW>
__attribute__((target("avx512f,f16c"))) void gate_up_avx512(const float* A, int64_t M, const void* Wg, const void* Wu,
                                                       int64_t N, int64_t K, float* C, int64_t t0, int64_t t1) {
  gate_up_tiles<16, 4, 4>(A, M, static_cast<const TW*>(Wg), static_cast<const TW*>(Wu), N, K, C, t0, t1);
}
__attribute__((target("avx512f"))) void attend_avx512(const DecodeAttention& a, int64_t r0, int64_t r1) {
  attend_rows<16>(a, r0, r1);
}

// 8 floats a vector, 4x2 tiles: 8 accumulators + 2 + 1 in 16 registers. bfloat16: 4x3 tiles, 12
// accumulators + 3 + 1 (tile_pairs): Zen 3's multiply-adds (latency 4, two a cycle) ran at ~84%
// of their peak on 8 independent sums and at the peak on 12, and each vector of A loaded serves 3.
template <typename TW>
constexpr int kAvx2NR = std::is_same_v<TW, uint16_t> ? 3 : 2;
template <typename TW>
__attribute__((target("avx2,fma,f16c"))) void range_avx2(const float* A, int64_t M, const void* W, int64_t N, int64_t K,
                                                   float* C, bool acc, int64_t t0, int64_t t1) {
  column_tiles<8, 4, kAvx2NR<TW>>(A, M, static_cast<const TW*>(W), N, K, C, acc, t0, t1);
}
template <typename TW>
__attribute__((target("avx2,fma,f16c"))) void gate_up_avx2(const float* A, int64_t M, const void* Wg, const void* Wu,
                                                     int64_t N, int64_t K, float* C, int64_t t0, int64_t t1) {
  gate_up_tiles<8, 4, kAvx2NR<TW>>(A, M, static_cast<const TW*>(Wg), static_cast<const TW*>(Wu), N, K, C, t0, t1);
}
__attribute__((target("avx2,fma"))) void attend_avx2(const DecodeAttention& a, int64_t r0, int64_t r1) {
  attend_rows<8>(a, r0, r1);
}

// Weights for softmax_draw (see ExpFn), V lanes at a time.
template <int V>
VHOST_INLINE float exp_weights(const float* x, int64_t n, float inv_t, float* w) {
  typedef float vec __attribute__((vector_size(4 * V)));
  vec vmx = vec{} - std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + V <= n; i += V) {
    vec v;
    std::memcpy(&v, x + i, sizeof v);
    vmx = vmx > v ? vmx : v;
  }
  float mx = lanes_max<V>(vmx);
  for (; i < n; ++i) mx = std::max(mx, x[i]);
  if (!std::isfinite(mx)) return mx;
  for (i = 0; i + V <= n; i += V) {
    vec v;
    std::memcpy(&v, x + i, sizeof v);
    v = exp_nonpositive<V>((v - mx) * inv_t);
    std::memcpy(w + i, &v, sizeof v);
  }
  for (; i < n; ++i) w[i] = std::exp((x[i] - mx) * inv_t);
  return mx;
}
// The first index of the largest of x[0..n) (NaN never is; 0 when nothing is larger than -inf).
// Each lane keeps its first largest; ties between lanes go to the lower index.
template <int V>
VHOST_INLINE int64_t argmax_vec(const float* x, int64_t n) {
  typedef float vec __attribute__((vector_size(4 * V)));
  typedef int32_t ivec __attribute__((vector_size(4 * V)));
  int32_t lanes[V];
  for (int j = 0; j < V; ++j) lanes[j] = j;
  ivec lane, at = ivec{};
  std::memcpy(&lane, lanes, sizeof lane);
  vec best = vec{} - std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + V <= n && i + V <= INT32_MAX; i += V) {
    vec v;
    std::memcpy(&v, x + i, sizeof v);
    const ivec more = v > best;
    best = more ? v : best;
    at = more ? lane + static_cast<int32_t>(i) : at;
  }
  float b[V];
  int32_t a[V];
  std::memcpy(b, &best, sizeof b);
  std::memcpy(a, &at, sizeof a);
  float m = b[0];
  int64_t idx = a[0];
  for (int j = 1; j < V; ++j)
    if (b[j] > m || (b[j] == m && a[j] < idx)) m = b[j], idx = a[j];
  for (; i < n; ++i)
    if (x[i] > m) m = x[i], idx = i;
  return idx;
}
__attribute__((target("avx512f"))) int64_t argmax_avx512(const float* x, int64_t n) { return argmax_vec<16>(x, n); }
__attribute__((target("avx2,fma"))) int64_t argmax_avx2(const float* x, int64_t n) { return argmax_vec<8>(x, n); }

__attribute__((target("avx512f"))) float exp_avx512(const float* x, int64_t n, float inv_t, float* w) {
  return exp_weights<16>(x, n, inv_t, w);
}
__attribute__((target("avx2,fma"))) float exp_avx2(const float* x, int64_t n, float inv_t, float* w) {
  return exp_weights<8>(x, n, inv_t, w);
}

constexpr int kWeightTypes = static_cast<int>(WeightType::q4_1x8) + 1;

using IntRangeFn = void (*)(const QuantRows&, int64_t, const void*, int64_t, float*, bool, int64_t, int64_t);
using IntGateUpFn = void (*)(const QuantRows&, int64_t, const void*, const void*, int64_t, float*, int64_t, int64_t);

struct Isa {
  const char* name;
  int64_t nr;  // columns (rows of W) per tile
  AttendFn attend;
  ExpFn exp;
  int64_t (*argmax)(const float*, int64_t);
  // By WeightType; nullptr where this CPU lacks an instruction the type needs (F16C for the
  // float16 of f16 weights and of every block's scale).
  RangeFn range[kWeightTypes];
  GateUpFn gate_up[kWeightTypes];
  // The integer kernels by WeightType (the 32-blocks, the K-quants, their eight-row packings; nullptr for the rest), and their ISA.
  const char* int_name = "";
  IntRangeFn int_range[kWeightTypes] = {};
  IntGateUpFn int_gate_up[kWeightTypes] = {};
  // bfloat16 weights against bfloat16-rounded activations (vdpbf16ps: AVX512-BF16), in
  // int_range/int_gate_up[bf16]; "" where this CPU has no such instruction.
  const char* bf16_dot_name = "";
  // The float kernels of bfloat16 weights read A pair-split in blocks of this many (2V; split_pairs)
  // where they are tile_pairs (0: A as it is), in tiles of nr_bf16 columns.
  int64_t pair_block = 0, nr_bf16 = 0;
};

// The integer kernels of one namespace (int_avx2, int_vnni) into s.
#define VHOST_INT_KERNELS(s, ns, label)                                                         \
  do {                                                                                          \
    (s).int_name = label;                                                                       \
    (s).int_range[static_cast<int>(WeightType::q8_0)] = ns::range_int<Q8Block>;                 \
    (s).int_range[static_cast<int>(WeightType::q4_0)] = ns::range_int<BlockQ4_0>;               \
    (s).int_range[static_cast<int>(WeightType::q5_0)] = ns::range_int<BlockQ5_0>;               \
    (s).int_range[static_cast<int>(WeightType::q4_1)] = ns::range_int<BlockQ4_1>;               \
    (s).int_range[static_cast<int>(WeightType::q5_1)] = ns::range_int<BlockQ5_1>;               \
    (s).int_gate_up[static_cast<int>(WeightType::q4_1)] = ns::gate_up_int<BlockQ4_1>;           \
    (s).int_gate_up[static_cast<int>(WeightType::q5_1)] = ns::gate_up_int<BlockQ5_1>;           \
    (s).int_gate_up[static_cast<int>(WeightType::q8_0)] = ns::gate_up_int<Q8Block>;             \
    (s).int_gate_up[static_cast<int>(WeightType::q4_0)] = ns::gate_up_int<BlockQ4_0>;           \
    (s).int_gate_up[static_cast<int>(WeightType::q5_0)] = ns::gate_up_int<BlockQ5_0>;           \
    (s).int_range[static_cast<int>(WeightType::q4_k)] = ns::range_int<BlockQ4_K>;               \
    (s).int_gate_up[static_cast<int>(WeightType::q4_k)] = ns::gate_up_int<BlockQ4_K>;           \
    (s).int_range[static_cast<int>(WeightType::q5_k)] = ns::range_int<BlockQ5_K>;               \
    (s).int_gate_up[static_cast<int>(WeightType::q5_k)] = ns::gate_up_int<BlockQ5_K>;           \
    (s).int_range[static_cast<int>(WeightType::q6_k)] = ns::range_int<BlockQ6_K>;               \
    (s).int_gate_up[static_cast<int>(WeightType::q6_k)] = ns::gate_up_int<BlockQ6_K>;           \
    (s).int_range[static_cast<int>(WeightType::q4_0x8)] = ns::range_x8<BlockQ4_0x8>;            \
    (s).int_gate_up[static_cast<int>(WeightType::q4_0x8)] = ns::gate_up_x8<BlockQ4_0x8>;        \
    (s).int_range[static_cast<int>(WeightType::q8_0x8)] = ns::range_x8<BlockQ8_0x8>;            \
    (s).int_gate_up[static_cast<int>(WeightType::q8_0x8)] = ns::gate_up_x8<BlockQ8_0x8>;        \
    (s).int_range[static_cast<int>(WeightType::q4_kx8)] = ns::range_x8<BlockQ4_Kx8>;            \
    (s).int_gate_up[static_cast<int>(WeightType::q4_kx8)] = ns::gate_up_x8<BlockQ4_Kx8>;        \
    (s).int_range[static_cast<int>(WeightType::q6_kx8)] = ns::range_x8<BlockQ6_Kx8>;            \
    (s).int_gate_up[static_cast<int>(WeightType::q6_kx8)] = ns::gate_up_x8<BlockQ6_Kx8>;        \
    (s).int_range[static_cast<int>(WeightType::q5_kx8)] = ns::range_x8<BlockQ5_Kx8>;            \
    (s).int_gate_up[static_cast<int>(WeightType::q5_kx8)] = ns::gate_up_x8<BlockQ5_Kx8>;        \
    (s).int_range[static_cast<int>(WeightType::q4_1x8)] = ns::range_x8<BlockQ4_1x8>;            \
    (s).int_gate_up[static_cast<int>(WeightType::q4_1x8)] = ns::gate_up_x8<BlockQ4_1x8>;        \
  } while (0)

bool g_int8_activations = true;  // set_int8_activations

// The float32 path of interleaved weights (integer products off: set_int8_activations(false), or
// a product's WeightsRef::int8 false): each group of eight rows unpacked to its plain blocks in a
// buffer of the thread and multiplied by the plain type's kernel (defined after isa()).
template <WeightType PT>
void range_packed_float(const float* A, int64_t M, const void* W, int64_t N, int64_t K, float* C, bool acc, int64_t t0,
                        int64_t t1);
template <WeightType PT>
void gate_up_packed_float(const float* A, int64_t M, const void* Wg, const void* Wu, int64_t N, int64_t K, float* C,
                          int64_t t0, int64_t t1);

// The kernels for every weight type at one width, in WeightType's order.
#define VHOST_BY_TYPE(range, gate_up)                                                                              \
  {range<float>, range<uint16_t>, range<Half>, range<Q8Block>, range<BlockQ4_0>, range<BlockQ4_1>, range<BlockQ5_0>, \
   range<BlockQ5_1>, range<BlockQ4_K>, range<BlockQ5_K>, range<BlockQ6_K>,                                         \
   range_packed_float<WeightType::q4_0x8>, range_packed_float<WeightType::q8_0x8>,                                 \
   range_packed_float<WeightType::q4_kx8>, range_packed_float<WeightType::q6_kx8>,                                  \
   range_packed_float<WeightType::q5_kx8>, range_packed_float<WeightType::q4_1x8>},                                \
  {                                                                                                                \
    gate_up<float>, gate_up<uint16_t>, gate_up<Half>, gate_up<Q8Block>, gate_up<BlockQ4_0>, gate_up<BlockQ4_1>,   \
        gate_up<BlockQ5_0>, gate_up<BlockQ5_1>, gate_up<BlockQ4_K>, gate_up<BlockQ5_K>, gate_up<BlockQ6_K>,        \
        gate_up_packed_float<WeightType::q4_0x8>, gate_up_packed_float<WeightType::q8_0x8>,                        \
        gate_up_packed_float<WeightType::q4_kx8>, gate_up_packed_float<WeightType::q6_kx8>,                        \
        gate_up_packed_float<WeightType::q5_kx8>, gate_up_packed_float<WeightType::q4_1x8>                         \
  }
static_assert(static_cast<int>(WeightType::q6_k) == 10 && static_cast<int>(WeightType::q6_kx8) == 14 &&
                  static_cast<int>(WeightType::q5_kx8) == 15 && static_cast<int>(WeightType::q4_1x8) == 16,
              "VHOST_BY_TYPE lists the types in WeightType's order");

Isa pick(const char* name) {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool best = name == nullptr;
  const std::string want = name ? name : "";
  unsigned a = 0, b = 0, c = 0, d = 0;
  const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
  const bool vnni = avx512 && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vnni");
  if (avx512 && (best || want == "avx512")) {
    Isa s{"avx512", 4, attend_avx512, exp_avx512, argmax_avx512, VHOST_BY_TYPE(range_avx512, gate_up_avx512)};
    if (vnni)
      VHOST_INT_KERNELS(s, int_vnni, "avx512vnni");
    else if (f16c)
      VHOST_INT_KERNELS(s, int_avx2, "avx2");
    s.nr_bf16 = s.nr;
    if (vnni && __builtin_cpu_supports("avx512bf16")) {
      s.bf16_dot_name = "avx512bf16";
      s.int_range[static_cast<int>(WeightType::bf16)] = bf16_dot::range_bf16;
      s.int_gate_up[static_cast<int>(WeightType::bf16)] = bf16_dot::gate_up_bf16;
    }
    return s;
  }
  if (avx2 && (best || want == "avx2" || want == "avx512")) {
    Isa s{"avx2", 2, attend_avx2, exp_avx2, argmax_avx2, VHOST_BY_TYPE(range_avx2, gate_up_avx2)};
    s.pair_block = 16, s.nr_bf16 = kAvx2NR<uint16_t>;
    if (!f16c)  // only float32 and bfloat16 weights need no float16
      for (int t = static_cast<int>(WeightType::f16); t < kWeightTypes; ++t) s.range[t] = nullptr, s.gate_up[t] = nullptr;
    else
      VHOST_INT_KERNELS(s, int_avx2, "avx2");
    return s;
  }
  return Isa{"", 1, nullptr, nullptr, nullptr, {}, {}};
}

Isa& isa() {
  static Isa chosen = pick(nullptr);
  return chosen;
}

// Columns of W a parallel task's tile spans: eight for interleaved weights (one group), else the
// kernels' own (kIntNR on the integer kernels, s.nr on the float ones, s.nr_bf16 on bfloat16's).
bool packed(WeightType t) { return plain_of_x8(t) != WeightType::f32; }
int64_t tile_cols(const Isa& s, WeightType t, bool int_kernels) {
  return packed(t) ? 8 : int_kernels ? kIntNR : t == WeightType::bf16 ? s.nr_bf16 : s.nr;
}

// [M, 8] sums of one unpacked group into C's columns 8g .. 8g + nr.
void group_out(const float* out, int64_t M, float* C, int64_t N, int64_t g, bool acc) {
  const int64_t nr = std::min<int64_t>(8, N - 8 * g);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < nr; ++c) C[m * N + 8 * g + c] = (acc ? C[m * N + 8 * g + c] : 0.0f) + out[m * 8 + c];
}

template <WeightType PT>
void range_packed_float(const float* A, int64_t M, const void* W, int64_t N, int64_t K, float* C, bool acc, int64_t t0,
                        int64_t t1) {
  constexpr WeightType plain = plain_of_x8(PT);
  const int64_t gbytes = 8 * (K / quant_format(plain)->block_elems) * quant_format(plain)->block_bytes;
  thread_local std::vector<uint8_t> rows;
  thread_local std::vector<float> out;
  rows.resize(static_cast<std::size_t>(gbytes));
  out.resize(static_cast<std::size_t>(M * 8));
  const Isa& s = isa();
  for (int64_t g = t0; g < t1; ++g) {
    unpack_x8(PT, static_cast<const uint8_t*>(W) + g * gbytes, 8, K, rows.data());
    s.range[static_cast<int>(plain)](A, M, rows.data(), 8, K, out.data(), false, 0, (8 + s.nr - 1) / s.nr);
    group_out(out.data(), M, C, N, g, acc);
  }
}

template <WeightType PT>
void gate_up_packed_float(const float* A, int64_t M, const void* Wg, const void* Wu, int64_t N, int64_t K, float* C,
                          int64_t t0, int64_t t1) {
  constexpr WeightType plain = plain_of_x8(PT);
  const int64_t gbytes = 8 * (K / quant_format(plain)->block_elems) * quant_format(plain)->block_bytes;
  thread_local std::vector<uint8_t> gr, ur;
  thread_local std::vector<float> out;
  gr.resize(static_cast<std::size_t>(gbytes));
  ur.resize(static_cast<std::size_t>(gbytes));
  out.resize(static_cast<std::size_t>(M * 8));
  const Isa& s = isa();
  for (int64_t g = t0; g < t1; ++g) {
    unpack_x8(PT, static_cast<const uint8_t*>(Wg) + g * gbytes, 8, K, gr.data());
    unpack_x8(PT, static_cast<const uint8_t*>(Wu) + g * gbytes, 8, K, ur.data());
    s.gate_up[static_cast<int>(plain)](A, M, gr.data(), ur.data(), 8, K, out.data(), 0, (8 + s.nr - 1) / s.nr);
    group_out(out.data(), M, C, N, g, false);
  }
}

}  // namespace

bool select_kernels(const char* name) {
  isa() = pick(name);
  return name == nullptr || isa().name == std::string(name);
}

const char* small_gemm_isa() { return isa().name; }

// f(t0, t1) over [0, n) on at::get_num_threads() threads, the range handed out in chunks of at
// least `grain` that each thread takes as it finishes the last (an atomic counter), not in one
// equal share per thread as at::parallel_for: a step of a memory-bound product waits for its
// slowest thread, and the two threads of this 2-core machine do not stream memory at one speed
// (with equal shares, libgomp's barrier took 11% of a 7B Q4_K_M batch-1 step here).
template <typename F>
static void parallel_tiles(int64_t n, int64_t grain, const F& f) {
  const int64_t threads = at::get_num_threads();
  if (threads <= 1 || n <= grain || at::in_parallel_region()) return f(int64_t(0), n);
  const int64_t chunk = std::max(grain, n / (8 * threads));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, (n + chunk - 1) / chunk), 1, [&](int64_t, int64_t) {
    for (int64_t t0; (t0 = next.fetch_add(chunk)) < n;) f(t0, std::min(n, t0 + chunk));
  });
}

// Column tiles per parallel_for chunk such that a thread's share is worth waking it for: at least
// ~64K multiply-adds.
static int64_t tile_grain(int64_t M, int64_t K, int64_t nr) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, M * K * nr));
}

bool small_gemm_supports(WeightType t) { return isa().range[static_cast<int>(t)] != nullptr; }

// Whether the kernels read W [?, K]: its type is supported and its rows are whole blocks.
static bool readable(WeightType t, int64_t K) {
  const QuantFormat* f = quant_format(packed(t) ? plain_of_x8(t) : t);
  return small_gemm_supports(t) && (!f || K % f->block_elems == 0);
}

// A [M, K] as Q8_0 blocks for the integer kernels, as ggml's quantize_row_q8_0 makes them on x86:
// q = round-to-nearest-even(a * 127 / max|a|), d = max|a| / 127 rounded to float16. In buffers of
// the calling thread, valid until its next call.
static QuantRows quantize_rows(const float* A, int64_t M, int64_t K, bool q8_0 = true, bool q8_k = false,
                               bool bf16 = false, bool q8_1 = false) {
  thread_local std::vector<uint16_t> h;
  thread_local std::vector<int8_t> q, qk;
  thread_local std::vector<float> d, dk, ds;
  thread_local std::vector<int32_t> sum;
  thread_local std::vector<int16_t> bs, b16;
  QuantRows out{nullptr, nullptr, nullptr, K};
  if (bf16) {  // nearest even, as torch and ggml round float32 to bfloat16
    h.resize(static_cast<std::size_t>(M * K));
    for (int64_t k0 = 0; k0 < K; k0 += kBf16Chunk) {  // QuantRows::h's chunks
      const int64_t n = std::min(kBf16Chunk, K - k0);
      for (int64_t m = 0; m < M; ++m) to_bf16_rows(A + m * K + k0, 1, n, h.data() + k0 * M + m * n, n);
    }
    out.h = h.data();
  }
  if (q8_k && K % 256 == 0) {
    // ggml's quantize_row_q8_K: per 256 the value of largest magnitude maps to -127.
    qk.resize(static_cast<std::size_t>(M * K));
    dk.resize(static_cast<std::size_t>(M * K / 256));
    bs.resize(static_cast<std::size_t>(M * K / 32));
    b16.resize(static_cast<std::size_t>(M * K / 16));
    for (int64_t i = 0; i < M * K / 256; ++i) {
      const float* a = A + i * 256;
      float amax = 0, mx = 0;
      for (int j = 0; j < 256; ++j)
        if (std::fabs(a[j]) > amax) amax = std::fabs(a[j]), mx = a[j];
      const float is = amax != 0.0f ? -127.0f / mx : 0.0f;
      dk[i] = amax != 0.0f ? 1.0f / is : 0.0f;
      for (int g = 0; g < 16; ++g) {  // the values, and their sums of 16 and of 32
        int s = 0;
        for (int j = g * 16; j < g * 16 + 16; ++j) {
          const float r = (a[j] * is + 12582912.0f) - 12582912.0f;
          const int v = std::min(127, static_cast<int>(r));
          qk[i * 256 + j] = static_cast<int8_t>(v);
          s += v;
        }
        b16[i * 16 + g] = static_cast<int16_t>(s);
      }
      for (int g = 0; g < 8; ++g) bs[i * 8 + g] = static_cast<int16_t>(b16[i * 16 + 2 * g] + b16[i * 16 + 2 * g + 1]);
    }
    out.qk = qk.data(), out.dk = dk.data(), out.bs = bs.data(), out.b16 = b16.data();
  }
  if (!q8_0) return out;
  const int64_t nb = K / 32;
  q.resize(static_cast<std::size_t>(M * K));
  d.resize(static_cast<std::size_t>(M * nb));
  sum.resize(static_cast<std::size_t>(M * nb));
  if (q8_1) ds.resize(static_cast<std::size_t>(M * nb));
  for (int64_t i = 0; i < M * nb; ++i) {
    const float* a = A + i * 32;
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(a[j]));
    // As ggml: the scale kept as a float16 (the block's d), the values divided by the float one.
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    d[i] = half_to_float(fp16_from_float(amax / 127.0f));
    int32_t s = 0;
    for (int j = 0; j < 32; ++j) {
      // Round to nearest even by the float adder (|a * id| <= 127, far below 2^22).
      const float r = (a[j] * id + 12582912.0f) - 12582912.0f;
      q[i * 32 + j] = static_cast<int8_t>(r);
      s += static_cast<int32_t>(r);
    }
    sum[i] = s;
    // Q4_1 / Q5_1 (ggml's quantize_row_q8_1): the unrounded scale times the sum, to float16.
    if (q8_1) ds[i] = half_to_float(fp16_from_float(amax / 127.0f * static_cast<float>(s)));
  }
  out.q = q.data(), out.d = d.data(), out.sum = sum.data(), out.ds = q8_1 ? ds.data() : nullptr;
  return out;
}

// Whether the integer kernels of type t take the activations as Q8_K (one scale per 256), not Q8_0:
// the K-quants, whose blocks are 256 weights, plain or interleaved.
static bool q8_k_activations(WeightType t) {
  const QuantFormat* f = quant_format(packed(t) ? plain_of_x8(t) : t);
  return f && f->block_elems == 256;
}

// The rounded activations the kernels of int_range[t] read: bfloat16 rows, Q8_K or Q8_0 blocks.
struct ActFormats {
  bool q8_0 = false, q8_k = false, bf16 = false, q8_1 = false;
  void add(WeightType t) {
    (t == WeightType::bf16 ? bf16 : q8_k_activations(t) ? q8_k : q8_0) = true;
    const WeightType p = packed(t) ? plain_of_x8(t) : t;  // formats with mins: their sums as ggml's Q8_1
    q8_1 = q8_1 || p == WeightType::q4_1 || p == WeightType::q5_1;
  }
  QuantRows round(const float* A, int64_t M, int64_t K) const { return quantize_rows(A, M, K, q8_0, q8_k, bf16, q8_1); }
};

// Whether the kernels of int_range take W [?, K] here: its integers against 8-bit activations, or
// its bfloat16 against bfloat16 activations (asked for by the product: WeightsRef::bf16_activations).
static bool int_path(const Isa& s, WeightsRef W, int64_t K) {
  if (W.type == WeightType::bf16) return W.bf16_activations && s.int_range[static_cast<int>(W.type)];
  return g_int8_activations && W.int8 && s.int_range[static_cast<int>(W.type)] &&
         K % (q8_k_activations(W.type) ? 256 : 32) == 0;
}
// Every row count takes vdpbf16ps where the CPU has it. (From 2 to 15 rows it once measured no
// faster than the widened path, which then took them; with bf16_dot.inc's prefetch into L2 it is:
// bench_generate --gemm 11008 4096, 2 threads, from memory, 4 rows 39.3-39.9 against 31.5-31.7
// GB/s, 8 rows 26.1-29.1 against 21.6-22.1, 16 rows 18.8-19.1 against 12.7-13.2; the 7B model with
// --bf16-activations, alternating builds, batch 2 7.02-7.08 against 5.02-5.03 tokens/s, batch 8
// 18.50-18.60 against 13.36-13.38.) Without it, bf16 weights asking for bf16 activations take the
// widened path on the activations rounded to bfloat16 (Bf16Rounded): the same products (bf16 times
// bf16 is exact in float32) summed in float32 in another order.

// A as the float32 values of its bfloat16 rounding, where a product of bf16 weights asks for bf16
// activations on a CPU without vdpbf16ps; `W.bf16_activations` is then answered and cleared. In a
// buffer of the calling thread.
struct Bf16Rounded {
  const float* A;
  Bf16Rounded(const Isa& s, const float* a, int64_t M, int64_t K, WeightsRef* const* ws, int n) : A(a) {
    bool round = false;
    for (int i = 0; i < n; ++i)
      if (ws[i]->type == WeightType::bf16 && ws[i]->bf16_activations &&
          !s.int_range[static_cast<int>(WeightType::bf16)])
        ws[i]->bf16_activations = false, round = true;
    if (!round) return;
    thread_local std::vector<uint16_t> h;
    thread_local std::vector<float> f;
    h.resize(static_cast<std::size_t>(M * K));
    f.resize(static_cast<std::size_t>(M * K));
    to_bf16_rows(a, M, K, h.data(), K);
    for (int64_t i = 0; i < M * K; ++i) f[static_cast<std::size_t>(i)] = as_float(h[static_cast<std::size_t>(i)]);
    A = f.data();
  }
};

// A [M, K] as the float kernels of bfloat16 weights read it (tile_pairs): K padded to P =
// s.pair_block with zeros, in blocks of P, each block the M rows' P values side by side, each row's
// as its values at even k, then those at odd k. (A span of k is then one run of memory, and a
// tile's rows are at fixed distances.) In a buffer of the calling thread.
static const float* split_pairs(const Isa& s, const float* A, int64_t M, int64_t K) {
  const int64_t P = s.pair_block, h = P / 2, Kp = (K + P - 1) / P * P;
  thread_local std::vector<float> buf;
  buf.resize(static_cast<std::size_t>(M * Kp));
  for (int64_t b = 0; b < Kp; b += P)
    for (int64_t m = 0; m < M; ++m) {
      const float* a = A + m * K + b;
      float* o = buf.data() + b * M + m * P;
      for (int64_t j = 0; j < h; ++j) {
        o[j] = b + 2 * j < K ? a[2 * j] : 0.0f;
        o[h + j] = b + 2 * j + 1 < K ? a[2 * j + 1] : 0.0f;
      }
    }
  return buf.data();
}

static QuantRows round_for(WeightType t, const float* A, int64_t M, int64_t K) {
  ActFormats f;
  f.add(t);
  return f.round(A, M, K);
}

bool small_gemm(const float* A, int64_t M, WeightsRef W, int64_t N, int64_t K, float* C, bool accumulate) {
  const Isa s = isa();
  if (!readable(W.type, K)) return false;
  WeightsRef* ws[] = {&W};
  A = Bf16Rounded(s, A, M, K, ws, 1).A;
  if (int_path(s, W, K)) {
    const QuantRows qa = round_for(W.type, A, M, K);
    const IntRangeFn fn = s.int_range[static_cast<int>(W.type)];
    const int64_t cols = tile_cols(s, W.type, true);
    parallel_tiles((N + cols - 1) / cols, tile_grain(M, K, cols),
                   [&](int64_t t0, int64_t t1) { fn(qa, M, W.data, N, C, accumulate, t0, t1); });
    return true;
  }
  const int64_t cols = tile_cols(s, W.type, false), tiles = (N + cols - 1) / cols;
  const RangeFn fn = s.range[static_cast<int>(W.type)];
  if (W.type == WeightType::bf16 && s.pair_block) A = split_pairs(s, A, M, K);
  parallel_tiles(tiles, tile_grain(M, K, cols), [&](int64_t t0, int64_t t1) { fn(A, M, W.data, N, K, C, accumulate, t0, t1); });
  return true;
}

bool small_gemm_many(const float* A, int64_t M, int64_t K, const GemmOutput* outs_in, int n) {
  const Isa s = isa();
  for (int i = 0; i < n; ++i)
    if (!readable(outs_in[i].W.type, K)) return false;
  // The outputs share A: rounded to bf16 when every one asks for it (the model's q, k, v always
  // agree); a mix runs as separate products. (Copies only then: this runs every layer of a step.)
  int asking = 0;
  for (int i = 0; i < n; ++i) asking += outs_in[i].W.type == WeightType::bf16 && outs_in[i].W.bf16_activations;
  if (asking > 0 && asking < n) {
    for (int i = 0; i < n; ++i) small_gemm(A, M, outs_in[i].W, outs_in[i].N, K, outs_in[i].C);
    return true;
  }
  std::vector<GemmOutput> own;
  const GemmOutput* outs = outs_in;
  if (asking) {
    own.assign(outs_in, outs_in + n);
    std::vector<WeightsRef*> ws;
    for (auto& o : own) ws.push_back(&o.W);
    A = Bf16Rounded(s, A, M, K, ws.data(), n).A;
    outs = own.data();
  }
  // Tiles of each output in one index space (an output's tiles are kIntNR columns wide on the
  // integer kernels, s.nr on the float ones); A rounded to 8 bits once for all that need it.
  std::vector<int64_t> first(static_cast<std::size_t>(n) + 1, 0);
  ActFormats formats;
  const float* pairs = nullptr;  // A pair-split, for bfloat16 weights on the float kernels
  for (int i = 0; i < n; ++i) {
    const bool in = int_path(s, outs[i].W, K);
    if (in) formats.add(outs[i].W.type);
    if (!in && outs[i].W.type == WeightType::bf16 && s.pair_block && !pairs) pairs = split_pairs(s, A, M, K);
    const int64_t cols = tile_cols(s, outs[i].W.type, in);
    first[i + 1] = first[i] + (outs[i].N + cols - 1) / cols;
  }
  const QuantRows qa = formats.round(A, M, K);
  parallel_tiles(first[n], tile_grain(M, K, s.nr), [&](int64_t t0, int64_t t1) {
    for (int i = 0; i < n; ++i) {
      const int64_t a = std::max(t0, first[i]), b = std::min(t1, first[i + 1]);
      const int t = static_cast<int>(outs[i].W.type);
      if (a >= b) continue;
      if (int_path(s, outs[i].W, K))
        s.int_range[t](qa, M, outs[i].W.data, outs[i].N, outs[i].C, false, a - first[i], b - first[i]);
      else
        s.range[t](outs[i].W.type == WeightType::bf16 && pairs ? pairs : A, M, outs[i].W.data, outs[i].N, K, outs[i].C, false,
                   a - first[i], b - first[i]);
    }
  });
  return true;
}

bool gate_up_silu(const float* A, int64_t M, int64_t K, WeightsRef Wg, WeightsRef Wu, int64_t N, float* C) {
  const Isa s = isa();
  if (Wg.type != Wu.type || !readable(Wg.type, K)) return false;
  WeightsRef* ws[] = {&Wg, &Wu};
  A = Bf16Rounded(s, A, M, K, ws, 2).A;
  if (int_path(s, Wg, K) && int_path(s, Wu, K)) {
    const QuantRows qa = round_for(Wg.type, A, M, K);
    const IntGateUpFn fn = s.int_gate_up[static_cast<int>(Wg.type)];
    const int64_t cols = tile_cols(s, Wg.type, true);
    parallel_tiles((N + cols - 1) / cols, std::max<int64_t>(1, tile_grain(M, K, cols) / 2),
                   [&](int64_t t0, int64_t t1) { fn(qa, M, Wg.data, Wu.data, N, C, t0, t1); });
    return true;
  }
  const int64_t cols = tile_cols(s, Wg.type, false), tiles = (N + cols - 1) / cols;
  const GateUpFn fn = s.gate_up[static_cast<int>(Wg.type)];
  if (Wg.type == WeightType::bf16 && s.pair_block) A = split_pairs(s, A, M, K);
  parallel_tiles(tiles, std::max<int64_t>(1, tile_grain(M, K, cols) / 2),
                 [&](int64_t t0, int64_t t1) { fn(A, M, Wg.data, Wu.data, N, K, C, t0, t1); });
  return true;
}

void set_int8_activations(bool on) { g_int8_activations = on; }
bool packs_x8(WeightType plain) {
  const WeightType p = packed_x8(plain);
  return p != WeightType::f32 && isa().int_range[static_cast<int>(p)] != nullptr;
}
const char* int8_dot_isa() { return g_int8_activations ? isa().int_name : ""; }
const char* bf16_dot_isa() { return isa().bf16_dot_name; }

bool decode_attention(const DecodeAttention& a) {
  const Isa s = isa();
  if (!s.attend) return false;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, a.S * a.hd));
  at::parallel_for(0, a.B * a.H, grain, [&](int64_t r0, int64_t r1) { s.attend(a, r0, r1); });
  return true;
}

static ExpFn exp_fn() { return isa().exp; }
static int64_t (*argmax_fn())(const float*, int64_t) { return isa().argmax; }

#else  // not x86 with GCC/Clang: libtorch and BLAS only

const char* small_gemm_isa() { return ""; }
bool select_kernels(const char* name) { return name == nullptr || !*name; }
bool small_gemm(const float*, int64_t, WeightsRef, int64_t, int64_t, float*, bool) { return false; }
bool small_gemm_supports(WeightType) { return false; }
bool packs_x8(WeightType) { return false; }
void set_int8_activations(bool) {}
const char* int8_dot_isa() { return ""; }
const char* bf16_dot_isa() { return ""; }
bool small_gemm_many(const float*, int64_t, int64_t, const GemmOutput*, int) { return false; }
bool gate_up_silu(const float*, int64_t, int64_t, WeightsRef, WeightsRef, int64_t, float*) { return false; }
bool decode_attention(const DecodeAttention&) { return false; }
static ExpFn exp_fn() { return nullptr; }
static int64_t (*argmax_fn())(const float*, int64_t) { return nullptr; }

#endif

void rms_norm_rows(const float* x, const float* w, int64_t R, int64_t D, float eps, float* out) {
  for (int64_t r = 0; r < R; ++r) {
    const float* xr = x + r * D;
    float* o = out + r * D;
    float part[8] = {};  // eight running sums: no single chain of dependent adds
    int64_t i = 0;
    for (; i + 8 <= D; i += 8)
      for (int j = 0; j < 8; ++j) part[j] += xr[i + j] * xr[i + j];
    float ss = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    for (; i < D; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(D) + eps);
    for (int64_t k = 0; k < D; ++k) o[k] = w[k] * (xr[k] * inv);
  }
}

void argmax_rows(const float* x, int64_t R, int64_t n, int64_t* out) {
  auto f = argmax_fn();
  auto rows = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = x + r * n;
      if (f) {
        out[r] = f(row, n);
        continue;
      }
      int64_t idx = 0;
      for (int64_t i = 1; i < n; ++i)
        if (row[i] > row[idx]) idx = i;
      out[r] = idx;
    }
  };
  // Rows of the vocabulary size are worth a thread each.
  at::parallel_for(0, R, std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, n)), rows);
}

// The scalar weights, for CPUs without a kernel (and an infinite maximum: weight 1 where it is).
static float scalar_weights(const float* x, int64_t n, float inv_t, float* w) {
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  for (int64_t i = 0; i < n; ++i) w[i] = std::isfinite(mx) ? std::exp((x[i] - mx) * inv_t) : (x[i] == mx ? 1.0f : 0.0f);
  return mx;
}

int64_t softmax_draw(const float* x, int64_t n, float inv_t, double u) {
  if (n <= 0) return 0;
  thread_local std::vector<float> w, sums;
  w.resize(static_cast<std::size_t>(n));
  ExpFn f = exp_fn();
  if (!f || !std::isfinite(f(x, n, inv_t, w.data()))) scalar_weights(x, n, inv_t, w.data());
  // Sums of blocks of 16 (independent short trees, not one long chain of dependent adds), then
  // the walk: blocks until the one where the running sum passes u * total, then its weights.
  constexpr int64_t kBlock = 16;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  sums.resize(static_cast<std::size_t>(blocks));
  double total = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const float* p = w.data() + b * kBlock;
    float s = 0;
    if ((b + 1) * kBlock <= n) {
      float t[8];
      for (int j = 0; j < 8; ++j) t[j] = p[j] + p[j + 8];
      s = ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
    } else {
      for (int64_t j = 0; j < n - b * kBlock; ++j) s += p[j];
    }
    sums[b] = s;
    total += s;
  }
  if (!(total > 0) || !std::isfinite(total)) return 0;  // NaN logits
  const double target = u * total;
  double acc = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    if (acc + sums[b] <= target) {
      acc += sums[b];
      continue;
    }
    int64_t last = -1;
    for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) {
      if (w[i] == 0) continue;
      acc += w[i];
      last = i;
      if (acc > target) return i;
    }
    if (last >= 0) return last;  // rounding left the walk short inside the block
    break;
  }
  for (int64_t i = n; i-- > 0;)  // never an index of weight 0
    if (w[i] > 0) return i;
  return 0;
}

}  // namespace vhost::llama
