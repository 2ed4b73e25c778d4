// What every libtorch backend plugin (cpu, cuda) is: a vhost backend whose process group is the
// job's collective (the host waits at its barrier), handing out "torch.backend" to model
// plugins. A backend derives from this, fills collective_ when the job has several processes,
// and implements the torch.backend calls (device, dtype, seed, threads, ...).
#pragma once

#include <vhost/plugin.hpp>
#include <vhost/torch/backend.hpp>
#include <vhost/torch/collective.hpp>

#include <memory>
#include <string_view>

namespace vhost::backends {

class TorchBackend : public vhost::Backend, public vhost::torch_ext::Backend {
 public:
  const void* extension(std::string_view name) override {
    if (name == vhost::torch_ext::kBackend) return static_cast<const vhost::torch_ext::Backend*>(this);
    return nullptr;
  }
  // the process group (vhost::Backend)
  int rank() const override { return collective_ ? collective_->rank() : 0; }
  int world_size() const override { return collective_ ? collective_->world_size() : 1; }
  void barrier(double timeout_s) override {
    if (collective_) collective_->barrier_for(timeout_s);
  }
  // torch.backend
  vhost::torch_ext::Collective* collective() const override { return collective_.get(); }

 protected:
  std::unique_ptr<vhost::torch_ext::Collective> collective_;  // null for a single process
};

}  // namespace vhost::backends
