// The serving stages' one HTTP layer (host/stages/serve/http.hpp): every failure, a route's or
// httplib's own, answers in OpenAI's error shape, and keyed routes refuse a request without a key.
#include "helpers.hpp"

#include "stages/serve/http.hpp"

#include <thread>

using namespace vhost::host;
using Catch::Matchers::Contains;

namespace {
struct Running {
  http::Server& s;
  std::thread t;
  explicit Running(http::Server& server) : s(server), t([this] { s.run(); }) {}
  ~Running() {
    s.stop();
    t.join();
  }
};
// {"error": {"message", "type", "param", "code"}}, or a failed check naming what came instead.
http::json api_error(const httplib::Result& r) {
  REQUIRE(r);
  const auto j = http::json::parse(r->body);
  REQUIRE(j.contains("error"));
  for (const char* k : {"message", "type", "param", "code"}) CHECK(j["error"].contains(k));
  return j["error"];
}
}  // namespace

TEST_CASE("the HTTP layer answers every failure in OpenAI's error shape and checks keys", "[http]") {
  http::Options o;
  o.what = "test";
  o.api_keys = {"k1"};
  o.limits.max_body = 64;
  o.not_found = "no such endpoint here";
  http::Server s(o);
  s.get("/open", [](const httplib::Request&, httplib::Response& res) { http::reply_json(res, {{"ok", true}}); });
  s.post("/echo", [](const httplib::Request& req, httplib::Response& res) { http::reply_json(res, http::body_object(req)); },
         http::Auth::key);
  s.get("/boom", [](const httplib::Request&, httplib::Response&) { throw std::runtime_error("it broke"); });
  s.get("/busy", [](const httplib::Request&, httplib::Response&) {
    throw http::ApiError(429, "full", "server_error", "", "overloaded");
  });
  const int port = s.bind();
  REQUIRE(port > 0);
  Running running(s);
  httplib::Client c("127.0.0.1", port);
  const httplib::Headers key = {{"Authorization", "Bearer k1"}};

  auto r = c.Get("/open");
  REQUIRE(r);
  CHECK(r->status == 200);

  r = c.Post("/echo", "{\"a\":1}", "application/json");  // no key
  REQUIRE(r);
  CHECK(r->status == 401);
  CHECK(api_error(r)["code"] == "invalid_api_key");
  r = c.Post("/echo", {{"Authorization", "Bearer k2"}}, "{\"a\":1}", "application/json");
  REQUIRE(r);
  CHECK(r->status == 401);

  r = c.Post("/echo", key, "{\"a\":1}", "application/json");
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(http::json::parse(r->body)["a"] == 1);

  r = c.Post("/echo", key, "{\"a\":", "application/json");  // malformed JSON: 400 naming the byte
  REQUIRE(r);
  CHECK(r->status == 400);
  CHECK_THAT(api_error(r)["message"].get<std::string>(), Contains("byte 6"));
  r = c.Post("/echo", key, "[1]", "application/json");
  REQUIRE(r);
  CHECK(r->status == 400);
  CHECK_THAT(api_error(r)["message"].get<std::string>(), Contains("JSON object"));

  r = c.Post("/echo", key, std::string(100, ' '), "application/json");  // over max_body
  REQUIRE(r);
  CHECK(r->status == 413);
  CHECK_THAT(api_error(r)["message"].get<std::string>(), Contains("too large"));

  r = c.Get("/boom");
  REQUIRE(r);
  CHECK(r->status == 500);
  CHECK(api_error(r)["type"] == "server_error");
  CHECK(api_error(r)["message"] == "it broke");
  r = c.Get("/busy");
  REQUIRE(r);
  CHECK(r->status == 429);
  CHECK(api_error(r)["code"] == "overloaded");
  r = c.Get("/nowhere");
  REQUIRE(r);
  CHECK(r->status == 404);
  CHECK(api_error(r)["message"] == "no such endpoint here");
  // Every failure a route threw counted: 2 x 401, 2 x 400, 500, 429.
  CHECK(s.errors() == 6);
}

TEST_CASE("the HTTP layer names the address it cannot listen on", "[http]") {
  http::Options o;
  o.what = "api";
  http::Server a(o);
  o.port = a.bind();
  http::Server b(o);
  CHECK_THROWS_WITH(b.bind(), Contains("api: cannot listen on 127.0.0.1:" + std::to_string(o.port)));
}
