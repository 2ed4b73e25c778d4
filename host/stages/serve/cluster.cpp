#include "stages/serve/cluster.hpp"

#include "stages/serve/http.hpp"
#include "stages/serve/web_chat.hpp"

#include <vhost/host/error.hpp>

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

namespace vhost::host {

namespace {

using Clock = std::chrono::steady_clock;
using http::ApiError;
using http::reply_json;

// A required field of a controller message, or a 400 naming it.
template <class T>
T field(const json& b, const char* name) {
  if (!b.contains(name)) throw ApiError(400, std::string("'") + name + "' is required", "invalid_request_error", name);
  try {
    return b[name].get<T>();
  } catch (const json::exception&) {
    throw ApiError(400, std::string("'") + name + "' has the wrong type (" + b[name].type_name() + ")", "invalid_request_error", name);
  }
}

// A background thread that calls `tick` every `period` until destroyed.
class Ticker {
 public:
  Ticker(std::chrono::milliseconds period, std::function<void()> tick)
      : thread_([this, period, tick = std::move(tick)] {
          std::unique_lock<std::mutex> g(m_);
          while (!cv_.wait_for(g, period, [&] { return stop_; })) {
            g.unlock();
            tick();
            g.lock();
          }
        }) {}
  ~Ticker() {
    {
      std::lock_guard<std::mutex> g(m_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// ---- controller -------------------------------------------------------------------------------

// The live workers: registration, heartbeats, expiry, and the pick of one per request.
class Controller {
 public:
  explicit Controller(const ControllerOptions& o) : o_(o), rng_(std::random_device{}()) {
    if (o.dispatch != "shortest_queue" && o.dispatch != "lottery")
      throw ConfigError("dispatch: '" + o.dispatch + "' is not shortest_queue or lottery");
  }

  void routes(http::Server& s) {
    s.post("/register", [this](const httplib::Request& req, httplib::Response& res) { reply_json(res, enroll(http::body_object(req))); });
    s.post("/unregister", [this](const httplib::Request& req, httplib::Response& res) {
      const auto address = field<std::string>(http::body_object(req), "address");
      std::lock_guard<std::mutex> g(mu_);
      const bool known = workers_.erase(address) > 0;
      if (known) spdlog::info("[controller] worker {} left", address);
      reply_json(res, {{"ok", true}, {"known", known}});
    });
    s.post("/heartbeat", [this](const httplib::Request& req, httplib::Response& res) {
      const json b = http::body_object(req);
      std::lock_guard<std::mutex> g(mu_);
      auto it = workers_.find(field<std::string>(b, "address"));
      if (it == workers_.end()) return reply_json(res, {{"known", false}});  // the worker registers again
      it->second.seen = Clock::now();
      it->second.queue = b.value("queue", int64_t{0});
      reply_json(res, {{"known", true}});
    });
    s.get("/list_models", [this](const httplib::Request&, httplib::Response& res) {
      std::set<std::string> names;
      std::lock_guard<std::mutex> g(mu_);
      for (auto& [a, w] : workers_) names.insert(w.models.begin(), w.models.end());
      reply_json(res, {{"models", names}});
    });
    s.get("/workers", [this](const httplib::Request&, httplib::Response& res) { reply_json(res, {{"workers", list()}}); });
    s.post("/get_worker", [this](const httplib::Request& req, httplib::Response& res) { reply_json(res, pick(http::body_object(req))); });
    s.get("/health", [](const httplib::Request&, httplib::Response& res) { reply_json(res, {{"status", "ok"}}); });
    s.get("/metrics", [this](const httplib::Request&, httplib::Response& res) { res.set_content(metrics(), "text/plain; version=0.0.4"); });
  }

  // Drops the workers silent past the expiry.
  void expire() {
    std::lock_guard<std::mutex> g(mu_);
    for (auto it = workers_.begin(); it != workers_.end();)
      if (std::chrono::duration<double>(Clock::now() - it->second.seen).count() > o_.expiry_seconds) {
        spdlog::warn("[controller] worker {} silent for {} s: dropped", it->first, o_.expiry_seconds);
        it = workers_.erase(it);
        ++expired_;
      } else {
        ++it;
      }
  }

 private:
  struct Worker {
    std::vector<std::string> models;
    int64_t capacity = 1, queue = 0;
    Clock::time_point seen;
  };

  json enroll(const json& b) {
    Worker w;
    const auto address = field<std::string>(b, "address");
    w.models = field<std::vector<std::string>>(b, "models");
    w.capacity = std::max<int64_t>(1, b.value("capacity", int64_t{1}));
    w.queue = b.value("queue", int64_t{0});
    w.seen = Clock::now();
    std::lock_guard<std::mutex> g(mu_);
    workers_[address] = w;
    return {{"ok", true}};
  }

  json list() {
    json out = json::array();
    std::lock_guard<std::mutex> g(mu_);
    for (auto& [a, w] : workers_)
      out.push_back({{"address", a}, {"models", w.models}, {"capacity", w.capacity}, {"queue", w.queue},
                     {"silent_s", std::chrono::duration<double>(Clock::now() - w.seen).count()}});
    return out;
  }

  // {"address"} of the worker to take a request for b["model"] (not one of b["exclude"]), or
  // {"address": "", "known", "warming"}: whether any worker serves the model, and whether this
  // controller may simply not have heard from its workers yet.
  json pick(const json& b) {
    const auto model = field<std::string>(b, "model");
    const auto exclude = b.value("exclude", std::vector<std::string>{});
    std::lock_guard<std::mutex> g(mu_);
    std::vector<std::string> cands;
    bool known = false;
    for (auto& [a, w] : workers_)
      if (std::find(w.models.begin(), w.models.end(), model) != w.models.end()) {
        known = true;
        if (std::find(exclude.begin(), exclude.end(), a) == exclude.end()) cands.push_back(a);
      }
    // "warming": a model no worker serves may only be one whose workers have not registered
    // again since this controller started (they do within a heartbeat): not yet a 404.
    const double up = std::chrono::duration<double>(Clock::now() - started_).count();
    if (cands.empty())
      return {{"address", ""}, {"known", known}, {"warming", up < o_.expiry_seconds || workers_.empty()}, {"uptime_s", up}};
    std::string chosen;
    if (o_.dispatch == "lottery") {
      std::vector<double> weights;
      for (auto& a : cands) weights.push_back(static_cast<double>(workers_[a].capacity));
      chosen = cands[std::discrete_distribution<std::size_t>(weights.begin(), weights.end())(rng_)];
    } else {
      double best = 1e300;
      for (auto& a : cands) {
        const double load = static_cast<double>(workers_[a].queue + 1) / static_cast<double>(workers_[a].capacity);
        if (load < best) best = load, chosen = a;
      }
    }
    ++workers_[chosen].queue;  // until its next heartbeat says otherwise
    ++dispatched_;
    return {{"address", chosen}, {"known", true}};
  }

  std::string metrics() {
    std::ostringstream m;
    std::lock_guard<std::mutex> g(mu_);
    std::map<std::string, int> per_model;
    int64_t queue = 0;
    for (auto& [a, w] : workers_) {
      for (auto& name : w.models) ++per_model[name];
      queue += w.queue;
    }
    m << "# TYPE vhost_controller_workers gauge\nvhost_controller_workers " << workers_.size()
      << "\n# TYPE vhost_controller_queue gauge\nvhost_controller_queue " << queue
      << "\n# TYPE vhost_controller_dispatched_total counter\nvhost_controller_dispatched_total " << dispatched_
      << "\n# TYPE vhost_controller_expired_total counter\nvhost_controller_expired_total " << expired_
      << "\n# TYPE vhost_controller_model_workers gauge\n";
    for (auto& [name, n] : per_model) m << "vhost_controller_model_workers{model=\"" << http::prom_label(name) << "\"} " << n << "\n";
    return m.str();
  }

  const ControllerOptions o_;
  std::mutex mu_;
  std::map<std::string, Worker> workers_;
  std::mt19937_64 rng_;
  int64_t dispatched_ = 0, expired_ = 0;
  const Clock::time_point started_ = Clock::now();
};

}  // namespace

void run_controller(const ControllerOptions& o, const std::atomic<bool>& stop, const std::function<void(int)>& on_listening) {
  Controller c(o);
  http::Options ho;
  ho.what = "controller";
  ho.host = o.host;
  ho.port = o.port;
  http::Server s(ho);
  c.routes(s);
  const int port = s.bind();
  Ticker expiry(std::chrono::milliseconds(std::max(20, static_cast<int>(o.expiry_seconds * 250))), [&c] { c.expire(); });
  if (on_listening) on_listening(port);
  s.run_until(stop);
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

namespace {

// The OpenAI API in front of the controller's workers: each request goes to a worker the
// controller picks; one that cannot be reached, dies before answering or answers with a
// worker-side failure is skipped and the request goes to another (three tries).
class Gateway {
 public:
  explicit Gateway(const ApiOptions& o) : o_(o) {
    if (o.controller.empty()) throw ConfigError("controller: the controller's URL is required (http://host:port)");
    if (!o.log_file.empty()) {
      if (!log_.open(o.log_file)) throw ConfigError("--log: cannot open " + o.log_file + " for appending");
    }
  }

  void routes(http::Server& s) {
    server_ = &s;
    s.get("/v1/models", [this](const httplib::Request&, httplib::Response& res) { reply_json(res, models()); }, http::Auth::key);
    auto forward = [this](const httplib::Request& req, httplib::Response& res) { this->forward(req, res); };
    s.post("/v1/completions", forward, http::Auth::key);
    s.post("/v1/chat/completions", forward, http::Auth::key);
    // The chat page's side-by-side votes (the page is served here too): kept in --log, as vhost
    // serve keeps them in its conversation log.
    s.post("/v1/votes", [this](const httplib::Request& req, httplib::Response& res) { reply_json(res, vote(http::body_object(req))); },
           http::Auth::key);
    s.get("/metrics", [this](const httplib::Request&, httplib::Response& res) { res.set_content(metrics(), "text/plain; version=0.0.4"); });
    s.get("/health", [](const httplib::Request&, httplib::Response& res) { reply_json(res, {{"status", "ok"}}); });
    s.get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content(web_chat_html(), "text/html"); });
  }

  // The watchdog's round: connections in flight to a worker the controller no longer lists
  // (silent past its expiry: stopped, cut off, wedged) are shut, so that their requests fail over
  // to another worker now rather than wait out the 600 s read timeout.
  void drop_lost_workers() {
    {
      std::lock_guard<std::mutex> g(inflight_.m);
      if (inflight_.clients.empty()) return;
    }
    std::set<std::string> live;
    try {
      const json listed = controller_json("/workers", nullptr);  // kept alive for the loop
      for (const auto& w : listed.at("workers")) live.insert(w.value("address", ""));
    } catch (const std::exception&) {
      return;  // the controller is away: nothing is known about the workers
    }
    std::lock_guard<std::mutex> g(inflight_.m);
    std::set<std::string> lost;
    for (auto& [address, cli] : inflight_.clients)
      if (!live.count(address)) {
        cli->stop();  // its blocked read returns: the request goes to another worker
        lost.insert(address);
      }
    for (const auto& a : lost) {
      ++workers_lost_;
      spdlog::warn("[api] worker {} was dropped by the controller: its requests in flight go to another worker", a);
    }
  }

 private:
  // The connections in flight to each worker (for the watchdog).
  struct InFlight {
    std::mutex m;
    std::multimap<std::string, httplib::Client*> clients;
  };
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
  // A streamed request's relay: the request goes to the worker on a thread of its own, and the
  // client's response starts only once the worker's headers are back.
  struct Relay {
    std::mutex m;
    std::condition_variable cv;
    int status = 0;                     // the worker's, once its headers are in (0: none came)
    bool done = false;                  // the request to the worker has ended
    bool abandoned = false;             // the client's response is gone: stop relaying
    httplib::DataSink* sink = nullptr;  // the client's stream, while the provider runs
    bool client_alive = true;
    std::string body;  // a non-200 reply's body
    httplib::Error err = httplib::Error::Success;
    std::thread thread;
  };
  // What one try at a worker gave: status 0 when it could not be reached or died before answering.
  struct Attempt {
    int status = 0;
    std::string body;
    std::shared_ptr<Relay> relay;  // streamed and 200: the relay to hand to the client
  };

  json controller_json(const std::string& path, const json* body) const {
    httplib::Client cli(o_.controller);
    cli.set_connection_timeout(2, 0);
    cli.set_read_timeout(10, 0);
    auto r = body ? cli.Post(path, body->dump(), "application/json") : cli.Get(path);
    if (!r || r->status != 200) throw ApiError(503, "the controller at " + o_.controller + " is unreachable", "server_error");
    return json::parse(r->body);
  }

  json models() const {
    json data = json::array();
    const json listed = controller_json("/list_models", nullptr);  // kept alive for the loop
    for (auto& m : listed["models"]) data.push_back({{"id", m}, {"object", "model"}, {"created", 0}, {"owned_by", "vhost"}});
    return {{"object", "list"}, {"data", data}};
  }

  // The worker for the next try, or "" once none is left: then an ApiError says why (no worker
  // serves the model yet, it does not exist, or none of its workers could take the request).
  std::string next_worker(const std::string& model, const std::vector<std::string>& tried, bool have_failure) const {
    json q = {{"model", model}, {"exclude", tried}};
    const json pick = controller_json("/get_worker", &q);
    const std::string address = pick.value("address", "");
    if (!address.empty() || have_failure) return address;
    if (!pick.value("known", false) && pick.value("warming", false))
      throw ApiError(503,
                     "no worker serves '" + model + "' yet: the controller started " +
                         std::to_string(static_cast<int>(pick.value("uptime_s", 0.0))) +
                         " s ago and its workers register within a heartbeat, or none is up; retry",
                     "server_error", "", "unavailable");
    if (!pick.value("known", false))
      throw ApiError(404, "the model '" + model + "' does not exist (GET /v1/models lists them)", "invalid_request_error", "model",
                     "model_not_found");
    throw ApiError(503, "no worker of '" + model + "' could take the request", "server_error", "", "unavailable");
  }

  void forward(const httplib::Request& req, httplib::Response& res) {
    const json body = http::body_object(req);
    if (!body.contains("model") || !body["model"].is_string())
      throw ApiError(400, "'model' is required (GET /v1/models lists them)", "invalid_request_error", "model");
    const std::string model = body["model"].get<std::string>();
    const bool stream = body.value("stream", false);
    ++requests_;
    std::vector<std::string> tried;
    // A worker's reply that says the failure was on its side (500, 502, 503, 504: it broke or is
    // going down) or that it is full (429): another worker may well answer. Kept, so that when no
    // worker is left to try the client gets the last one's reply rather than a generic error.
    Attempt failed;
    auto worker_side = [](int status) { return status == 429 || status == 500 || status == 502 || status == 503 || status == 504; };
    for (int attempt = 0; attempt < 3; ++attempt) {
      const std::string address = next_worker(model, tried, failed.status != 0);
      if (address.empty()) break;
      tried.push_back(address);
      Attempt a = stream ? send_streamed(address, req) : send(address, req);
      if (a.status == 0 || (worker_side(a.status) && attempt + 1 < 3)) {
        ++retries_;
        if (a.status != 0) failed = std::move(a);
        continue;
      }
      if (a.relay) return relay_to_client(a.relay, res);
      res.status = a.status;
      res.set_content(a.body, "application/json");
      return;
    }
    if (!failed.status) throw ApiError(503, "no worker of '" + model + "' answered", "server_error", "", "unavailable");
    server_->count_error();
    res.status = failed.status;
    res.set_content(failed.body, "application/json");
  }

  Attempt send(const std::string& address, const httplib::Request& req) {
    httplib::Client cli(address);
    cli.set_connection_timeout(2, 0);
    cli.set_read_timeout(600, 0);
    httplib::Result r = [&] {
      Tracked t(inflight_, address, &cli);
      return cli.Post(req.path, req.body, "application/json");
    }();
    if (!r) return {};  // unreachable or died mid-request: another worker
    return {r->status, r->body, nullptr};
  }

  // Streaming: a worker that cannot be reached or fails before answering is retried like a
  // non-streamed request; a worker's error reply (a 4xx or 429 with a JSON body) goes back to the
  // client with its status. Then the relay thread writes the worker's bytes straight into the
  // client's stream: no extra hop per event.
  Attempt send_streamed(const std::string& address, const httplib::Request& req) {
    auto relay = std::make_shared<Relay>();
    auto cli = std::make_shared<httplib::Client>(address);
    cli->set_connection_timeout(2, 0);
    cli->set_read_timeout(600, 0);
    relay->thread = std::thread([this, relay, cli, path = req.path, payload = req.body, address] {
      Tracked tracked(inflight_, address, cli.get());
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
      const bool ok = cli->send(up, r, err);
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
    if (status == 200) return {200, "", relay};
    relay->thread.join();  // done: failed, or a complete error reply
    return {status, relay->body, nullptr};
  }

  static void relay_to_client(const std::shared_ptr<Relay>& relay, httplib::Response& res) {
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
            const std::string e = "data: " +
                                  http::error_body("the worker answering this request stopped mid-stream (its connection "
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
  }

  json vote(const json& body) {
    log_.append(http::vote_entry(body));
    return {{"ok", true}, {"kept", log_.is_open()}};
  }

  std::string metrics() const {
    std::ostringstream m;
    m << "# TYPE vhost_api_requests_total counter\nvhost_api_requests_total " << requests_
      << "\n# TYPE vhost_api_retries_total counter\nvhost_api_retries_total " << retries_
      << "\n# TYPE vhost_api_errors_total counter\nvhost_api_errors_total " << (server_ ? server_->errors() : 0)
      << "\n# TYPE vhost_api_workers_lost_total counter\nvhost_api_workers_lost_total " << workers_lost_ << "\n";
    return m.str();
  }

  const ApiOptions o_;
  http::Server* server_ = nullptr;
  InFlight inflight_;
  std::atomic<int64_t> requests_{0}, retries_{0}, workers_lost_{0};
  http::JsonlLog log_;
};

}  // namespace

void run_api(const ApiOptions& o, const std::atomic<bool>& stop, const std::function<void(int)>& on_listening) {
  Gateway g(o);  // before the server: the server's threads (and their relays) end first
  http::Options ho = o.listen;
  ho.what = "api";
  ho.not_found = "no such endpoint (see GET /v1/models, POST /v1/chat/completions, POST /v1/completions)";
  http::Server s(ho);
  g.routes(s);
  const int port = s.bind();
  Ticker watchdog(std::chrono::milliseconds(500), [&g] { g.drop_lost_workers(); });
  if (on_listening) on_listening(port);
  s.run_until(stop);
}

}  // namespace vhost::host
