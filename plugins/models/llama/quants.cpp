// See quants.hpp. The dequantisers follow ggml's dequantize_row_* (ggml-quants.c) element for
// element; the quantisers follow the `gguf` Python package's quantize_blocks (gguf/quants.py),
// which are bit-exact with ggml's reference quantize_row_*_ref. Written here rather than linked:
// ggml is not a Debian package, and these are a few lines per format against a fixed, documented
// layout; the tests check them against both projects' code (tests/interop, tests/llama).
#include "quants.hpp"

#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace vhost::llama {

namespace {

constexpr QuantFormat kFormats[] = {
    {WeightType::q4_0, 2, "q4_0", 32, 18},   {WeightType::q4_1, 3, "q4_1", 32, 20},
    {WeightType::q5_0, 6, "q5_0", 32, 22},   {WeightType::q5_1, 7, "q5_1", 32, 24},
    {WeightType::q8_0, 8, "q8_0", 32, 34},   {WeightType::q4_k, 12, "q4_k", 256, 144},
    {WeightType::q5_k, 13, "q5_k", 256, 176}, {WeightType::q6_k, 14, "q6_k", 256, 210},
};

template <typename B>
const B* blocks_of(const void* p) {
  return static_cast<const B*>(p);
}

}  // namespace

float fp16_to_float(uint16_t h) { return static_cast<float>(c10::Half(h, c10::Half::from_bits())); }
uint16_t fp16_from_float(float f) { return c10::Half(f).x; }

const QuantFormat* quant_format(WeightType t) {
  for (const auto& f : kFormats)
    if (f.type == t) return &f;
  return nullptr;
}
const QuantFormat* quant_format_ggml(uint32_t ggml_type) {
  for (const auto& f : kFormats)
    if (f.ggml_type == ggml_type) return &f;
  return nullptr;
}
const QuantFormat* quant_format_bytes(int64_t block_bytes) {
  for (const auto& f : kFormats)
    if (f.block_bytes == block_bytes) return &f;
  return nullptr;
}
const QuantFormat* quant_format_name(const std::string& name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const auto& f : kFormats)
    if (lower == f.name) return &f;
  return nullptr;
}

const QuantFormat* quant_format_writable(const std::string& name) {
  const QuantFormat* f = quant_format_name(name);
  return f && (f->block_elems == 32 || f->type == WeightType::q4_k || f->type == WeightType::q5_k || f->type == WeightType::q6_k)
             ? f
             : nullptr;
}

const QuantFormat* quant_fallback(const QuantFormat* f) {
  if (f->type == WeightType::q4_k) return quant_format(WeightType::q5_0);
  if (f->type == WeightType::q5_k) return quant_format(WeightType::q5_1);
  if (f->type == WeightType::q6_k) return quant_format(WeightType::q8_0);
  return f;
}

