// The one place where libtorch 1.13 (Debian, CI) and 2.x (GPU hosts) differ for vhost.
// Code elsewhere calls these helpers instead of testing TORCH_VERSION itself.
#pragma once

#include <vhost/torch/abi.hpp>

#include <torch/torch.h>

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

}  // namespace vhost::torch_compat
