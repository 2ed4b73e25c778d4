// The "torch.backend" extension: what a backend plugin hands a model plugin, in libtorch types.
// Only exchanged between plugins with identical VHOST_TORCH_ABI strings (the host checks).
//
//   auto* be = static_cast<const vhost::torch_ext::Backend*>(
//       vhost::find_extension(cfg.get<std::string>("backend"), vhost::torch_ext::kBackend));
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>

namespace vhost::torch_ext {
class Collective;
}

namespace vhost::torch_ext {

inline constexpr const char* kBackend = "torch.backend";

class Backend {
 public:
  virtual ~Backend() = default;
  // Where tensors live and compute runs.
  virtual c10::Device device() const = 0;
  // The dtype weights and activations use on this backend (float32, bfloat16, float16).
  virtual c10::ScalarType dtype() const = 0;
  // The seed the backend set; plugins derive their own generators from it.
  virtual std::uint64_t seed() const = 0;
  // Threads for intra-op parallelism.
  virtual int threads() const = 0;
  // The job's process group when it runs as several processes (RANK / WORLD_SIZE set), else
  // null. See vhost/torch/collective.hpp.
  virtual Collective* collective() const { return nullptr; }
  // Appended (ABI 1.4). The device's dense peak in TFLOP/s at the backend's dtype, for MFU; 0
  // when unknown (CPUs).
  virtual double peak_tflops() const { return 0; }
  // Peak bytes the device allocator handed out and reserved since the backend started; -1 where
  // the backend keeps no such count (the CPU: see the process's peak RSS instead).
  virtual std::int64_t peak_allocated_bytes() const { return -1; }
  virtual std::int64_t peak_reserved_bytes() const { return -1; }
};

}  // namespace vhost::torch_ext
