// The libtorch CPU backend: owns the process's intra-op thread count, the global seed and the
// compute dtype, and hands them to model plugins through the "torch.backend" extension.
#include <vhost/plugin.hpp>
#include <vhost/torch/backend.hpp>
#include <vhost/torch/compat.hpp>

#include "gloo_collective.hpp"
#include "torch_backend.hpp"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>
#include <thread>

namespace {

c10::ScalarType parse_dtype(const std::string& s) {
  if (s == "float32") return torch::kFloat32;
  if (s == "bfloat16") return torch::kBFloat16;
  return torch::kFloat16;
}

// Cores this process may run on (its affinity mask: taskset, cgroup cpusets), else all.
int usable_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// How many cores other processes keep busy now: the fewest running tasks /proc/stat shows over
// five looks 10 ms apart, less this process. A core shared with a busy process makes every
// OpenMP barrier wait for a descheduled thread (decoding fell 2-4x, and 90x in one measurement),
// so the default thread count leaves such cores out.
int busy_cores_elsewhere() {
  int fewest = 1 << 30;
  for (int look = 0; look < 5; ++look) {
    std::ifstream in("/proc/stat");
    std::string key;
    int n = -1;
    while (in >> key)
      if (key == "procs_running") {
        in >> n;
        break;
      }
    if (n < 0) return 0;  // not Linux's /proc: assume idle
    fewest = std::min(fewest, n);
    if (look < 4) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return std::max(0, fewest - 1);
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown";
}

class CpuBackend final : public vhost::backends::TorchBackend {
 public:
  static std::vector<vhost::Option> options() {
    using vhost::Option;
    return {
        Option::integer("threads", 0,
                        "intra-op CPU threads (0: one per usable core not kept busy by other processes at start)")
            .range(0, 4096),
        Option::integer("seed", 42, "global random seed").range(0, 9007199254740991.0),
        Option::string("dtype", "float32", "compute dtype").one_of({"float32", "bfloat16", "float16"}),
        Option::boolean("deterministic", false, "use only deterministic algorithms"),
    };
  }

  explicit CpuBackend(const vhost::Config& cfg)
      : threads_(static_cast<int>(cfg.get<std::int64_t>("threads"))),
        seed_(static_cast<std::uint64_t>(cfg.get<std::int64_t>("seed"))),
        dtype_name_(cfg.get<std::string>("dtype")),
        dtype_(parse_dtype(dtype_name_)),
        deterministic_(cfg.get<bool>("deterministic")) {
    if (threads_ == 0) {
      const int cores = usable_cores(), busy = busy_cores_elsewhere();
      threads_ = std::max(1, cores - busy);
      threads_reason_ = std::to_string(cores) + " usable cores, " + std::to_string(busy) +
                        " busy with other processes at start";
      if (busy > 0)
        vhost::log(VHOST_LOG_INFO, "cpu backend: " + std::to_string(threads_) + " thread" + (threads_ == 1 ? "" : "s") + " (" +
                                       threads_reason_ + "; threads = N sets it)");
    } else {
      threads_reason_ = "set";
    }
    // Probe the dtype instead of trusting a table: what CPU kernels exist depends on the libtorch
    // build (1.13 has no float16 matmul on CPU, for instance).
    try {
      auto a = torch::ones({4, 4}, torch::TensorOptions().dtype(dtype_));
      (void)torch::matmul(a, a).sum().item<float>();
    } catch (const std::exception& e) {
      throw vhost::ConfigError("dtype", dtype_name_ + " matrix multiplication is not available on CPU in libtorch " +
                                            vhost::torch_compat::version() + "; use float32 or bfloat16");
    }
    torch::set_num_threads(threads_);
    torch::manual_seed(seed_);
    at::globalContext().setDeterministicAlgorithms(deterministic_, false);
    collective_ = vhost::cpu::gloo_from_env();  // null for a single process
    vhost::log(VHOST_LOG_DEBUG, "cpu backend: " + std::to_string(threads_) + " threads, seed " +
                                    std::to_string(seed_) + ", " + dtype_name_);
  }

  vhost::json describe() const override {
    return {{"device", "cpu"},
            {"cpu", cpu_model()},
            {"cores", std::thread::hardware_concurrency()},
            {"threads", torch::get_num_threads()},
            {"threads_from", threads_reason_},
            {"dtype", dtype_name_},
            {"seed", seed_},
            {"deterministic", deterministic_},
            {"libtorch", vhost::torch_compat::version()},
            {"mkl", at::hasMKL()},
            {"mkldnn", at::hasMKLDNN()},
            {"openmp", at::hasOpenMP()},
            {"gpu_runtime", vhost::torch_compat::gpu_runtime()},
            {"gpu_visible", vhost::torch_compat::gpu_available()},
            {"rank", collective_ ? collective_->rank() : 0},
            {"world_size", collective_ ? collective_->world_size() : 1},
            {"process_group", collective_ ? "gloo" : "none"}};
  }

  // torch.backend
  c10::Device device() const override { return c10::Device(c10::kCPU); }
  c10::ScalarType dtype() const override { return dtype_; }
  std::uint64_t seed() const override { return seed_; }
  int threads() const override { return threads_; }

 private:
  int threads_;
  std::string threads_reason_;
  std::uint64_t seed_;
  std::string dtype_name_;
  c10::ScalarType dtype_;
  bool deterministic_;
};

}  // namespace

VHOST_PLUGIN(CpuBackend, "cpu", "0.1.0", "libtorch on the CPU: threads, seed, dtype")
