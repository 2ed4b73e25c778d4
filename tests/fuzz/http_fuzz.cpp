// The OpenAI-compatible API's request handling under libFuzzer, and the same entry point replaying
// a saved corpus (CTest). A `serve` stage runs in this process on a tiny model made at start-up;
// each input is one HTTP request over a kept-alive connection: its first byte picks the endpoint
// (chat, completions, embeddings, tokenize), the rest is the body. Every input must be answered,
// and never with a 5xx: a malformed request is the client's fault (4xx), and a crash, a hang or a
// dropped connection is a bug.
#include <vhost/host/error.hpp>
#include <vhost/host/host.hpp>

#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#ifndef VHOST_SOURCE_DIR
#error "VHOST_SOURCE_DIR: the repository root (docs/plugins.md trains the tiny model's tokenizer)"
#endif

namespace {

int free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t n = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &n);
  ::close(s);
  return ntohs(a.sin_port);
}

httplib::Client& server() {
  static httplib::Client* client = [] {
    static vhost::host::Host host;
    const auto dir = std::filesystem::temp_directory_path() / ("vhost-http-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    host.model_tool("llama", "init",
                    {{"preset", "tiny"}, {"out", (dir / "model").string()}, {"seed", 1}, {"dtype", "float32"},
                     {"tokenizer_text", std::string(VHOST_SOURCE_DIR) + "/docs/plugins.md"}});
    const int port = free_port();
    const std::string toml = "[pipeline]\nname = \"fuzz\"\nstages = [\"serve\"]\nwork_dir = \"" + (dir / "work").string() +
                             "\"\n[backends.cpu]\nplugin = \"cpu\"\nthreads = 1\n[models.m]\nplugin = \"llama\"\npath = \"" +
                             (dir / "model").string() + "\"\nbackend = \"cpu\"\nmax_batch = 4\nmax_context = 64\n"
                             "[stages.serve]\nport = " + std::to_string(port) + "\nthreads = 8\n";
    static auto pipeline = host.load_string(toml, "http_fuzz.toml");
    std::thread([] {
      static std::ofstream quiet("/dev/null");
      vhost::host::RunOptions o;
      o.out = &quiet;
      host.run(pipeline, o);
    }).detach();
    auto* c = new httplib::Client("127.0.0.1", port);
    c->set_keep_alive(true);
    c->set_read_timeout(30, 0);
    for (int i = 0; i < 600; ++i) {  // up to a minute for the server to come up
      if (auto r = c->Get("/health"); r && r->status == 200) {
        std::error_code ec;  // the model is loaded (and its mapping outlives the files): nothing left behind
        std::filesystem::remove_all(dir, ec);
        return c;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::fprintf(stderr, "http_fuzz: the server did not start\n");
    std::abort();
  }();
  return *client;
}

void one_input(const uint8_t* data, size_t size) {
  if (size == 0) return;
  static const char* const paths[] = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize"};
  const char* path = paths[data[0] % 4];
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  auto r = server().Post(path, body, "application/json");
  if (!r) {
    std::fprintf(stderr, "http_fuzz: %s: no answer (%s)\n", path, httplib::to_string(r.error()).c_str());
    std::abort();
  }
  if (r->status >= 500) {
    std::fprintf(stderr, "http_fuzz: %s answered %d: %s\n", path, r->status, r->body.c_str());
    std::abort();
  }
}

}  // namespace

#include "fuzz_main.hpp"
