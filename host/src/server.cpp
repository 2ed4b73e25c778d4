#include "server.hpp"

#include "web_chat.hpp"

#include <vhost/conversation.hpp>
#include <vhost/host/error.hpp>

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <sys/socket.h>

#include <cctype>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <thread>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>

namespace vhost::host {

json openai_error_body(const std::string& message, const std::string& type, const std::string& param, const std::string& code) {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

namespace {

// An OpenAI-shaped failure: the HTTP status and {"error": {message, type, param, code}}.
struct ApiError : std::runtime_error {
  int status;
  std::string type, param, code;
  ApiError(int s, std::string message, std::string t = "invalid_request_error", std::string p = "", std::string c = "")
      : std::runtime_error(std::move(message)), status(s), type(std::move(t)), param(std::move(p)), code(std::move(c)) {}
};

std::string random_id(const char* prefix) {
  static std::mutex m;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard<std::mutex> lock(m);
  char b[40];
  std::snprintf(b, sizeof b, "%s-%016llx", prefix, static_cast<unsigned long long>(rng()));
  return b;
}

int64_t now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Typed field access with OpenAI-style errors naming the parameter.
template <class T>
T param(const json& body, const char* name, T def) {
  if (!body.contains(name) || body[name].is_null()) return def;
  try {
    return body[name].get<T>();
  } catch (const json::exception&) {
    throw ApiError(400, std::string("'") + name + "' has the wrong type (" + body[name].type_name() + ")",
                   "invalid_request_error", name);
  }
}

}  // namespace

struct ApiServer::Impl {
  std::map<std::string, Instance*> models;
  std::map<std::string, json> info;  // tokenizer_info per model
  ServeOptions opt;
  httplib::Server server;
  std::mutex log_mu;
  std::ofstream log;
  std::atomic<int64_t> requests{0}, errors{0}, active{0}, completion_tokens{0}, prompt_tokens{0};
  std::atomic<int64_t> ttft_us_sum{0}, ttft_count{0};
  int listen_fd = -1;
  std::map<Instance*, std::unique_ptr<std::mutex>> serialise;  // models without concurrent generate

  void check_auth(const httplib::Request& req) const {
    if (opt.api_keys.empty()) return;
    std::string h = req.get_header_value("Authorization");
    const std::string bearer = "Bearer ";
    if (h.rfind(bearer, 0) == 0) {
      std::string key = h.substr(bearer.size());
      for (const auto& k : opt.api_keys)
        if (k == key) return;
    }
    throw ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)", "invalid_request_error", "",
                   "invalid_api_key");
  }

  Instance& model_of(const json& body, std::string& name) {
    if (!body.contains("model") || !body["model"].is_string())
      throw ApiError(400, "'model' is required (GET /v1/models lists them)", "invalid_request_error", "model");
    name = body["model"].get<std::string>();
    auto it = models.find(name);
    if (it == models.end())
      throw ApiError(404, "the model '" + name + "' does not exist (GET /v1/models lists them)", "invalid_request_error",
                     "model", "model_not_found");
    return *it->second;
  }

