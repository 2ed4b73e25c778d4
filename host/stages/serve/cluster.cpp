#include "stages/serve/cluster.hpp"

#include "stages/serve/server.hpp"
#include "stages/serve/web_chat.hpp"

#include <vhost/host/error.hpp>

#include <httplib.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

namespace vhost::host {

namespace {

using Clock = std::chrono::steady_clock;

// httplib listens with a backlog of 5; widen it after bind (see server.cpp).
struct Backlog {
  int fd = -1;
  void attach(httplib::Server& s) {
    s.set_socket_options([this](socket_t sock) {
      int yes = 1;
      ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
      fd = sock;
    });
  }
  void widen() const {
    if (fd >= 0) ::listen(fd, 1024);
  }
};

int bind_server(httplib::Server& s, Backlog& b, const std::string& host, int port, const char* what) {
  if (port == 0) {
    port = s.bind_to_any_port(host);
    if (port < 0) throw Error(std::string(what) + ": cannot listen on " + host);
  } else if (!s.bind_to_port(host, port)) {
    throw Error(std::string(what) + ": cannot listen on " + host + ":" + std::to_string(port) + " (in use?)");
  }
  b.widen();
  return port;
}

// Runs the server until `stop`; a watcher thread turns the flag into server.stop().
void serve_until(httplib::Server& s, const std::atomic<bool>& stop) {
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!done && !stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    s.stop();
  });
  s.listen_after_bind();
  done = true;
  watcher.join();
}

void reply_json(httplib::Response& res, const json& j, int status = 200) {
  res.status = status;
  res.set_content(j.dump(), "application/json");
}

json body_of(const httplib::Request& req) {
  try {
    json j = json::parse(req.body);
    if (!j.is_object()) throw std::runtime_error("not an object");
    return j;
  } catch (const std::exception& e) {
    throw std::invalid_argument(std::string("the body is not a JSON object: ") + e.what());
  }
}

}  // namespace

// ---- controller -------------------------------------------------------------------------------

