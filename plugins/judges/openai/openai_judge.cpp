// The `openai` judge: any OpenAI-compatible chat-completions endpoint (GPT-4 by default; vhost's
// own `serve`, vLLM, llama.cpp's server...). HTTPS through cpp-httplib (OpenSSL), retries with
// exponential backoff on 429, 5xx, timeouts, dropped connections and malformed replies (honouring
// Retry-After), token and cost accounting, and a JSONL cache so that an interrupted evaluation
// never pays twice for a judgment.
#include <vhost/fingerprint.hpp>
#include <vhost/plugin.hpp>

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>

namespace {

using vhost::json;

struct Url {
  std::string origin;  // scheme://host[:port]
  std::string path;    // "/v1" (no trailing slash)
};

Url parse_url(const std::string& u, const char* field) {
  auto scheme = u.find("://");
  if (scheme == std::string::npos || (u.compare(0, scheme, "http") != 0 && u.compare(0, scheme, "https") != 0))
    throw vhost::ConfigError(field, "'" + u + "' is not an http:// or https:// URL");
  auto slash = u.find('/', scheme + 3);
  Url r{slash == std::string::npos ? u : u.substr(0, slash), slash == std::string::npos ? "" : u.substr(slash)};
  while (!r.path.empty() && r.path.back() == '/') r.path.pop_back();
  return r;
}


class OpenAIJudge final : public vhost::Judge {
 public:
  static std::vector<vhost::Option> options() {
    using vhost::Option;
    return {
        Option::string("base_url", "https://api.openai.com/v1", "the endpoint (…/v1)"),
        Option::string("model", "gpt-4", "the model name sent to the endpoint"),
        Option::string("api_key", "", "Bearer key (empty: the OPENAI_API_KEY environment variable)"),
        Option::string("fallback_url", "",
                       "used instead of base_url when there is no key (e.g. vhost's own server: a local judge)"),
        Option::string("fallback_model", "", "the model name at fallback_url"),
        Option::path("ca_file", "",
                     "PEM file of the CA(s) that sign an https endpoint's certificate (empty: the system's, or "
                     "SSL_CERT_FILE)"),
        Option::number("timeout_s", 120, "seconds to wait for one reply").range(0.01, 3600),
        Option::integer("max_retries", 5, "retries after a failed attempt").range(0, 100),
        Option::number("backoff_s", 1.0, "first wait before a retry; doubles each time (at most 60 s)").range(0, 600),
        Option::path("cache", "", "JSONL of judgments already paid for (empty: no cache)"),
        Option::number("prompt_price_per_1k", -1,
                       "USD per 1000 prompt tokens; -1: OpenAI's list price for api.openai.com's gpt-4 / gpt-4o / "
                       "gpt-3.5-turbo, and no cost at all for any other endpoint or model").range(-1, 1000),
        Option::number("completion_price_per_1k", -1, "USD per 1000 completion tokens (-1: as above)").range(-1, 1000),
        Option::string("moderation_model", "omni-moderation-latest",
                       "the model name for POST …/moderations, when this judge moderates a server's prompts"),
    };
  }

  explicit OpenAIJudge(const vhost::Config& cfg)
      : timeout_(cfg.get<double>("timeout_s")),
        retries_(cfg.get<int64_t>("max_retries")),
        backoff_(cfg.get<double>("backoff_s")),
        prompt_price_(cfg.get<double>("prompt_price_per_1k")),
        completion_price_(cfg.get<double>("completion_price_per_1k")),
        moderation_model_(cfg.get<std::string>("moderation_model")) {
    key_ = cfg.get<std::string>("api_key");
    ca_file_ = cfg.get<std::string>("ca_file");
    if (!ca_file_.empty() && !std::filesystem::is_regular_file(ca_file_))
      throw vhost::ConfigError("ca_file", ca_file_ + " does not exist or is not a file");
    if (key_.empty())
      if (const char* k = std::getenv("OPENAI_API_KEY")) key_ = k;
    std::string base = cfg.get<std::string>("base_url"), fallback = cfg.get<std::string>("fallback_url");
    model_ = cfg.get<std::string>("model");
    if (key_.empty() && !fallback.empty()) {
      base = fallback;
      if (!cfg.get<std::string>("fallback_model").empty()) model_ = cfg.get<std::string>("fallback_model");
      using_fallback_ = true;
    }
    url_ = parse_url(base, using_fallback_ ? "fallback_url" : "base_url");
    // Costs only where the price is known: set by the user, or OpenAI's list price of the model
    // at api.openai.com. A local or third-party judge is not charged GPT-4's price.
    if (prompt_price_ < 0 || completion_price_ < 0) {
      static const std::map<std::string, std::pair<double, double>> list = {
          {"gpt-4", {0.03, 0.06}}, {"gpt-4-0613", {0.03, 0.06}}, {"gpt-4-turbo", {0.01, 0.03}},
          {"gpt-4o", {0.0025, 0.01}}, {"gpt-3.5-turbo", {0.0005, 0.0015}}};
      auto it = list.find(model_);
      if (url_.origin == "https://api.openai.com" && it != list.end()) {
        if (prompt_price_ < 0) prompt_price_ = it->second.first;
        if (completion_price_ < 0) completion_price_ = it->second.second;
      }
    }
    priced_ = prompt_price_ >= 0 && completion_price_ >= 0;
    if (key_.empty() && url_.origin.rfind("https://api.openai.com", 0) == 0)
      throw vhost::ConfigError("api_key", "api.openai.com needs a key: set OPENAI_API_KEY or api_key "
                                          "(or fallback_url for a local judge)");
    std::string cache = cfg.get<std::string>("cache");
    if (!cache.empty()) {
      cache_path_ = cache;
      std::ifstream in(cache);
      std::string line;
      std::size_t n = 0;
      while (std::getline(in, line)) {
        ++n;
        try {
          json j = json::parse(line);
          cache_[j.at("key").get<std::string>()] = j.at("reply");
        } catch (const std::exception&) {
          vhost::log(VHOST_LOG_WARN, cache + ":" + std::to_string(n) + ": not a cache entry (a torn write?); ignored");
        }
      }
      cache_out_.open(cache, std::ios::app);
      if (!cache_out_) throw vhost::ConfigError("cache", cache + ": cannot open for appending");
    }
  }

