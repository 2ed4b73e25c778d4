#include "stages/serve/server.hpp"

#include "stages/common/chat_prompt.hpp"
#include "stages/serve/http.hpp"
#include "stages/serve/web_chat.hpp"

#include <vhost/conversation.hpp>
#include <vhost/host/error.hpp>
#include <vhost/host/sampling.hpp>

#include <httplib.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include <sys/socket.h>

#include <cctype>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <thread>
#include <fstream>
#include <mutex>
#include <optional>
#include <limits>
#include <random>
#include <set>
#include <type_traits>
#include <sstream>

namespace vhost::host {

namespace {

using http::ApiError;
using http::prom_label;

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

// Typed field access with OpenAI-style errors naming the parameter. Strict, as OpenAI is:
// 2.5 is not an integer, "x" is not a boolean, 2^70 is not an int64 seed.
template <class T>
T param(const json& body, const char* name, T def) {
  if (!body.contains(name) || body[name].is_null()) return def;
  const json& v = body[name];
  auto wrong = [&](const std::string& want) {
    return ApiError(400, std::string("'") + name + "' must be " + want + " (got " + v.dump(-1, ' ', false, json::error_handler_t::replace) + ")",
                    "invalid_request_error", name);
  };
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) throw wrong("true or false");
    return v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    const std::string range = "an integer in [" + std::to_string(std::numeric_limits<T>::min()) + ", " +
                              std::to_string(std::numeric_limits<T>::max()) + "]";
    if (!v.is_number_integer()) throw wrong(range);
    if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<T>::max())
                               : v.get<int64_t>() < static_cast<int64_t>(std::numeric_limits<T>::min()))
      throw wrong(range);
    return v.get<T>();
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) throw wrong("a number");
    return v.get<T>();
  } else {
    try {
      return v.get<T>();
    } catch (const json::exception&) {
      throw ApiError(400, std::string("'") + name + "' has the wrong type (" + v.type_name() + ")", "invalid_request_error", name);
    }
  }
}

// Parameters of OpenAI's API that this server does not implement: a request that gives one a
// value other than its neutral default is refused with 400 naming it, never silently ignored.
// Fields outside both lists are refused as OpenAI refuses them ("unrecognized").
void refuse_unsupported(const json& body, bool chat) {
  static const std::set<std::string> common = {"model", "max_tokens", "temperature", "top_p", "n", "stop", "stream",
                                               "stream_options", "seed", "user", "presence_penalty", "frequency_penalty",
                                               // vLLM's / FastChat's extensions
                                               "top_k", "repetition_penalty", "ignore_eos"};
  static const std::set<std::string> chat_only = {"messages", "max_completion_tokens", "logprobs", "top_logprobs"};
  static const std::set<std::string> completions_only = {"prompt", "logprobs", "echo"};
  auto neutral = [](const std::string& k, const json& v) {
    if (v.is_null()) return true;
    if (k == "parallel_tool_calls") return v.is_boolean() && !v.get<bool>();
    if (k == "logit_bias" || k == "metadata") return v.is_object() && v.empty();
    if (k == "tools" || k == "functions") return v.is_array() && v.empty();
    if (k == "tool_choice" || k == "function_call") return v == "none";
    if (k == "response_format") return v.is_object() && v.size() == 1 && v.value("type", "") == "text";
    if (k == "best_of") return v.is_number_integer() && v.get<int64_t>() == 1;
    if (k == "suffix") return v.is_string() && v.get<std::string>().empty();
    if (k == "store") return v.is_boolean() && !v.get<bool>();
    return false;
  };
  static const std::set<std::string> known = {"logit_bias", "tools",
                                              "tool_choice", "functions", "function_call", "parallel_tool_calls",
                                              "response_format", "best_of", "suffix", "store", "metadata",
                                              "modalities", "audio", "prediction", "service_tier", "reasoning_effort",
                                              "web_search_options", "min_tokens", "min_p"};
  for (auto it = body.begin(); it != body.end(); ++it) {
    const std::string& k = it.key();
    if (common.count(k) || (chat ? chat_only : completions_only).count(k)) continue;
    if (neutral(k, it.value())) continue;
    // The other endpoint's own fields (prompt, echo / messages, top_logprobs...) are refused as such.
    const bool other_endpoint = (chat ? completions_only : chat_only).count(k) > 0;
    if (known.count(k) || other_endpoint)
      throw ApiError(400,
                     "'" + k + "' is not supported " +
                         (other_endpoint ? std::string("on this endpoint (") + (chat ? "/v1/chat/completions" : "/v1/completions") + ")"
                                         : std::string("by this server (docs/serving.md lists what is)")),
                     "invalid_request_error", k, "unsupported_parameter");
    throw ApiError(400, "unrecognized request argument supplied: " + k, "invalid_request_error", k, "unrecognized_parameter");
  }
}

// `prompt` of /v1/completions as OpenAI takes it: a string, a list of strings, a list of token
// ids, or a list of lists of ids. Ids are checked against the model's vocabulary.
void parse_prompts(const json& body, const json& tokenizer_info, std::vector<std::string>& texts,
                   std::vector<std::vector<int32_t>>& ids) {
  if (!body.contains("prompt") || body["prompt"].is_null())
    throw ApiError(400, "'prompt' is required", "invalid_request_error", "prompt");
  const json& p = body["prompt"];
  const int64_t vocab = tokenizer_info.value("vocab_size", int64_t{0});
  auto id_list = [&](const json& a, const std::string& where) {
    std::vector<int32_t> out;
    for (const auto& v : a) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || (vocab > 0 && v.get<int64_t>() >= vocab))
        throw ApiError(400, where + ": " + v.dump() + " is not a token id of this model (0.." + std::to_string(vocab - 1) + ")",
                       "invalid_request_error", "prompt");
      out.push_back(static_cast<int32_t>(v.get<int64_t>()));
    }
    if (out.empty()) throw ApiError(400, where + ": the prompt is empty", "invalid_request_error", "prompt");
    return out;
  };
  if (p.is_string()) {
    texts.push_back(p.get<std::string>());
  } else if (p.is_array() && !p.empty() && p[0].is_string()) {
    for (std::size_t i = 0; i < p.size(); ++i) {
      if (!p[i].is_string())
        throw ApiError(400, "prompt[" + std::to_string(i) + "]: a list of prompts must all be strings", "invalid_request_error", "prompt");
      texts.push_back(p[i].get<std::string>());
    }
  } else if (p.is_array() && !p.empty() && p[0].is_number()) {
    ids.push_back(id_list(p, "prompt"));
  } else if (p.is_array() && !p.empty() && p[0].is_array()) {
    for (std::size_t i = 0; i < p.size(); ++i) {
      if (!p[i].is_array())
        throw ApiError(400, "prompt[" + std::to_string(i) + "]: a list of token-id prompts must all be lists", "invalid_request_error", "prompt");
      ids.push_back(id_list(p[i], "prompt[" + std::to_string(i) + "]"));
    }
  } else {
    throw ApiError(400, "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists",
                   "invalid_request_error", "prompt");
  }
  for (std::size_t i = 0; i < texts.size(); ++i)
    if (texts[i].empty())
      throw ApiError(400, (texts.size() > 1 ? "prompt[" + std::to_string(i) + "]: " : std::string()) + "the prompt is empty",
                     "invalid_request_error", "prompt");
}