void run_controller(const ControllerOptions& o, const std::atomic<bool>& stop, const std::function<void(int)>& on_listening) {
  if (o.dispatch != "shortest_queue" && o.dispatch != "lottery")
    throw ConfigError("dispatch: '" + o.dispatch + "' is not shortest_queue or lottery");
  struct Worker {
    std::vector<std::string> models;
    int64_t capacity = 1, queue = 0;
    Clock::time_point seen;
  };
  std::mutex mu;
  std::map<std::string, Worker> workers;
  std::mt19937_64 rng(std::random_device{}());
  std::atomic<int64_t> dispatched{0}, expired{0};
  const auto started = Clock::now();
  httplib::Server s;
  Backlog backlog;
  backlog.attach(s);
  auto guarded = [](auto fn) {
    return [fn](const httplib::Request& req, httplib::Response& res) {
      try {
        fn(req, res);
      } catch (const std::exception& e) {
        reply_json(res, {{"error", e.what()}}, 400);
      }
    };
  };
  s.Post("/register", guarded([&](const httplib::Request& req, httplib::Response& res) {
           json b = body_of(req);
           Worker w;
           std::string address = b.at("address").get<std::string>();
           w.models = b.at("models").get<std::vector<std::string>>();
           w.capacity = std::max<int64_t>(1, b.value("capacity", int64_t{1}));
           w.queue = b.value("queue", int64_t{0});
           w.seen = Clock::now();
           std::lock_guard<std::mutex> g(mu);
           workers[address] = w;
           reply_json(res, {{"ok", true}});
         }));
  s.Post("/unregister", guarded([&](const httplib::Request& req, httplib::Response& res) {
           json b = body_of(req);
           std::lock_guard<std::mutex> g(mu);
           bool known = workers.erase(b.at("address").get<std::string>()) > 0;
           if (known) spdlog::info("[controller] worker {} left", b.at("address").get<std::string>());
           reply_json(res, {{"ok", true}, {"known", known}});
         }));
  s.Post("/heartbeat", guarded([&](const httplib::Request& req, httplib::Response& res) {
           json b = body_of(req);
           std::lock_guard<std::mutex> g(mu);
           auto it = workers.find(b.at("address").get<std::string>());
           if (it == workers.end()) return reply_json(res, {{"known", false}});  // the worker registers again
           it->second.seen = Clock::now();
           it->second.queue = b.value("queue", int64_t{0});
           reply_json(res, {{"known", true}});
         }));
  s.Get("/list_models", [&](const httplib::Request&, httplib::Response& res) {
    std::set<std::string> names;
    std::lock_guard<std::mutex> g(mu);
    for (auto& [a, w] : workers) names.insert(w.models.begin(), w.models.end());
    reply_json(res, {{"models", names}});
  });
  s.Get("/workers", [&](const httplib::Request&, httplib::Response& res) {
    json out = json::array();
    std::lock_guard<std::mutex> g(mu);
    for (auto& [a, w] : workers)
      out.push_back({{"address", a}, {"models", w.models}, {"capacity", w.capacity}, {"queue", w.queue},
                     {"silent_s", std::chrono::duration<double>(Clock::now() - w.seen).count()}});
    reply_json(res, {{"workers", out}});
  });
  s.Post("/get_worker", guarded([&](const httplib::Request& req, httplib::Response& res) {
           json b = body_of(req);
           std::string model = b.at("model").get<std::string>();
           auto exclude = b.value("exclude", std::vector<std::string>{});
           std::lock_guard<std::mutex> g(mu);
           std::vector<std::string> cands;
           bool known = false;
           for (auto& [a, w] : workers)
             if (std::find(w.models.begin(), w.models.end(), model) != w.models.end()) {
               known = true;
               if (std::find(exclude.begin(), exclude.end(), a) == exclude.end()) cands.push_back(a);
             }
           // "warming": a model no worker serves may only be one whose workers have not registered
           // again since this controller started (they do within a heartbeat): not yet a 404.
           const double up = std::chrono::duration<double>(Clock::now() - started).count();
           if (cands.empty())
             return reply_json(res, {{"address", ""}, {"known", known}, {"warming", up < o.expiry_seconds || workers.empty()},
                                     {"uptime_s", up}});
           std::string pick;
           if (o.dispatch == "lottery") {
             std::vector<double> weights;
             for (auto& a : cands) weights.push_back(static_cast<double>(workers[a].capacity));
             pick = cands[std::discrete_distribution<std::size_t>(weights.begin(), weights.end())(rng)];
           } else {
             double best = 1e300;
             for (auto& a : cands) {
               double load = static_cast<double>(workers[a].queue + 1) / static_cast<double>(workers[a].capacity);
               if (load < best) best = load, pick = a;
             }
           }
           ++workers[pick].queue;  // until its next heartbeat says otherwise
           ++dispatched;
           reply_json(res, {{"address", pick}, {"known", true}});
         }));
  s.Get("/health", [](const httplib::Request&, httplib::Response& res) { reply_json(res, {{"status", "ok"}}); });
  s.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    std::ostringstream m;
    std::lock_guard<std::mutex> g(mu);
    std::map<std::string, int> per_model;
    int64_t queue = 0;
    for (auto& [a, w] : workers) {
      for (auto& name : w.models) ++per_model[name];
      queue += w.queue;
    }
    m << "# TYPE vhost_controller_workers gauge\nvhost_controller_workers " << workers.size()
      << "\n# TYPE vhost_controller_queue gauge\nvhost_controller_queue " << queue
      << "\n# TYPE vhost_controller_dispatched_total counter\nvhost_controller_dispatched_total " << dispatched
      << "\n# TYPE vhost_controller_expired_total counter\nvhost_controller_expired_total " << expired
      << "\n# TYPE vhost_controller_model_workers gauge\n";
    for (auto& [name, n] : per_model) m << "vhost_controller_model_workers{model=\"" << prom_label(name) << "\"} " << n << "\n";
    res.set_content(m.str(), "text/plain; version=0.0.4");
  });
  int port = bind_server(s, backlog, o.host, o.port, "controller");
  std::atomic<bool> done{false};
  std::thread expiry([&] {
    while (!done) {
      {
        std::lock_guard<std::mutex> g(mu);
        for (auto it = workers.begin(); it != workers.end();)
          if (std::chrono::duration<double>(Clock::now() - it->second.seen).count() > o.expiry_seconds) {
            spdlog::warn("[controller] worker {} silent for {} s: dropped", it->first, o.expiry_seconds);
            it = workers.erase(it);
            ++expired;
          }
          else
            ++it;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(std::max(20, static_cast<int>(o.expiry_seconds * 250))));
    }
  });
  if (on_listening) on_listening(port);
  serve_until(s, stop);
  done = true;
  expiry.join();
}