void dequantize(WeightType t, const void* p, int64_t n, float* y) {
  const QuantFormat* f = quant_format(t);
  if (!f) return;
  const int64_t nb = n / f->block_elems;
  for (int64_t i = 0; i < nb; ++i) {
    switch (t) {
      case WeightType::q4_0: {
        const auto& b = blocks_of<BlockQ4_0>(p)[i];
        const float d = fp16_to_float(b.d);
        for (int j = 0; j < 16; ++j) {
          y[j] = ((b.qs[j] & 0xF) - 8) * d;
          y[j + 16] = ((b.qs[j] >> 4) - 8) * d;
        }
        break;
      }
      case WeightType::q4_1: {
        const auto& b = blocks_of<BlockQ4_1>(p)[i];
        const float d = fp16_to_float(b.d), m = fp16_to_float(b.m);
        for (int j = 0; j < 16; ++j) {
          y[j] = (b.qs[j] & 0xF) * d + m;
          y[j + 16] = (b.qs[j] >> 4) * d + m;
        }
        break;
      }
      case WeightType::q5_0:
      case WeightType::q5_1: {
        const bool one = t == WeightType::q5_1;
        const uint8_t* qh8 = one ? blocks_of<BlockQ5_1>(p)[i].qh : blocks_of<BlockQ5_0>(p)[i].qh;
        const uint8_t* qs = one ? blocks_of<BlockQ5_1>(p)[i].qs : blocks_of<BlockQ5_0>(p)[i].qs;
        const float d = fp16_to_float(one ? blocks_of<BlockQ5_1>(p)[i].d : blocks_of<BlockQ5_0>(p)[i].d);
        const float m = one ? fp16_to_float(blocks_of<BlockQ5_1>(p)[i].m) : 0.0f;
        uint32_t qh;
        std::memcpy(&qh, qh8, 4);
        for (int j = 0; j < 16; ++j) {
          const int x0 = (qs[j] & 0xF) | (((qh >> j) & 1) << 4), x1 = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
          y[j] = one ? x0 * d + m : (x0 - 16) * d;
          y[j + 16] = one ? x1 * d + m : (x1 - 16) * d;
        }
        break;
      }
      case WeightType::q8_0: {
        const auto& b = blocks_of<Q8Block>(p)[i];
        const float d = fp16_to_float(b.d);
        for (int j = 0; j < 32; ++j) y[j] = b.q[j] * d;
        break;
      }
      case WeightType::q4_k:
      case WeightType::q5_k: {
        const bool five = t == WeightType::q5_k;
        const uint16_t dh = five ? blocks_of<BlockQ5_K>(p)[i].d : blocks_of<BlockQ4_K>(p)[i].d;
        const uint16_t mh = five ? blocks_of<BlockQ5_K>(p)[i].dmin : blocks_of<BlockQ4_K>(p)[i].dmin;
        const uint8_t* scales = five ? blocks_of<BlockQ5_K>(p)[i].scales : blocks_of<BlockQ4_K>(p)[i].scales;
        const uint8_t* q = five ? blocks_of<BlockQ5_K>(p)[i].qs : blocks_of<BlockQ4_K>(p)[i].qs;
        const uint8_t* qh = five ? blocks_of<BlockQ5_K>(p)[i].qh : nullptr;
        const float d = fp16_to_float(dh), dmin = fp16_to_float(mh);
        for (int s = 0; s < 8; ++s) {  // sub-block s: nibbles of q[32 (s / 2) ...], low for even s
          int sc, m;
          scale_min_k4(s, scales, sc, m);
          const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
          const uint8_t* qs = q + 32 * (s / 2);
          for (int l = 0; l < 32; ++l) {
            int v = s % 2 ? qs[l] >> 4 : qs[l] & 0xF;
            if (qh) v += ((qh[l] >> s) & 1) << 4;
            y[32 * s + l] = d1 * v - m1;
          }
        }
        break;
      }
      case WeightType::q6_k: {
        const auto& b = blocks_of<BlockQ6_K>(p)[i];
        const float d = fp16_to_float(b.d);
        const uint8_t* ql = b.ql;
        const uint8_t* qh = b.qh;
        const int8_t* sc = b.scales;
        float* yy = y;
        for (int n128 = 0; n128 < 2; ++n128) {
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            yy[l] = d * sc[is + 0] * q1;
            yy[l + 32] = d * sc[is + 2] * q2;
            yy[l + 64] = d * sc[is + 4] * q3;
            yy[l + 96] = d * sc[is + 6] * q4;
          }
          yy += 128;
          ql += 64;
          qh += 32;
          sc += 8;
        }
        break;
      }
      default: return;
    }
    y += f->block_elems;
  }
}