  json describe() const override {
    std::lock_guard<std::mutex> g(mu_);
    // "identity": what makes two judges' verdicts interchangeable; the eval stage keeps stored
    // judgments only while it is unchanged (a toy fallback's are not GPT-4's).
    return {{"identity", {{"endpoint", url_.origin + url_.path}, {"model", model_}}},
            {"endpoint", url_.origin + url_.path}, {"model", model_}, {"local_fallback", using_fallback_},
            {"key", key_.empty() ? "none" : "set"}, {"cache", cache_path_}, {"cached_judgments", cache_.size()},
            {"calls", calls_.load()}, {"cache_hits", hits_.load()}, {"retries", retry_count_.load()},
            {"failures", failures_.load()}, {"prompt_tokens", prompt_tokens_.load()},
            {"completion_tokens", completion_tokens_.load()}, {"cost_usd", cost()}};
  }

  // OpenAI's moderation endpoint (the one the Vicuna demo filtered its prompts with): flagged
  // when any input is, with the union of the flagged categories. Retried as complete is; never
  // cached (a moderation list changes under the same input).
  json moderate(const json& request) override {
    if (!request.is_object() || !request.contains("input") || !request["input"].is_array())
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "the moderation request needs an 'input' array of strings");
    for (const auto& t : request["input"])
      if (!t.is_string()) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "the moderation 'input' holds a non-string");
    if (request["input"].empty()) return {{"flagged", false}, {"categories", json::array()}, {"model", moderation_model_}};
    json body = {{"model", moderation_model_}, {"input", request["input"]}};
    return post("/moderations", body, [&](const std::string& text) {
      json j = json::parse(text);
      bool flagged = false;
      std::set<std::string> categories;
      for (const auto& r : j.at("results")) {
        flagged = flagged || r.at("flagged").get<bool>();
        if (r.contains("categories"))
          for (const auto& [name, on] : r["categories"].items())
            if (on.is_boolean() && on.get<bool>()) categories.insert(name);
      }
      return json{{"flagged", flagged}, {"categories", categories}, {"model", j.value("model", moderation_model_)}};
    });
  }

  json complete(const json& request) override {
    if (!request.is_object() || !request.contains("messages") || !request["messages"].is_array())
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "the judge request needs a 'messages' array");
    json body = {{"model", model_}, {"messages", request["messages"]},
                 {"temperature", request.value("temperature", 0.0)}, {"max_tokens", request.value("max_tokens", 1024)}};
    const std::string key = vhost::fingerprint(url_.origin + url_.path + "\n" + body.dump());
    {
      std::lock_guard<std::mutex> g(mu_);
      auto it = cache_.find(key);
      if (it != cache_.end()) {
        ++hits_;
        json r = it->second;
        r["cached"] = true;
        return r;
      }
    }
    json reply = post("/chat/completions", body, [&](const std::string& text) {
      json j = json::parse(text);
      const json& choice = j.at("choices").at(0);
      const json& content = choice.at("message").at("content");
      if (!content.is_string()) throw std::runtime_error("the message has no text content");
      int64_t pt = j.contains("usage") ? j["usage"].value("prompt_tokens", int64_t{0}) : 0;
      int64_t ct = j.contains("usage") ? j["usage"].value("completion_tokens", int64_t{0}) : 0;
      json r = {{"text", content.get<std::string>()},
                {"model", j.value("model", model_)},
                {"finish_reason", choice.value("finish_reason", json(nullptr))},
                {"usage", {{"prompt_tokens", pt}, {"completion_tokens", ct}}}};
      if (priced_)  // no key at all when the price is unknown: the caller must not add up a guess
        r["cost_usd"] = (static_cast<double>(pt) * prompt_price_ + static_cast<double>(ct) * completion_price_) / 1000.0;
      return r;
    });
    prompt_tokens_ += reply["usage"]["prompt_tokens"].get<int64_t>();
    completion_tokens_ += reply["usage"]["completion_tokens"].get<int64_t>();
    std::lock_guard<std::mutex> g(mu_);
    cache_[key] = reply;
    if (cache_out_.is_open()) cache_out_ << json{{"key", key}, {"request", body}, {"reply", reply}}.dump() << "\n" << std::flush;
    return reply;
  }

 private:
  // POST path (under the endpoint) with retries on 429, 5xx, timeouts, dropped connections and
  // replies `parse` rejects (it throws); what `parse` makes of a 200 reply. Another status is the
  // request's fault: an error naming it, not retried.
  json post(const std::string& path, const json& body, const std::function<json(const std::string&)>& parse) {
    std::string last_error;
    double wait = backoff_;
    ++calls_;
    for (int64_t attempt = 0; attempt <= retries_; ++attempt) {
      if (attempt > 0) {
        ++retry_count_;
        std::this_thread::sleep_for(std::chrono::duration<double>(std::min(wait, 60.0)));
        wait *= 2;
      }
      httplib::Client cli(url_.origin);
      auto secs = static_cast<time_t>(timeout_);
      auto usecs = static_cast<time_t>((timeout_ - static_cast<double>(secs)) * 1e6);
      cli.set_connection_timeout(secs, usecs);
      cli.set_read_timeout(secs, usecs);
      cli.set_write_timeout(secs, usecs);
      if (!ca_file_.empty()) cli.set_ca_cert_path(ca_file_);
      httplib::Headers headers;
      if (!key_.empty()) headers.emplace("Authorization", "Bearer " + key_);
      auto res = cli.Post(url_.path + path, headers, body.dump(), "application/json");
      if (!res) {
        if (res.error() == httplib::Error::SSLServerVerification) {  // no retry mends that
          ++failures_;
          throw vhost::Error(VHOST_ERR_IO, url_.origin + ": its TLS certificate could not be verified: not signed by a "
                                           "CA this machine trusts, or not for this host (give the CA's PEM file as the "
                                           "judge's ca_file, or in SSL_CERT_FILE)");
        }
        last_error = res.error() == httplib::Error::SSLConnection ? std::string("the TLS handshake failed")
                                                                  : "no reply (" + httplib::to_string(res.error()) + ")";
        continue;
      }
      if (res->status == 429 || res->status >= 500) {
        last_error = "HTTP " + std::to_string(res->status) + ": " + res->body.substr(0, 300);
        if (res->has_header("Retry-After")) wait = std::max(0.0, std::atof(res->get_header_value("Retry-After").c_str()));
        continue;
      }
      if (res->status != 200) {
        ++failures_;
        std::string msg = res->body.substr(0, 500);
        try {
          msg = json::parse(res->body).at("error").at("message").get<std::string>();
        } catch (...) {
        }
        throw vhost::Error(VHOST_ERR_RUNTIME, url_.origin + url_.path + path + ": HTTP " + std::to_string(res->status) + ": " + msg);
      }
      try {
        return parse(res->body);
      } catch (const std::exception& e) {
        last_error = std::string("malformed reply: ") + e.what() + ": " + res->body.substr(0, 200);
      }
    }
    ++failures_;
    throw vhost::Error(VHOST_ERR_IO, url_.origin + url_.path + path + ": no usable reply after " +
                                         std::to_string(retries_ + 1) + " attempts; last: " + last_error);
  }

  json cost() const {
    if (!priced_) return nullptr;
    return (static_cast<double>(prompt_tokens_) * prompt_price_ + static_cast<double>(completion_tokens_) * completion_price_) /
           1000.0;
  }
  bool priced_ = false;
  Url url_;
  std::string key_, model_, cache_path_, ca_file_;
  bool using_fallback_ = false;
  double timeout_;
  int64_t retries_;
  double backoff_, prompt_price_, completion_price_;
  std::string moderation_model_;
  mutable std::mutex mu_;
  std::map<std::string, json> cache_;
  std::ofstream cache_out_;
  std::atomic<int64_t> calls_{0}, hits_{0}, retry_count_{0}, failures_{0}, prompt_tokens_{0}, completion_tokens_{0};
};

}  // namespace

VHOST_PLUGIN(OpenAIJudge, "openai", "0.1.0", "any OpenAI-compatible chat endpoint as judge: retries, cache, cost")
