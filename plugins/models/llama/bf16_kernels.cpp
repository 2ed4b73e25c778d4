// See decode_kernels.hpp (the bfloat16 part). Two kernels over one packing of the weights.
//
// Intel AMX: eight tile registers of up to 16 rows of 64 bytes; TDPBF16PS multiplies a 16x32 bf16
// tile of A by a 32x16 bf16 tile of W, stored as 16 rows of 16 (k, k+1) pairs (the "VNNI"
// layout), into a 16x16 float32 tile, 8192 multiply-adds per instruction. A decoding step's
// M <= 16 rows fit one A tile; four C tiles take 64 output columns, so each tile of A is used four
// times per load.
//
// AVX512-BF16: VDPBF16PS adds, in each of 16 float32 lanes, the products of a (k, k+1) pair of
// bf16 from each operand. A row of a W tile (16 columns' pairs for one k pair) is such an
// operand as it lies, and the matching pair of a row of A, broadcast to all lanes, is the other:
// one instruction adds 32 multiply-adds to one row's 16 columns. The kernel keeps up to 24
// accumulators (rows x 16-column blocks) in registers, so that each W vector loaded serves
// several rows and each pass over a group reads its weights once.
//
// Packed layout: groups of 64 output columns; within a group, for each 32-wide block of k, the
// four 1 KiB W tiles of its four 16-column blocks, one after the other. A group's weights are
// therefore one contiguous run, read front to back (the hardware prefetcher follows it; the
// AMX kernel also prefetches a few tiles ahead). Columns past N and k past K are zero.
#include "decode_kernels.hpp"
#include "vec_math.hpp"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))
#define VHOST_BF16_X86 1
#include <immintrin.h>
#if defined(__linux__)
#define VHOST_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace vhost::llama {

namespace {
constexpr int64_t kGroup = 64;   // output columns per group (four C tiles)
constexpr int64_t kKBlock = 32;  // k per tile
constexpr int64_t kTile = 512;   // bf16 elements per W tile (16 x 32)

// Round to nearest even, as torch's float -> bfloat16; a NaN stays a NaN. Branch-free, so the
// loops below vectorise.
inline uint16_t bf16_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, nan = (u >> 16) | 0x40u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}
}  // namespace

PackedBF16::PackedBF16(int64_t n, int64_t k, bool gate_up_pairs)
    : N(n), K(k), Kp((k + kKBlock - 1) / kKBlock * kKBlock), silu_pairs(gate_up_pairs) {
  // silu_pairs: a group's 64 columns are 32 of gate then the same 32 of up.
  groups = gate_up_pairs ? (n + 31) / 32 : (n + kGroup - 1) / kGroup;
  const std::size_t bytes = static_cast<std::size_t>(groups * kGroup * Kp) * sizeof(uint16_t);
  data_.reset(static_cast<uint16_t*>(std::aligned_alloc(64, std::max<std::size_t>(64, (bytes + 63) / 64 * 64))), Free{});
  if (!data_) throw std::bad_alloc();
  std::memset(data_.get(), 0, bytes);
}

// Column c of group g's packed tiles (c < 64), from row `row` of a [N, K] float matrix.
static void pack_column(uint16_t* group, int64_t Kp, int64_t c, const float* row, int64_t K) {
  const int64_t blk = c / 16, col = c % 16;
  for (int64_t kb = 0; kb < Kp / kKBlock; ++kb) {
    uint16_t* tile = group + (kb * 4 + blk) * kTile;
    for (int64_t p = 0; p < 16; ++p)
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t k = kb * kKBlock + 2 * p + j;
        if (k < K) tile[p * 32 + col * 2 + j] = bf16_of(row[k]);
      }
  }
}

PackedBF16 pack_bf16(const float* W, int64_t N, int64_t K) {
  PackedBF16 P(N, K, false);
  at::parallel_for(0, P.groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t c = 0; c < kGroup && g * kGroup + c < N; ++c)
        pack_column(P.data() + g * kGroup * P.Kp, P.Kp, c, W + (g * kGroup + c) * K, K);
  });
  return P;
}

