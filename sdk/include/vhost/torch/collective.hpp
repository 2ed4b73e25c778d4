// Collective communication between the processes of one training job, as a backend offers it
// (Gloo on CPU, NCCL on CUDA). Model plugins shard and synchronise through this interface and
// never see a process group type, so they build the same against any libtorch.
#pragma once

#include <ATen/Functions.h>
#include <ATen/Tensor.h>

#include <memory>
#include <vector>

namespace vhost::torch_ext {

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // out[r] receives rank r's `in`; every `out[r]` has in's shape and dtype. Blocking.
  virtual void all_gather(std::vector<at::Tensor>& out, const at::Tensor& in) = 0;
  // Sums the ranks' `in` element-wise and leaves the rank's own equal slice of the sum in `out`
  // (in.numel() == out.numel() * world_size, contiguous). Blocking.
  virtual void reduce_scatter_sum(at::Tensor& out, const at::Tensor& in) = 0;
  // Element-wise sum over ranks, in place. Blocking.
  virtual void all_reduce_sum(at::Tensor& t) = 0;
  // Copies root's `t` to every rank, in place. Blocking.
  virtual void broadcast(at::Tensor& t, int root) = 0;
  virtual void barrier() = 0;
  // Rank root's out[r] receives rank r's `in` (every out[r] shaped like in); the other ranks'
  // `out` is ignored and may be empty. Blocking. Appended; the default gathers on every rank.
  virtual void gather(std::vector<at::Tensor>& out, const at::Tensor& in, int root) {
    std::vector<at::Tensor> all;
    for (int r = 0; r < world_size(); ++r) all.push_back(at::empty_like(in));
    all_gather(all, in);
    if (rank() == root)
      for (int r = 0; r < world_size(); ++r) out[r].copy_(all[r]);
  }
  // A collective running in the background; wait() returns when it is done (and throws its
  // failure). Appended, like the two calls below.
  class Work {
   public:
    virtual ~Work() = default;
    virtual void wait() = 0;
  };
  // all_gather started now, finished by the returned Work's wait(); `out` and `in` must stay
  // alive until then. FSDP gathers the next unit this way while it computes the current one.
  // Default: the blocking call, and a Work that is already done.
  virtual std::unique_ptr<Work> all_gather_async(std::vector<at::Tensor>& out, const at::Tensor& in) {
    all_gather(out, in);
    struct Done final : Work {
      void wait() override {}
    };
    return std::make_unique<Done>();
  }
  // A barrier that waits up to timeout_s seconds (<= 0: the group's timeout): the ranks waiting
  // while one runs a long stage alone. Appended; the default is the plain barrier.
  virtual void barrier_for(double timeout_s) {
    (void)timeout_s;
    barrier();
  }
};

}  // namespace vhost::torch_ext
