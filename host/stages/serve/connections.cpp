#include "stages/serve/connections.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace vhost::host::http {

namespace {

using Clock = std::chrono::steady_clock;
thread_local int current_fd = -1;

// Waits until `fd` is ready for `events` or `ms` pass.
bool wait_for(int fd, short events, int ms) {
  pollfd p{fd, events, 0};
  for (;;) {
    int r = ::poll(&p, 1, std::max(0, ms));
    if (r >= 0) return r > 0 && (p.revents & (events | POLLHUP | POLLERR));
    if (errno != EINTR) return false;
  }
}

std::string address_of(const sockaddr_storage& a, int& port) {
  char text[INET6_ADDRSTRLEN] = "";
  if (a.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(a);
    ::inet_ntop(AF_INET, &in.sin_addr, text, sizeof text);
    port = ntohs(in.sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto& in = reinterpret_cast<const sockaddr_in6&>(a);
    ::inet_ntop(AF_INET6, &in.sin6_addr, text, sizeof text);
    port = ntohs(in.sin6_port);
  }
  return text;
}

const char* reason(int status) {
  switch (status) {
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    default: return "Error";
  }
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

}  // namespace

// One client connection. The poller fills `buf` until it holds a whole request; then httplib
// reads it from here (and, for a chunked body, from the socket, until the request's deadline).
struct Conn final : httplib::Stream {
  Connections::Impl* owner;
  int fd;
  std::string ip;
  int port = 0;
  bool counted = false;  // holds one of its address's connection slots
  std::string buf;       // received, not yet consumed
  std::size_t pos = 0;
  std::size_t need = 0;  // bytes of buf that make the next request (0: headers not complete yet)
  bool idle = true;      // nothing of the next request received yet
  bool closing = false;  // refused: draining what the client still sends, then closed
  bool eof = false;      // the client has shut its sending side: answer what is here, then close
  int served = 0;
  int write_timeout_ms = 30000;
  Clock::time_point deadline;

  Conn(Connections::Impl* o, int f) : owner(o), fd(f) {}
  ~Conn() override;

  int ms_left() const {
    return static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
  }
  bool is_readable() const override { return pos < buf.size() || wait_for(fd, POLLIN, ms_left()); }
  bool is_writable() const override { return wait_for(fd, POLLOUT, write_timeout_ms); }
  ssize_t read(char* p, size_t n) override {
    if (pos < buf.size()) {
      n = std::min(n, buf.size() - pos);
      std::memcpy(p, buf.data() + pos, n);
      pos += n;
      return static_cast<ssize_t>(n);
    }
    for (;;) {  // past what the poller received (a chunked body): from the socket, until the deadline
      ssize_t r = ::recv(fd, p, n, 0);
      if (r >= 0) return r;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
      if (ms_left() <= 0 || !wait_for(fd, POLLIN, ms_left())) return -1;
    }
  }
  ssize_t write(const char* p, size_t n) override {
    for (;;) {
      ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
      if (w >= 0) return w;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
      if (!wait_for(fd, POLLOUT, write_timeout_ms)) return -1;
    }
  }
  void get_remote_ip_and_port(std::string& i, int& p) const override {
    i = ip;
    p = port;
  }
  void get_local_ip_and_port(std::string& i, int& p) const override {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) i = address_of(a, p);
  }
  socket_t socket() const override { return fd; }

  // Drops what httplib consumed: the rest is the start of the next request (pipelined).
  void consumed() {
    buf.erase(0, pos);
    pos = 0;
    need = 0;
    idle = buf.empty();
  }
};

struct Connections::Impl {
  Limits L;
  ServeFn serve;
  int ep = -1, wake = -1;
  std::thread poller;
  std::unique_ptr<httplib::ThreadPool> pool;

  std::mutex m;  // incoming, stopping
  std::vector<std::shared_ptr<Conn>> incoming;  // adopted or kept alive, for the poller to take
  bool stopping = false;
  std::mutex cm;  // per_client
  std::map<std::string, int> per_client;

  std::unordered_map<int, std::shared_ptr<Conn>> waiting;  // the poller's own

  Impl(Limits l, ServeFn s) : L(std::move(l)), serve(std::move(s)) {}

  void release(const std::string& ip) {
    std::lock_guard<std::mutex> g(cm);
    auto it = per_client.find(ip);
    if (it != per_client.end() && --it->second <= 0) per_client.erase(it);
  }

  void hand_to_poller(std::shared_ptr<Conn> c) {
    {
      std::lock_guard<std::mutex> g(m);
      if (stopping) return;  // dropped: closed
      incoming.push_back(std::move(c));
    }
    uint64_t one = 1;
    (void)!::write(wake, &one, sizeof one);
  }