namespace {

// ggml's nearest_int: round to nearest, ties to even, by adding 1.5 * 2^23 and reading the
// mantissa (exact for |v| < 2^22; the K-quant fits below only ever see small values). Written
// out rather than std::nearbyint so the result cannot depend on the rounding mode.
inline int nearest_int(float v) {
  const float f = v + 12582912.0f;
  int32_t i;
  std::memcpy(&i, &f, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// The scale s and offset m (m <= 0) of an asymmetric nmax-level fit of x[n] under weights w,
// minimising sum w (s*q + m - x)^2 with q = clamp(round((x - m) / s), 0, nmax): the fit through
// the extremes first, then nstep + 1 other quantisation steps around it (rmin + rdelta * is
// levels off nmax), each refitted in closed form by weighted least squares, the best kept. The
// search llama.cpp's reference K-quantizer runs for Q4_K / Q5_K sub-blocks (make_qkx2_quants),
// done in the same float32 operations and order so the blocks come out byte for byte its own.
// Returns s; *neg_min = -m; q in L.
float fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* L, float* neg_min, float rmin,
                    float rdelta, int nstep) {
  float lo = x[0], hi = x[0], sum_w = w[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < lo) lo = x[i];
    if (x[i] > hi) hi = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (lo > 0) lo = 0;
  if (hi == lo) {
    std::memset(L, 0, static_cast<std::size_t>(n));
    *neg_min = -lo;
    return 0.0f;
  }
  float iscale = nmax / (hi - lo), scale = 1 / iscale, best = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - lo));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    const float diff = scale * L[i] + lo - x[i];
    best += w[i] * (diff * diff);
  }
  uint8_t aux[32];
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (hi - lo);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(0, std::min(nmax, nearest_int(iscale * (x[i] - lo))));
      aux[i] = static_cast<uint8_t>(l);
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float s = (sum_w * sum_xl - sum_x * sum_l) / D, m = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (m > 0) {
        m = 0;
        s = sum_xl / sum_l2;
      }
      float err = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = s * aux[i] + m - x[i];
        err += w[i] * (diff * diff);
      }
      if (err < best) {
        std::memcpy(L, aux, static_cast<std::size_t>(n));
        best = err;
        scale = s;
        lo = m;
      }
    }
  }
  *neg_min = -lo;
  return scale;
}

// A symmetric fit of x[n] to q in [-nmax, nmax) with weights x^2: the scale through the largest
// magnitude, then 18 steps around it (nmax + 0.1 * is), the one of largest sum(w x q)^2 / sum(w q^2)
// kept (llama.cpp's make_qx_quants as Q6_K's reference quantizer calls it). q + nmax in L.
float fit_scale_sym(int n, int nmax, const float* x, uint8_t* L) {
  float mx = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      mx = x[i];
    }
  }
  if (amax < 1e-15f) {
    std::memset(L, 0, static_cast<std::size_t>(n));
    return 0.0f;
  }
  auto level = [&](float iscale, int i) { return std::max(-nmax, std::min(nmax - 1, nearest_int(iscale * x[i]))); };
  float iscale = -nmax / mx, sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = level(iscale, i);
    L[i] = static_cast<uint8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / mx;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = level(iscale, i);
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(nmax + level(iscale, i));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Q4_K's and Q5_K's common part: each sub-block of 32 fitted (nmax levels: 15 or 31; weights
// |x| plus the sub-block's RMS), the eight scales and mins as 6-bit multiples of two f16 block
// scales (d, dmin, scales[12]), the quants again against those rounded scales into L[256].
// rmin / nstep: the fit's search, -1 / 20 for Q4_K, -0.5 / 15 for Q5_K.
void quantize_k45(const float* x, int nmax, float rmin, int nstep, uint16_t& dh, uint16_t& dminh, uint8_t* packed,
                  uint8_t* L) {
  float scales[8], mins[8], w[32], max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) w[l] = av_x + std::fabs(xs[l]);
    scales[j] = fit_scale_min(32, nmax, xs, w, L + 32 * j, &mins[j], rmin, 0.1f, nstep);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f, inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
  int ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    ls[j] = std::min(63, nearest_int(inv_scale * scales[j]));
    lm[j] = std::min(63, nearest_int(inv_min * mins[j]));
  }
  put_scale_min_k4(ls, lm, packed);
  dh = fp16_from_float(max_scale / 63.0f);
  dminh = fp16_from_float(max_min / 63.0f);
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(j, packed, sc, m);
    const float d = fp16_to_float(dh) * sc;
    if (d == 0.0f) continue;
    const float dm = fp16_to_float(dminh) * m;
    for (int l = 0; l < 32; ++l)
      L[32 * j + l] = static_cast<uint8_t>(std::max(0, std::min(nmax, nearest_int((x[32 * j + l] + dm) / d))));
  }
}

void quantize_q4_k(const float* x, BlockQ4_K& y) {
  uint8_t L[256];
  quantize_k45(x, 15, -1.0f, 20, y.d, y.dmin, y.scales, L);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) y.qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
}

// Q5_K: as Q4_K with 32 levels; the fifth bit of sub-block i's element l is bit i of qh[l].
void quantize_q5_k(const float* x, BlockQ5_K& y) {
  uint8_t L[256];
  quantize_k45(x, 31, -0.5f, 15, y.d, y.dmin, y.scales, L);
  std::memset(y.qh, 0, sizeof y.qh);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      const uint8_t lo = L[64 * c + l], hi = L[64 * c + 32 + l];
      y.qs[32 * c + l] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
      y.qh[l] |= static_cast<uint8_t>(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
    }
}