// A token's text as OpenAI writes it; "bytes:\xNN" (part of a character) is that byte.
std::string token_bytes(const std::string& t) {
  if (t.rfind("bytes:\\x", 0) == 0 && t.size() == 10) return std::string(1, static_cast<char>(std::stoi(t.substr(8), nullptr, 16)));
  return t;
}
std::size_t utf8_chars(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// The model's per-token scores ({"id", "text", "logprob", "top": [[id, text, logprob]...]}) as
// /v1/completions' logprobs: tokens, token_logprobs, top_logprobs ({text: logprob}), text_offset
// (characters into the returned text).
json completion_logprobs(const json& prompt_part, const json& generated, std::size_t offset = 0) {
  json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
  for (const json* part : {&prompt_part, &generated})
    for (const auto& t : *part) {
      const std::string text = t.value("text", "");
      tokens.push_back(text);
      lps.push_back(t["logprob"]);
      if (t["logprob"].is_null()) {
        tops.push_back(nullptr);
      } else {
        json top = json::object();
        for (const auto& a : t["top"]) {
          const std::string at = a[1].get<std::string>();
          if (!top.contains(at) || top[at].get<double>() < a[2].get<double>()) top[at] = a[2];
        }
        tops.push_back(top);
      }
      offsets.push_back(offset);
      offset += utf8_chars(token_bytes(text));
    }
  return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

// ... and as /v1/chat/completions' logprobs: {"content": [{token, logprob, bytes, top_logprobs}]}.
json chat_logprobs(const json& generated) {
  auto entry = [](const std::string& text, double lp) {
    json bytes = json::array();
    for (unsigned char c : token_bytes(text)) bytes.push_back(static_cast<int>(c));
    return json{{"token", text}, {"logprob", lp}, {"bytes", bytes}};
  };
  json content = json::array();
  for (const auto& t : generated) {
    json e = entry(t.value("text", ""), t["logprob"].is_null() ? 0.0 : t["logprob"].get<double>());
    e["top_logprobs"] = json::array();
    for (const auto& a : t["top"]) e["top_logprobs"].push_back(entry(a[1].get<std::string>(), a[2].get<double>()));
    content.push_back(e);
  }
  return {{"content", content}, {"refusal", nullptr}};
}

// A Prometheus histogram (cumulative buckets, +Inf, sum, count), as vLLM's.
struct Histogram {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // per bucket, not cumulative; the last is +Inf
  double sum = 0;
  uint64_t count = 0;
  explicit Histogram(std::vector<double> b = {}) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
  void observe(double v) {
    std::size_t i = static_cast<std::size_t>(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin());
    ++counts[i];
    sum += v;
    ++count;
  }
  void write(std::ostream& o, const std::string& name, const std::string& labels) const {
    uint64_t cum = 0;
    char b[64];
    for (std::size_t i = 0; i < bounds.size(); ++i) {
      cum += counts[i];
      std::snprintf(b, sizeof b, "%g", bounds[i]);
      o << name << "_bucket{" << labels << ",le=\"" << b << "\"} " << cum << "\n";
    }
    o << name << "_bucket{" << labels << ",le=\"+Inf\"} " << count << "\n"
      << name << "_sum{" << labels << "} " << sum << "\n" << name << "_count{" << labels << "} " << count << "\n";
  }
};

// Per served model, what vLLM's /metrics reports (vllm:* names, here vhost:*).
struct ModelMetrics {
  Histogram ttft{{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0}};
  Histogram tpot{{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0}};
  Histogram e2e{{0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0}};
  Histogram queue{{0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0}};
  uint64_t prompt_tokens = 0, generation_tokens = 0;
  std::map<std::string, uint64_t> finished;  // finish reason -> requests
};

}  // namespace

struct ApiServer::Impl {
  std::map<std::string, Instance*> models;
  std::map<std::string, json> info;  // tokenizer_info and capabilities per model
  // A LoRA adapter a model instance serves on its base (tokenizer_info "adapters"; its model id
  // is its name) -> the base's model id.
  std::map<std::string, std::string> parent_of;
  // A request for an adapter's model id runs on its base instance with {"adapter": NAME}.
  void with_adapter(json& request, const std::string& name) const {
    if (parent_of.count(name)) request["adapter"] = name;
  }
  ServeOptions opt;
  std::unique_ptr<http::Server> server;  // made by the constructor, after the options
  http::JsonlLog log;  // the conversation log (ServeOptions::log_file)
  std::atomic<int64_t> requests{0}, active{0}, completion_tokens{0}, prompt_tokens{0};
  std::atomic<int64_t> ttft_us_sum{0}, ttft_count{0};
  std::mutex metrics_mu;
  std::map<std::string, ModelMetrics> per_model;
  // A finished request of `model`: its latencies (seconds; ttft < 0: none came) and its reply.
  void observe(const std::string& model, double e2e, double ttft, const json& reply, int64_t n) {
    std::lock_guard<std::mutex> g(metrics_mu);
    ModelMetrics& m = per_model[model];
    m.e2e.observe(e2e);
    const int64_t ct = reply["usage"].value("completion_tokens", int64_t{0});
    m.prompt_tokens += static_cast<uint64_t>(reply["usage"].value("prompt_tokens", int64_t{0}));
    m.generation_tokens += static_cast<uint64_t>(ct);
    if (ttft >= 0) {
      m.ttft.observe(ttft);
      const int64_t per_choice = ct / std::max<int64_t>(1, n);
      if (per_choice > 1) m.tpot.observe((e2e - ttft) / static_cast<double>(per_choice - 1));
    }
    double queued = -1;
    for (const auto& c : reply["choices"]) {
      std::string fr = c.value("finish_reason", "");
      ++m.finished[fr == "cancelled" ? "abort" : fr];
      if (c.contains("queue_s") && c["queue_s"].is_number()) queued = std::max(queued, c["queue_s"].get<double>());
    }
    if (queued >= 0) m.queue.observe(queued);
  }
  std::map<Instance*, std::unique_ptr<std::mutex>> serialise;  // models without concurrent generate

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

  // vLLM's tokenizer endpoints (/tokenize, /detokenize, /tokenizer_info), which
  // lm-evaluation-harness's "remote" tokenizer uses: the model named in the body or the query,
  // or the only one served.
  Instance& tool_model(const json& body, const httplib::Request& req, std::string& name) {
    name = body.is_object() && body.contains("model") && body["model"].is_string() ? body["model"].get<std::string>()
                                                                                    : req.get_param_value("model");
    if (name.empty()) {
      if (models.size() != 1)
        throw ApiError(400, "'model' is required: this server serves several (GET /v1/models lists them)", "invalid_request_error", "model");
      name = models.begin()->first;
    }
    auto it = models.find(name);
    if (it == models.end())
      throw ApiError(404, "the model '" + name + "' does not exist (GET /v1/models lists them)", "invalid_request_error",
                     "model", "model_not_found");
    return *it->second;
  }
  // Text to ids as HF tokenizers do it: the model's BOS/EOS strings in the text are those tokens
  // (completions prompts, by contrast, are always plain text); add_special_tokens adds BOS.
  json tokenize(const httplib::Request& req) {
    json body = http::body_object(req);
    std::string name;
    Instance& m = tool_model(body, req, name);
    const json& ti = info.at(name);
    std::string text;
    if (body.contains("messages")) {
      // vLLM's chat form: the conversation rendered with the model's template, exactly the
      // prompt /v1/chat/completions would give the model (the assistant's turn opened).
      if (body.contains("prompt")) throw ApiError(400, "give 'prompt' or 'messages', not both", "invalid_request_error", "prompt");
      if (!param(body, "add_generation_prompt", true))
        throw ApiError(400, "add_generation_prompt: false is not supported: the prompt always opens the assistant's turn",
                       "invalid_request_error", "add_generation_prompt", "unsupported_parameter");
      try {
        text = ChatPrompter(ti).text(conv::conversation_from_messages(body["messages"]));
      } catch (const conv::TemplateError& e) {
        const std::string f = e.field();
        throw ApiError(400, (f == "messages" ? "" : f + ": ") + e.what(), "invalid_request_error", "messages");
      }
    } else {
      if (!body.contains("prompt") || !body["prompt"].is_string())
        throw ApiError(400, "'prompt' must be a string (or give 'messages')", "invalid_request_error", "prompt");
      text = body["prompt"].get<std::string>();
    }
    std::vector<std::pair<std::string, int32_t>> specials;
    for (const char* k : {"bos", "eos"})
      if (ti.contains(std::string(k) + "_token") && ti[std::string(k) + "_token"].is_string() && !ti[std::string(k) + "_token"].get<std::string>().empty())
        specials.emplace_back(ti[std::string(k) + "_token"].get<std::string>(), ti.value(std::string(k) + "_id", int32_t{-1}));
    std::vector<int32_t> ids;
    if (param(body, "add_special_tokens", true) && ti.value("bos_id", -1) >= 0) ids.push_back(ti["bos_id"].get<int32_t>());
    std::size_t at = 0;
    while (at <= text.size()) {
      std::size_t next = std::string::npos;
      const std::pair<std::string, int32_t>* hit = nullptr;
      for (const auto& sp : specials) {
        auto f = text.find(sp.first, at);
        if (f != std::string::npos && (f < next || (f == next && sp.first.size() > hit->first.size()))) next = f, hit = &sp;
      }
      std::string piece = text.substr(at, next == std::string::npos ? std::string::npos : next - at);
      if (!piece.empty())
        for (int32_t id : m.model_encode(piece, false, false)) ids.push_back(id);
      if (!hit) break;
      ids.push_back(hit->second);
      at = next + hit->first.size();
    }
    return {{"count", ids.size()}, {"max_model_len", ti.value("context", 0)}, {"tokens", ids}};
  }
  json detokenize(const httplib::Request& req) {
    json body = http::body_object(req);
    std::string name;
    Instance& m = tool_model(body, req, name);
    if (!body.contains("tokens") || !body["tokens"].is_array())
      throw ApiError(400, "'tokens' must be a list of token ids", "invalid_request_error", "tokens");
    json fake = {{"prompt", body["tokens"]}};
    std::vector<std::string> texts;
    std::vector<std::vector<int32_t>> ids;
    if (body["tokens"].empty()) return {{"prompt", ""}};
    try {
      parse_prompts(fake, info.at(name), texts, ids);
    } catch (const ApiError& e) {
      throw ApiError(400, e.what(), "invalid_request_error", "tokens");
    }
    if (ids.size() != 1) throw ApiError(400, "'tokens' must be a list of token ids", "invalid_request_error", "tokens");
    return {{"prompt", m.model_decode(ids[0])}};
  }
  // OpenAI's /v1/embeddings, as FastChat serves it: the model's mean-pooled, L2-normalised last
  // hidden state per input; encoding_format float or base64 (little-endian float32, what the
  // openai client asks for by default).
  json embeddings(const httplib::Request& req) {
    json body = http::body_object(req);
    std::string name;
    Instance& m = model_of(body, name);
    const json& ti = info.at(name);
    for (auto it = body.begin(); it != body.end(); ++it)
      if (it.key() != "model" && it.key() != "input" && it.key() != "encoding_format" && it.key() != "user")
        throw ApiError(400,
                       it.key() == "dimensions" ? "'dimensions' is not supported: the embedding has the model's hidden size"
                                                : "unrecognized request argument supplied: " + it.key(),
                       "invalid_request_error", it.key(), it.key() == "dimensions" ? "unsupported_parameter" : "unrecognized_parameter");
    if (!ti.value("embeddings", false))
      throw ApiError(400, "the model '" + name + "' does not compute embeddings", "invalid_request_error", "model", "unsupported_parameter");
    const std::string format = param(body, "encoding_format", std::string("float"));
    if (format != "float" && format != "base64")
      throw ApiError(400, "encoding_format must be float or base64", "invalid_request_error", "encoding_format");
    json as_prompt = {{"prompt", body.contains("input") ? body["input"] : json(nullptr)}};
    std::vector<std::string> texts;
    std::vector<std::vector<int32_t>> ids;
    try {
      parse_prompts(as_prompt, ti, texts, ids);
    } catch (const ApiError& e) {
      std::string msg = e.what();
      for (std::size_t p = msg.find("prompt"); p != std::string::npos; p = msg.find("prompt", p + 5)) msg.replace(p, 6, "input");
      throw ApiError(400, msg, "invalid_request_error", "input");
    }
    json request = {{"embed", true}};
    with_adapter(request, name);
    if (!ids.empty()) request["prompt_ids"] = ids;
    else request["prompts"] = texts, request["add_bos"] = true;
    json reply = generate(m, request, nullptr);
    ++requests;
    json data = json::array();
    for (auto& d : reply["data"]) {
      json e = {{"object", "embedding"}, {"index", d["index"]}};
      if (format == "base64") {
        std::vector<float> v = d["embedding"].get<std::vector<float>>();
        std::string b64(4 * ((v.size() * sizeof(float) + 2) / 3) + 1, '\0');
        int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()), reinterpret_cast<const unsigned char*>(v.data()),
                                static_cast<int>(v.size() * sizeof(float)));
        b64.resize(static_cast<std::size_t>(n));
        e["embedding"] = b64;
      } else {
        e["embedding"] = d["embedding"];
      }
      data.push_back(e);
    }
    const int64_t pt = reply["usage"].value("prompt_tokens", int64_t{0});
    prompt_tokens += pt;
    return {{"object", "list"}, {"data", data}, {"model", name}, {"usage", {{"prompt_tokens", pt}, {"total_tokens", pt}}}};
  }

  json tokenizer_info(const httplib::Request& req) {
    std::string name;
    tool_model(json(), req, name);
    const json& ti = info.at(name);
    return {{"model", name},
            {"tokenizer_class", "LlamaTokenizer"},
            {"bos_token", ti.value("bos_token", "")},
            {"eos_token", ti.value("eos_token", "")},
            {"pad_token", nullptr},
            {"vocab_size", ti.value("vocab_size", 0)},
            {"model_max_length", ti.value("context", 0)}};
  }

  // The sampling part of a generate request, from OpenAI's parameters.
  json sampling(const json& body, int64_t default_max_tokens, bool allow_zero_tokens = false) {
    json r;
    double temperature = param(body, "temperature", sampling::kTemperatureApi), top_p = param(body, "top_p", 1.0);
    int64_t max_tokens = param(body, "max_tokens", default_max_tokens);
    if (body.contains("max_completion_tokens")) max_tokens = param(body, "max_completion_tokens", max_tokens);
    for (const auto& [r, v] : {std::pair{&sampling::kTemperature, temperature}, std::pair{&sampling::kTopP, top_p}})
      if (!r->contains(v)) throw ApiError(400, r->must(), "invalid_request_error", r->key);
    if (max_tokens < (allow_zero_tokens ? 0 : 1))
      throw ApiError(400, allow_zero_tokens ? "max_tokens must be at least 0" : "max_tokens must be at least 1 (0 only with echo)",
                     "invalid_request_error", "max_tokens");
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
    for (const sampling::Range* p : {&sampling::kPresencePenalty, &sampling::kFrequencyPenalty}) {
      double v = param(body, p->key, 0.0);
      if (!p->contains(v)) throw ApiError(400, p->must(), "invalid_request_error", p->key);
      if (v != 0) r[p->key] = v;
    }
    if (body.contains("top_k") && !body["top_k"].is_null()) {
      int64_t k = param<int64_t>(body, "top_k", 0);
      if (!sampling::kTopK.contains(static_cast<double>(k)))
        throw ApiError(400, sampling::kTopK.must() + " (-1 and 0: no limit)", "invalid_request_error", "top_k");
      r["top_k"] = std::max<int64_t>(k, 0);
    }
    if (body.contains("repetition_penalty") && !body["repetition_penalty"].is_null()) {
      double v = param(body, "repetition_penalty", 1.0);
      if (!sampling::kRepetitionPenalty.contains(v))
        throw ApiError(400, sampling::kRepetitionPenalty.must(), "invalid_request_error", "repetition_penalty");
      r["repetition_penalty"] = v;
    }
    if (body.contains("stream_options") && !body["stream_options"].is_null()) {
      const json& so = body["stream_options"];
      if (!so.is_object())
        throw ApiError(400, "'stream_options' must be an object", "invalid_request_error", "stream_options");
      if (!param(body, "stream", false))
        throw ApiError(400, "'stream_options' is only allowed when 'stream' is true", "invalid_request_error", "stream_options");
      for (auto it = so.begin(); it != so.end(); ++it)
        if (it.key() != "include_usage")
          throw ApiError(400, "unrecognized stream option: " + it.key(), "invalid_request_error", "stream_options");
      param(so, "include_usage", false);  // a boolean, or 400 naming it
    }
    return r;
  }

  int64_t n_of(const json& body) {
    int64_t n = param<int64_t>(body, "n", 1);
    if (n < 1 || n > 16) throw ApiError(400, "n must be in [1, 16]", "invalid_request_error", "n");
    return n;
  }

  void record(const json& entry) { log.append(entry); }

  // ---- /v1/completions and /v1/chat/completions: parse -> render -> moderate -> generate -> respond

  // One completion request, parsed and rendered: what the model is asked and how to answer.
  struct Call {
    bool chat = false, echo = false, stream = false, stream_scores = false, include_usage = false;
    std::string name;  // the model id asked for
    Instance* model = nullptr;
    json request;          // the model's generate request
    int64_t n = 1;         // choices per prompt
    int64_t logprobs = -1;  // alternatives per token; -1: no scores
    std::vector<std::string> prompt_texts;         // one text per prompt (chat: the rendered conversation)...
    std::vector<std::vector<int32_t>> prompt_ids;  // ...or token ids, used as given
    conv::Conversation conversation;               // chat
    std::string id;
    int64_t created = 0;
    std::chrono::steady_clock::time_point t0;
  };

  void complete(const httplib::Request& req, httplib::Response& res, bool chat) {
    auto call = std::make_shared<Call>(parse_call(req, chat));
    moderate(chat ? call->conversation.messages : call->prompt_texts);
    call->id = random_id(chat ? "chatcmpl" : "cmpl");
    call->created = now_s();
    call->t0 = std::chrono::steady_clock::now();
    ++requests;
    if (call->stream) return respond_streamed(call, res);
    const json reply = generate(*call->model, call->request, while_client_waits());
    observe(call->name, seconds_since(call->t0), first_token_s(reply, call->t0), reply, call->n);
    finish_log(*call, reply);
    res.set_content(plain_reply(*call, reply).dump(), "application/json");
  }

  // A reply that is not streamed writes nothing until it is done, so a client that gave up is
  // seen only by its closed socket: looked at (at most every 20 ms) as the tokens come, and once
  // it is gone every sequence of the request is cancelled, freeing its batch row.
  static Instance::TokenFn while_client_waits() {
    struct Watch {
      std::function<bool()> gone = http::client_gone_probe();
      std::atomic<int64_t> last_ms{0};
      std::atomic<bool> seen{false};
    };
    auto w = std::make_shared<Watch>();
    return [w](uint32_t, int32_t, const std::string&) {
      if (w->seen) return false;
      const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
      int64_t prev = w->last_ms;
      if (now - prev < 20 || !w->last_ms.compare_exchange_strong(prev, now)) return true;
      if (w->gone()) w->seen = true;
      return !w->seen;
    };
  }

  static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  // Time to first token of a reply that was not streamed: what the model reports (a token callback
  // here would make it detokenise every token); -1 where it reports none.
  static double first_token_s(const json& reply, std::chrono::steady_clock::time_point t0) {
    double ttft = -1;
    for (const auto& c : reply["choices"])
      if (c.contains("first_token_s") && c["first_token_s"].is_number())
        ttft = ttft < 0 ? c["first_token_s"].get<double>() : std::min(ttft, c["first_token_s"].get<double>());
    return std::min(ttft, seconds_since(t0));
  }

  Call parse_call(const httplib::Request& req, bool chat) {
    const json body = http::body_object(req);
    refuse_unsupported(body, chat);
    Call c;
    c.chat = chat;
    c.model = &model_of(body, c.name);
    const json& ti = info.at(c.name);
    c.echo = !chat && param(body, "echo", false);
    c.request = sampling(body, chat ? 512 : 16, c.echo);
    with_adapter(c.request, c.name);
    c.n = n_of(body);
    c.stream = param(body, "stream", false);
    c.include_usage = c.stream && body.contains("stream_options") && body["stream_options"].is_object() &&
                      param(body["stream_options"], "include_usage", false);
    logprob_options(c, body, ti);
    if (chat) render_chat(c, body, ti);
    else completion_prompts(c, body, ti);
    const std::size_t prompts_n = c.prompt_ids.empty() ? c.prompt_texts.size() : c.prompt_ids.size();
    if (prompts_n * static_cast<std::size_t>(c.n) > 256)
      throw ApiError(400, "at most 256 choices per request (prompts times n)", "invalid_request_error", "prompt");
    if (!c.prompt_ids.empty()) {
      c.request["prompt_ids"] = json::array();
      for (const auto& ids : c.prompt_ids)
        for (int64_t i = 0; i < c.n; ++i) c.request["prompt_ids"].push_back(ids);
    } else {
      c.request["prompts"] = json::array();
      for (const auto& t : c.prompt_texts)
        for (int64_t i = 0; i < c.n; ++i) c.request["prompts"].push_back(t);
      c.request["add_bos"] = true;
    }
    return c;
  }

  // logprobs: completions take an integer (alternatives per token), chat a boolean plus
  // top_logprobs. Not streamed: computed by the model after generation (one scoring pass).
  // Streamed, from a model that reports "stream_logprobs" (ABI 1.5): each chunk carries its
  // tokens' scores, taken from the logits they were sampled from; otherwise (and with echo) each
  // choice's last chunk carries them all.
  void logprob_options(Call& c, const json& body, const json& ti) {
    if (c.chat) {
      const bool want = param(body, "logprobs", false);
      const int64_t top = param<int64_t>(body, "top_logprobs", 0);
      if (body.contains("top_logprobs") && !body["top_logprobs"].is_null() && !want)
        throw ApiError(400, "top_logprobs needs logprobs: true", "invalid_request_error", "top_logprobs");
      if (top < 0 || top > 20) throw ApiError(400, "top_logprobs must be in [0, 20]", "invalid_request_error", "top_logprobs");
      if (want) c.logprobs = top;
    } else if (body.contains("logprobs") && !body["logprobs"].is_null()) {
      c.logprobs = param<int64_t>(body, "logprobs", 0);
      if (c.logprobs < 0 || c.logprobs > 20) throw ApiError(400, "logprobs must be in [0, 20]", "invalid_request_error", "logprobs");
    }
    if ((c.logprobs >= 0 || c.echo) && !ti.value("logprobs", false))
      throw ApiError(400, "the model '" + c.name + "' does not report log-probabilities", "invalid_request_error",
                     c.logprobs >= 0 ? "logprobs" : "echo", "unsupported_parameter");
    if (c.logprobs >= 0) c.request["logprobs"] = c.logprobs;
    c.stream_scores = c.stream && c.logprobs >= 0 && !c.echo && ti.value("stream_logprobs", false);
    if (c.stream_scores) c.request["stream_logprobs"] = true;
    if (c.echo && (c.logprobs >= 0 || c.request["max_tokens"] == 0)) c.request["prompt_logprobs"] = std::max<int64_t>(c.logprobs, 0);
  }

  // Chat: the messages rendered with the model's template (its own, a custom one, or a built-in),
  // whose stop strings join the request's.
  void render_chat(Call& c, const json& body, const json& ti) {
    std::optional<ChatPrompter> prompter;
    try {
      prompter.emplace(ti);
    } catch (const conv::TemplateError& e) {
      throw ApiError(500, std::string("the model's template: ") + e.what(), "server_error");
    }
    try {
      c.conversation = conv::conversation_from_messages(body.value("messages", json()));
    } catch (const conv::TemplateError& e) {
      const std::string f = e.field();
      throw ApiError(400, (f == "messages" ? "" : f + ": ") + e.what(), "invalid_request_error", "messages");
    }
    const std::string prompt = prompter->text(c.conversation);
    if (prompt.empty()) throw ApiError(400, "the prompt is empty", "invalid_request_error", "messages");
    c.prompt_texts = {prompt};
    c.request["stop"] = prompter->stops(c.request["stop"].get<std::vector<std::string>>());
  }

  void completion_prompts(Call& c, const json& body, const json& ti) {
    parse_prompts(body, ti, c.prompt_texts, c.prompt_ids);
    if (!c.prompt_ids.empty())  // the texts, for echo, moderation and the log
      for (const auto& ids : c.prompt_ids) c.prompt_texts.push_back(c.model->model_decode(ids));
  }

  // The request and its reply in the conversation log, and the token counters.
  void finish_log(const Call& c, const json& reply) {
    completion_tokens += reply["usage"].value("completion_tokens", int64_t{0});
    prompt_tokens += reply["usage"].value("prompt_tokens", int64_t{0});
    json choices = json::array();
    for (const auto& ch : reply["choices"]) choices.push_back(ch.value("text", ""));
    record({{"time", c.created},
            {"id", c.id},
            {"model", c.name},
            {"endpoint", c.chat ? "chat" : "completions"},
            {"prompt", c.chat ? json(c.conversation.messages) : c.prompt_texts.size() == 1 ? json(c.prompt_texts[0]) : json(c.prompt_texts)},
            {"choices", choices}});
  }

  static json usage(const Call& c, const json& reply) {
    const int64_t pt = reply["usage"].value("prompt_tokens", int64_t{0}) / c.n, ct = reply["usage"].value("completion_tokens", int64_t{0});
    return {{"prompt_tokens", pt}, {"completion_tokens", ct}, {"total_tokens", pt + ct}};
  }

  // A choice's scores as its endpoint writes them (the whole reply's, not streamed).
  static json choice_logprobs(const Call& c, const json& choice) {
    if (c.logprobs < 0) return nullptr;
    if (c.chat) return chat_logprobs(choice.value("logprobs", json::array()));
    return completion_logprobs(c.echo ? choice.value("prompt_logprobs", json::array()) : json::array(),
                               choice.value("logprobs", json::array()));
  }

  static json plain_reply(const Call& c, const json& reply) {
    json choices = json::array();
    for (const auto& ch : reply["choices"]) {
      std::string text = ch.value("text", "");
      // "cancelled" is no OpenAI finish reason: a reply cut short by its client's leaving says stop
      const json finish = ch["finish_reason"] == "cancelled" ? json("stop") : ch["finish_reason"];
      if (c.chat) {
        auto b = text.find_first_not_of(' ');
        text = b == std::string::npos ? "" : text.substr(b);
        choices.push_back({{"index", ch["index"]},
                           {"message", {{"role", "assistant"}, {"content", text}}},
                           {"finish_reason", finish},
                           {"logprobs", choice_logprobs(c, ch)}});
      } else {
        const std::size_t k = ch["index"].get<std::size_t>() / static_cast<std::size_t>(c.n);
        if (c.echo) text = c.prompt_texts.at(k) + text;
        choices.push_back({{"index", ch["index"]}, {"text", text}, {"logprobs", choice_logprobs(c, ch)}, {"finish_reason", finish}});
      }
    }
    return {{"id", c.id},
            {"object", c.chat ? "chat.completion" : "text_completion"},
            {"created", c.created},
            {"model", c.name},
            {"choices", choices},
            {"usage", usage(c, reply)}};
  }

  // Streaming: server-sent events, one chunk per piece of text, then [DONE].
  void respond_streamed(const std::shared_ptr<Call>& call, httplib::Response& res) {
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider("text/event-stream",
                                     [this, call](std::size_t, httplib::DataSink& sink) { return stream(*call, sink); });
  }

  // The model's tokens between its scheduler thread and the thread writing the stream. The
  // model's callback only queues text (its thread must not wait for sockets or build JSON); the
  // writer formats and writes it. The first token wakes the writer at once (time to first token).
  // After a write the writer sleeps out stream_flush_ms (a full stream_interval of tokens or the
  // end cuts that short) and writes what has come meanwhile; if nothing has, the next token wakes
  // it and goes out at once. One wake-up and one socket write for several SSE events: with 64
  // streams of a fast engine, wake-ups and writes per token were the HTTP path's main cost.
  struct TokenQueue {
    using Item = std::tuple<uint32_t, int32_t, std::string>;  // (sequence, token, text)
    std::mutex m;
    std::condition_variable cv;
    std::deque<Item> items;
    bool finished = false;
    std::atomic<bool> alive{true};
    std::exception_ptr error;
    bool woken = false;  // the first token has been signalled
    bool idle = false;   // the writer waits for a token, not for time
    std::size_t interval = 1;
    std::chrono::milliseconds gap{0};

    bool push(uint32_t seq, int32_t token, const std::string& text) {
      if (!alive) return false;  // a gone client cancels its sequence at once
      bool wake;
      {
        std::lock_guard<std::mutex> g(m);
        items.emplace_back(seq, token, text);
        wake = !woken || items.size() >= interval || idle;
        woken = true;
      }
      if (wake) cv.notify_one();
      return true;
    }
    void finish(std::exception_ptr e) {
      {
        std::lock_guard<std::mutex> g(m);
        error = std::move(e);
        finished = true;
      }
      cv.notify_one();
    }
    // The next batch to write (empty only when finished); `first`: nothing has been written yet.
    std::deque<Item> take(bool first, std::chrono::steady_clock::time_point due, bool& done) {
      std::unique_lock<std::mutex> g(m);
      if (first || gap.count() == 0) {
        cv.wait(g, [&] { return finished || items.size() >= (first ? 1 : interval); });
      } else {
        cv.wait_until(g, due, [&] { return finished || items.size() >= interval; });
        if (items.empty() && !finished) {
          idle = true;
          cv.wait(g, [&] { return finished || !items.empty(); });
          idle = false;
        }
      }
      std::deque<Item> batch;
      batch.swap(items);
      done = finished;
      return batch;
    }
  };

  // A stream's SSE chunks: the per-token chunk (the hot path) renders its fixed parts once and
  // escapes only the text (the same JSON as chunk() makes); scores streamed with the text.
  struct Chunks {
    const Call& c;
    std::string head, tail;
    std::vector<bool> started;
    std::vector<json> scores;             // streamed, not yet sent
    std::vector<std::size_t> chars_sent;  // completions' text_offset
    explicit Chunks(const Call& call)
        : c(call),
          head("data: {\"choices\":[{\"" + std::string(call.chat ? "delta\":{\"content\":" : "finish_reason\":null,\"index\":")),
          tail("\"created\":" + std::to_string(call.created) + ",\"id\":" + json(call.id).dump() + ",\"model\":" + json(call.name).dump() +
               ",\"object\":\"" + (call.chat ? "chat.completion.chunk" : "text_completion") + "\"}\n\n"),
          started(static_cast<std::size_t>(call.n), false),
          scores(static_cast<std::size_t>(call.n), json::array()),
          chars_sent(static_cast<std::size_t>(call.n), 0) {}
    json chunk(int64_t index, const json& delta_or_text, const json& finish, const json& lp = nullptr) const {
      json j = {{"id", c.id}, {"object", c.chat ? "chat.completion.chunk" : "text_completion"}, {"created", c.created}, {"model", c.name}};
      j["choices"] = json::array({{{"index", index}, {c.chat ? "delta" : "text", delta_or_text}, {"finish_reason", finish}, {"logprobs", lp}}});
      return j;
    }
    static std::string event(const json& j) { return "data: " + j.dump() + "\n\n"; }
    void token(std::string& s, int64_t index, const std::string& text) const {
      s += head;
      if (c.chat) s += json(text).dump() + "},\"finish_reason\":null,\"index\":" + std::to_string(index) + ",\"logprobs\":null}],";
      else s += std::to_string(index) + ",\"logprobs\":null,\"text\":" + json(text).dump() + "}],";
      s += tail;
    }
    // A sequence's streamed scores not sent yet, as the endpoint's logprobs; null when none.
    json take_scores(std::size_t seq) {
      if (seq >= scores.size() || scores[seq].empty()) return nullptr;
      json lp = c.chat ? chat_logprobs(scores[seq]) : completion_logprobs(json::array(), scores[seq], chars_sent[seq]);
      for (const auto& e : scores[seq]) chars_sent[seq] += utf8_chars(token_bytes(e.value("text", "")));  // as text_offset counts
      scores[seq] = json::array();
      return lp;
    }
    // One queued item into `events`: a text chunk, or (streamed scores) kept for the next text.
    void add(std::string& events, uint32_t seq, int32_t tok, const std::string& text) {
      if (tok == VHOST_TOKEN_SCORES) {  // the scores of the tokens in the next text
        if (c.stream_scores)
          for (auto& e : json::parse(text)) scores[seq].push_back(std::move(e));
        return;
      }
      std::string t = text;
      if (c.chat && !started[seq]) {  // the template's space after "ASSISTANT:"
        auto b = t.find_first_not_of(' ');
        t = b == std::string::npos ? "" : t.substr(b);
        if (t.empty()) return;
        started[seq] = true;
      }
      if (json lp = take_scores(seq); !lp.is_null())  // this text's tokens, scored
        events += event(chunk(seq, c.chat ? json{{"content", t}} : json(t), nullptr, lp));
      else
        token(events, seq, t);
    }
  };

  // Writes one streamed reply; false when the client went away.
  bool stream(const Call& c, httplib::DataSink& sink) {
    Chunks chunks(c);
    auto write = [&sink](const std::string& s) { return sink.write(s.data(), s.size()); };
    bool alive = true;
    if (c.chat)
      for (int64_t i = 0; i < c.n && alive; ++i) alive = write(Chunks::event(chunks.chunk(i, {{"role", "assistant"}, {"content", ""}}, nullptr)));
    if (c.echo)
      for (std::size_t i = 0; i < c.prompt_texts.size() * static_cast<std::size_t>(c.n) && alive; ++i)
        alive = write(Chunks::event(chunks.chunk(static_cast<int64_t>(i), c.prompt_texts[i / static_cast<std::size_t>(c.n)], nullptr)));
    TokenQueue queue;
    queue.interval = static_cast<std::size_t>(std::max(1, opt.stream_interval));
    queue.gap = std::chrono::milliseconds(std::max(0, opt.stream_flush_ms));
    json reply;
    std::thread producer([&] {
      std::exception_ptr error;
      try {
        reply = generate(*c.model, c.request,
                         [&queue](uint32_t seq, int32_t token, const std::string& text) { return queue.push(seq, token, text); });
      } catch (...) {
        error = std::current_exception();
      }
      queue.finish(error);
    });
    double ttft_s = -1;
    auto due = std::chrono::steady_clock::now();
    for (bool done = false; !done;) {
      std::string events;  // the batch's SSE events, written at once
      for (auto& [seq, token, text] : queue.take(ttft_s < 0, due, done)) {
        if (!alive) break;  // the client is gone: nothing more to format
        if (ttft_s < 0 && token != VHOST_TOKEN_SCORES) {
          ttft_s = seconds_since(c.t0);
          ttft_us_sum += static_cast<int64_t>(ttft_s * 1e6);
          ++ttft_count;
        }
        chunks.add(events, seq, token, text);
      }
      if (alive && !events.empty()) {
        alive = write(events);
        if (!alive) queue.alive = false;
        due = std::chrono::steady_clock::now() + queue.gap;
      }
    }
    producer.join();
    if (queue.error) return stream_error(queue.error, sink);
    observe(c.name, seconds_since(c.t0), ttft_s, reply, c.n);
    if (!alive) return false;
    for (const auto& ch : reply["choices"]) {
      const json fr = ch["finish_reason"] == "cancelled" ? json("stop") : ch["finish_reason"];
      // Streamed scores: what came after the last text (a stop string's tokens, say).
      const json lp = c.stream_scores ? chunks.take_scores(static_cast<std::size_t>(ch["index"].get<int64_t>())) : choice_logprobs(c, ch);
      write(Chunks::event(chunks.chunk(ch["index"].get<int64_t>(), c.chat ? json::object() : json(""), fr, lp)));
    }
    if (c.include_usage) {
      json u = {{"id", c.id}, {"object", c.chat ? "chat.completion.chunk" : "text_completion"}, {"created", c.created},
                {"model", c.name}, {"choices", json::array()}, {"usage", usage(c, reply)}};
      write(Chunks::event(u));
    }
    finish_log(c, reply);
    write("data: [DONE]\n\n");
    sink.done();
    return true;
  }

  // A generation that failed mid-stream: its error as the stream's last event.
  bool stream_error(const std::exception_ptr& error, httplib::DataSink& sink) {
    std::string s;
    try {
      std::rethrow_exception(error);
    } catch (const ApiError& e) {
      s = "data: " + http::error_body(e.what(), e.type, e.param, e.code).dump() + "\n\n";
    } catch (const std::exception& e) {
      s = "data: " + http::error_body(e.what(), "server_error", "", "").dump() + "\n\n";
    }
    sink.write(s.data(), s.size());
    sink.done();
    return true;
  }

  void routes(http::Server& S);
  json model_list() const;
  std::string metrics_text();

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
        spdlog::error("[serve] moderation by {} failed: {}", m->id(), e.what());
        throw ApiError(503, "the moderation filter is unavailable; the request was not run", "server_error", "",
                       "moderation_unavailable");
      }
      if (verdict["flagged"].get<bool>()) {
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

// Serves `models` (and the LoRA adapters they serve, each a model id of its own, as vLLM's
// --lora-modules) as the ServeOptions say.
ApiServer::ApiServer(std::map<std::string, Instance*> models, ServeOptions options) : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.models = std::move(models);
  I.opt = std::move(options);
  std::map<std::string, Instance*> adapters;
  for (auto& [name, inst] : I.models) {
    // Read once: the tokenizer's facts (vocab, special tokens) and what the model offers
    // (context, batch, template, logprobs, adapters).
    I.info[name] = inst->model_tokenizer_info();
    I.info[name].update(inst->model_capabilities());
    if (!I.info[name].value("concurrent", false)) I.serialise[inst] = std::make_unique<std::mutex>();
    const json a = I.info[name].value("adapters", json::array());
    for (const auto& n : a) {
      if (!n.is_string()) continue;
      const std::string id = n.get<std::string>();
      if (I.models.count(id) || adapters.count(id))
        throw Error("model id '" + id + "': an adapter of '" + name + "' has the name of another served model; rename one");
      adapters[id] = inst;
      I.parent_of[id] = name;
    }
  }
  for (auto& [id, inst] : adapters) {
    I.models[id] = inst;
    I.info[id] = I.info[I.parent_of[id]];
  }
  if (!I.opt.log_file.empty()) {
    if (!I.log.open(I.opt.log_file)) throw Error("cannot open the conversation log " + I.opt.log_file);
  }
  http::Options ho = I.opt.listen;
  ho.what = "serve";
  ho.not_found = "no such endpoint (see GET /v1/models, POST /v1/chat/completions, POST /v1/completions)";
  I.server = std::make_unique<http::Server>(ho);
  I.routes(*I.server);
}

