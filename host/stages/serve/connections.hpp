// Internal to http.cpp: the connections of an http::Server, from accept to close.
//
// httplib (Debian's 0.11.4) gives each connection a pool thread from accept to close, and the
// thread waits while the client sends: 64 clients that trickle their headers a byte at a time
// (slowloris) held all 64 threads and every other request timed out. Here one poller thread
// (epoll) holds the connections while their requests arrive — the headers, and a body sent with
// a Content-Length — and a pool thread gets only a whole request, which httplib then parses,
// routes and answers as before; a kept-alive connection goes back to the poller between
// requests. A slow client so costs a buffer, not a thread. The poller also enforces what the
// thread-per-connection model could not:
//   - a deadline for a whole request (line, headers, body): 408 after request_timeout_s, so a
//     trickle that resets a per-read timeout cannot hold a connection forever;
//   - a Content-Length over max_body is answered 413 at once (httplib waited for the body);
//   - headers over max_header: 431;
//   - at most client_connections open connections per client address: more are answered 429.
// Refusals are written by the poller and the connection is closed after a short linger, so the
// client reads the answer rather than a reset.
//
// Not a hand-rolled HTTP server: request parsing, routing and responses stay httplib's; this
// only decides when a request is complete enough to hand over. Neither httplib 0.11 nor a newer
// one has an asynchronous server; an asynchronous library (Boost.Beast) would mean rewriting
// every route and the streaming.
#pragma once

#include <httplib.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace vhost::host::http {

struct Limits {
  int threads = 64;                  // requests answered at once
  std::size_t max_body = 1 << 20;    // a larger Content-Length: 413
  std::size_t max_header = 64 << 10; // request line and headers; more: 431
  int request_timeout_s = 30;        // a request must arrive whole within this; else 408
  int keep_alive_s = 5;              // an idle kept-alive connection is closed after this
  int keep_alive_requests = 100;     // requests per connection
  int client_connections = 256;      // open connections per client address; more: 429
  int write_timeout_s = 30;          // a client that reads nothing this long is dropped
  // The JSON body of a refusal the poller answers itself (OpenAI's error shape).
  std::function<std::string(const std::string& message)> error_json;
};

// Answers one request that is in `strm`: httplib's parser, router and writer.
using ServeFn = std::function<bool(httplib::Stream& strm, bool close_connection, bool& connection_closed)>;

class Connections {
 public:
  Connections(Limits limits, ServeFn serve);
  ~Connections();
  Connections(const Connections&) = delete;
  Connections& operator=(const Connections&) = delete;

  void start();         // the poller and the request threads
  void adopt(int fd);   // a socket just accepted (from the accept thread); owned from now on
  void stop();          // closes what waits for a request; returns when every request is answered

  struct Impl;  // the poller's state (connections.cpp)

 private:
  std::unique_ptr<Impl> impl_;
};

// The socket of the request this thread is answering; -1 outside one.
int current_socket();

// True when the client at the other end of `fd` has closed the connection (it sent FIN or
// RST). A client that shut only its sending side reads as gone too, as nginx (499) and uvicorn
// take it: TCP cannot tell the two apart before the answer is written. Does not consume anything the client sent. Safe from any thread while the request on
// `fd` is being answered.
bool peer_closed(int fd);

}  // namespace vhost::host::http