PackedBF16 pack_bf16_gate_up(const float* Wg, const float* Wu, int64_t N, int64_t K) {
  PackedBF16 P(N, K, true);
  at::parallel_for(0, P.groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t c = 0; c < 32 && g * 32 + c < N; ++c) {
        pack_column(P.data() + g * kGroup * P.Kp, P.Kp, c, Wg + (g * 32 + c) * K, K);
        pack_column(P.data() + g * kGroup * P.Kp, P.Kp, 32 + c, Wu + (g * 32 + c) * K, K);
      }
  });
  return P;
}

void to_bf16_rows(const float* x, int64_t M, int64_t K, uint16_t* out, int64_t Kp) {
  for (int64_t m = 0; m < M; ++m) {
    const float* in = x + m * K;
    uint16_t* o = out + m * Kp;
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) o[k] = bf16_of(in[k]);
    for (int64_t k = K; k < Kp; ++k) o[k] = 0;
  }
}

#ifdef VHOST_BF16_X86
namespace {

// Rows [m0, m0 + rows) of group g of output o, summed in buf (row stride kGroup, 64 columns),
// into C: silu(gate) * up for gate/up pairs, else stored or added, as far as the group has
// columns. V: floats a vector of the caller's target.
template <int V>
VHOST_INLINE void finish_group(const float* buf, int rows, const Bf16Output& o, int64_t g, int64_t m0) {
  typedef float vec __attribute__((vector_size(4 * V)));
  const PackedBF16& P = *o.W;
  if (P.silu_pairs) {  // act = silu(gate) * up, 32 columns
    const int64_t n0 = g * 32, nc = std::min<int64_t>(32, P.N - n0);
    for (int r = 0; r < rows; ++r) {
      const float* s = buf + r * kGroup;
      float act[32];
      for (int h = 0; h < 32; h += V) {
        vec gate, up;
        std::memcpy(&gate, s + h, sizeof gate);
        std::memcpy(&up, s + 32 + h, sizeof up);
        gate = silu_mul<V>(gate, up);
        std::memcpy(act + h, &gate, sizeof gate);
      }
      std::memcpy(o.C + (m0 + r) * P.N + n0, act, static_cast<std::size_t>(nc) * sizeof(float));
    }
    return;
  }
  const int64_t n0 = g * kGroup, nc = std::min<int64_t>(kGroup, P.N - n0);
  for (int r = 0; r < rows; ++r) {
    float* cr = o.C + (m0 + r) * P.N + n0;
    const float* s = buf + r * kGroup;
    if (o.accumulate)
      for (int64_t j = 0; j < nc; ++j) cr[j] += s[j];
    else
      std::memcpy(cr, s, static_cast<std::size_t>(nc) * sizeof(float));
  }
}

// make(std::integral_constant<int, rows>{}) for 1 <= rows <= MaxR: a run-time row count to the
// kernel instantiated for it (each kernel keeps its rows' sums in registers).
template <int MaxR, int R = 1, typename Make>
auto for_rows(int rows, Make make) {
  if constexpr (R < MaxR)
    if (rows > R) return for_rows<MaxR, R + 1>(rows, make);
  return make(std::integral_constant<int, R>{});
}

// ---- AVX512-BF16 ----

// Rows [0, R) of A (bf16, row stride lda) against NB consecutive 16-column blocks of a group
// (w: the group's weights, advanced to the first of the blocks): sums into out (row stride
// kGroup, advanced to the first block's columns). R x NB accumulators in registers. The weights
// PF k-blocks on are asked for on the way: with one block a pass, its 1 KiB runs 4 KiB apart are
// more than the hardware prefetcher keeps up with (16 rows of the stories15M shape: 3.3-3.5 ms
// a step without, 2.5-2.8 with PF 2 or 4).
template <int R, int NB>
__attribute__((target("avx512f,avx512bf16"))) void dp_blocks(const uint16_t* a, int64_t lda, const uint16_t* w,
                                                             int64_t KB, float* out) {
  constexpr int64_t PF = 4;
  __m512 acc[R][NB];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
  for (int64_t kb = 0; kb < KB; ++kb) {
    const uint16_t* t = w + kb * 4 * kTile;
    const uint16_t* ak = a + kb * kKBlock;
#pragma GCC unroll 2
    for (int p = 0; p < 16; ++p) {
      __m512bh wv[NB];
#pragma GCC unroll 4
      for (int b = 0; b < NB; ++b) {
        _mm_prefetch(reinterpret_cast<const char*>(t + PF * 4 * kTile + b * kTile + p * 32), _MM_HINT_T0);
        wv[b] = (__m512bh)_mm512_load_si512(t + b * kTile + p * 32);
      }
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        int32_t pair;
        std::memcpy(&pair, ak + r * lda + 2 * p, sizeof pair);
        const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
        for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], av, wv[b]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) _mm512_storeu_ps(out + r * kGroup + b * 16, acc[r][b]);
}

using DpFn = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, float*);