void ApiServer::Impl::routes(http::Server& S) {
  using Req = const httplib::Request&;
  using Res = httplib::Response&;
  const auto key = http::Auth::key;
  S.get("/health", [](Req, Res res) { res.set_content(R"({"status":"ok"})", "application/json"); });
  S.get("/v1/models", [this](Req, Res res) { http::reply_json(res, model_list()); }, key);
  S.post("/v1/completions", [this](Req req, Res res) { complete(req, res, false); }, key);
  S.post("/v1/chat/completions", [this](Req req, Res res) { complete(req, res, true); }, key);
  S.post("/v1/embeddings", [this](Req req, Res res) { http::reply_json(res, embeddings(req)); }, key);
  S.post("/tokenize", [this](Req req, Res res) { http::reply_json(res, tokenize(req)); }, key);
  S.post("/detokenize", [this](Req req, Res res) { http::reply_json(res, detokenize(req)); }, key);
  S.get("/tokenizer_info", [this](Req req, Res res) { http::reply_json(res, tokenizer_info(req)); }, key);
  S.post("/v1/votes", [this](Req req, Res res) {
    record(http::vote_entry(http::body_object(req)));
    res.set_content(R"({"ok":true})", "application/json");
  }, key);
  S.get("/metrics", [this](Req, Res res) { res.set_content(metrics_text(), "text/plain; version=0.0.4"); });
  S.get("/", [](Req, Res res) { res.set_content(web_chat_html(), "text/html"); });
}

