#include "gloo_collective.hpp"

#include <vhost/plugin.hpp>

#include <torch/torch.h>
#if defined(VHOST_HAVE_GLOO)
#include "c10d_collective.hpp"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

#include <string>

namespace vhost::cpu {

#if defined(VHOST_HAVE_GLOO)
std::unique_ptr<torch_ext::Collective> gloo_from_env() {
  const backends::JobEnv j = backends::job_env();
  if (j.world == 1) return nullptr;
  try {
    auto store = backends::rendezvous(j);
    auto opts = c10d::ProcessGroupGloo::Options::create(j.timeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(j.addr == "localhost" ? "127.0.0.1" : j.addr));
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, j.rank, j.world, opts);
    return std::make_unique<backends::C10dCollective<c10d::ProcessGroupGloo>>(pg, j.rank, j.world);
  } catch (const std::exception& e) {
    throw vhost::Error(VHOST_ERR_RUNTIME, "rank " + std::to_string(j.rank) + " of " + std::to_string(j.world) +
                                              ": could not join the process group at " + j.addr + ":" +
                                              std::to_string(j.port) + ": " + backends::first_line(e.what()));
  }
}
#else
std::unique_ptr<torch_ext::Collective> gloo_from_env() {
  const char* w = std::getenv("WORLD_SIZE");
  if (!w || !*w || std::string(w) == "1") return nullptr;
  throw vhost::Error(VHOST_ERR_UNSUPPORTED, std::string("WORLD_SIZE = ") + w +
                                                ", but this cpu backend was built without Gloo (install libgloo-dev "
                                                "and rebuild)");
}
#endif

}  // namespace vhost::cpu
