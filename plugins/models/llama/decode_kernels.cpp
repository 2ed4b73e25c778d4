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
#endif

#include <algorithm>
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
template <int V, int MR, int NR, typename TW>
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
        if (c < pf_rows) __builtin_prefetch(next + c * K + k);
    vec w[NR];
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) w[c] = load_vec<V, vec>(W + c * K + k);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      vec a;
      std::memcpy(&a, A + r * K + k, sizeof(vec));
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

// Elements of TW per row of W: K, or K / 32 Q8_0 blocks.
template <typename TW>
constexpr int64_t w_row(int64_t K) {
  return std::is_same_v<TW, Q8Block> ? K / 32 : K;
}

// An f16's value (a Q8_0 block's scale), exactly: subnormals, infinities and NaN included.
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

template <int V>
struct I8;
template <>
struct I8<16> {
  typedef int8_t b __attribute__((vector_size(16), may_alias, aligned(1)));
  typedef int32_t i __attribute__((vector_size(64)));
};
template <>
struct I8<8> {
  typedef int8_t b __attribute__((vector_size(8), may_alias, aligned(1)));
  typedef int32_t i __attribute__((vector_size(32)));
};

// tile() for Q8_0 weights: each block's 32 int8 widened and converted to float in registers
// (vpmovsxbd, vcvtdq2ps), times the block's scale, then multiplied into A as float32. The result
// is the float32 product of the dequantised weights (up to the order of the sums).
template <int V, int MR, int NR>
VHOST_INLINE void tile_q8(const float* A, const Q8Block* W, int64_t K, float* C, int64_t ldc, bool add,
                          const Q8Block* next, int pf_rows) {
  typedef float vec __attribute__((vector_size(4 * V)));
  typedef typename I8<V>::b bvec;
  typedef typename I8<V>::i ivec;
  static_assert(MR * NR <= V, "a tile has at most V accumulators");
  constexpr int H = 32 / V;  // vectors a block
  vec acc[V] = {};
  const int64_t nb = K / 32;
  for (int64_t b = 0; b < nb; ++b) {
    if (next)
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c)
        if (c < pf_rows) __builtin_prefetch(next + c * nb + b);
    vec w[NR][H];
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) {
      const Q8Block& blk = W[c * nb + b];
      const float d = half_to_float(blk.d);
#pragma GCC unroll 4
      for (int h = 0; h < H; ++h) {
        ivec q;
#if defined(__x86_64__)
        // One vpmovsxbd from memory: GCC 12 scalarised __builtin_convertvector of int8 to
        // int32 vectors here (a mov, shift and insert per element: 1.1 s a 7B step, not 0.2).
        __asm__("vpmovsxbd %1, %0" : "=v"(q) : "m"(*reinterpret_cast<const bvec*>(blk.q + h * V)));
#else
        bvec b8;
        std::memcpy(&b8, blk.q + h * V, sizeof b8);
        q = __builtin_convertvector(b8, ivec);
#endif
        w[c][h] = __builtin_convertvector(q, vec) * d;
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int h = 0; h < H; ++h) {
        vec a;
        std::memcpy(&a, A + r * K + b * 32 + h * V, sizeof a);
#pragma GCC unroll 8
        for (int c = 0; c < NR; ++c) acc[r * NR + c] += a * w[c][h];
      }
  }
  tree_reduce<V, V>(acc);
  float sums[V];
  std::memcpy(sums, &acc[0], sizeof sums);
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) C[r * ldc + c] = add ? C[r * ldc + c] + sums[r * NR + c] : sums[r * NR + c];
}

// A tile of mr <= MR rows by nr <= NR columns, with the sizes made compile-time constants.
template <int V, int MR, int NR, typename TW>
VHOST_INLINE void any_tile(int mr, int nr, const float* A, const TW* W, int64_t K, float* C, int64_t ldc, bool acc,
                           const TW* next = nullptr, int pf_rows = NR) {
  if constexpr (MR > 1)
    if (mr < MR) return any_tile<V, MR - 1, NR>(mr, nr, A, W, K, C, ldc, acc, next, pf_rows);
  if constexpr (NR > 1)
    if (nr < NR) return any_tile<V, MR, NR - 1>(mr, nr, A, W, K, C, ldc, acc, next, pf_rows);
  if constexpr (std::is_same_v<TW, Q8Block>)
    tile_q8<V, MR, NR>(A, W, K, C, ldc, acc, next, pf_rows);
  else
    tile<V, MR, NR>(A, W, K, C, ldc, acc, next, pf_rows);
}