// ---- worker membership ------------------------------------------------------------------------

struct WorkerMembership::Impl {
  std::string controller, address;
  json registration;
  double heartbeat;
  std::function<int64_t()> queue;
  std::mutex m;
  std::condition_variable cv;
  bool stop = false;
  std::thread thread;
};

WorkerMembership::WorkerMembership(std::string controller, std::string address, std::vector<std::string> models,
                                   int capacity, double heartbeat_seconds, std::function<int64_t()> queue_length)
    : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.controller = std::move(controller);
  I.address = std::move(address);
  I.registration = {{"address", I.address}, {"models", models}, {"capacity", capacity}};
  I.heartbeat = heartbeat_seconds;
  I.queue = std::move(queue_length);
  I.thread = std::thread([this] {
    Impl& I = *impl_;
    bool registered = false, warned = false;
    while (true) {
      {
        httplib::Client cli(I.controller);
        cli.set_connection_timeout(2, 0);
        cli.set_read_timeout(5, 0);
        json b = registered ? json{{"address", I.address}, {"queue", I.queue()}} : I.registration;
        if (!registered) b["queue"] = I.queue();
        auto r = cli.Post(registered ? "/heartbeat" : "/register", b.dump(), "application/json");
        bool ok = r && r->status == 200;
        if (ok && registered) {
          try {
            ok = json::parse(r->body).value("known", false);  // false: the controller restarted
          } catch (...) {
            ok = false;
          }
        }
        if (!ok && !warned) {
          spdlog::warn("[worker] {}", "controller " + I.controller + " unreachable or restarted; registering again");
          warned = true;
        }
        if (ok && !registered) {
          spdlog::info("[worker] {}", "registered " + I.address + " with " + I.controller);
          warned = false;
        }
        registered = ok;
      }
      std::unique_lock<std::mutex> g(I.m);
      if (I.cv.wait_for(g, std::chrono::duration<double>(registered ? I.heartbeat : std::min(I.heartbeat, 1.0)),
                        [&] { return I.stop; }))
        return;
    }
  });
}

WorkerMembership::~WorkerMembership() { leave(); }