  // The sampling part of a generate request, from OpenAI's parameters.
  json sampling(const json& body, int64_t default_max_tokens) {
    json r;
    double temperature = param(body, "temperature", 1.0), top_p = param(body, "top_p", 1.0);
    int64_t max_tokens = param(body, "max_tokens", default_max_tokens);
    if (body.contains("max_completion_tokens")) max_tokens = param(body, "max_completion_tokens", max_tokens);
    if (!(temperature >= 0 && temperature <= 2))
      throw ApiError(400, "temperature must be in [0, 2]", "invalid_request_error", "temperature");
    if (!(top_p > 0 && top_p <= 1)) throw ApiError(400, "top_p must be in (0, 1]", "invalid_request_error", "top_p");
    if (max_tokens < 1) throw ApiError(400, "max_tokens must be at least 1", "invalid_request_error", "max_tokens");
    r["temperature"] = temperature;
    r["top_p"] = top_p;
    r["max_tokens"] = max_tokens;
    std::vector<std::string> stop;
    if (body.contains("stop") && !body["stop"].is_null()) {
      if (body["stop"].is_string())
        stop.push_back(body["stop"].get<std::string>());
      else
        stop = param(body, "stop", std::vector<std::string>{});
      if (stop.size() > 4) throw ApiError(400, "at most 4 stop sequences", "invalid_request_error", "stop");
      for (auto& s : stop)
        if (s.empty()) throw ApiError(400, "stop sequences must not be empty", "invalid_request_error", "stop");
    }
    r["stop"] = stop;
    if (body.contains("seed") && !body["seed"].is_null()) r["seed"] = param<int64_t>(body, "seed", 0);
    if (param(body, "ignore_eos", false)) r["ignore_eos"] = true;  // vLLM's extension: benchmarks, tests
    if (body.contains("presence_penalty") || body.contains("frequency_penalty")) {
      // Not modelled; accepted so that clients which always send them work.
    }
    return r;
  }

  int64_t n_of(const json& body) {
    int64_t n = param<int64_t>(body, "n", 1);
    if (n < 1 || n > 16) throw ApiError(400, "n must be in [1, 16]", "invalid_request_error", "n");
    return n;
  }

  void record(const json& entry) {
    if (!log.is_open()) return;
    std::lock_guard<std::mutex> lock(log_mu);
    log << entry.dump() << "\n" << std::flush;
  }