// Column tiles [t0, t1) (NR rows of W each), every row of A against each while it is in cache.
template <int V, int MR, int NR, typename TW>
VHOST_INLINE void column_tiles(const float* A, int64_t M, const TW* W, int64_t N, int64_t K, float* C, bool acc,
                               int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t * NR;
    const int nr = static_cast<int>(std::min<int64_t>(NR, N - n));
    // The row tiles pull the next column tile's weights toward the cache meanwhile, each its
    // share of the NR rows.
    const int64_t wr = w_row<TW>(K);
    const TW* next = n + 2 * NR <= N ? W + (n + NR) * wr : nullptr;
    const int64_t blocks = (M + MR - 1) / MR;
    for (int64_t m = 0, bi = 0; m < M; m += MR, ++bi) {
      const int r0 = static_cast<int>(NR * bi / blocks), r1 = static_cast<int>(NR * (bi + 1) / blocks);
      any_tile<V, MR, NR>(static_cast<int>(std::min<int64_t>(MR, M - m)), nr, A + m * K, W + n * wr, K, C + m * N + n, N,
                          acc, next && r1 > r0 ? next + r0 * wr : nullptr, r1 - r0);
    }
  }
}

// Column tiles [t0, t1) of both Wg and Wu: each tile's two MR x NR blocks of sums, then
// C = silu(gate) * up for them, so the gate and up projections never reach memory.
template <int V, int MR, int NR, typename TW>
VHOST_INLINE void gate_up_tiles(const float* A, int64_t M, const TW* Wg, const TW* Wu, int64_t N, int64_t K, float* C,
                                int64_t t0, int64_t t1) {
  typedef float vec __attribute__((vector_size(4 * V)));
  static_assert(MR * NR == V, "one tile's sums fill one vector");
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t * NR;
    const int nr = static_cast<int>(std::min<int64_t>(NR, N - n));
    const bool more = n + 2 * NR <= N;  // the row tiles prefetch the next column tile, each its share
    const int64_t blocks = (M + MR - 1) / MR;
    for (int64_t m = 0, bi = 0; m < M; m += MR, ++bi) {
      const int mr = static_cast<int>(std::min<int64_t>(MR, M - m));
      const int r0 = static_cast<int>(NR * bi / blocks), r1 = static_cast<int>(NR * (bi + 1) / blocks);
      const bool pf = more && r1 > r0;
      float g[V] = {}, u[V] = {};
      const float* Am = A + m * K;
      const int64_t wr = w_row<TW>(K);
      any_tile<V, MR, NR>(mr, nr, Am, Wg + n * wr, K, g, NR, false, pf ? Wg + (n + NR + r0) * wr : nullptr, r1 - r0);
      any_tile<V, MR, NR>(mr, nr, Am, Wu + n * wr, K, u, NR, false, pf ? Wu + (n + NR + r0) * wr : nullptr, r1 - r0);
      vec gv, uv;
      std::memcpy(&gv, g, sizeof gv);
      std::memcpy(&uv, u, sizeof uv);
      gv = silu_mul<V>(gv, uv);
      std::memcpy(g, &gv, sizeof gv);
      for (int r = 0; r < mr; ++r)
        for (int c = 0; c < nr; ++c) C[(m + r) * N + n + c] = g[r * NR + c];
    }
  }
}