json ApiServer::Impl::model_list() const {
  json data = json::array();
  for (auto& [name, inst] : models) {
    data.push_back({{"id", name}, {"object", "model"}, {"created", 0}, {"owned_by", "vhost"},
                    {"max_batch", info.at(name).value("max_batch", 1)}, {"context", info.at(name).value("context", 0)}});
    auto a = parent_of.find(name);
    if (a != parent_of.end()) data.back()["parent"] = a->second;  // as vLLM lists LoRA modules
  }
  return {{"object", "list"}, {"data", data}};
}

std::string ApiServer::Impl::metrics_text() {
    std::ostringstream o;
    const Impl& I = *this;
    o << "# TYPE vhost_requests_total counter\nvhost_requests_total " << I.requests << "\n"
      << "# TYPE vhost_errors_total counter\nvhost_errors_total " << server->errors() << "\n"
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
      std::string l = "{model=\"" + prom_label(name) + "\"} ";
      o << "vhost_model_running" << l << e.value("active", 0) << "\nvhost_model_queued" << l << e.value("queued", 0)
        << "\nvhost_model_mean_batch" << l << e.value("mean_batch", 0.0) << "\nvhost_model_generated_tokens_total" << l
        << e.value("tokens", 0) << "\n";
    }
    // vLLM's metrics, named as vLLM names them (vllm:* -> vhost:*), per model_name.
    {
      std::lock_guard<std::mutex> g(metrics_mu);
      auto type = [&](const char* n, const char* t, const char* help) {
        o << "# HELP " << n << " " << help << "\n# TYPE " << n << " " << t << "\n";
      };
      std::map<std::string, json> engines;
      for (auto& [name, inst] : I.models) {
        try {
          engines[name] = inst->describe().value("engine", json(nullptr));
        } catch (const std::exception&) {
        }
      }
      auto gauge = [&](const char* n, const char* key, const char* help) {
        type(n, "gauge", help);
        for (auto& [name, e] : engines)
          if (e.is_object() && e.contains(key)) o << n << "{model_name=\"" << prom_label(name) << "\"} " << e[key].get<double>() << "\n";
      };
      gauge("vhost:num_requests_running", "active", "Sequences in the model's batch now.");
      gauge("vhost:num_requests_waiting", "queued", "Sequences waiting for a batch row.");
      gauge("vhost:kv_cache_usage_perc", "kv_cache_usage", "Share of the KV cache in use (1 = full).");
      auto counter = [&](const char* n, const char* help, auto value) {
        type(n, "counter", help);
        for (auto& [name, m] : per_model) o << n << "{model_name=\"" << prom_label(name) << "\"} " << value(m) << "\n";
      };
      counter("vhost:prompt_tokens_total", "Prompt tokens processed.", [](const ModelMetrics& m) { return m.prompt_tokens; });
      counter("vhost:generation_tokens_total", "Tokens generated.", [](const ModelMetrics& m) { return m.generation_tokens; });
      type("vhost:request_success_total", "counter", "Finished sequences by finish reason.");
      for (auto& [name, m] : per_model)
        for (auto& [reason, k] : m.finished)
          o << "vhost:request_success_total{finished_reason=\"" << reason << "\",model_name=\"" << prom_label(name) << "\"} " << k << "\n";
      auto hist = [&](const char* n, const char* help, Histogram ModelMetrics::*h) {
        type(n, "histogram", help);
        for (auto& [name, m] : per_model) (m.*h).write(o, n, "model_name=\"" + prom_label(name) + "\"");
      };
      hist("vhost:time_to_first_token_seconds", "Time to the first token.", &ModelMetrics::ttft);
      hist("vhost:time_per_output_token_seconds", "Time per output token after the first.", &ModelMetrics::tpot);
      hist("vhost:e2e_request_latency_seconds", "Request latency, end to end.", &ModelMetrics::e2e);
      hist("vhost:request_queue_time_seconds", "Time a request waited for a batch row.", &ModelMetrics::queue);
    }
    return o.str();
}

std::vector<std::string> ApiServer::model_ids() const {
  std::vector<std::string> out;
  for (const auto& [name, inst] : impl_->models) out.push_back(name);
  return out;
}

ApiServer::~ApiServer() { stop(); }

int ApiServer::bind() { return impl_->opt.listen.port = impl_->server->bind(); }
void ApiServer::run() { impl_->server->run(); }
void ApiServer::stop() { impl_->server->stop(); }

json ApiServer::metrics() const {
  return {{"requests", impl_->requests.load()}, {"errors", impl_->server->errors()}, {"active", impl_->active.load()},
          {"completion_tokens", impl_->completion_tokens.load()}};
}

}  // namespace vhost::host
