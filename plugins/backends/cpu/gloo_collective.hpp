// The CPU backend's process group: Gloo over TCP, rendezvous through the torchrun variables.
#pragma once

#include <vhost/torch/collective.hpp>

#include <memory>

namespace vhost::cpu {

// With WORLD_SIZE > 1 in the environment: joins the job (RANK, WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT; VHOST_DIST_TIMEOUT seconds, default 300, bounds every wait) and returns its
// collective. With WORLD_SIZE unset or 1: null. Bad or missing variables are ConfigErrors that
// name the variable; a build without Gloo refuses WORLD_SIZE > 1.
std::unique_ptr<torch_ext::Collective> gloo_from_env();

}  // namespace vhost::cpu