template <typename TW>
using RangeFn = void (*)(const float*, int64_t, const TW*, int64_t, int64_t, float*, bool, int64_t, int64_t);
template <typename TW>
using GateUpFn = void (*)(const float*, int64_t, const TW*, const TW*, int64_t, int64_t, float*, int64_t, int64_t);
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
__attribute__((target("avx512f,f16c"))) void range_avx512(const float* A, int64_t M, const TW* W, int64_t N, int64_t K,
                                                     float* C, bool acc, int64_t t0, int64_t t1) {
  column_tiles<16, 4, 4>(A, M, W, N, K, C, acc, t0, t1);
}
template <typename TW>
__attribute__((target("avx512f,f16c"))) void gate_up_avx512(const float* A, int64_t M, const TW* Wg, const TW* Wu,
                                                       int64_t N, int64_t K, float* C, int64_t t0, int64_t t1) {
  gate_up_tiles<16, 4, 4>(A, M, Wg, Wu, N, K, C, t0, t1);
}
__attribute__((target("avx512f"))) void attend_avx512(const DecodeAttention& a, int64_t r0, int64_t r1) {
  attend_rows<16>(a, r0, r1);
}

// 8 floats a vector, 4x2 tiles: 8 accumulators + 2 + 1 in 16 registers.
template <typename TW>
__attribute__((target("avx2,fma,f16c"))) void range_avx2(const float* A, int64_t M, const TW* W, int64_t N, int64_t K,
                                                   float* C, bool acc, int64_t t0, int64_t t1) {
  column_tiles<8, 4, 2>(A, M, W, N, K, C, acc, t0, t1);
}
template <typename TW>
__attribute__((target("avx2,fma,f16c"))) void gate_up_avx2(const float* A, int64_t M, const TW* Wg, const TW* Wu,
                                                     int64_t N, int64_t K, float* C, int64_t t0, int64_t t1) {
  gate_up_tiles<8, 4, 2>(A, M, Wg, Wu, N, K, C, t0, t1);
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

struct Isa {
  const char* name;
  RangeFn<float> fn;
  int64_t nr;  // columns (rows of W) per tile
  AttendFn attend;
  ExpFn exp;
  GateUpFn<float> gate_up;
  int64_t (*argmax)(const float*, int64_t);
  RangeFn<uint16_t> fn_bf16;  // bfloat16 weights
  GateUpFn<uint16_t> gate_up_bf16;
  RangeFn<Half> fn_f16;  // float16 weights (nullptr without F16C)
  GateUpFn<Half> gate_up_f16;
  RangeFn<Q8Block> fn_q8;  // Q8_0 blocks (nullptr without F16C)
  GateUpFn<Q8Block> gate_up_q8;
};

Isa pick(const char* name) {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool best = name == nullptr;
  const std::string want = name ? name : "";
  if (avx512 && (best || want == "avx512"))
    return Isa{"avx512", range_avx512<float>, 4, attend_avx512, exp_avx512, gate_up_avx512<float>, argmax_avx512,
               range_avx512<uint16_t>, gate_up_avx512<uint16_t>, range_avx512<Half>, gate_up_avx512<Half>,
               range_avx512<Q8Block>, gate_up_avx512<Q8Block>};
  if (avx2 && (best || want == "avx2" || want == "avx512")) {
    unsigned a = 0, b = 0, c = 0, d = 0;
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    return Isa{"avx2", range_avx2<float>, 2, attend_avx2, exp_avx2, gate_up_avx2<float>, argmax_avx2,
               range_avx2<uint16_t>, gate_up_avx2<uint16_t>, f16c ? range_avx2<Half> : nullptr,
               f16c ? gate_up_avx2<Half> : nullptr, f16c ? range_avx2<Q8Block> : nullptr,
               f16c ? gate_up_avx2<Q8Block> : nullptr};
  }
  return Isa{"", nullptr, 1, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
}

Isa& isa() {
  static Isa chosen = pick(nullptr);
  return chosen;
}

}  // namespace

bool select_kernels(const char* name) {
  isa() = pick(name);
  return name == nullptr || isa().name == std::string(name);
}

const char* small_gemm_isa() { return isa().name; }

// Column tiles per parallel_for chunk such that a thread's share is worth waking it for: at least
// ~64K multiply-adds.
static int64_t tile_grain(int64_t M, int64_t K, int64_t nr) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, M * K * nr));
}

