#include "gloo_collective.hpp"

#include <vhost/plugin.hpp>

#include <torch/torch.h>
#if defined(VHOST_HAVE_GLOO)
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <string>

namespace vhost::cpu {

namespace {

std::string env(const char* name, const char* def = nullptr) {
  const char* v = std::getenv(name);
  if (v && *v) return v;
  if (def) return def;
  throw vhost::ConfigError("", std::string("the environment variable ") + name +
                                   " is not set (WORLD_SIZE > 1 needs RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; "
                                   "`vhost launch` sets them)");
}

long env_int(const char* name, const char* def, long lo, long hi) {
  std::string s = env(name, def);
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v < lo || v > hi)
    throw vhost::ConfigError("", std::string("the environment variable ") + name + " = '" + s +
                                     "' is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return v;
}

#if defined(VHOST_HAVE_GLOO)
class GlooCollective final : public torch_ext::Collective {
 public:
  GlooCollective(int rank, int world, const std::string& addr, uint16_t port, std::chrono::milliseconds timeout)
      : rank_(rank), world_(world) {
    c10d::TCPStoreOptions so;
    so.port = port;
    so.isServer = rank == 0;
    so.numWorkers = static_cast<std::size_t>(world);
    so.waitWorkers = true;
    so.timeout = timeout;
    try {
      store_ = c10::make_intrusive<c10d::TCPStore>(addr, so);
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(addr == "localhost" ? "127.0.0.1" : addr));
      pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store_, rank, world, opts);
    } catch (const std::exception& e) {
      throw vhost::Error(VHOST_ERR_RUNTIME, "rank " + std::to_string(rank) + " of " + std::to_string(world) +
                                                ": could not join the process group at " + addr + ":" +
                                                std::to_string(port) + ": " + first_line(e.what()));
    }
  }
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  void all_gather(std::vector<at::Tensor>& out, const at::Tensor& in) override {
    std::vector<std::vector<at::Tensor>> o{out};
    std::vector<at::Tensor> i{in.contiguous()};
    run([&] { return pg_->allgather(o, i); }, "all_gather");
    for (std::size_t r = 0; r < out.size(); ++r)
      if (!o[0][r].is_same(out[r])) out[r].copy_(o[0][r]);
  }
  // ProcessGroupGloo has no reduce-scatter (1.13 and 2.x): one reduce per slice, each to the
  // rank that owns it. Every rank sends each slice once and keeps one slice-sized buffer, where
  // an all-reduce would send it twice and hold the whole sum.
  void reduce_scatter_sum(at::Tensor& out, const at::Tensor& in) override {
    auto flat = in.contiguous().view({-1});
    const int64_t n = out.numel();
    for (int r = 0; r < world_; ++r) {
      std::vector<at::Tensor> t{flat.narrow(0, n * r, n).clone()};
      c10d::ReduceOptions o;
      o.rootRank = r;
      run([&] { return pg_->reduce(t, o); }, "reduce_scatter");
      if (r == rank_) out.copy_(t[0].view(out.sizes()));
    }
  }
  void gather(std::vector<at::Tensor>& out, const at::Tensor& in, int root) override {
    std::vector<std::vector<at::Tensor>> o;
    if (rank_ == root) o.push_back(out);
    std::vector<at::Tensor> i{in.contiguous()};
    c10d::GatherOptions opts;
    opts.rootRank = root;
    run([&] { return pg_->gather(o, i, opts); }, "gather");
    if (rank_ == root)
      for (std::size_t r = 0; r < out.size(); ++r)
        if (!o[0][r].is_same(out[r])) out[r].copy_(o[0][r]);
  }
  void all_reduce_sum(at::Tensor& t) override {
    std::vector<at::Tensor> v{t};
    run([&] { return pg_->allreduce(v); }, "all_reduce");
  }
  void broadcast(at::Tensor& t, int root) override {
    std::vector<at::Tensor> v{t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    run([&] { return pg_->broadcast(v, o); }, "broadcast");
  }
  void barrier() override {
    run([&] { return pg_->barrier(); }, "barrier");
  }
  void barrier_for(double timeout_s) override {
    c10d::BarrierOptions o;
    if (timeout_s > 0) o.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    run([&] { return pg_->barrier(o); }, "barrier");
  }

 private:
  static std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }
  template <class F>
  void run(F&& f, const char* what) {
    try {
      f()->wait();
    } catch (const std::exception& e) {
      throw vhost::Error(VHOST_ERR_RUNTIME, std::string(what) + " on rank " + std::to_string(rank_) +
                                                " failed (another rank died or timed out?): " + first_line(e.what()));
    }
  }
  int rank_, world_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
};
#endif

}  // namespace

std::unique_ptr<torch_ext::Collective> gloo_from_env() {
  const long world = env_int("WORLD_SIZE", "1", 1, 1 << 20);
  if (world == 1) return nullptr;
  const long rank = env_int("RANK", nullptr, 0, world - 1);
  const std::string addr = env("MASTER_ADDR", "127.0.0.1");
  const long port = env_int("MASTER_PORT", "29500", 1, 65535);
  const long timeout = env_int("VHOST_DIST_TIMEOUT", "300", 1, 86400);
#if defined(VHOST_HAVE_GLOO)
  return std::make_unique<GlooCollective>(static_cast<int>(rank), static_cast<int>(world), addr,
                                          static_cast<uint16_t>(port), std::chrono::seconds(timeout));
#else
  (void)rank;
  (void)addr;
  (void)port;
  (void)timeout;
  throw vhost::Error(VHOST_ERR_UNSUPPORTED, "WORLD_SIZE = " + std::to_string(world) +
                                                ", but this cpu backend was built without Gloo (install libgloo-dev "
                                                "and rebuild)");
#endif
}

}  // namespace vhost::cpu
