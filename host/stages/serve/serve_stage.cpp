// The serve stage: the OpenAI-compatible API and web chat page over model instances, in the
// foreground or in the background of a pipeline, optionally as a controller's worker.
#include "stages/stages.hpp"

#include "stages/common/options.hpp"
#include "stages/common/stop_signals.hpp"
#include "stages/serve/cluster.hpp"
#include "stages/serve/server.hpp"

#include <vhost/host/host.hpp>
#include <vhost/host/sampling.hpp>

#include <vhost/conversation.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

namespace vhost::host {

namespace {

// The listening options serve and api share: read alike, declared alike.
http::Options read_listen_options(const json& c) {
  http::Options o;
  o.host = c["host"].get<std::string>();
  o.port = static_cast<int>(c["port"].get<int64_t>());
  o.api_keys = c["api_keys"].get<std::vector<std::string>>();
  o.limits.threads = static_cast<int>(c["threads"].get<int64_t>());
  o.limits.max_body = static_cast<std::size_t>(c["max_body"].get<int64_t>());
  o.limits.request_timeout_s = static_cast<int>(c["request_timeout"].get<int64_t>());
  o.limits.client_connections = static_cast<int>(c["client_connections"].get<int64_t>());
  return o;
}

Schema listen_options(const std::string& log_help) {
  return {option_spec("host", "string", "127.0.0.1", "address to listen on (0.0.0.0: every interface)"),
          option_spec("port", "integer", 8000, "port (0: any free one; the chosen one is printed)", 0, 65535),
          option_spec("api_keys", "string_list", json::array(), "accepted Bearer keys (empty: no authentication)"),
          option_spec("threads", "integer", 64, "requests answered at once (a client still sending holds none)", 1, 100000),
          option_spec("max_body", "integer", 1048576, "largest request body in bytes (more: 413)", 1024, 1e9),
          option_spec("request_timeout", "integer", 30, "seconds a request may take to arrive whole (more: 408)", 1, 3600),
          option_spec("client_connections", "integer", 256, "open connections per client address (more: 429)", 1, 100000),
          option_spec("log", "path", "", log_help)};
}

Schema operator+(Schema a, const Schema& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// `serve`: the OpenAI-compatible API and the web chat page over model instances, until SIGINT
// or SIGTERM. Models are served under their instance names (models.NAME -> "NAME").
json run_serve(StageContext& ctx) {
  const auto& c = ctx.config;
  auto wanted = c["models"].get<std::vector<std::string>>();
  if (wanted.empty())
    for (const auto& d : ctx.declared)
      if (d.rfind("models.", 0) == 0) wanted.push_back(d);
  if (wanted.empty()) throw ConfigError(ctx.id + ".models: no model to serve: declare one under [models.NAME]");
  std::map<std::string, Instance*> models;
  for (const auto& ref : wanted) {
    Instance& inst = ctx.instance(ref);
    if (inst.plugin().kind != std::string(VHOST_KIND_MODEL))
      throw ConfigError(ctx.id + ".models: '" + ref + "' is a " + inst.plugin().kind + ", not a model");
    models[ref.substr(ref.find('.') + 1)] = &inst;
  }
  ServeOptions o;
  o.listen = read_listen_options(c);
  o.log_file = c["log"].get<std::string>();
  o.blocked_words = c["blocked_words"].get<std::vector<std::string>>();
  for (const auto& ref : c["moderators"].get<std::vector<std::string>>()) {
    Instance& inst = ctx.instance(ref);
    if (inst.plugin().kind != std::string(VHOST_KIND_JUDGE))
      throw ConfigError(ctx.id + ".moderators: '" + ref + "' is a " + inst.plugin().kind + ", not a judge");
    try {  // a judge that cannot moderate is found now, not at the first prompt
      inst.judge_moderate({{"input", json::array()}});
    } catch (const std::exception& e) {
      throw ConfigError(ctx.id + ".moderators: '" + ref + "' cannot moderate: " + e.what());
    }
    o.moderators.push_back(&inst);
  }
  o.stream_interval = static_cast<int>(c["stream_interval"].get<int64_t>());
  o.stream_flush_ms = static_cast<int>(c["stream_flush_ms"].get<int64_t>());
  if (c["background"].get<bool>()) {
    // Serve while the rest of the pipeline runs (a local judge for evaluation, a demo).
    struct Background {
      std::unique_ptr<ApiServer> server;
      std::thread thread;
      ~Background() {
        server->stop();
        if (thread.joinable()) thread.join();
      }
    };
    auto bg = std::make_shared<Background>();
    bg->server = std::make_unique<ApiServer>(models, o);
    int port = bg->server->bind();
    ApiServer* srv = bg->server.get();
    bg->thread = std::thread([srv] { srv->run(); });
    std::string url = "http://" + o.listen.host + ":" + std::to_string(port);
    ctx.out << "serving in the background on " << url << " until the pipeline ends\n";
    ctx.keep(bg);
    return {{"port", port}, {"url", url}, {"background", true}};
  }
  ApiServer server(models, o);
  int port = server.bind();
  StopSignals signals;
  std::atomic<bool> done{false};
  std::unique_ptr<WorkerMembership> membership;
  std::mutex membership_mu;
  std::thread watcher([&] {
    while (!done && signals.signal() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    {
      // A worker leaves its controller first, so that no new request is sent to it, then stops.
      std::lock_guard<std::mutex> g(membership_mu);
      if (membership) membership->leave();
    }
    server.stop();
  });
  const std::string controller = c["controller"].get<std::string>();
  if (!controller.empty()) {
    std::string advertise = c["advertise"].get<std::string>();
    if (advertise.empty()) advertise = "http://" + (o.listen.host == "0.0.0.0" ? std::string("127.0.0.1") : o.listen.host) + ":" + std::to_string(port);
    std::vector<std::string> names = server.model_ids();  // adapters too
    int capacity = 0;
    for (auto& [n, inst] : models) capacity += inst->model_capabilities().value("max_batch", 1);
    std::lock_guard<std::mutex> g(membership_mu);
    membership = std::make_unique<WorkerMembership>(controller, advertise, names, std::max(1, capacity),
                                                    c["heartbeat"].get<double>(),
                                                    [&server] { return server.metrics().value("active", int64_t{0}); });
    ctx.out << "worker of " << controller << " at " << advertise << "\n";
  }
  std::string names;
  for (const auto& n : server.model_ids()) names += (names.empty() ? "" : ", ") + n;
  ctx.out << "serving " << names << " on http://" << o.listen.host << ":" << port << "  (OpenAI API under /v1, chat page at /)"
          << (o.listen.api_keys.empty() ? "" : ", API keys required") << "\n" << std::flush;
  server.run();
  done = true;
  watcher.join();
  membership.reset();
  json m = server.metrics();
  m["port"] = port;
  ctx.out << "stopped serving after " << m["requests"] << " requests\n";
  return m;
}

// Runs `serve(stop, on_listening)` until SIGINT or SIGTERM; says "WHAT listening on URL" once
// it listens (the line scripts read the port from).
json serve_until_signal(StageContext& ctx, const std::string& what, const std::string& host,
                        const std::function<void(const std::atomic<bool>&, const std::function<void(int)>&)>& serve) {
  StopSignals signals;
  std::atomic<bool> stop{false}, done{false};
  std::thread watcher([&] {
    while (!done && !stop) {
      if (signals.signal() != 0) stop = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  int port = 0;
  try {
    serve(stop, [&](int p) {
      port = p;
      ctx.out << what << " listening on http://" << host << ":" << p << std::endl;
    });
  } catch (...) {
    done = true;
    watcher.join();
    throw;
  }
  done = true;
  watcher.join();
  return {{"port", port}};
}

// `controller`: the live workers (registration, heartbeats, expiry) and the pick of one per request.
json run_controller_stage(StageContext& ctx) {
  const auto& c = ctx.config;
  ControllerOptions o;
  o.host = c["host"].get<std::string>();
  o.port = static_cast<int>(c["port"].get<int64_t>());
  o.expiry_seconds = c["expiry"].get<double>();
  o.dispatch = c["dispatch"].get<std::string>();
  return serve_until_signal(ctx, "controller", o.host, [&](const std::atomic<bool>& stop, const std::function<void(int)>& said) {
    run_controller(o, stop, said);
  });
}

// `api`: the OpenAI API and chat page in front of a controller's workers.
json run_api_stage(StageContext& ctx) {
  const auto& c = ctx.config;
  ApiOptions o;
  o.controller = c["controller"].get<std::string>();
  o.listen = read_listen_options(c);
  o.log_file = c["log"].get<std::string>();
  return serve_until_signal(ctx, "api", o.listen.host, [&](const std::atomic<bool>& stop, const std::function<void(int)>& said) {
    run_api(o, stop, said);
  });
}

}  // namespace

std::vector<StageType> serve_stage_types() {
  return {
      {"serve",
       "Serves models over an OpenAI-compatible HTTP API with a web chat page, until SIGINT/SIGTERM.",
       Schema{option_spec("models", "string_list", json::array(), "model instances to serve (empty: every model)")} +
           listen_options("append every conversation to this JSONL file (empty: none)") +
           Schema{option_spec("blocked_words", "string_list", json::array(), "moderation: refuse prompts containing any of these"),
        option_spec("moderators", "string_list", json::array(),
                    "moderation: judge instances (judges.NAME) that check every prompt; one flagging it refuses it"),
        option_spec("stream_interval", "integer", 16,
                    "streaming: write a stream's pending tokens (each its own SSE event) once this many wait (1: every token at once)",
                    1, 256),
        option_spec("stream_flush_ms", "integer", 20,
                    "streaming: or once this many ms have passed since the stream's last write (0: by count only)", 0, 10000),
        option_spec("background", "boolean", false, "serve while the next stages run, stop when the pipeline ends"),
        option_spec("controller", "string", "", "register with this controller as a worker (http://host:port)"),
        option_spec("advertise", "string", "", "the URL the controller hands out for this worker (default: http://host:port)"),
        option_spec("heartbeat", "float", 5.0, "seconds between heartbeats to the controller", 0.05, 3600)},
       {},
       {"models", "moderators"},
       run_serve},
      {"controller",
       "Keeps the live workers (serve stages with a controller) and picks one per request, until SIGINT/SIGTERM.",
       {option_spec("host", "string", "127.0.0.1", "address to listen on"),
        option_spec("port", "integer", 21001, "port (0: any free one; the chosen one is printed)", 0, 65535),
        option_spec("expiry", "float", 30.0, "drop a worker silent this many seconds", 0.05, 86400),
        one_of(option_spec("dispatch", "string", "shortest_queue",
                           "shortest_queue (queue / capacity) or lottery (weighted by capacity)"),
               {"shortest_queue", "lottery"})},
       {},
       {},
       run_controller_stage},
      {"api",
       "Serves the OpenAI-compatible API and the chat page in front of a controller's workers, until SIGINT/SIGTERM.",
       Schema{option_spec("controller", "string", std::nullopt, "the controller (http://host:port)")} +
           listen_options("append the chat page's votes to this JSONL file (empty: not kept)"),
       {},
       {},
       run_api_stage}
  };
}

}  // namespace vhost::host