// Groups [g0, g1) of one output, rows [m0, m0 + rows) of A, rows <= 16. The fewer the rows, the
// more 16-column blocks a pass takes (4 blocks up to 6 rows, 2 up to 12, else 1): enough
// independent sums to hide the instruction's latency, each pass reads its blocks' weights once,
// and so the group's weights come from memory once. (Rows in chunks of 6 taking turns on each
// 16 KiB of a group's weights while it is in L1, the sums parked in L1 between turns, measured
// slower at 12 and 16 rows: the output layer of stories15M, one thread, 1.7-2.5 ms against
// 1.1-2.2.)
__attribute__((target("avx512f,avx512bf16"))) void groups_avx512bf16(const uint16_t* A, int64_t m0, int rows,
                                                                     const Bf16Output& o, int64_t g0, int64_t g1) {
  const PackedBF16& P = *o.W;
  const int64_t KB = P.Kp / kKBlock;
  const uint16_t* a = A + m0 * P.Kp;
  const int nb = rows <= 6 ? 4 : rows <= 12 ? 2 : 1;
  const DpFn dp = nb == 4   ? for_rows<6>(rows, [](auto r) -> DpFn { return dp_blocks<decltype(r)::value, 4>; })
                  : nb == 2 ? for_rows<12>(rows, [](auto r) -> DpFn { return dp_blocks<decltype(r)::value, 2>; })
                            : for_rows<16>(rows, [](auto r) -> DpFn { return dp_blocks<decltype(r)::value, 1>; });
  alignas(64) float buf[16 * kGroup];
  for (int64_t g = g0; g < g1; ++g) {
    const uint16_t* w = P.data() + g * kGroup * P.Kp;
    for (int b = 0; b < 4; b += nb) dp(a, P.Kp, w + b * kTile, KB, buf + b * 16);
    finish_group<16>(buf, rows, o, g, m0);
  }
}

// ---- bfloat16 widened to float32: AVX-512F or AVX2 (no bf16 instruction) ----