void quantize_q6_k(const float* x, BlockQ6_K& y) {
  uint8_t L[256];
  float scales[16], max_scale = 0, max_abs = 0;
  for (int g = 0; g < 16; ++g) {
    scales[g] = fit_scale_sym(16, 32, x + 16 * g, L + 16 * g);
    if (std::fabs(scales[g]) > max_abs) {
      max_abs = std::fabs(scales[g]);
      max_scale = scales[g];
    }
  }
  if (max_abs < 1e-15f) {  // all (near) zero: a zero block
    std::memset(&y, 0, sizeof y);
    return;
  }
  const float iscale = -128.0f / max_scale;
  y.d = fp16_from_float(1 / iscale);
  for (int g = 0; g < 16; ++g) y.scales[g] = static_cast<int8_t>(std::min(127, nearest_int(iscale * scales[g])));
  for (int g = 0; g < 16; ++g) {
    const float d = fp16_to_float(y.d) * y.scales[g];
    if (d == 0.0f) continue;
    for (int l = 0; l < 16; ++l)
      L[16 * g + l] = static_cast<uint8_t>(std::max(-32, std::min(31, nearest_int(x[16 * g + l] / d))) + 32);
  }
  for (int h = 0; h < 2; ++h) {  // the layout dequantize reads: 128 weights per half
    const uint8_t* q = L + 128 * h;
    uint8_t *ql = y.ql + 64 * h, *qh = y.qh + 32 * h;
    for (int l = 0; l < 32; ++l) {
      ql[l] = static_cast<uint8_t>((q[l] & 0xF) | ((q[l + 64] & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((q[l + 32] & 0xF) | ((q[l + 96] & 0xF) << 4));
      qh[l] = static_cast<uint8_t>((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6));
    }
  }
}

// x [n] (n a multiple of 256) one superblock at a time into `out`, by one of the above.
template <typename Block>
bool each_superblock(void (*fn)(const float*, Block&), const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / 256; ++b) {
    Block y;
    fn(x + 256 * b, y);
    std::memcpy(out + b * int64_t(sizeof y), &y, sizeof y);
  }
  return true;
}

}  // namespace

bool quantize(WeightType t, const float* x, int64_t n, uint8_t* out) {
  const QuantFormat* f = quant_format(t);
  switch (t) {
    case WeightType::q4_k: return each_superblock(quantize_q4_k, x, n, out);
    case WeightType::q5_k: return each_superblock(quantize_q5_k, x, n, out);
    case WeightType::q6_k: return each_superblock(quantize_q6_k, x, n, out);
    default: break;
  }
  if (!f || f->block_elems != 32) return false;
  for (int64_t b = 0; b < n / 32; ++b, x += 32, out += f->block_bytes) {
    // The first element of largest magnitude (numpy's argmax), and the extremes.
    int imax = 0;
    float mn = x[0], mx = x[0];
    for (int j = 1; j < 32; ++j) {
      if (std::fabs(x[j]) > std::fabs(x[imax])) imax = j;
      mn = std::min(mn, x[j]);
      mx = std::max(mx, x[j]);
    }
    uint8_t q[32];
    switch (t) {
      case WeightType::q8_0: {
        const float d = std::fabs(x[imax]) / 127.0f, id = d == 0.0f ? 0.0f : 1.0f / d;
        const uint16_t dh = fp16_from_float(d);
        std::memcpy(out, &dh, 2);
        for (int j = 0; j < 32; ++j) {
          const float v = x[j] * id, a = std::fabs(v), fl = std::floor(a);
          const float r = fl + std::floor(2.0f * (a - fl));  // half away from zero, as gguf's np_roundf
          out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(v < 0 ? -r : r));
        }
        continue;
      }
      case WeightType::q4_0:
      case WeightType::q5_0: {
        const bool five = t == WeightType::q5_0;
        const float d = x[imax] / (five ? -16.0f : -8.0f), id = d == 0.0f ? 0.0f : 1.0f / d;
        const float half = five ? 16.5f : 8.5f;
        const int top = five ? 31 : 15;
        for (int j = 0; j < 32; ++j) {
          const float v = x[j] * id;  // two roundings, as numpy: no fused multiply-add
          q[j] = static_cast<uint8_t>(std::min<int>(top, static_cast<int>(std::trunc(v + half))));
        }
        const uint16_t dh = fp16_from_float(d);
        std::memcpy(out, &dh, 2);
        break;
      }
      case WeightType::q4_1:
      case WeightType::q5_1: {
        const bool five = t == WeightType::q5_1;
        const float d = (mx - mn) / (five ? 31.0f : 15.0f), id = d == 0.0f ? 0.0f : 1.0f / d;
        const int top = five ? 31 : 15;
        for (int j = 0; j < 32; ++j) {
          const float v = (x[j] - mn) * id;
          q[j] = static_cast<uint8_t>(std::min<int>(top, static_cast<int>(std::trunc(v + 0.5f))));
        }
        const uint16_t dh = fp16_from_float(d), mh = fp16_from_float(mn);
        std::memcpy(out, &dh, 2);
        std::memcpy(out + 2, &mh, 2);
        break;
      }
      default: return false;
    }
    const bool five = t == WeightType::q5_0 || t == WeightType::q5_1;
    uint8_t* qs = out + f->block_bytes - 16;
    for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
    if (five) {
      uint32_t qh = 0;
      for (int j = 0; j < 32; ++j) qh |= uint32_t(q[j] >> 4) << j;
      std::memcpy(qs - 4, &qh, 4);
    }
  }
  return true;
}