  void adopt(int fd) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    int yes = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);
    auto c = std::make_shared<Conn>(this, fd);
    c->write_timeout_ms = L.write_timeout_s * 1000;
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) c->ip = address_of(a, c->port);
    c->deadline = Clock::now() + std::chrono::seconds(L.request_timeout_s);
    bool over;
    {
      std::lock_guard<std::mutex> g(cm);
      over = per_client[c->ip] >= L.client_connections;
      if (!over) ++per_client[c->ip];
    }
    c->counted = !over;
    if (over)
      refuse(*c, 429, "too many connections from " + c->ip + " (at most " + std::to_string(L.client_connections) +
                          " at once); close one or retry later");
    hand_to_poller(std::move(c));
  }

  // Answers `status` and closes after a linger (refused connections stay in the poller only to
  // drain what the client still sends, so that it reads the answer, not a reset).
  void refuse(Conn& c, int status, const std::string& message) {
    const std::string body = L.error_json(message);
    const std::string r = "HTTP/1.1 " + std::to_string(status) + " " + reason(status) +
                          "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                          "\r\nConnection: close\r\n\r\n" + body;
    (void)::send(c.fd, r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ::shutdown(c.fd, SHUT_WR);
    c.closing = true;
    c.buf.clear();
    c.pos = 0;
    c.deadline = Clock::now() + std::chrono::seconds(2);
  }

  void watch(const std::shared_ptr<Conn>& c) {
    epoll_event e{};
    e.events = EPOLLIN | EPOLLRDHUP;
    e.data.fd = c->fd;
    if (::epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e) == 0) waiting[c->fd] = c;
  }

  void unwatch(int fd) {
    ::epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    waiting.erase(fd);
  }

  // How far the request in c.buf has come: sets c.need once the headers are complete; true when
  // it can be handed to a request thread. May refuse it (413, 431).
  bool complete(Conn& c) {
    if (c.need == 0) {
      const std::size_t end = c.buf.find("\r\n\r\n");
      if (end == std::string::npos ? c.buf.size() > L.max_header : end + 4 > L.max_header) {
        refuse(c, 431, "the request's line and headers are over " + std::to_string(L.max_header) + " bytes");
        return false;
      }
      if (end == std::string::npos) return false;
      c.need = end + 4;
      std::string_view head(c.buf.data(), end);
      bool chunked_or_expect = false;
      std::size_t line = head.find("\r\n");
      while (line != std::string_view::npos) {
        const std::size_t next = head.find("\r\n", line + 2);
        std::string_view h = head.substr(line + 2, next == std::string_view::npos ? std::string_view::npos : next - line - 2);
        line = next;
        const std::size_t colon = h.find(':');
        if (colon == std::string_view::npos) continue;
        const std::string_view name = trim(h.substr(0, colon)), value = trim(h.substr(colon + 1));
        if (iequals(name, "transfer-encoding") || iequals(name, "expect")) chunked_or_expect = true;
        if (!iequals(name, "content-length")) continue;
        if (c.need != end + 4) chunked_or_expect = true;  // a second Content-Length: httplib judges it
        std::size_t len = 0;
        auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), len);
        if (ec != std::errc() || p != value.data() + value.size()) {
          chunked_or_expect = true;  // malformed: httplib answers it
          continue;
        }
        if (len > L.max_body) {
          refuse(c, 413, "the request body is too large (at most " + std::to_string(L.max_body) + " bytes)");
          return false;
        }
        c.need += len;
      }
      // httplib reads a chunked body, and answers "Expect: 100-continue", itself.
      if (chunked_or_expect) c.need = end + 4;
    }
    return c.buf.size() >= c.need;
  }

  void dispatch(const std::shared_ptr<Conn>& c) {
    unwatch(c->fd);
    pool->enqueue([this, c] { answer(c); });
  }

  // On a request thread: httplib answers the request; the connection goes back to the poller.
  void answer(const std::shared_ptr<Conn>& c) {
    for (;;) {
      bool close_now;
      {
        std::lock_guard<std::mutex> g(m);
        close_now = stopping || ++c->served >= L.keep_alive_requests;
      }
      bool closed = false;
      current_fd = c->fd;
      bool ok = false;
      try {
        ok = serve(*c, close_now, closed);
      } catch (...) {  // httplib's routes are guarded; a throw here is its own: drop the connection
      }
      current_fd = -1;
      // httplib refused a request it could not parse without reading it all (a header line over
      // its limit, say): what is left of it is no next request. Close.
      const bool unread = c->pos < c->need;
      if (!ok || closed || close_now || unread) return;  // the last owner closes it
      c->consumed();
      if (c->eof) {  // nothing more will come: answer what is whole here, then close
        if (!c->buf.empty() && complete(*c) && !c->closing) continue;
        return;
      }
      c->deadline = Clock::now() + std::chrono::seconds(c->idle ? L.keep_alive_s : L.request_timeout_s);
      return hand_to_poller(c);
    }
  }

  void on_readable(const std::shared_ptr<Conn>& c) {
    char tmp[16384];
    for (;;) {
      const ssize_t r = ::recv(c->fd, tmp, sizeof tmp, 0);
      if (r == 0) {  // the client shut its side: a whole request here is still answered
        c->eof = true;
        break;
      }
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        return unwatch(c->fd);
      }
      if (c->closing) continue;
      if (c->idle) {  // the first bytes of a request on a kept-alive connection: its clock starts
        c->idle = false;
        c->deadline = Clock::now() + std::chrono::seconds(L.request_timeout_s);
      }
      c->buf.append(tmp, static_cast<std::size_t>(r));
      if (c->buf.size() >= L.max_header + L.max_body + 2 * sizeof tmp) break;  // bounded: judged below
    }
    if (!c->closing && complete(*c)) return dispatch(c);
    if (c->eof) unwatch(c->fd);  // a part of a request, or a refusal drained: closed
  }

  void take_incoming() {
    std::vector<std::shared_ptr<Conn>> in;
    {
      std::lock_guard<std::mutex> g(m);
      in.swap(incoming);
    }
    for (auto& c : in) {
      if (!c->closing && !c->buf.empty() && complete(*c)) {  // a pipelined request, already whole
        pool->enqueue([this, c] { answer(c); });
        continue;
      }
      watch(c);
    }
  }

  // Closes connections past their deadline: 408 for a request that started to arrive.
  void sweep() {
    const auto now = Clock::now();
    std::vector<std::shared_ptr<Conn>> late;
    for (auto& [fd, c] : waiting)
      if (c->deadline <= now) late.push_back(c);
    for (auto& c : late) {
      if (c->closing || c->idle) {
        unwatch(c->fd);
      } else {
        refuse(*c, 408, "the request did not arrive whole within " + std::to_string(L.request_timeout_s) + " s");
      }
    }
  }

  void loop() {
    std::vector<epoll_event> ev(256);
    auto next_sweep = Clock::now();
    for (;;) {
      const int n = ::epoll_wait(ep, ev.data(), static_cast<int>(ev.size()), 100);
      {
        std::lock_guard<std::mutex> g(m);
        if (stopping) break;
      }
      take_incoming();
      for (int i = 0; i < n; ++i) {
        if (ev[i].data.fd == wake) {
          uint64_t v;
          (void)!::read(wake, &v, sizeof v);
          continue;
        }
        auto it = waiting.find(ev[i].data.fd);
        if (it != waiting.end()) on_readable(std::shared_ptr<Conn>(it->second));
      }
      if (Clock::now() >= next_sweep) {
        sweep();
        next_sweep = Clock::now() + std::chrono::milliseconds(100);
      }
    }
    for (auto& [fd, c] : waiting) ::epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    waiting.clear();
    std::lock_guard<std::mutex> g(m);
    incoming.clear();
  }
};

