#include "launch.hpp"

#include <vhost/host/host.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <thread>

namespace vhost::cli {

namespace {

volatile std::sig_atomic_t g_forward = 0;
extern "C" void remember_signal(int sig) { g_forward = sig; }

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(std::string("launch: socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    throw std::runtime_error(std::string("launch: no free port: ") + std::strerror(errno));
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

int exit_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

int launch(const LaunchOptions& o, const std::string& self_exe, const std::vector<std::string>& args) {
  if (o.nproc_per_node < 1) throw host::ConfigError("--nproc-per-node: must be at least 1");
  if (o.nnodes < 1 || o.node_rank < 0 || o.node_rank >= o.nnodes)
    throw host::ConfigError("--node-rank: " + std::to_string(o.node_rank) + " is not in [0, " + std::to_string(o.nnodes) + ")");
  int port = o.master_port;
  if (port == 0) {
    if (const char* p = std::getenv("MASTER_PORT")) port = std::atoi(p);
    if (port == 0) {
      if (o.nnodes > 1) throw host::ConfigError("--master-port: required with several nodes (every node must agree)");
      port = free_port();
    }
  }
  const int world = o.nproc_per_node * o.nnodes;
  if (!o.log_dir.empty()) std::filesystem::create_directories(o.log_dir);

  struct sigaction sa {};
  sa.sa_handler = remember_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {}, old_term {};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  std::map<pid_t, int> children;  // pid -> local rank
  for (int local = 0; local < o.nproc_per_node; ++local) {
    const int rank = o.node_rank * o.nproc_per_node + local;
    pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error(std::string("launch: fork: ") + std::strerror(errno));
    if (pid == 0) {
      sigaction(SIGINT, &old_int, nullptr);
      sigaction(SIGTERM, &old_term, nullptr);
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(local).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(o.nproc_per_node).c_str(), 1);
      ::setenv("MASTER_ADDR", o.master_addr.c_str(), 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      if (rank != 0) {
        std::string target = o.log_dir.empty() ? "/dev/null" : o.log_dir + "/rank-" + std::to_string(rank) + ".log";
        int fd = ::open(target.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
          ::dup2(fd, STDOUT_FILENO);
          if (!o.log_dir.empty()) ::dup2(fd, STDERR_FILENO);
          ::close(fd);
        }
      }
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(self_exe.c_str()));
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(self_exe.c_str(), argv.data());
      std::perror("launch: exec");
      std::_Exit(127);
    }
    children[pid] = rank;
  }

  int first_failure = 0;
  bool stopping = false;
  auto stop_all = [&](int sig) {
    for (auto& [pid, r] : children) ::kill(pid, sig);
  };
  auto deadline = std::chrono::steady_clock::time_point::max();
  while (!children.empty()) {
    if (g_forward != 0) {
      int sig = g_forward;
      g_forward = 0;
      stop_all(sig);  // each rank checkpoints and stops at the same step
    }
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      int rank = children[pid];
      children.erase(pid);
      int code = exit_status(status);
      if (code != 0 && first_failure == 0) {
        first_failure = code;
        std::cerr << "launch: rank " << rank << " exited with status " << code
                  << (children.empty() ? "" : "; stopping the other ranks") << "\n";
      }
      if (code != 0 && !stopping && !children.empty()) {
        stopping = true;
        stop_all(SIGTERM);
        deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      }
      continue;
    }
    if (stopping && std::chrono::steady_clock::now() > deadline) {
      stop_all(SIGKILL);
      deadline = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  return first_failure;
}

}  // namespace vhost::cli
