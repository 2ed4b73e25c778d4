// `vhost launch`: runs one pipeline as several processes on this host, torchrun-style.
#pragma once

#include <string>
#include <vector>

namespace vhost::cli {

struct LaunchOptions {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;  // 0: MASTER_PORT from the environment, else a free port (one node only)
  std::string log_dir;  // ranks other than 0 write their output here; empty: stderr only
};

// Starts nproc_per_node copies of `self_exe args...` with RANK, LOCAL_RANK, WORLD_SIZE,
// LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set; forwards SIGINT/SIGTERM to them; when one
// fails the others are stopped. Returns the first failing exit status, or 0.
int launch(const LaunchOptions& o, const std::string& self_exe, const std::vector<std::string>& args);

}  // namespace vhost::cli