// n bytes between a plain block and its place in a packed one, in the direction of the repack.
static void move_bytes(bool to_packed, void* plain, void* packed, std::size_t n) {
  if (to_packed) std::memcpy(packed, plain, n);
  else std::memcpy(plain, packed, n);
}

// Block b of one group: the block's float16 fields (d; Q4_1: d, m) each as eight rows' side by
// side, then the quants in 4-byte chunks, row after row per chunk. rows[j]: row j's first block in
// the plain layout. to_packed: plain -> packed; else the reverse.
static void shuffle_x8(int64_t bb, int64_t halves, uint8_t* const rows[8], int64_t b, uint8_t* packed, bool to_packed) {
  const int64_t qbytes = bb - 2 * halves;
  for (int j = 0; j < 8; ++j) {
    uint8_t* blk = rows[j] + b * bb;
    for (int64_t h = 0; h < halves; ++h) move_bytes(to_packed, blk + 2 * h, packed + 16 * h + 2 * j, 2);
    for (int64_t c = 0; c < qbytes / 4; ++c)
      move_bytes(to_packed, blk + 2 * halves + 4 * c, packed + 16 * halves + 32 * c + 4 * j, 4);
  }
}

// Value v (0..63) of BlockQ4_Kx8's 6-bit scales or mins: low four bits in lo[32], top two in hi[16].
static void put6(uint8_t* lo, uint8_t* hi, int v, int val) {
  lo[v % 32] = static_cast<uint8_t>(lo[v % 32] | (val & 15) << (v < 32 ? 0 : 4));
  hi[v % 16] = static_cast<uint8_t>(hi[v % 16] | (val >> 4) << (2 * (v / 16)));
}
static int get6(const uint8_t* lo, const uint8_t* hi, int v) {
  return ((lo[v % 32] >> (v < 32 ? 0 : 4)) & 15) | ((hi[v % 16] >> (2 * (v / 16))) & 3) << 4;
}