// Each 32-bit lane of a W tile row holds one column's (k, k+1) pair of bf16: shifted up 16 bits
// it is k's float, masked to its upper half k+1's. So V columns' pair is two vectors of floats,
// multiplied by the activations' k and k+1 (widened once per call, broadcast from memory). With
// up to 4 rows (Split) into two sets of sums, added at the end, so that consecutive multiply-adds
// do not wait on each other; with more, the rows' own sums are enough independent chains.
// Float32 arithmetic, as small_gemm's, on half its bytes: a batch-1 step, which waits on memory,
// reads half as much.
//
// Rows [0, R) of af (float32, row stride lda) against NV vectors of V columns (w: the group's
// weights; the pass's first column is `col`): sums into out (row stride kGroup, advanced to col).
template <int V, int R, int NV, bool Split>
VHOST_INLINE void widen_cols(const float* af, int64_t lda, const uint16_t* w, int64_t col, int64_t KB, float* out) {
  typedef float vec __attribute__((vector_size(4 * V)));
  typedef typename Widen<V>::word uvec;  // (see vec_math.hpp on GCC 12 and such typedefs)
  constexpr int64_t PF = 4;
  vec lo_sum[R][NV] = {}, hi_sum[R][NV] = {};
  const uvec high = uvec{} + 0xffff0000u;  // k+1: the upper half of each lane
  for (int64_t kb = 0; kb < KB; ++kb) {
    const uint16_t* t = w + kb * 4 * kTile;
    const float* ak = af + kb * kKBlock;
    for (int p = 0; p < 16; ++p) {
      vec lo[NV], hi[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        const int64_t c = col + v * V;
        const uint16_t* src = t + (c / 16) * kTile + p * 32 + (c % 16) * 2;
        __builtin_prefetch(src + PF * 4 * kTile);
        uvec u;
        std::memcpy(&u, src, sizeof u);
        const uvec l = u << 16, h = u & high;
        std::memcpy(&lo[v], &l, sizeof l);
        std::memcpy(&hi[v], &h, sizeof h);
      }
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const vec a0 = vec{} + ak[r * lda + 2 * p], a1 = vec{} + ak[r * lda + 2 * p + 1];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          lo_sum[r][v] += a0 * lo[v];
          (Split ? hi_sum : lo_sum)[r][v] += a1 * hi[v];
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const vec s = lo_sum[r][v] + hi_sum[r][v];
      std::memcpy(out + r * kGroup + v * V, &s, sizeof s);
    }
}

using WidenFn = void (*)(const float*, int64_t, const uint16_t*, int64_t, int64_t, float*);

// Groups [g0, g1) of one output, rows [m0, m0 + rows) of A, rows <= 16. Up to 2 rows take
// whole_nv vectors of columns a pass (AVX-512: 4, the whole group; AVX2: 2); more take one
// vector a pass, in chunks of up to maxr rows (AVX-512: 16, all; AVX2: 10, the strip of weights
// then staying in L1 for the next chunk), as the registers allow. fn_for: the instantiations.
template <int V, typename F>
VHOST_INLINE void groups_widen(const uint16_t* A, int64_t m0, int rows, const Bf16Output& o, int64_t g0, int64_t g1,
                               int whole_nv, int maxr, F fn_for) {
  const PackedBF16& P = *o.W;
  const int64_t KB = P.Kp / kKBlock;
  // The rows' activations as floats, once per call.
  thread_local std::vector<float> af;
  af.resize(static_cast<std::size_t>(rows * P.Kp));
  for (int64_t i = 0; i < rows * P.Kp; ++i) af[static_cast<std::size_t>(i)] = as_float(A[m0 * P.Kp + i]);
  const bool whole = rows <= 2;
  int first[5] = {}, count[4] = {};
  const int chunks = whole ? 1 : (rows + maxr - 1) / maxr;
  const int64_t step = (whole ? whole_nv : 1) * V;  // columns a pass
  for (int c = 0; c < chunks; ++c) {
    first[c + 1] = rows * (c + 1) / chunks;
    count[c] = first[c + 1] - first[c];
  }
  WidenFn fn[4] = {};
  for (int c = 0; c < chunks; ++c) fn[c] = fn_for(whole, count[c]);
  alignas(64) float buf[16 * kGroup];
  for (int64_t g = g0; g < g1; ++g) {
    const uint16_t* w = P.data() + g * kGroup * P.Kp;
    for (int64_t col = 0; col < kGroup; col += step)
      for (int c = 0; c < chunks; ++c) fn[c](af.data() + first[c] * P.Kp, P.Kp, w, col, KB, buf + first[c] * kGroup + col);
    finish_group<V>(buf, rows, o, g, m0);
  }
}

// widen_cols<V, R, NV> as a target-specific function, and groups_NAME picking its instantiations.
#define VHOST_WIDEN_TABLE(NAME, TARGET, V, WHOLE_NV, MAXR)                                                      \
  template <int R, int NV>                                                                                       \
  __attribute__((target(TARGET))) void NAME##_cols(const float* af, int64_t lda, const uint16_t* w, int64_t col, \
                                                   int64_t KB, float* out) {                                     \
    widen_cols<V, R, NV, (R <= 4)>(af, lda, w, col, KB, out);                                                    \
  }                                                                                                              \
  __attribute__((target(TARGET))) void groups_##NAME(const uint16_t* A, int64_t m0, int rows, const Bf16Output& o, \
                                                     int64_t g0, int64_t g1) {                                   \
    groups_widen<V>(A, m0, rows, o, g0, g1, WHOLE_NV, MAXR, [](bool whole, int r) -> WidenFn {                \
      return whole ? for_rows<2>(r, [](auto R) -> WidenFn { return NAME##_cols<decltype(R)::value, WHOLE_NV>; }) \
                   : for_rows<MAXR>(r, [](auto R) -> WidenFn { return NAME##_cols<decltype(R)::value, 1>; });    \
    });                                                                                                          \
  }
VHOST_WIDEN_TABLE(widen512, "avx512f", 16, 4, 16)
VHOST_WIDEN_TABLE(widen256, "avx2,fma", 8, 2, 10)
#undef VHOST_WIDEN_TABLE

bool avx512bf16_supported() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  return ok;
}

}  // namespace
#endif  // VHOST_BF16_X86

#ifdef VHOST_AMX
namespace {
struct TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: C (rows x 16 floats); 4: A (rows x 32 bf16); 5-7: W (16 x 32 bf16 pairs).
__attribute__((target("amx-tile"))) void configure(int rows) {
  alignas(64) TileConfig c;
  for (int i = 0; i < 8; ++i) {
    c.colsb[i] = 64;
    c.rows[i] = static_cast<uint8_t>(i < 5 ? rows : 16);
  }
  // GCC 12 does not see that LDTILECFG reads the 64 bytes and drops the stores above.
  __asm__ volatile("" : : "r"(&c) : "memory");
  _tile_loadconfig(&c);
}

// Groups [g0, g1) of one output, rows [m0, m0 + rows) of A (bf16, row stride Kp).
__attribute__((target("amx-tile,amx-bf16,avx512f"))) void groups_amx(const uint16_t* A, int64_t m0, int rows,
                                                                      const Bf16Output& o, int64_t g0, int64_t g1) {
  const PackedBF16& P = *o.W;
  const int64_t KB = P.Kp / kKBlock;
  const int64_t lda = P.Kp * 2;
  const uint16_t* a = A + m0 * P.Kp;
  alignas(64) float buf[16 * kGroup];
  for (int64_t g = g0; g < g1; ++g) {
    const uint16_t* w = P.data() + g * kGroup * P.Kp;
    // A whole group of a plain product goes straight between C and the tiles; a partial group
    // and the gate/up pairs go through buf.
    const bool direct = !P.silu_pairs && (g + 1) * kGroup <= P.N;
    float* c = o.C + m0 * P.N + g * kGroup;
    const int64_t ldc = P.N * 4;
    if (direct && o.accumulate) {
      _tile_loadd(0, c, ldc);
      _tile_loadd(1, c + 16, ldc);
      _tile_loadd(2, c + 32, ldc);
      _tile_loadd(3, c + 48, ldc);
    } else {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
    }
    for (int64_t kb = 0; kb < KB; ++kb) {
      const uint16_t* t = w + kb * 4 * kTile;
      const char* ahead = reinterpret_cast<const char*>(t + 16 * kTile);  // four k-blocks on
      for (int l = 0; l < 64; ++l) _mm_prefetch(ahead + l * 64, _MM_HINT_T0);
      _tile_loadd(4, a + kb * kKBlock, lda);
      _tile_loadd(5, t, 64);
      _tile_dpbf16ps(0, 4, 5);
      _tile_loadd(6, t + kTile, 64);
      _tile_dpbf16ps(1, 4, 6);
      _tile_loadd(7, t + 2 * kTile, 64);
      _tile_dpbf16ps(2, 4, 7);
      _tile_loadd(5, t + 3 * kTile, 64);
      _tile_dpbf16ps(3, 4, 5);
    }
    if (direct) {
      _tile_stored(0, c, ldc);
      _tile_stored(1, c + 16, ldc);
      _tile_stored(2, c + 32, ldc);
      _tile_stored(3, c + 48, ldc);
      continue;
    }
    _tile_stored(0, buf, kGroup * 4);
    _tile_stored(1, buf + 16, kGroup * 4);
    _tile_stored(2, buf + 32, kGroup * 4);
    _tile_stored(3, buf + 48, kGroup * 4);
    finish_group<16>(buf, rows, o, g, m0);
  }
}

__attribute__((target("amx-tile"))) void release_tiles() { _tile_release(); }

bool amx_granted() {
  static const bool granted = [] {
    if (!__builtin_cpu_supports("avx512f")) return false;
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    const bool tile = (d >> 24) & 1, bf16 = (d >> 22) & 1;
    if (!tile || !bf16) return false;
    // Linux keeps the 8 KiB tile state off until a process asks (arch_prctl ARCH_REQ_XCOMP_PERM
    // for XTILEDATA, feature 18); a kernel or hypervisor that refuses leaves AMX unusable.
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return granted;
}

}  // namespace
#endif  // VHOST_AMX

namespace {
enum class Bf16Isa { none, avx2, avx512, avx512bf16, amx };

bool runnable(Bf16Isa isa) {
  switch (isa) {
    case Bf16Isa::none: return true;
#ifdef VHOST_BF16_X86
    case Bf16Isa::avx512bf16: return avx512bf16_supported();
    case Bf16Isa::avx512: return __builtin_cpu_supports("avx512f");
    case Bf16Isa::avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
#ifdef VHOST_AMX
    case Bf16Isa::amx: return amx_granted();
#endif
    default: return false;
  }
}

Bf16Isa best() {
  for (Bf16Isa isa : {Bf16Isa::amx, Bf16Isa::avx512bf16, Bf16Isa::avx512, Bf16Isa::avx2})
    if (runnable(isa)) return isa;
  return Bf16Isa::none;
}

Bf16Isa& chosen() {
  static Bf16Isa isa = best();
  return isa;
}
}  // namespace

const char* bf16_gemm_isa() {
  switch (chosen()) {
    case Bf16Isa::amx: return "amx";
    case Bf16Isa::avx512bf16: return "avx512bf16";
    case Bf16Isa::avx512: return "avx512";
    case Bf16Isa::avx2: return "avx2";
    default: return "";
  }
}

bool select_bf16_gemm(const char* name) {
  std::optional<Bf16Isa> want;
  if (name == nullptr) want = best();
  else if (!*name) want = Bf16Isa::none;
  else if (std::strcmp(name, "amx") == 0) want = Bf16Isa::amx;
  else if (std::strcmp(name, "avx512bf16") == 0) want = Bf16Isa::avx512bf16;
  else if (std::strcmp(name, "avx512") == 0) want = Bf16Isa::avx512;
  else if (std::strcmp(name, "avx2") == 0) want = Bf16Isa::avx2;
  const bool ok = want && runnable(*want);
  chosen() = ok ? *want : Bf16Isa::none;
  return ok;
}

bool bf16_gemm(const uint16_t* A, int64_t M, const Bf16Output* outs, int n) {
  const Bf16Isa isa = chosen();
  if (isa == Bf16Isa::none) return false;
  if (M <= 0) return true;
  for (int i = 1; i < n; ++i)
    if (outs[i].W->Kp != outs[0].W->Kp) return false;
  std::vector<int64_t> first(static_cast<std::size_t>(n) + 1, 0);  // first group of each output, one index space
  for (int i = 0; i < n; ++i) first[i + 1] = first[i] + outs[i].W->groups;
  // A chunk of groups worth waking a thread for: ~256K multiply-adds.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, std::min<int64_t>(M, 16) * kGroup * outs[0].W->Kp));
  at::parallel_for(0, first[n], grain, [&](int64_t t0, int64_t t1) {
    for (int64_t m0 = 0; m0 < M; m0 += 16) {
      const int rows = static_cast<int>(std::min<int64_t>(16, M - m0));
#ifdef VHOST_AMX
      if (isa == Bf16Isa::amx) configure(rows);
#endif
      for (int i = 0; i < n; ++i) {
        const int64_t a = std::max(t0, first[i]), b = std::min(t1, first[i + 1]);
        if (a >= b) continue;
#ifdef VHOST_AMX
        if (isa == Bf16Isa::amx) {
          groups_amx(A, m0, rows, outs[i], a - first[i], b - first[i]);
          continue;
        }
#endif
#ifdef VHOST_BF16_X86
        if (isa == Bf16Isa::avx512bf16) groups_avx512bf16(A, m0, rows, outs[i], a - first[i], b - first[i]);
        else if (isa == Bf16Isa::avx512) groups_widen512(A, m0, rows, outs[i], a - first[i], b - first[i]);
        else groups_widen256(A, m0, rows, outs[i], a - first[i], b - first[i]);
#endif
      }
    }
#ifdef VHOST_AMX
    if (isa == Bf16Isa::amx) release_tiles();
#endif
  });
  return true;
}

}  // namespace vhost::llama
