// Vector math shared by the decode kernels (decode_kernels.cpp, bf16_kernels.cpp): GCC/Clang
// vector extensions, instantiated inside each kernel's target("...") function.
#pragma once

#include <cstdint>
#include <cstring>

#define VHOST_INLINE __attribute__((always_inline)) inline

namespace vhost::llama {

// A bfloat16 (its 16 bits) or a float, as a float: bfloat16 is a float's upper half.
VHOST_INLINE float as_float(float x) { return x; }
VHOST_INLINE float as_float(uint16_t x) {
  const uint32_t u = uint32_t(x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// V consecutive floats, or V bfloat16 widened to floats, as a vector.
template <int V, typename vec>
VHOST_INLINE vec load_vec(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
// (GCC 12 drops a vector_size that depends on a template parameter from a typedef inside a
// function template: the widths are spelled out here.)
template <int V>
struct Widen;
template <>
struct Widen<16> {
  typedef uint16_t half __attribute__((vector_size(32), may_alias, aligned(2)));
  typedef uint32_t word __attribute__((vector_size(64)));
};
template <>
struct Widen<8> {
  typedef uint16_t half __attribute__((vector_size(16), may_alias, aligned(2)));
  typedef uint32_t word __attribute__((vector_size(32)));
};
template <int V, typename vec>
VHOST_INLINE vec load_vec(const uint16_t* p) {
  typedef typename Widen<V>::half half;
  typename Widen<V>::word u;
#if defined(__x86_64__)
  // GCC 12 lowers the zero-extension below in halves (two vpmovzxwd, an extract and an insert,
  // 5 instructions, 3 of them on the one shuffle port) where one vpmovzxwd from memory does; in
  // the attention kernel over a bfloat16 cache that made the widening most of the work. Only
  // instantiated inside target("avx512f") (V 16) and target("avx2") (V 8) kernels.
  __asm__("vpmovzxwd %1, %0" : "=v"(u) : "m"(*reinterpret_cast<const half*>(p)));
#else
  half h;
  std::memcpy(&h, p, sizeof h);
  u = __builtin_convertvector(h, typename Widen<V>::word);
#endif
  u = u << 16;
  vec v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

// A float16 (its bits): a weight element type of its own (uint16_t is bfloat16 here).
struct Half {
  uint16_t bits;
};
// V float16 widened to floats: vcvtph2ps from memory (AVX-512F for V 16, F16C for V 8).
template <int V, typename vec>
VHOST_INLINE vec load_vec(const Half* p) {
  vec v;
#if defined(__x86_64__)
  __asm__("vcvtph2ps %1, %0" : "=v"(v) : "m"(*reinterpret_cast<const typename Widen<V>::half*>(p)));
#else
  for (int i = 0; i < V; ++i) v[i] = static_cast<float>(reinterpret_cast<const _Float16*>(p)[i]);
#endif
  return v;
}

// e^x for x <= 0 on a vector (Cephes' expf polynomial, about 1 ulp): 2^n * p(r), with
// x = n ln2 + r, |r| <= ln2/2. Below -87.3 the result is 0 (the float range ends there).
template <int V, typename vec>
VHOST_INLINE vec exp_nonpositive(vec x) {
  typedef int32_t ivec __attribute__((vector_size(4 * V)));
  const auto under = x < -87.3f;  // lanes that underflow
  x = under ? vec{} - 87.3f : x;
  vec n = x * 1.44269504088896341f;
  n = __builtin_convertvector(__builtin_convertvector(n + (n < 0 ? vec{} - 0.5f : vec{} + 0.5f), ivec), vec);  // round
  vec r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vec p = vec{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;
  vec scale;
  std::memcpy(&scale, &bits, sizeof scale);
  p = p * scale;
  return under ? vec{} : p;
}

// silu(g) * u on a vector: g * sigmoid(g), sigmoid from e = exp(-|g|) <= 1 (never overflows).
template <int V, typename vec>
VHOST_INLINE vec silu_mul(vec g, vec u) {
  const vec e = exp_nonpositive<V>(g < 0 ? g : -g);
  const vec one = vec{} + 1.0f;
  return g * ((g < 0 ? e : one) / (one + e)) * u;
}

}  // namespace vhost::llama