  // Runs a completion for `prompt` (already templated for chat) and answers, streamed or not.
  void complete(const httplib::Request& req, httplib::Response& res, bool chat) {
    check_auth(req);
    json body;
    try {
      body = json::parse(req.body);
    } catch (const json::parse_error& e) {
      throw ApiError(400, "the body is not valid JSON: byte " + std::to_string(e.byte) + ": " + e.what());
    }
    if (!body.is_object()) throw ApiError(400, "the body must be a JSON object");
    std::string name;
    Instance& model = model_of(body, name);
    const json& ti = info.at(name);
    json request = sampling(body, chat ? 512 : 16);
    const int64_t n = n_of(body);
    std::string prompt;
    conv::Conversation conversation;
    if (chat) {
      if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
        throw ApiError(400, "'messages' must be a non-empty array", "invalid_request_error", "messages");
      conv::Registry reg;
      const conv::Template* t = nullptr;
      try {
        t = &reg.get(ti.value("template", std::string("vicuna_v1.1")));
      } catch (const conv::TemplateError& e) {
        throw ApiError(500, std::string("the model's template: ") + e.what(), "server_error");
      }
      std::size_t i = 0;
      for (const auto& m : body["messages"]) {
        std::string where = "messages[" + std::to_string(i++) + "]";
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
          throw ApiError(400, where + ": needs a 'role'", "invalid_request_error", "messages");
        std::string role = m["role"].get<std::string>();
        std::string content;
        if (m.contains("content") && m["content"].is_string()) {
          content = m["content"].get<std::string>();
        } else if (m.contains("content") && m["content"].is_array()) {  // [{"type": "text", "text": ...}]
          for (const auto& part : m["content"])
            if (part.is_object() && part.value("type", "") == "text") content += part.value("text", "");
        } else {
          throw ApiError(400, where + ": 'content' must be a string", "invalid_request_error", "messages");
        }
        const bool user_turn = conversation.messages.size() % 2 == 0;
        if (role == "system" || role == "developer") {
          if (!conversation.messages.empty())
            throw ApiError(400, where + ": a system message must come first", "invalid_request_error", "messages");
          conversation.system = content;
        } else if (role == "user" || role == "assistant") {
          if ((role == "user") != user_turn)
            throw ApiError(400, where + ": user and assistant messages must alternate, starting with the user",
                           "invalid_request_error", "messages");
          conversation.messages.push_back(content);
        } else {
          throw ApiError(400, where + ": role '" + role + "' is not one of system, user, assistant",
                         "invalid_request_error", "messages");
        }
      }
      if (conversation.messages.size() % 2 == 0)
        throw ApiError(400, "the last message must be the user's", "invalid_request_error", "messages");
      prompt = conv::render(*t, conversation).text();
      auto stops = request["stop"].get<std::vector<std::string>>();
      for (const auto& s : t->stop_strings()) stops.push_back(s);
      request["stop"] = stops;
    } else {
      if (!body.contains("prompt")) throw ApiError(400, "'prompt' is required", "invalid_request_error", "prompt");
      if (body["prompt"].is_string())
        prompt = body["prompt"].get<std::string>();
      else if (body["prompt"].is_array() && body["prompt"].size() == 1 && body["prompt"][0].is_string())
        prompt = body["prompt"][0].get<std::string>();
      else
        throw ApiError(400, "'prompt' must be a string (one prompt per request)", "invalid_request_error", "prompt");
    }
    if (prompt.empty()) throw ApiError(400, "the prompt is empty", "invalid_request_error", chat ? "messages" : "prompt");
    moderate(chat ? conversation.messages : std::vector<std::string>{prompt});
    request["prompts"] = json::array();
    for (int64_t i = 0; i < n; ++i) request["prompts"].push_back(prompt);
    request["add_bos"] = true;

    const std::string id = random_id(chat ? "chatcmpl" : "cmpl");
    const int64_t created = now_s();
    const bool stream = param(body, "stream", false);
    ++requests;
    auto t0 = std::chrono::steady_clock::now();
    // By value: a streamed reply is logged by the content provider, after this function returned.
    auto finish_log = [this, record_base = json{{"time", created},
                                                {"id", id},
                                                {"model", name},
                                                {"endpoint", chat ? "chat" : "completions"},
                                                {"prompt", chat ? json(conversation.messages) : json(prompt)}}](
                          const json& reply) {
      completion_tokens += reply["usage"].value("completion_tokens", int64_t{0});
      prompt_tokens += reply["usage"].value("prompt_tokens", int64_t{0});
      json choices = json::array();
      for (const auto& c : reply["choices"]) choices.push_back(c.value("text", ""));
      json entry = record_base;
      entry["choices"] = choices;
      record(entry);
    };

    if (!stream) {
      json reply = generate(model, request, nullptr);
      json choices = json::array();
      for (const auto& c : reply["choices"]) {
        std::string text = c.value("text", "");
        if (chat) {
          auto b = text.find_first_not_of(' ');
          text = b == std::string::npos ? "" : text.substr(b);
          choices.push_back({{"index", c["index"]},
                             {"message", {{"role", "assistant"}, {"content", text}}},
                             {"finish_reason", c["finish_reason"] == "cancelled" ? json("stop") : c["finish_reason"]},
                             {"logprobs", nullptr}});
        } else {
          choices.push_back({{"index", c["index"]}, {"text", text}, {"logprobs", nullptr},
                             {"finish_reason", c["finish_reason"]}});
        }
      }
      int64_t pt = reply["usage"].value("prompt_tokens", int64_t{0}) / n, ct = reply["usage"].value("completion_tokens", int64_t{0});
      json out = {{"id", id},
                  {"object", chat ? "chat.completion" : "text_completion"},
                  {"created", created},
                  {"model", name},
                  {"choices", choices},
                  {"usage", {{"prompt_tokens", pt}, {"completion_tokens", ct}, {"total_tokens", pt + ct}}}};
      finish_log(reply);
      res.set_content(out.dump(), "application/json");
      return;
    }

    // Streaming: server-sent events, one chunk per piece of text, then [DONE].
    const bool include_usage = body.contains("stream_options") && body["stream_options"].is_object() &&
                               body["stream_options"].value("include_usage", false);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, &model, request, id, created, name, chat, n, include_usage, t0, finish_log](std::size_t,
                                                                                            httplib::DataSink& sink) {
          auto chunk = [&](int64_t index, const json& delta_or_text, const json& finish) {
            json c = {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
                      {"model", name}};
            if (chat)
              c["choices"] = json::array({{{"index", index}, {"delta", delta_or_text}, {"finish_reason", finish},
                                           {"logprobs", nullptr}}});
            else
              c["choices"] = json::array({{{"index", index}, {"text", delta_or_text}, {"finish_reason", finish},
                                           {"logprobs", nullptr}}});
            std::string s = "data: " + c.dump() + "\n\n";
            return sink.write(s.data(), s.size());
          };
          // The per-token chunk, the hot path: the fixed parts are rendered once and only the text
          // is escaped per token (same JSON as chunk() makes).
          const std::string head = "data: {\"choices\":[{\"" + std::string(chat ? "delta\":{\"content\":" : "finish_reason\":null,\"index\":");
          const std::string tail = "\"created\":" + std::to_string(created) + ",\"id\":" + json(id).dump() + ",\"model\":" +
                                   json(name).dump() + ",\"object\":\"" + (chat ? "chat.completion.chunk" : "text_completion") +
                                   "\"}\n\n";
          auto token_chunk = [&](std::string& s, int64_t index, const std::string& text) {
            s += head;
            if (chat)
              s += json(text).dump() + "},\"finish_reason\":null,\"index\":" + std::to_string(index) + ",\"logprobs\":null}],";
            else
              s += std::to_string(index) + ",\"logprobs\":null,\"text\":" + json(text).dump() + "}],";
            s += tail;
          };
          bool alive = true;
          if (chat)
            for (int64_t i = 0; i < n && alive; ++i) alive = chunk(i, {{"role", "assistant"}, {"content", ""}}, nullptr);
          std::vector<bool> started(static_cast<std::size_t>(n), false);
          bool first = true;
          json reply;
          // The model's callback only queues text (it runs on the model's scheduler thread, which
          // must not wait for sockets or build JSON); this thread formats and writes it. The first
          // token wakes it at once (time to first token). After a write the thread sleeps out
          // stream_flush_ms (a full stream_interval of tokens or the end cuts that short) and writes
          // what has come meanwhile; if nothing has, the next token wakes it and goes out at once.
          // One wake-up and one socket write for several SSE events: with 64 streams of a fast
          // engine, wake-ups and writes per token were the HTTP path's main cost (bench/serve).
          struct Queue {
            std::mutex m;
            std::condition_variable cv;
            std::deque<std::pair<uint32_t, std::string>> items;
            bool finished = false;
            std::atomic<bool> alive{true};
            std::exception_ptr error;
            bool woken = false;  // the first token has been signalled
            bool idle = false;   // the writer waits for a token, not for time
          } queue;
          const std::size_t interval = static_cast<std::size_t>(std::max(1, opt.stream_interval));
          const auto gap = std::chrono::milliseconds(std::max(0, opt.stream_flush_ms));
          auto due = std::chrono::steady_clock::now();
          std::thread producer([&] {
            try {
              reply = generate(model, request, [&](uint32_t seq, int32_t, const std::string& text) {
                if (!queue.alive) return false;  // a gone client cancels its sequence at once
                bool wake;
                {
                  std::lock_guard<std::mutex> g(queue.m);
                  queue.items.emplace_back(seq, text);
                  wake = !queue.woken || queue.items.size() >= interval || queue.idle;
                  queue.woken = true;
                }
                if (wake) queue.cv.notify_one();
                return true;
              });
            } catch (...) {
              queue.error = std::current_exception();
            }
            {
              std::lock_guard<std::mutex> g(queue.m);
              queue.finished = true;
            }
            queue.cv.notify_one();
          });
          while (true) {
            std::deque<std::pair<uint32_t, std::string>> batch;
            bool finished;
            {
              std::unique_lock<std::mutex> g(queue.m);
              if (first || gap.count() == 0) {
                queue.cv.wait(g, [&] { return queue.finished || queue.items.size() >= (first ? 1 : interval); });
              } else {
                queue.cv.wait_until(g, due, [&] { return queue.finished || queue.items.size() >= interval; });
                if (queue.items.empty() && !queue.finished) {
                  queue.idle = true;
                  queue.cv.wait(g, [&] { return queue.finished || !queue.items.empty(); });
                  queue.idle = false;
                }
              }
              batch.swap(queue.items);
              finished = queue.finished;
            }
            std::string events;  // the batch's SSE events, written at once
            for (auto& [seq, text] : batch) {
              if (!alive) break;  // the client is gone: nothing more to format
              if (first) {
                first = false;
                ttft_us_sum += std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
                ++ttft_count;
              }
              std::string t = text;
              if (chat && !started[seq]) {  // the template's space after "ASSISTANT:"
                auto b = t.find_first_not_of(' ');
                t = b == std::string::npos ? "" : t.substr(b);
                if (t.empty()) continue;
                started[seq] = true;
              }
              token_chunk(events, seq, t);
            }
            if (alive && !events.empty()) {
              alive = sink.write(events.data(), events.size());
              if (!alive) queue.alive = false;
              due = std::chrono::steady_clock::now() + gap;
            }
            if (finished) break;
          }
          producer.join();
          if (queue.error) {
            try {
              std::rethrow_exception(queue.error);
            } catch (const ApiError& e) {
              std::string s = "data: " + openai_error_body(e.what(), e.type, e.param, e.code).dump() + "\n\n";
              sink.write(s.data(), s.size());
            } catch (const std::exception& e) {
              std::string s = "data: " + openai_error_body(e.what(), "server_error", "", "").dump() + "\n\n";
              sink.write(s.data(), s.size());
            }
            sink.done();
            return true;
          }
          if (!alive) return false;
          for (const auto& c : reply["choices"]) {
            json fr = c["finish_reason"] == "cancelled" ? json("stop") : c["finish_reason"];
            chunk(c["index"].get<int64_t>(), chat ? json::object() : json(""), fr);
          }
          if (include_usage) {
            int64_t pt = reply["usage"].value("prompt_tokens", int64_t{0}) / n, ct = reply["usage"].value("completion_tokens", int64_t{0});
            json u = {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
                      {"model", name}, {"choices", json::array()},
                      {"usage", {{"prompt_tokens", pt}, {"completion_tokens", ct}, {"total_tokens", pt + ct}}}};
            std::string s = "data: " + u.dump() + "\n\n";
            sink.write(s.data(), s.size());
          }
          finish_log(reply);
          std::string done = "data: [DONE]\n\n";
          sink.write(done.data(), done.size());
          sink.done();
          return true;
        });
  }

  // The moderation hook: a word list from the configuration, then the moderators (judge
  // plugins, such as OpenAI's moderation endpoint, which the Vicuna demo's filter used). A
  // flagged request is refused before it reaches a model.
  void moderate(const std::vector<std::string>& texts) {
    words_filter(texts);
    for (Instance* m : opt.moderators) {
      json verdict;
      try {
        verdict = m->judge_moderate({{"input", texts}});
      } catch (const std::exception& e) {
        ++errors;
        spdlog::error("[serve] moderation by {} failed: {}", m->id(), e.what());
        throw ApiError(503, "the moderation filter is unavailable; the request was not run", "server_error", "",
                       "moderation_unavailable");
      }
      if (verdict["flagged"].get<bool>()) {
        ++errors;
        std::string cats;
        for (const auto& c : verdict["categories"]) cats += (cats.empty() ? "" : ", ") + (c.is_string() ? c.get<std::string>() : c.dump());
        record({{"time", now_s()}, {"moderated", true}, {"moderator", m->id()}, {"categories", verdict["categories"]}});
        throw ApiError(400, "the request was refused by the moderation filter" + (cats.empty() ? std::string() : " (" + cats + ")"),
                       "invalid_request_error", "messages", "content_filter");
      }
    }
  }
  void words_filter(const std::vector<std::string>& texts) {
    if (opt.blocked_words.empty()) return;
    auto lower = [](std::string x) {
      for (char& ch : x) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      return x;
    };
    for (const auto& t : texts) {
      std::string l = lower(t);
      for (const auto& w : opt.blocked_words)
        if (!w.empty() && l.find(lower(w)) != std::string::npos) {
          ++errors;
          record({{"time", now_s()}, {"moderated", true}, {"word", w}});
          throw ApiError(400, "the request was refused by the moderation filter", "invalid_request_error", "messages",
                         "content_filter");
        }
    }
  }

  // The model's generate, with plugin errors turned into API errors.
  json generate(Instance& model, const json& request, const Instance::TokenFn& on_token) {
    ++active;
    struct Done {
      std::atomic<int64_t>& a;
      ~Done() { --a; }
    } done{active};
    try {
      // A model that does not take concurrent calls (tokenizer_info "concurrent") gets one at a time.
      std::unique_lock<std::mutex> serial;
      auto it = serialise.find(&model);
      if (it != serialise.end()) serial = std::unique_lock<std::mutex>(*it->second);
      return model.model_generate(request, on_token);
    } catch (const ConfigError& e) {  // the plugin's INVALID_ARGUMENT: the request's fault
      throw ApiError(400, e.what());
    } catch (const PluginError& e) {
      std::string m = e.what();
      if (m.find(": busy: ") != std::string::npos) throw ApiError(429, m, "server_error", "", "overloaded");
      throw ApiError(500, m, "server_error");
    }
  }
};

