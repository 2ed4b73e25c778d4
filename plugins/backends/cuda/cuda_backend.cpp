// The libtorch CUDA backend: one GPU per process (`device`, or LOCAL_RANK under `vhost launch`
// and torchrun), the compute dtype, TF32, seeds of the CUDA generators, deterministic mode, the
// device's peak for MFU, the allocator's peak memory, and the job's process group over NCCL.
// Built with every libtorch: where libtorch has no CUDA (Debian's 1.13), or no GPU is visible,
// creating an instance fails with "no CUDA device visible: ..." and `vhost plugins` still lists
// the plugin.
#include <vhost/plugin.hpp>
#include <vhost/torch/backend.hpp>
#include <vhost/torch/collective.hpp>
#include <vhost/torch/compat.hpp>

#include "torch_backend.hpp"

#if defined(VHOST_TORCH_CUDA)
#include "c10d_collective.hpp"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string>

namespace {

c10::ScalarType parse_dtype(const std::string& s) {
  if (s == "float32") return torch::kFloat32;
  if (s == "bfloat16") return torch::kBFloat16;
  return torch::kFloat16;
}

#if defined(VHOST_TORCH_CUDA)
// Dense tensor-core peaks in TFLOP/s (bf16/fp16; TF32 is half of it on these parts), by the
// device name CUDA reports. Unknown devices give 0: no MFU unless `peak_tflops` is set.
double known_peak_tflops(std::string name, c10::ScalarType dtype) {
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::toupper(c); });
  double half = 0;
  if (name.find("H200") != std::string::npos || name.find("H100") != std::string::npos)
    half = name.find("PCIE") != std::string::npos ? 756 : 989;
  else if (name.find("A100") != std::string::npos)
    half = 312;
  else if (name.find("A10G") != std::string::npos)
    half = 125;
  else if (name.find("L4") != std::string::npos)
    half = 121;
  if (dtype == torch::kFloat32) return half / 2;  // TF32 tensor cores
  return half;
}

// NCCL wants the barrier's device: the rank's own GPU, or it guesses one per rank.
class NcclCollective final : public vhost::backends::C10dCollective<c10d::ProcessGroupNCCL> {
 public:
  NcclCollective(c10::intrusive_ptr<c10d::ProcessGroupNCCL> pg, int rank, int world, c10::Device device)
      : C10dCollective(std::move(pg), rank, world), device_(device) {}
  // NCCL has a real reduce-scatter: each rank receives only its slice of the sum.
  void reduce_scatter_sum(at::Tensor& out, const at::Tensor& in) override {
    at::Tensor i = in.contiguous().view({-1}), o = out.is_contiguous() ? out.view({-1}) : out.contiguous().view({-1});
    run([&] { return pg_->_reduce_scatter_base(o, i); }, "reduce_scatter");
    if (!o.is_same(out) && o.data_ptr() != out.data_ptr()) out.copy_(o.view(out.sizes()));
  }

 protected:
  c10d::BarrierOptions barrier_options() const override {
    c10d::BarrierOptions o;
    o.device_ids = {device_.index()};
    return o;
  }

 private:
  c10::Device device_;
};
#endif

class CudaBackend final : public vhost::backends::TorchBackend {
 public:
  static std::vector<vhost::Option> options() {
    using vhost::Option;
    return {
        Option::string("device", "", "cuda:N; empty: cuda:LOCAL_RANK (one GPU per process), else cuda:0"),
        Option::string("dtype", "bfloat16", "compute dtype").one_of({"bfloat16", "float16", "float32"}),
        Option::boolean("tf32", true, "TF32 tensor cores for float32 matmuls and convolutions"),
        Option::integer("seed", 42, "seed of the CPU and CUDA generators").range(0, 9007199254740991.0),
        Option::boolean("deterministic", false, "only deterministic algorithms (sets CUBLAS_WORKSPACE_CONFIG)"),
        Option::number("peak_tflops", 0.0,
                         "device peak for MFU (0: known parts: A100 312, H100/H200 989 bf16 dense)")
            .range(0, 1e7),
    };
  }