Conn::~Conn() {
  ::close(fd);
  if (counted) owner->release(ip);
}

Connections::Connections(Limits limits, ServeFn serve) : impl_(std::make_unique<Impl>(std::move(limits), std::move(serve))) {}

Connections::~Connections() { stop(); }

void Connections::start() {
  Impl& I = *impl_;
  I.ep = ::epoll_create1(EPOLL_CLOEXEC);
  I.wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (I.ep < 0 || I.wake < 0) throw std::runtime_error(std::string("cannot make the connection poller: ") + std::strerror(errno));
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.fd = I.wake;
  ::epoll_ctl(I.ep, EPOLL_CTL_ADD, I.wake, &e);
  I.pool = std::make_unique<httplib::ThreadPool>(static_cast<std::size_t>(std::max(1, I.L.threads)));
  I.poller = std::thread([&I] { I.loop(); });
}

void Connections::adopt(int fd) {
  {
    std::lock_guard<std::mutex> g(impl_->m);
    if (impl_->stopping || !impl_->poller.joinable()) {
      ::close(fd);
      return;
    }
  }
  impl_->adopt(fd);
}

void Connections::stop() {
  Impl& I = *impl_;
  {
    std::lock_guard<std::mutex> g(I.m);
    I.stopping = true;
  }
  if (I.wake >= 0) {
    uint64_t one = 1;
    (void)!::write(I.wake, &one, sizeof one);
  }
  if (I.poller.joinable()) I.poller.join();
  if (I.pool) {
    I.pool->shutdown();  // every request handed over is answered (with Connection: close)
    I.pool.reset();
  }
  if (I.ep >= 0) ::close(I.ep);
  if (I.wake >= 0) ::close(I.wake);
  I.ep = I.wake = -1;
}

int current_socket() { return current_fd; }

bool peer_closed(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return true;
  char b;
  const ssize_t r = ::recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

}  // namespace vhost::host::http