// Q4_K's or Q5_K's superblock b of one group (BlockQ4_Kx8, BlockQ5_Kx8). The 12 bytes of ggml's
// scales are 16 6-bit values with no bit to spare, so unpacking writes back exactly the bytes
// packing read.
template <typename B, typename P>
static void shuffle_q45k_x8(uint8_t* const rows[8], int64_t b, uint8_t* packed, bool to_packed) {
  auto& x = *reinterpret_cast<P*>(packed);
  if (to_packed) std::memset(&x, 0, sizeof x);
  for (int j = 0; j < 8; ++j) {
    auto& blk = *reinterpret_cast<B*>(rows[j] + b * int64_t(sizeof(B)));
    if (to_packed) {
      x.d[j] = blk.d, x.dmin[j] = blk.dmin;
      for (int s = 0; s < 8; ++s) {
        int sc, m;
        scale_min_k4(s, blk.scales, sc, m);
        put6(x.sl, x.sh, 8 * s + j, sc);
        put6(x.ml, x.mh, 16 * (s / 2) + 2 * j + s % 2, m);
      }
    } else {
      blk.d = x.d[j], blk.dmin = x.dmin[j];
      int sc[8], m[8];
      for (int s = 0; s < 8; ++s) sc[s] = get6(x.sl, x.sh, 8 * s + j), m[s] = get6(x.ml, x.mh, 16 * (s / 2) + 2 * j + s % 2);
      put_scale_min_k4(sc, m, blk.scales);
    }
    for (int c = 0; c < 32; ++c) move_bytes(to_packed, blk.qs + 4 * c, x.qs + 32 * c + 4 * j, 4);
    if constexpr (std::is_same_v<B, BlockQ5_K>)
      for (int c = 0; c < 8; ++c) move_bytes(to_packed, blk.qh + 4 * c, x.qh + 32 * c + 4 * j, 4);
  }
}

// Q6_K's superblock b of one group (BlockQ6_Kx8).
static void shuffle_q6k_x8(uint8_t* const rows[8], int64_t b, uint8_t* packed, bool to_packed) {
  auto& x = *reinterpret_cast<BlockQ6_Kx8*>(packed);
  for (int j = 0; j < 8; ++j) {
    auto& blk = *reinterpret_cast<BlockQ6_K*>(rows[j] + b * int64_t(sizeof(BlockQ6_K)));
    move_bytes(to_packed, &blk.d, &x.d[j], 2);
    for (int g = 0; g < 16; ++g) move_bytes(to_packed, &blk.scales[g], &x.scales[8 * g + j], 1);
    for (int t = 0; t < 16; ++t) {
      const int h = t / 8, c = t % 8;
      move_bytes(to_packed, blk.ql + 4 * (16 * h + c), x.q + 96 * t + 4 * j, 4);
      move_bytes(to_packed, blk.ql + 4 * (16 * h + 8 + c), x.q + 96 * t + 32 + 4 * j, 4);
      move_bytes(to_packed, blk.qh + 4 * (8 * h + c), x.q + 96 * t + 64 + 4 * j, 4);
    }
  }
}

static void repack_x8(WeightType plain, uint8_t* rows_base, int64_t N, int64_t K, uint8_t* packed, bool to_packed,
                      const int64_t* order) {
  const QuantFormat* f = quant_format(plain);
  if (!f || packed_x8(plain) == WeightType::f32 || N % 8 || K % f->block_elems)
    throw std::invalid_argument("pack_x8: not eight-row groups of Q4_0/Q4_1/Q8_0/Q4_K/Q5_K/Q6_K blocks");
  const int64_t bb = f->block_bytes, nb = K / f->block_elems;
  for (int64_t g = 0; g < N / 8; ++g) {
    uint8_t* rows[8];
    for (int j = 0; j < 8; ++j) rows[j] = rows_base + (order ? order[8 * g + j] : 8 * g + j) * nb * bb;
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* at = packed + (g * nb + b) * 8 * bb;
      if (plain == WeightType::q4_k)
        shuffle_q45k_x8<BlockQ4_K, BlockQ4_Kx8>(rows, b, at, to_packed);
      else if (plain == WeightType::q5_k)
        shuffle_q45k_x8<BlockQ5_K, BlockQ5_Kx8>(rows, b, at, to_packed);
      else if (plain == WeightType::q6_k)
        shuffle_q6k_x8(rows, b, at, to_packed);
      else
        shuffle_x8(bb, plain == WeightType::q4_1 ? 2 : 1, rows, b, at, to_packed);
    }
  }
}

void pack_x8(WeightType plain, const void* src, int64_t N, int64_t K, void* dst, const int64_t* order) {
  repack_x8(plain, static_cast<uint8_t*>(const_cast<void*>(src)), N, K, static_cast<uint8_t*>(dst), true, order);
}
void unpack_x8(WeightType packed, const void* src, int64_t N, int64_t K, void* dst) {
  repack_x8(plain_of_x8(packed), static_cast<uint8_t*>(dst), N, K, static_cast<uint8_t*>(const_cast<void*>(src)), false,
            nullptr);
}

}  // namespace vhost::llama
