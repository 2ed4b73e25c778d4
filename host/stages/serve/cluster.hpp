// Internal: distributed serving. A controller keeps the live workers (registration, heartbeats,
// expiry) and picks one per request; workers are `serve` stages that register their models; an
// API server answers the OpenAI API by forwarding each request to a worker the controller picks.
#pragma once

#include "runtime/config.hpp"

#include "stages/serve/http.hpp"

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace vhost::host {

struct ControllerOptions {
  std::string host = "127.0.0.1";
  int port = 21001;             // 0: any free port
  double expiry_seconds = 30;   // a worker silent this long is dropped
  std::string dispatch = "shortest_queue";  // or "lottery" (weighted by capacity)
};

struct ApiOptions {
  http::Options listen;    // address, keys, threads, limits
  std::string controller;  // http://host:port
  std::string log_file;  // the chat page's votes (POST /v1/votes), one JSON line each; empty: not kept
};

// Serve until *stop becomes true; `on_listening(port)` runs once bound.
void run_controller(const ControllerOptions& o, const std::atomic<bool>& stop, const std::function<void(int)>& on_listening);
void run_api(const ApiOptions& o, const std::atomic<bool>& stop, const std::function<void(int)>& on_listening);

// A worker's membership: registers `models` served at `address` with the controller and keeps
// heartbeating (re-registering after a controller restart) until destroyed.
class WorkerMembership {
 public:
  WorkerMembership(std::string controller, std::string address, std::vector<std::string> models, int capacity,
                   double heartbeat_seconds, std::function<int64_t()> queue_length);
  ~WorkerMembership();  // leaves
  // Stops heartbeating and tells the controller at once that this worker is gone (a worker
  // stopped by SIGTERM must not be dispatched to until its expiry). Idempotent.
  void leave();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vhost::host
