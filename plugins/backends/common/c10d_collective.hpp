// What the torch backends (cpu: Gloo, cuda: NCCL) share about a job of several processes: the
// torchrun variables, the TCPStore rendezvous, and vhost::torch_ext::Collective implemented
// over a c10d process group. Header-only; compiled into each backend plugin, never exported.
#pragma once

#include <vhost/plugin.hpp>
#include <vhost/torch/collective.hpp>
#include <vhost/torch/compat.hpp>

#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>

#include <chrono>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

namespace vhost::backends {

// The job as torchrun, `vhost launch`, Slurm wrappers and SkyPilot describe it.
struct JobEnv {
  int rank = 0, local_rank = 0, world = 1;
  std::string addr = "127.0.0.1";
  uint16_t port = 29500;
  std::chrono::milliseconds timeout{300000};
};

inline std::string env_text(const char* name, const char* def = nullptr) {
  const char* v = std::getenv(name);
  if (v && *v) return v;
  if (def) return def;
  throw vhost::ConfigError("", std::string("the environment variable ") + name +
                                   " is not set (WORLD_SIZE > 1 needs RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; "
                                   "`vhost launch` sets them)");
}

inline long env_int(const char* name, const char* def, long lo, long hi) {
  std::string s = env_text(name, def);
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v < lo || v > hi)
    throw vhost::ConfigError("", std::string("the environment variable ") + name + " = '" + s +
                                     "' is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return v;
}

// WORLD_SIZE unset or 1: a single process (world 1). Bad or missing variables are ConfigErrors
// that name the variable. VHOST_DIST_TIMEOUT (seconds, default 300) bounds every wait.
inline JobEnv job_env() {
  JobEnv j;
  j.world = static_cast<int>(env_int("WORLD_SIZE", "1", 1, 1 << 20));
  if (j.world == 1) return j;
  j.rank = static_cast<int>(env_int("RANK", nullptr, 0, j.world - 1));
  j.local_rank = static_cast<int>(env_int("LOCAL_RANK", std::to_string(j.rank).c_str(), 0, j.world - 1));
  j.addr = env_text("MASTER_ADDR", "127.0.0.1");
  j.port = static_cast<uint16_t>(env_int("MASTER_PORT", "29500", 1, 65535));
  j.timeout = std::chrono::seconds(env_int("VHOST_DIST_TIMEOUT", "300", 1, 86400));
  return j;
}

inline std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// The rendezvous every process group of the job starts from: rank 0 serves the store.
inline c10::intrusive_ptr<c10d::Store> rendezvous(const JobEnv& j) {
  c10d::TCPStoreOptions so;
  so.port = j.port;
  so.isServer = j.rank == 0;
  so.numWorkers = static_cast<std::size_t>(j.world);
  so.waitWorkers = true;
  so.timeout = j.timeout;
  return c10::make_intrusive<c10d::TCPStore>(j.addr, so);
}

// torch_ext::Collective over a c10d process group (ProcessGroupGloo, ProcessGroupNCCL: the same
// calls in libtorch 1.13 and 2.x). Every failure names the operation and the rank.
template <class PG>
class C10dCollective : public torch_ext::Collective {
 public:
  // c10d::Work in libtorch 2.x, c10d::ProcessGroup::Work in 1.13.
  using WorkPtr = decltype(std::declval<PG&>().barrier(c10d::BarrierOptions()));
  C10dCollective(c10::intrusive_ptr<PG> pg, int rank, int world) : pg_(std::move(pg)), rank_(rank), world_(world) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  void all_gather(std::vector<at::Tensor>& out, const at::Tensor& in) override {
    std::vector<std::vector<at::Tensor>> o{out};
    std::vector<at::Tensor> i{in.contiguous()};
    run([&] { return pg_->allgather(o, i); }, "all_gather");
    for (std::size_t r = 0; r < out.size(); ++r)
      if (!o[0][r].is_same(out[r])) out[r].copy_(o[0][r]);
  }
  std::unique_ptr<Work> all_gather_async(std::vector<at::Tensor>& out, const at::Tensor& in) override {
    struct Pending final : Work {
      C10dCollective* self;
      std::vector<std::vector<at::Tensor>> o;
      std::vector<at::Tensor> i, out;
      WorkPtr work;
      void wait() override {
        self->run([&] { return work; }, "all_gather");
        for (std::size_t r = 0; r < out.size(); ++r)
          if (!o[0][r].is_same(out[r])) out[r].copy_(o[0][r]);
      }
    };
    auto p = std::make_unique<Pending>();
    p->self = this;
    p->o = {out};
    p->i = {in.contiguous()};
    p->out = out;
    try {
      p->work = pg_->allgather(p->o, p->i);
    } catch (const std::exception& e) {
      throw vhost::Error(VHOST_ERR_RUNTIME, "all_gather on rank " + std::to_string(rank_) + " failed: " + first_line(e.what()));
    }
    return p;
  }
  // One reduce per slice, each to the rank that owns it: every rank sends each slice once and
  // holds one slice-sized buffer (ProcessGroupGloo has no reduce-scatter; NCCL overrides this).
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
  void barrier() override { barrier_for(0); }
  void barrier_for(double timeout_s) override {
    c10d::BarrierOptions o = barrier_options();
    if (timeout_s > 0) o.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    run([&] { return pg_->barrier(o); }, "barrier");
  }

 protected:
  virtual c10d::BarrierOptions barrier_options() const { return {}; }
  template <class F>
  void run(F&& f, const char* what) {
    try {
      f()->wait();
    } catch (const std::exception& e) {
      throw vhost::Error(VHOST_ERR_RUNTIME, std::string(what) + " on rank " + std::to_string(rank_) +
                                                " failed (another rank died or timed out?): " + first_line(e.what()));
    }
  }
  c10::intrusive_ptr<PG> pg_;
  int rank_, world_;
};

}  // namespace vhost::backends