ApiServer::ApiServer(std::map<std::string, Instance*> models, ServeOptions options) : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.models = std::move(models);
  I.opt = std::move(options);
  for (auto& [name, inst] : I.models) {
    I.info[name] = inst->model_tokenizer_info();
    if (!I.info[name].value("concurrent", false)) I.serialise[inst] = std::make_unique<std::mutex>();
  }
  if (!I.opt.log_file.empty()) {
    I.log.open(I.opt.log_file, std::ios::app);
    if (!I.log) throw Error("cannot open the conversation log " + I.opt.log_file);
  }
  auto& S = I.server;
  const int threads = std::max(1, I.opt.threads);
  S.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<std::size_t>(threads)); };
  S.set_payload_max_length(I.opt.max_body);
  S.set_tcp_nodelay(true);  // streamed tokens are small writes: do not let Nagle hold them
  // httplib listens with a backlog of 5: a burst of clients overflows it and their connects
  // wait a second for a SYN retry. Keep the listening socket to widen the backlog after bind.
  S.set_socket_options([this](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    impl_->listen_fd = sock;
  });
  S.set_read_timeout(30, 0);
  S.set_write_timeout(30, 0);
  auto guarded = [this](auto fn) {
    return [this, fn](const httplib::Request& req, httplib::Response& res) {
      try {
        fn(req, res);
      } catch (const ApiError& e) {
        ++impl_->errors;
        res.status = e.status;
        res.set_content(openai_error_body(e.what(), e.type, e.param, e.code).dump(), "application/json");
      } catch (const std::exception& e) {
        ++impl_->errors;
        res.status = 500;
        res.set_content(openai_error_body(e.what(), "server_error", "", "").dump(), "application/json");
      }
    };
  };
  S.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  S.Get("/v1/models", guarded([this](const httplib::Request& req, httplib::Response& res) {
          impl_->check_auth(req);
          json data = json::array();
          for (auto& [name, inst] : impl_->models)
            data.push_back({{"id", name}, {"object", "model"}, {"created", 0}, {"owned_by", "vhost"},
                            {"max_batch", impl_->info[name].value("max_batch", 1)},
                            {"context", impl_->info[name].value("context", 0)}});
          res.set_content(json{{"object", "list"}, {"data", data}}.dump(), "application/json");
        }));
  S.Post("/v1/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
           impl_->complete(req, res, false);
         }));
  S.Post("/v1/chat/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
           impl_->complete(req, res, true);
         }));
  S.Post("/v1/votes", guarded([this](const httplib::Request& req, httplib::Response& res) {
           impl_->check_auth(req);
           json body;
           try {
             body = json::parse(req.body);
           } catch (const json::parse_error& e) {
             throw ApiError(400, std::string("the body is not valid JSON: ") + e.what());
           }
           if (!body.is_object() || !body.contains("vote") || !body["vote"].is_string())
             throw ApiError(400, "'vote' is required (A, B, tie, bad)", "invalid_request_error", "vote");
           impl_->record({{"time", now_s()}, {"vote", body}});
           res.set_content(R"({"ok":true})", "application/json");
         }));
  S.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    std::ostringstream o;
    const Impl& I = *impl_;
    o << "# TYPE vhost_requests_total counter\nvhost_requests_total " << I.requests << "\n"
      << "# TYPE vhost_errors_total counter\nvhost_errors_total " << I.errors << "\n"
      << "# TYPE vhost_active_requests gauge\nvhost_active_requests " << I.active << "\n"
      << "# TYPE vhost_completion_tokens_total counter\nvhost_completion_tokens_total " << I.completion_tokens << "\n"
      << "# TYPE vhost_prompt_tokens_total counter\nvhost_prompt_tokens_total " << I.prompt_tokens << "\n"
      << "# TYPE vhost_time_to_first_token_seconds_mean gauge\nvhost_time_to_first_token_seconds_mean "
      << (I.ttft_count ? static_cast<double>(I.ttft_us_sum) / 1e6 / static_cast<double>(I.ttft_count) : 0.0) << "\n";
    // Per model, what its engine reports (continuous batching): running and queued sequences,
    // mean rows per decode step, generated tokens.
    o << "# TYPE vhost_model_running gauge\n# TYPE vhost_model_queued gauge\n# TYPE vhost_model_mean_batch gauge\n"
         "# TYPE vhost_model_generated_tokens_total counter\n";
    for (auto& [name, inst] : I.models) {
      json e;
      try {
        e = inst->describe().value("engine", json(nullptr));
      } catch (const std::exception&) {
        continue;
      }
      if (!e.is_object()) continue;
      std::string l = "{model=\"" + name + "\"} ";
      o << "vhost_model_running" << l << e.value("active", 0) << "\nvhost_model_queued" << l << e.value("queued", 0)
        << "\nvhost_model_mean_batch" << l << e.value("mean_batch", 0.0) << "\nvhost_model_generated_tokens_total" << l
        << e.value("tokens", 0) << "\n";
    }
    res.set_content(o.str(), "text/plain; version=0.0.4");
  });
  S.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content(web_chat_html(), "text/html"); });
  S.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string msg = res.status == 413 ? "the request body is too large"
                      : res.status == 404 ? "no such endpoint (see GET /v1/models, POST /v1/chat/completions, "
                                            "POST /v1/completions)"
                                          : "HTTP " + std::to_string(res.status);
    res.set_content(openai_error_body(msg, "invalid_request_error", "", "").dump(), "application/json");
  });
}

ApiServer::~ApiServer() { stop(); }

int ApiServer::bind() {
  auto& S = impl_->server;
  int port = impl_->opt.port;
  if (port == 0) {
    port = S.bind_to_any_port(impl_->opt.host);
    if (port < 0) throw Error("cannot listen on " + impl_->opt.host);
  } else if (!S.bind_to_port(impl_->opt.host, port)) {
    throw Error("cannot listen on " + impl_->opt.host + ":" + std::to_string(port) + " (in use?)");
  }
  impl_->opt.port = port;
  if (impl_->listen_fd >= 0) ::listen(impl_->listen_fd, 1024);
  return port;
}

void ApiServer::run() { impl_->server.listen_after_bind(); }
void ApiServer::stop() { impl_->server.stop(); }

json ApiServer::metrics() const {
  return {{"requests", impl_->requests.load()}, {"errors", impl_->errors.load()}, {"active", impl_->active.load()},
          {"completion_tokens", impl_->completion_tokens.load()}};
}

}  // namespace vhost::host
