// Internal: the one HTTP layer of the serving stages. `vhost serve` / `worker` (server.cpp), the
// controller and the API gateway (cluster.cpp) all listen through http::Server: the same socket
// setup (SO_REUSEADDR, a listen backlog of 1024 rather than httplib's 5, TCP_NODELAY), the same
// connection handling (connections.hpp: requests are read by a poller, so slow clients hold no
// thread; a deadline per request, a bound per client address, a bounded body), the same
// Bearer-key check and the same error shape, OpenAI's {"error": {"message", "type", "param",
// "code"}}, for every failure a route throws and for the refusals (404, 408, 413, 429, 431).
#pragma once

#include <nlohmann/json.hpp>

#include <httplib.h>

#include "stages/serve/connections.hpp"

#include <atomic>
#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace vhost::host::http {

using json = nlohmann::json;

// An OpenAI-shaped failure: the HTTP status and {"error": {message, type, param, code}}.
struct ApiError : std::runtime_error {
  int status;
  std::string type, param, code;
  ApiError(int s, std::string message, std::string t = "invalid_request_error", std::string p = "", std::string c = "")
      : std::runtime_error(std::move(message)), status(s), type(std::move(t)), param(std::move(p)), code(std::move(c)) {}
};

// {"error": {"message", "type", "param", "code"}}: the error shape OpenAI clients parse. The
// message may quote what the client sent, invalid UTF-8 included: replaced (U+FFFD), so that the
// body can always be written.
json error_body(const std::string& message, const std::string& type, const std::string& param, const std::string& code);

// The request's body as a JSON object, or a 400 naming the byte where it stops being JSON.
json body_object(const httplib::Request& req);

// A Prometheus label value, escaped as the text format requires (\\, \", \n): model names are
// instance names, which a pipeline may spell with any character.
std::string prom_label(const std::string& v);

void reply_json(httplib::Response& res, const json& j, int status = 200);

// A JSON-lines file many request threads append to (the conversation log, the chat page's
// votes): one entry per line, flushed at once, invalid UTF-8 replaced. Not opened: appends nothing.
class JsonlLog {
 public:
  bool open(const std::string& file);  // false when it cannot be opened for appending
  bool is_open() const { return out_.is_open(); }
  void append(const json& entry);

 private:
  std::mutex mu_;
  std::ofstream out_;
};

// The log entry of a vote from the chat page (POST /v1/votes): {"time", "vote": body}; 400
// naming 'vote' when the body has none.
json vote_entry(const json& body);

struct Options {
  std::string what = "server";  // names the server in errors ("api: cannot listen on ...")
  std::string host = "127.0.0.1";
  int port = 0;                       // 0: any free port
  std::vector<std::string> api_keys;  // Bearer keys routes marked `Auth::key` accept; empty: none needed
  std::string not_found = "no such endpoint";  // the 404 message
  Limits limits;  // threads, body and header sizes, timeouts, connections per client (connections.hpp)
};

// The socket of the request this thread answers, and whether its client has gone (closed the
// connection): a non-streamed request, which writes nothing until its end, asks this to stop
// generating for nobody. Callable from any thread while the request is being answered; false
// outside a request.
std::function<bool()> client_gone_probe();

enum class Auth { none, key };

class Core;
class Connections;

class Server {
 public:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;
  explicit Server(Options o);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // A route. With Auth::key a request without one of the keys is answered 401 before `h` runs.
  // An ApiError thrown by `h` is answered with its status; std::invalid_argument with 400; any
  // other exception with 500; each counts in errors().
  void get(const std::string& path, Handler h, Auth auth = Auth::none);
  void post(const std::string& path, Handler h, Auth auth = Auth::none);

  // Throws ApiError 401 unless the request carries one of the keys (or none are configured).
  void check_auth(const httplib::Request& req) const;
  // Counts a failure answered outside a route's exceptions (a streamed error, say).
  void count_error() { ++errors_; }
  int64_t errors() const { return errors_; }

  int bind();  // throws vhost::host::Error naming the address; returns the port
  void run();  // serves until stop(); bind() first
  void stop();
  // Serves until `flag` becomes true (a watcher thread turns it into stop()).
  void run_until(const std::atomic<bool>& flag);
  const Options& options() const { return o_; }

 private:
  Handler guard(Handler h, Auth auth);
  Options o_;
  std::unique_ptr<Core> core_;  // httplib's server: parser, router, writer
  std::unique_ptr<Connections> conns_;  // the connections, from accept to close
  int listen_fd_ = -1;
  std::atomic<int64_t> errors_{0};
};

}  // namespace vhost::host::http