  explicit CudaBackend(const vhost::Config& cfg)
      : dtype_name_(cfg.get<std::string>("dtype")),
        dtype_(parse_dtype(dtype_name_)),
        seed_(static_cast<std::uint64_t>(cfg.get<std::int64_t>("seed"))),
        tf32_(cfg.get<bool>("tf32")),
        deterministic_(cfg.get<bool>("deterministic")) {
#if !defined(VHOST_TORCH_CUDA)
    throw vhost::ConfigError("device", "no CUDA device visible: this vhost was built against libtorch " +
                                           vhost::torch_compat::version() + " (" + vhost::torch_compat::gpu_runtime() +
                                           "), which has no CUDA; build against PyTorch 2.x with CUDA "
                                           "(`make test-torch2`, docs/training.md) or use the cpu backend");
#else
    const int count = static_cast<int>(c10::cuda::device_count());
    if (count == 0) {
      const char* vis = std::getenv("CUDA_VISIBLE_DEVICES");
      throw vhost::ConfigError("device", std::string("no CUDA device visible: libtorch ") + vhost::torch_compat::version() +
                                             " (" + vhost::torch_compat::gpu_runtime() + ") finds 0 GPUs (CUDA_VISIBLE_DEVICES=" +
                                             (vis ? std::string("'") + vis + "'" : std::string("unset")) +
                                             "; is the NVIDIA driver loaded?)");
    }
    job_ = vhost::backends::job_env();
    std::string dev = cfg.get<std::string>("device");
    int index = job_.world > 1 || std::getenv("LOCAL_RANK") ? job_.local_rank : 0;
    if (!dev.empty()) {
      try {
        c10::Device d(dev);
        if (!d.is_cuda()) throw std::invalid_argument("not a CUDA device");
        index = d.has_index() ? d.index() : 0;
      } catch (const std::exception&) {
        throw vhost::ConfigError("device", "'" + dev + "' is not a CUDA device (write cuda:0, cuda:1, ...)");
      }
    }
    if (index < 0 || index >= count)
      throw vhost::ConfigError("device", "cuda:" + std::to_string(index) + " does not exist: " + std::to_string(count) +
                                             " GPU(s) visible");
    device_ = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
    c10::cuda::set_device(device_.index());
    if (deterministic_ && !std::getenv("CUBLAS_WORKSPACE_CONFIG")) ::setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", 1);
    at::globalContext().setAllowTF32CuBLAS(tf32_);
    at::globalContext().setAllowTF32CuDNN(tf32_);
    at::globalContext().setDeterministicAlgorithms(deterministic_, false);
    torch::manual_seed(seed_);  // seeds the CUDA generators of every device too
    auto* prop = at::cuda::getDeviceProperties(device_.index());
    name_ = prop->name;
    total_memory_ = static_cast<std::int64_t>(prop->totalGlobalMem);
    capability_ = std::to_string(prop->major) + "." + std::to_string(prop->minor);
    peak_ = cfg.get<double>("peak_tflops");
    if (peak_ == 0) peak_ = known_peak_tflops(name_, dtype_);
    try {
      auto a = torch::ones({16, 16}, torch::TensorOptions().dtype(dtype_).device(device_));
      (void)torch::matmul(a, a).sum().item<float>();
    } catch (const std::exception& e) {
      throw vhost::ConfigError("dtype", dtype_name_ + " matrix multiplication failed on " + name_ + ": " +
                                            vhost::backends::first_line(e.what()));
    }
    c10::cuda::CUDACachingAllocator::resetPeakStats(device_.index());
    if (job_.world > 1) {
      try {
        auto store = vhost::backends::rendezvous(job_);
        auto opts = c10d::ProcessGroupNCCL::Options::create();
        opts->timeout = job_.timeout;
        auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, job_.rank, job_.world, opts);
        collective_ = std::make_unique<NcclCollective>(pg, job_.rank, job_.world, device_);
      } catch (const std::exception& e) {
        throw vhost::Error(VHOST_ERR_RUNTIME, "rank " + std::to_string(job_.rank) + " of " + std::to_string(job_.world) +
                                                  ": could not join the NCCL process group at " + job_.addr + ":" +
                                                  std::to_string(job_.port) + ": " + vhost::backends::first_line(e.what()));
      }
    }
    vhost::log(VHOST_LOG_DEBUG, "cuda backend: " + device_.str() + " (" + name_ + "), " + dtype_name_ + ", seed " +
                                    std::to_string(seed_));
#endif
  }

  vhost::json describe() const override {
    return {{"device", device_.str()},
            {"gpu", name_},
            {"compute_capability", capability_},
            {"memory_bytes", total_memory_},
            {"dtype", dtype_name_},
            {"tf32", tf32_},
            {"seed", seed_},
            {"deterministic", deterministic_},
            {"peak_tflops", peak_},
            {"peak_allocated_bytes", peak_allocated_bytes()},
            {"peak_reserved_bytes", peak_reserved_bytes()},
            {"libtorch", vhost::torch_compat::version()},
            {"gpu_runtime", vhost::torch_compat::gpu_runtime()},
            {"rank", rank()},
            {"world_size", world_size()},
            {"process_group", collective_ ? "nccl" : "none"}};
  }

  // torch.backend
  c10::Device device() const override { return device_; }
  c10::ScalarType dtype() const override { return dtype_; }
  std::uint64_t seed() const override { return seed_; }
  int threads() const override { return torch::get_num_threads(); }
  double peak_tflops() const override { return peak_; }
  std::int64_t peak_allocated_bytes() const override {
#if defined(VHOST_TORCH_CUDA)
    return c10::cuda::CUDACachingAllocator::getDeviceStats(device_.index()).allocated_bytes[0].peak;
#else
    return -1;
#endif
  }
  std::int64_t peak_reserved_bytes() const override {
#if defined(VHOST_TORCH_CUDA)
    return c10::cuda::CUDACachingAllocator::getDeviceStats(device_.index()).reserved_bytes[0].peak;
#else
    return -1;
#endif
  }

 private:
  std::string dtype_name_;
  c10::ScalarType dtype_;
  std::uint64_t seed_;
  bool tf32_, deterministic_;
  c10::Device device_{c10::kCPU};
  std::string name_, capability_;
  std::int64_t total_memory_ = 0;
  double peak_ = 0;
#if defined(VHOST_TORCH_CUDA)
  vhost::backends::JobEnv job_;
#endif
};

}  // namespace

VHOST_PLUGIN(CudaBackend, "cuda", "0.1.0", "libtorch on an NVIDIA GPU: device, bf16/TF32, seed, NCCL process group")
