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

// Fused attention kernels (flash / memory-efficient on CUDA) arrived with 2.0.
constexpr bool has_fused_attention() { return VHOST_TORCH_AT_LEAST(2, 0); }

// The GPU runtime this libtorch was built for ("cpu", "cuda12.8", "hip6.2").
inline std::string gpu_runtime() { return VHOST_TORCH_GPU; }

// Whether a CUDA (or HIP) device is usable right now.
inline bool gpu_available() { return torch::cuda::is_available(); }

// Causal self-attention, q [B, H, T, d], k and v [B, H, T, d] (heads already repeated for GQA),
// scaled by 1/sqrt(d). libtorch 2.x: scaled_dot_product_attention (flash or memory-efficient
// kernels on CUDA, differentiable); 1.13: the same maths written out, softmax in float32.
inline at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
#if VHOST_TORCH_AT_LEAST(2, 0)
  return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
#else
  const int64_t T = q.size(-2), S = k.size(-2);
  auto scores = at::matmul(q, k.transpose(-1, -2)).to(at::kFloat) * (1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  auto blocked = at::ones({T, S}, q.options().dtype(at::kBool)).triu(S - T + 1);
  scores = scores.masked_fill(blocked, -std::numeric_limits<float>::infinity());
  return at::matmul(at::softmax(scores, -1).to(q.scalar_type()), v);
#endif
}

}  // namespace vhost::torch_compat
