// The one place where libtorch 1.13 (Debian, CI) and 2.x (GPU hosts) differ for vhost.
// Code elsewhere calls these helpers instead of testing TORCH_VERSION itself.
#pragma once

#include <vhost/torch/abi.hpp>

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>

#define VHOST_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace vhost::torch_compat {

inline std::string version() { return TORCH_VERSION; }

// The GPU runtime this libtorch was built for ("cpu", "cuda12.8", "hip6.2").
inline std::string gpu_runtime() { return VHOST_TORCH_GPU; }

// Whether a CUDA (or HIP) device is usable right now.
inline bool gpu_available() { return torch::cuda::is_available(); }

// Whether causal_attention runs libtorch's scaled_dot_product_attention (2.x) or the maths (1.13).
constexpr bool has_sdpa() { return VHOST_TORCH_AT_LEAST(2, 0); }

// Causal self-attention: q [B, H, T, d]; k and v [B, KV, T, d] with H a multiple of KV
// (grouped-query attention: query head h reads kv head h / (H / KV)); scaled by 1/sqrt(d).
// libtorch 2.x: scaled_dot_product_attention (flash or memory-efficient kernels on CUDA);
// 1.13: the maths in three batched kernels - baddbmm (scores, scale and causal mask in one
// pass), softmax in float32, bmm - with each kv head's query heads stacked, so keys and values
// are never repeated.
inline at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3), KV = k.size(1), rep = H / KV;
#if VHOST_TORCH_AT_LEAST(2, 0)
  (void)B, (void)T, (void)d;
  auto kk = rep > 1 ? k.repeat_interleave(rep, 1) : k;
  auto vv = rep > 1 ? v.repeat_interleave(rep, 1) : v;
  return at::scaled_dot_product_attention(q, kk, vv, {}, 0.0, /*is_causal=*/true);
#else
  auto mask = at::full({T, T}, -std::numeric_limits<float>::infinity(), q.options()).triu(1);
  if (rep > 1) mask = mask.repeat({rep, 1});  // [rep * T, T]
  auto scores = at::baddbmm(mask, q.reshape({B * KV, rep * T, d}), k.reshape({B * KV, T, d}).transpose(1, 2), 1.0,
                            1.0 / std::sqrt(static_cast<double>(d)));
  auto probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::bmm(probs, v.reshape({B * KV, T, d})).view({B, H, T, d});
#endif
}

// Which attention kernel causal_attention runs for inputs like these (q [B, H, T, d] and k, v
// already repeated to H heads, as causal_attention hands them on): on libtorch 2.x the SDPA
// dispatcher's own choice (at::_fused_sdp_choice: "flash_attention", "efficient_attention",
// "cudnn_attention", "math", ...), on 1.13 "math (libtorch 1.13: no scaled_dot_product_attention)".
inline std::string attention_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
#if VHOST_TORCH_AT_LEAST(2, 0)
  switch (at::_fused_sdp_choice(q, k, v, {}, 0.0, /*is_causal=*/true)) {
    case 0: return "math";
    case 1: return "flash_attention";
    case 2: return "efficient_attention";
    case 3: return "cudnn_attention";
    case 4: return "overrideable";
    default: return "none (no SDPA kernel takes these inputs)";
  }
#else
  (void)q, (void)k, (void)v;
  return "math (libtorch " + version() + ": no scaled_dot_product_attention)";
#endif
}

}  // namespace vhost::torch_compat