template <typename TW>
static void gemm_range(const Isa& s, const float* A, int64_t M, const TW* W, int64_t N, int64_t K, float* C, bool acc,
                       int64_t t0, int64_t t1) {
  if constexpr (std::is_same_v<TW, float>) s.fn(A, M, W, N, K, C, acc, t0, t1);
  if constexpr (std::is_same_v<TW, uint16_t>) s.fn_bf16(A, M, W, N, K, C, acc, t0, t1);
  if constexpr (std::is_same_v<TW, Half>) s.fn_f16(A, M, W, N, K, C, acc, t0, t1);
  if constexpr (std::is_same_v<TW, Q8Block>) s.fn_q8(A, M, W, N, K, C, acc, t0, t1);
}
// Calls f with W's data as a pointer to its element type.
template <typename F>
static void with_weights(WeightsRef W, F&& f) {
  switch (W.type) {
    case WeightType::f32: return f(static_cast<const float*>(W.data));
    case WeightType::bf16: return f(static_cast<const uint16_t*>(W.data));
    case WeightType::f16: return f(static_cast<const Half*>(W.data));
    case WeightType::q8_0: return f(static_cast<const Q8Block*>(W.data));
  }
}

bool small_gemm_supports(WeightType t) {
  const Isa& s = isa();
  switch (t) {
    case WeightType::f32: return s.fn != nullptr;
    case WeightType::bf16: return s.fn_bf16 != nullptr;
    case WeightType::f16: return s.fn_f16 != nullptr;
    case WeightType::q8_0: return s.fn_q8 != nullptr;
  }
  return false;
}

bool small_gemm(const float* A, int64_t M, WeightsRef W, int64_t N, int64_t K, float* C, bool accumulate) {
  const Isa s = isa();
  if (!small_gemm_supports(W.type) || (W.type == WeightType::q8_0 && K % 32)) return false;
  const int64_t tiles = (N + s.nr - 1) / s.nr;
  with_weights(W, [&](auto* w) {
    at::parallel_for(0, tiles, tile_grain(M, K, s.nr),
                     [&](int64_t t0, int64_t t1) { gemm_range(s, A, M, w, N, K, C, accumulate, t0, t1); });
  });
  return true;
}

bool small_gemm_many(const float* A, int64_t M, int64_t K, const GemmOutput* outs, int n) {
  const Isa s = isa();
  for (int i = 0; i < n; ++i)
    if (!small_gemm_supports(outs[i].W.type) || (outs[i].W.type == WeightType::q8_0 && K % 32)) return false;
  std::vector<int64_t> first(static_cast<std::size_t>(n) + 1, 0);  // first tile of each output in one index space
  for (int i = 0; i < n; ++i) first[i + 1] = first[i] + (outs[i].N + s.nr - 1) / s.nr;
  at::parallel_for(0, first[n], tile_grain(M, K, s.nr), [&](int64_t t0, int64_t t1) {
    for (int i = 0; i < n; ++i) {
      const int64_t a = std::max(t0, first[i]), b = std::min(t1, first[i + 1]);
      if (a < b)
        with_weights(outs[i].W, [&](auto* w) {
          gemm_range(s, A, M, w, outs[i].N, K, outs[i].C, false, a - first[i], b - first[i]);
        });
    }
  });
  return true;
}

bool gate_up_silu(const float* A, int64_t M, int64_t K, WeightsRef Wg, WeightsRef Wu, int64_t N, float* C) {
  const Isa s = isa();
  if (Wg.type != Wu.type || !small_gemm_supports(Wg.type) || (Wg.type == WeightType::q8_0 && K % 32)) return false;
  const int64_t tiles = (N + s.nr - 1) / s.nr;
  with_weights(Wg, [&](auto* g) {
    using TW = std::remove_const_t<std::remove_pointer_t<decltype(g)>>;
    const TW* u = static_cast<const TW*>(Wu.data);
    at::parallel_for(0, tiles, std::max<int64_t>(1, tile_grain(M, K, s.nr) / 2), [&](int64_t t0, int64_t t1) {
      if constexpr (std::is_same_v<TW, float>) s.gate_up(A, M, g, u, N, K, C, t0, t1);
      if constexpr (std::is_same_v<TW, uint16_t>) s.gate_up_bf16(A, M, g, u, N, K, C, t0, t1);
      if constexpr (std::is_same_v<TW, Half>) s.gate_up_f16(A, M, g, u, N, K, C, t0, t1);
      if constexpr (std::is_same_v<TW, Q8Block>) s.gate_up_q8(A, M, g, u, N, K, C, t0, t1);
    });
  });
  return true;
}

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
