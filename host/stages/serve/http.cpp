#include "stages/serve/http.hpp"

#include "stages/serve/connections.hpp"

#include <vhost/host/error.hpp>

#include <sys/socket.h>

#include <chrono>
#include <thread>

namespace vhost::host::http {

json error_body(const std::string& message, const std::string& type, const std::string& param, const std::string& code) {
  std::string safe = json::parse(json(message).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
  return {{"error",
           {{"message", safe},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

json body_object(const httplib::Request& req) {
  json b;
  try {
    b = json::parse(req.body);
  } catch (const json::parse_error& e) {
    throw ApiError(400, "the body is not valid JSON: byte " + std::to_string(e.byte) + ": " + e.what());
  } catch (const json::exception& e) {  // e.g. a number too large for a double (1e400)
    throw ApiError(400, std::string("the body is not valid JSON: ") + e.what());
  }
  if (!b.is_object()) throw ApiError(400, std::string("the body must be a JSON object, not ") + b.type_name());
  return b;
}

std::string prom_label(const std::string& v) {
  std::string o;
  for (char c : v) o += c == '\\' ? "\\\\" : c == '"' ? "\\\"" : c == '\n' ? "\\n" : std::string(1, c);
  return o;
}

void reply_json(httplib::Response& res, const json& j, int status) {
  res.status = status;
  res.set_content(j.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

bool JsonlLog::open(const std::string& file) {
  out_.open(file, std::ios::app);
  return static_cast<bool>(out_);
}

void JsonlLog::append(const json& entry) {
  if (!out_.is_open()) return;
  std::lock_guard<std::mutex> g(mu_);
  out_ << entry.dump(-1, ' ', false, json::error_handler_t::replace) << "\n" << std::flush;
}

json vote_entry(const json& body) {
  if (!body.contains("vote") || !body["vote"].is_string())
    throw ApiError(400, "'vote' is required (A, B, tie, bad)", "invalid_request_error", "vote");
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  return {{"time", now}, {"vote", body}};
}

// httplib's server with the connections taken over: its accept loop hands each socket to
// Connections (connections.hpp), which hands whole requests back to process_request.
class Core : public httplib::Server {
 public:
  Connections* conns = nullptr;
  bool answer(httplib::Stream& strm, bool close_connection, bool& connection_closed) {
    return process_request(strm, close_connection, connection_closed, [](httplib::Request&) {});
  }

 private:
  // Runs on the accept thread (the task queue below runs it in place): adopt and return.
  bool process_and_close_socket(socket_t sock) override {
    conns->adopt(sock);
    return true;
  }
};

namespace {
struct InPlace : httplib::TaskQueue {
  void enqueue(std::function<void()> fn) override { fn(); }
  void shutdown() override {}
};
}  // namespace

std::function<bool()> client_gone_probe() {
  const int fd = current_socket();
  return [fd] { return peer_closed(fd); };
}

Server::Server(Options o) : o_(std::move(o)), core_(std::make_unique<Core>()) {
  Limits& l = o_.limits;
  l.error_json = [](const std::string& m) { return error_body(m, "invalid_request_error", "", "").dump(); };
  conns_ = std::make_unique<Connections>(l, [this](httplib::Stream& s, bool close, bool& closed) { return core_->answer(s, close, closed); });
  core_->conns = conns_.get();
  core_->new_task_queue = [] { return new InPlace; };
  core_->set_payload_max_length(l.max_body);
  core_->set_tcp_nodelay(true);  // streamed tokens are small writes: do not let Nagle hold them
  core_->set_write_timeout(l.write_timeout_s, 0);
  core_->set_keep_alive_max_count(static_cast<std::size_t>(l.keep_alive_requests));  // its Keep-Alive header says
  core_->set_keep_alive_timeout(l.keep_alive_s);                                     // what Connections does
  // httplib listens with a backlog of 5: a burst of clients overflows it and their connects wait
  // a second for a SYN retry. Keep the listening socket to widen the backlog after bind.
  core_->set_socket_options([this](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listen_fd_ = sock;
  });
  core_->set_error_handler([this](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string msg = res.status == 413   ? "the request body is too large (at most " + std::to_string(o_.limits.max_body) + " bytes)"
                            : res.status == 404 ? o_.not_found
                                                : "HTTP " + std::to_string(res.status);
    res.set_content(error_body(msg, "invalid_request_error", "", "").dump(), "application/json");
  });
}

Server::~Server() { conns_->stop(); }

void Server::check_auth(const httplib::Request& req) const {
  if (o_.api_keys.empty()) return;
  const std::string h = req.get_header_value("Authorization"), bearer = "Bearer ";
  if (h.rfind(bearer, 0) == 0)
    for (const auto& k : o_.api_keys)
      if (k == h.substr(bearer.size())) return;
  throw ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)", "invalid_request_error", "", "invalid_api_key");
}

Server::Handler Server::guard(Handler h, Auth auth) {
  return [this, h = std::move(h), auth](const httplib::Request& req, httplib::Response& res) {
    try {
      if (auth == Auth::key) check_auth(req);
      h(req, res);
    } catch (const ApiError& e) {
      ++errors_;
      reply_json(res, error_body(e.what(), e.type, e.param, e.code), e.status);
    } catch (const std::invalid_argument& e) {
      ++errors_;
      reply_json(res, error_body(e.what(), "invalid_request_error", "", ""), 400);
    } catch (const std::exception& e) {
      ++errors_;
      reply_json(res, error_body(e.what(), "server_error", "", ""), 500);
    }
  };
}

void Server::get(const std::string& path, Handler h, Auth auth) { core_->Get(path, guard(std::move(h), auth)); }
void Server::post(const std::string& path, Handler h, Auth auth) { core_->Post(path, guard(std::move(h), auth)); }

int Server::bind() {
  int port = o_.port;
  if (port == 0) {
    port = core_->bind_to_any_port(o_.host);
    if (port < 0) throw Error(o_.what + ": cannot listen on " + o_.host);
  } else if (!core_->bind_to_port(o_.host, port)) {
    throw Error(o_.what + ": cannot listen on " + o_.host + ":" + std::to_string(port) + " (in use?)");
  }
  if (listen_fd_ >= 0) ::listen(listen_fd_, 1024);
  o_.port = port;
  return port;
}

void Server::run() {
  conns_->start();
  core_->listen_after_bind();
  conns_->stop();  // after the accept loop: answers what was handed over, closes the rest
}

void Server::stop() { core_->stop(); }

void Server::run_until(const std::atomic<bool>& flag) {
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!done && !flag) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    core_->stop();
  });
  run();
  done = true;
  watcher.join();
}

}  // namespace vhost::host::http