void WorkerMembership::leave() {
  {
    std::lock_guard<std::mutex> g(impl_->m);
    if (impl_->stop) return;
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  impl_->thread.join();
  httplib::Client cli(impl_->controller);
  cli.set_connection_timeout(1, 0);
  cli.set_read_timeout(2, 0);
  auto r = cli.Post("/unregister", json{{"address", impl_->address}}.dump(), "application/json");
  if (r && r->status == 200) spdlog::info("[worker] {}", "left " + impl_->controller);
  else spdlog::warn("[worker] {}", "could not tell " + impl_->controller + " that this worker leaves; it drops it after its expiry");
}

// ---- API server -------------------------------------------------------------------------------

void run_api(const ApiOptions& o, const std::atomic<bool>& stop, const std::function<void(int)>& on_listening) {
  if (o.controller.empty()) throw ConfigError("controller: the controller's URL is required (http://host:port)");
  // The connections in flight to each worker. A worker the controller drops (silent past its
  // expiry: stopped, cut off, wedged) has them shut by the watchdog below, so that its requests
  // fail over to another worker now rather than wait out the 600 s read timeout.
  struct InFlight {
    std::mutex m;
    std::multimap<std::string, httplib::Client*> clients;
  } inflight;  // before the server: its threads (and their relays) end first
  struct Tracked {  // registers a client for the duration of its request
    InFlight& f;
    std::multimap<std::string, httplib::Client*>::iterator it;
    Tracked(InFlight& in, const std::string& address, httplib::Client* c) : f(in) {
      std::lock_guard<std::mutex> g(f.m);
      it = f.clients.emplace(address, c);
    }
    ~Tracked() {
      std::lock_guard<std::mutex> g(f.m);
      f.clients.erase(it);
    }
  };
  httplib::Server s;
  Backlog backlog;
  backlog.attach(s);
  const int threads = std::max(1, o.threads);
  s.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<std::size_t>(threads)); };
  s.set_payload_max_length(o.max_body);
  s.set_tcp_nodelay(true);
  std::atomic<int64_t> api_requests{0}, api_retries{0}, api_errors{0}, api_workers_lost{0};
  auto error = [&api_errors](httplib::Response& res, int status, const std::string& msg,
                             const std::string& type = "invalid_request_error", const std::string& param = "",
                             const std::string& code = "") {
    ++api_errors;
    reply_json(res, openai_error_body(msg, type, param, code), status);
  };
  auto authorized = [&o, error](const httplib::Request& req, httplib::Response& res) {
    if (o.api_keys.empty()) return true;
    std::string h = req.get_header_value("Authorization");
    for (const auto& k : o.api_keys)
      if (h == "Bearer " + k) return true;
    error(res, 401, "invalid or missing API key (send Authorization: Bearer KEY)", "invalid_request_error", "",
          "invalid_api_key");
    return false;
  };
  auto controller_json = [&o](const std::string& path, const json* body) -> json {
    httplib::Client cli(o.controller);
    cli.set_connection_timeout(2, 0);
    cli.set_read_timeout(10, 0);
    auto r = body ? cli.Post(path, body->dump(), "application/json") : cli.Get(path);
    if (!r || r->status != 200) throw std::runtime_error("the controller at " + o.controller + " is unreachable");
    return json::parse(r->body);
  };
  s.Get("/v1/models", [&](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    try {
      json data = json::array();
      json listed = controller_json("/list_models", nullptr);  // kept alive for the loop
      for (auto& m : listed["models"])
        data.push_back({{"id", m}, {"object", "model"}, {"created", 0}, {"owned_by", "vhost"}});
      reply_json(res, {{"object", "list"}, {"data", data}});
    } catch (const std::exception& e) {
      error(res, 503, e.what(), "server_error");
    }
  });
  auto forward = [&](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    json body;
    try {
      body = json::parse(req.body);
    } catch (const json::parse_error& e) {
      return error(res, 400, "the body is not valid JSON: byte " + std::to_string(e.byte) + ": " + e.what());
    }
    if (!body.is_object() || !body.contains("model") || !body["model"].is_string())
      return error(res, 400, "'model' is required (GET /v1/models lists them)", "invalid_request_error", "model");
    const std::string model = body["model"].get<std::string>();
    const bool stream = body.value("stream", false);
    ++api_requests;
    std::vector<std::string> tried;
    // A worker's reply that says the failure was on its side (500, 502, 503, 504: it broke or is
    // going down) or that it is full (429): another worker may well answer. Kept, so that when no
    // worker is left to try the client gets the last one's reply rather than a generic error.
    int failed_status = 0;
    std::string failed_body;
    auto worker_side = [](int status) { return status == 429 || status == 500 || status == 502 || status == 503 || status == 504; };
    // Up to three workers: one that cannot be reached, dies before answering or answers with a
    // worker-side failure is skipped and the request goes to another.
    for (int attempt = 0; attempt < 3; ++attempt) {
      json pick;
      try {
        json q = {{"model", model}, {"exclude", tried}};
        pick = controller_json("/get_worker", &q);
      } catch (const std::exception& e) {
        return error(res, 503, e.what(), "server_error");
      }
      std::string address = pick.value("address", "");
      if (address.empty() && failed_status) {
        res.status = failed_status;
        res.set_content(failed_body, "application/json");
        return;
      }
      if (address.empty()) {
        if (!pick.value("known", false) && pick.value("warming", false))
          return error(res, 503,
                       "no worker serves '" + model + "' yet: the controller started " +
                           std::to_string(static_cast<int>(pick.value("uptime_s", 0.0))) +
                           " s ago and its workers register within a heartbeat, or none is up; retry",
                       "server_error", "", "unavailable");
        if (!pick.value("known", false))
          return error(res, 404, "the model '" + model + "' does not exist (GET /v1/models lists them)",
                       "invalid_request_error", "model", "model_not_found");
        return error(res, 503, "no worker of '" + model + "' could take the request", "server_error", "", "unavailable");
      }
      tried.push_back(address);
      if (!stream) {
        httplib::Client cli(address);
        cli.set_connection_timeout(2, 0);
        cli.set_read_timeout(600, 0);
        httplib::Result r = [&] {
          Tracked t(inflight, address, &cli);
          return cli.Post(req.path, req.body, "application/json");
        }();
        if (!r) {  // unreachable or died mid-request: another worker
          ++api_retries;
          continue;
        }
        if (worker_side(r->status) && attempt + 1 < 3) {
          ++api_retries;
          failed_status = r->status;
          failed_body = r->body;
          continue;
        }
        res.status = r->status;
        res.set_content(r->body, "application/json");
        return;
      }
      // Streaming: the request goes to the worker on a relay thread, and the client's response
      // starts only once the worker's headers are back. A worker that cannot be reached or fails
      // before answering is retried like a non-streamed request; a worker's error reply (a 4xx
      // or 429 with a JSON body) goes back to the client with its status. Then the relay thread
      // writes the worker's bytes straight into the client's stream: no extra hop per event.
      struct Relay {
        std::mutex m;
        std::condition_variable cv;
        int status = 0;                      // the worker's, once its headers are in (0: none came)
        bool done = false;                   // the request to the worker has ended
        bool abandoned = false;              // the client's response is gone: stop relaying
        httplib::DataSink* sink = nullptr;   // the client's stream, while the provider runs
        bool client_alive = true;
        std::string body;                    // a non-200 reply's body
        httplib::Error err = httplib::Error::Success;
        std::thread thread;
      };
      auto relay = std::make_shared<Relay>();
      auto cli = std::make_shared<httplib::Client>(address);
      cli->set_connection_timeout(2, 0);
      cli->set_read_timeout(600, 0);
      relay->thread = std::thread([relay, cli, path = req.path, payload = req.body, address, &inflight] {
        Tracked tracked(inflight, address, cli.get());
        httplib::Request up;
        up.method = "POST";
        up.path = path;
        up.body = payload;
        up.set_header("Content-Type", "application/json");
        up.response_handler = [relay](const httplib::Response& r) {
          std::unique_lock<std::mutex> g(relay->m);
          relay->status = r.status;
          relay->cv.notify_all();
          if (r.status != 200) return true;  // the body is collected for the client
          relay->cv.wait(g, [&] { return relay->sink || relay->abandoned; });
          return !relay->abandoned;
        };
        up.content_receiver = [relay](const char* d, size_t n, uint64_t, uint64_t) {
          if (relay->status != 200) {
            relay->body.append(d, n);
            return true;
          }
          relay->client_alive = relay->sink->write(d, n);
          return relay->client_alive;  // a gone client closes the worker's stream, which cancels there
        };
        httplib::Response r;
        httplib::Error err = httplib::Error::Success;
        bool ok = cli->send(up, r, err);
        std::lock_guard<std::mutex> g(relay->m);
        relay->err = ok ? httplib::Error::Success : err;
        relay->done = true;
        relay->cv.notify_all();
      });
      int status;
      {
        std::unique_lock<std::mutex> g(relay->m);
        relay->cv.wait(g, [&] { return relay->done || relay->status == 200; });
        status = relay->status;
      }
      if (status != 200) {
        relay->thread.join();  // done: failed, or a complete error reply
        if (status == 0) {     // unreachable or died before answering: another worker
          ++api_retries;
          continue;
        }
        if (worker_side(status) && attempt + 1 < 3) {
          ++api_retries;
          failed_status = status;
          failed_body = relay->body;
          continue;
        }
        res.status = status;
        res.set_content(relay->body, "application/json");
        return;
      }
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream",
          [relay](std::size_t, httplib::DataSink& sink) {
            std::unique_lock<std::mutex> g(relay->m);
            relay->sink = &sink;
            relay->cv.notify_all();
            relay->cv.wait(g, [&] { return relay->done; });
            relay->sink = nullptr;
            if (relay->err != httplib::Error::Success && relay->client_alive) {
              std::string e = "data: " +
                              openai_error_body("the worker answering this request stopped mid-stream (its connection "
                                                "was lost: " + httplib::to_string(relay->err) +
                                                "); the reply is incomplete: send the request again",
                                                "server_error", "", "worker_lost")
                                  .dump() +
                              "\n\n";
              sink.write(e.data(), e.size());
            }
            sink.done();
            return true;
          },
          [relay](bool) {  // the response is finished or dropped: release the relay thread
            {
              std::lock_guard<std::mutex> g(relay->m);
              relay->abandoned = true;
            }
            relay->cv.notify_all();
            relay->thread.join();
          });
      return;
    }
    if (failed_status) {
      res.status = failed_status;
      res.set_content(failed_body, "application/json");
      return;
    }
    error(res, 503, "no worker of '" + model + "' answered", "server_error", "", "unavailable");
  };
  s.Post("/v1/completions", forward);
  s.Post("/v1/chat/completions", forward);
  // The chat page's side-by-side votes (the page is served here too): kept in --log, as vhost
  // serve keeps them in its conversation log.
  std::mutex log_mu;
  std::ofstream log;
  if (!o.log_file.empty()) {
    log.open(o.log_file, std::ios::app);
    if (!log) throw ConfigError("--log: cannot open " + o.log_file + " for appending");
  }
  s.Post("/v1/votes", [&](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    json body;
    try {
      body = json::parse(req.body);
    } catch (const json::exception& e) {
      return error(res, 400, std::string("the body is not valid JSON: ") + e.what());
    }
    if (!body.is_object() || !body.contains("vote") || !body["vote"].is_string())
      return error(res, 400, "'vote' is required (A, B, tie, bad)", "invalid_request_error", "vote");
    if (log.is_open()) {
      std::lock_guard<std::mutex> g(log_mu);
      log << json{{"time", std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count()},
                  {"vote", body}}.dump(-1, ' ', false, json::error_handler_t::replace)
          << "\n" << std::flush;
    }
    reply_json(res, {{"ok", true}, {"kept", log.is_open()}});
  });
  s.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    std::ostringstream m;
    m << "# TYPE vhost_api_requests_total counter\nvhost_api_requests_total " << api_requests
      << "\n# TYPE vhost_api_retries_total counter\nvhost_api_retries_total " << api_retries
      << "\n# TYPE vhost_api_errors_total counter\nvhost_api_errors_total " << api_errors
      << "\n# TYPE vhost_api_workers_lost_total counter\nvhost_api_workers_lost_total " << api_workers_lost << "\n";
    res.set_content(m.str(), "text/plain; version=0.0.4");
  });
  s.Get("/health", [](const httplib::Request&, httplib::Response& res) { reply_json(res, {{"status", "ok"}}); });
  s.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content(web_chat_html(), "text/html"); });
  s.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    res.set_content(openai_error_body(res.status == 413 ? "the request body is too large" : "HTTP " + std::to_string(res.status),
                                      "invalid_request_error", "", "")
                        .dump(),
                    "application/json");
  });
  int port = bind_server(s, backlog, o.host, o.port, "api");
  std::atomic<bool> done{false};
  std::thread watchdog([&] {
    while (!done) {
      for (int i = 0; i < 5 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      {
        std::lock_guard<std::mutex> g(inflight.m);
        if (inflight.clients.empty()) continue;
      }
      std::set<std::string> live;
      try {
        const json listed = controller_json("/workers", nullptr);  // kept alive for the loop
        for (const auto& w : listed.at("workers")) live.insert(w.value("address", ""));
      } catch (const std::exception&) {
        continue;  // the controller is away: nothing is known about the workers
      }
      std::lock_guard<std::mutex> g(inflight.m);
      std::set<std::string> lost;
      for (auto& [address, cli] : inflight.clients)
        if (!live.count(address)) {
          cli->stop();  // its blocked read returns: the request goes to another worker
          lost.insert(address);
        }
      for (const auto& a : lost) {
        ++api_workers_lost;
        spdlog::warn("[api] worker {} was dropped by the controller: its requests in flight go to another worker", a);
      }
    }
  });
  struct Join {
    std::atomic<bool>& done;
    std::thread& t;
    ~Join() {
      done = true;
      t.join();
    }
  } join{done, watchdog};
  if (on_listening) on_listening(port);
  serve_until(s, stop);
}

}  // namespace vhost::host
