// The OpenAI-compatible API's request handling under libFuzzer, and the same entry point replaying
// a saved corpus (CTest). A `serve` stage runs in this process on a tiny model made at start-up.
// An input's first byte, modulo 8, says what the rest is:
//   0-3: the body of one request over a kept-alive connection, to chat, completions, embeddings
//        or tokenize. It must be answered, and never with a 5xx: a malformed request is the
//        client's fault (4xx); a crash, a hang or a dropped connection is a bug.
//   4-7: raw bytes on a fresh connection (request lines, headers, bodies, several requests or a
//        part of one), then the client's end of the connection shut: the connection layer's
//        reading (connections.cpp) and httplib's parser. Whatever is answered must not be a 5xx,
//        and the server must close the connection (a part of a request gets no answer).
#include <vhost/host/error.hpp>
#include <vhost/host/host.hpp>

#include <httplib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
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

int port = 0;

httplib::Client& server() {
  static httplib::Client* client = [] {
    static vhost::host::Host host;
    const auto dir = std::filesystem::temp_directory_path() / ("vhost-http-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    host.model_tool("llama", "init",
                    {{"preset", "tiny"}, {"out", (dir / "model").string()}, {"seed", 1}, {"dtype", "float32"},
                     {"tokenizer_text", std::string(VHOST_SOURCE_DIR) + "/docs/plugins.md"}});
    port = free_port();
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
    c->set_tcp_nodelay(true);  // else Nagle and the delayed ACK cost 40 ms per input
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

// Sends `bytes` on a fresh connection, shuts the sending side, and returns all that comes back
// until the server closes; aborts if it has not closed within 30 s.
std::string raw_exchange(const std::string& bytes) {
  server();
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  timeval tv{30, 0};
  ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  int yes = 1;
  ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);
  if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    std::fprintf(stderr, "http_fuzz: cannot connect\n");
    std::abort();
  }
  for (std::size_t off = 0; off < bytes.size();) {
    const ssize_t w = ::send(s, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (w <= 0) break;  // the server may close early (a refusal)
    off += static_cast<std::size_t>(w);
  }
  ::shutdown(s, SHUT_WR);
  std::string got;
  char buf[65536];
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    const ssize_t r = ::recv(s, buf, sizeof buf, 0);
    if (r == 0 || (r < 0 && errno == ECONNRESET)) break;
    // libFuzzer's timeout alarm interrupts a waiting recv: not the server's fault
    if (r < 0 && errno == EINTR && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30)) continue;
    if (r < 0) {
      std::fprintf(stderr, "http_fuzz: raw request: the server did not close the connection in 30 s (%s)\n", std::strerror(errno));
      std::abort();
    }
    got.append(buf, static_cast<std::size_t>(r));
  }
  ::close(s);
  return got;
}

void raw_input(const std::string& bytes) {
  const std::string got = raw_exchange(bytes);
  for (std::size_t at = got.find("HTTP/1.1 "); at != std::string::npos; at = got.find("HTTP/1.1 ", at + 1)) {
    const int status = std::atoi(got.c_str() + at + 9);
    if (status >= 500) {
      std::fprintf(stderr, "http_fuzz: raw request answered %d: %s\n", status, got.substr(at, 400).c_str());
      std::abort();
    }
  }
}

// VHOST_FUZZ_ONLY=chat|completions|embeddings|tokenize|raw sends every input that way (its first
// byte still dropped): a long run spent on one endpoint. Unset: the first byte picks.
int only_mode() {
  static const int mode = [] {
    const char* e = std::getenv("VHOST_FUZZ_ONLY");
    if (!e || !*e) return -1;
    const std::string m = e;
    for (int i = 0; i < 5; ++i)
      if (m == std::array<const char*, 5>{"chat", "completions", "embeddings", "tokenize", "raw"}[i]) return i;
    std::fprintf(stderr, "http_fuzz: VHOST_FUZZ_ONLY=%s: not chat, completions, embeddings, tokenize or raw\n", e);
    std::exit(2);
  }();
  return mode;
}

void one_input(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const int mode = only_mode() >= 0 ? only_mode() : data[0] % 8 >= 4 ? 4 : data[0] % 4;
  if (mode == 4) return raw_input(std::string(reinterpret_cast<const char*>(data) + 1, size - 1));
  static const char* const paths[] = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize"};
  const char* path = paths[mode];
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
