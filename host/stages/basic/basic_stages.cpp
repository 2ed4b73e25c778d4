// The small stages: info, probe, model-init, generate, prepare, chat.
#include "stages/stages.hpp"

#include "stages/common/chat_prompt.hpp"

#include <optional>

#include "stages/common/options.hpp"
#include "stages/common/text.hpp"

#include <vhost/host/host.hpp>
#include <vhost/host/sampling.hpp>

#include <vhost/conversation.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

namespace vhost::host {

namespace {

// `info`: creates instances and prints what they say about themselves (device, threads, files).
json run_info(StageContext& ctx) {
  auto wanted = ctx.config["instances"].get<std::vector<std::string>>();
  if (wanted.empty()) wanted = ctx.declared;
  json out = {{"host", {{"version", version()}, {"abi", abi_version()}}}, {"instances", json::object()}};
  ctx.out << "vhost " << version() << " (plugin ABI " << abi_version() << ")\n";
  for (const auto& ref : wanted) {
    Instance& inst = ctx.instance(ref);
    const auto& p = inst.plugin();
    json d = inst.describe();
    ctx.out << ref << ": " << p.kind << " plugin '" << p.name << "' " << p.desc->version << "\n"
            << "  file: " << p.file.string() << "\n";
    print_json_fields(ctx.out, d, "  ");
    out["instances"][ref] = {{"kind", p.kind},
                             {"plugin", p.name},
                             {"version", p.desc->version},
                             {"file", p.file.string()},
                             {"description", d}};
  }
  return out;
}

// `probe`: one request to a judge, to check its endpoint, key and reply format before a long
// evaluation spends money on it.
json run_probe(StageContext& ctx) {
  Instance& judge = ctx.instance(ctx.config["judge"].get<std::string>());
  json request = {{"messages", json::array({{{"role", "user"}, {"content", ctx.config["prompt"]}}})},
                  {"temperature", 0.0},
                  {"max_tokens", ctx.config["max_tokens"]}};
  auto t0 = std::chrono::steady_clock::now();
  json reply = judge.judge_complete(request);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ctx.out << ctx.config["judge"].get<std::string>() << " replied in " << human_seconds(seconds) << ":\n"
          << reply["text"].get<std::string>() << "\n";
  return {{"judge", ctx.config["judge"]}, {"seconds", seconds}, {"reply", reply}};
}

// `generate`: prompts through a model, streamed to the terminal; the texts go to the report
// and to work_dir/<stage>.jsonl.
json run_generate(StageContext& ctx) {
  const auto& c = ctx.config;
  Instance& model = ctx.instance(c["model"].get<std::string>());
  json request = {{"prompts", c["prompts"]},
                  {"max_tokens", c["max_tokens"]},
                  {"temperature", c["temperature"]},
                  {"top_p", c["top_p"]},
                  {"top_k", std::max<int64_t>(c["top_k"].get<int64_t>(), 0)},  // -1 and 0: all
                  {"repetition_penalty", c["repetition_penalty"]},
                  {"stop", c["stop"]},
                  {"add_bos", true}};
  if (c["seed"].get<int64_t>() >= 0) request["seed"] = c["seed"];
  const auto prompts = c["prompts"].get<std::vector<std::string>>();
  const bool stream = c["stream"].get<bool>() && prompts.size() == 1;
  if (stream) ctx.out << prompts[0] << std::flush;
  auto t0 = std::chrono::steady_clock::now();
  json reply = model.model_generate(request, [&](uint32_t, int32_t, const std::string& text) {
    if (stream) ctx.out << text << std::flush;
    return true;
  });
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (stream) ctx.out << "\n";
  std::ofstream jsonl(ctx.work_dir / (ctx.id + ".jsonl"));
  for (const auto& ch : reply["choices"]) {
    std::size_t i = ch["index"].get<std::size_t>();
    if (!stream) ctx.out << "[" << i << "] " << prompts.at(i) << ch["text"].get<std::string>() << "\n";
    jsonl << json{{"prompt", prompts.at(i)}, {"text", ch["text"]}, {"finish_reason", ch["finish_reason"]}}.dump()
          << "\n";
  }
  int64_t completion = reply["usage"]["completion_tokens"].get<int64_t>();
  ctx.out << completion << " tokens in " << human_seconds(seconds) << " (" << fmt("%.1f", seconds > 0 ? completion / seconds : 0.0)
          << " tokens/s)\n";
  reply["seconds"] = seconds;
  return reply;
}

// `model-init`: writes a random checkpoint of a preset shape, with a tokenizer trained on a text
// file, unless one is already there: the demo's "tiny model made on the spot".
json run_model_init(StageContext& ctx) {
  const auto& c = ctx.config;
  fs::path out = c["out"].get<std::string>();
  if (fs::exists(out / "config.json") && !c["overwrite"].get<bool>()) {
    ctx.out << out.string() << " exists; kept (overwrite = true to replace it)\n";
    return {{"out", out.string()}, {"created", false}};
  }
  json args = {{"preset", c["preset"]}, {"out", out.string()}, {"seed", c["seed"]}, {"dtype", c["dtype"]},
               {"context", c["context"]}};
  if (!c["tokenizer"].get<std::string>().empty()) args["tokenizer"] = c["tokenizer"];
  if (!c["tokenizer_text"].get<std::string>().empty()) args["tokenizer_text"] = c["tokenizer_text"];
  json r = ctx.model_tool(c["plugin"].get<std::string>(), "init", args);
  ctx.out << "wrote " << out.string() << ": " << r["parameters"] << " parameters (" << c["preset"].get<std::string>()
          << ", random weights)\n";
  r["created"] = true;
  return r;
}

// `prepare`: a dataset plugin turns its raw source into training tokens, tokenizing with a model.
json run_prepare(StageContext& ctx) {
  const auto& c = ctx.config;
  Instance& dataset = ctx.instance(c["dataset"].get<std::string>());
  const std::string model_ref = c["model"].get<std::string>();
  ctx.instance(model_ref);  // created before the dataset asks for it
  json stats = dataset.dataset_prepare({{"out_dir", c["out"]}, {"model", model_ref}});
  if (stats.contains("table") && stats["table"].is_string()) {
    ctx.out << c["dataset"].get<std::string>() << " -> " << c["out"].get<std::string>() << "\n"
            << stats["table"].get<std::string>();
    stats.erase("table");
  }
  return stats;
}

std::atomic<bool> g_chat_interrupted{false};

// `chat`: an interactive multi-turn chat in the terminal, like FastChat's CLI. Lines starting
// with "!!" are commands: !!exit, !!reset, !!regen. Each turn renders the whole conversation
// with the template (oldest pairs dropped when it would not fit the context) and streams the
// reply; the transcript goes to work_dir/<stage>.jsonl.
json run_chat(StageContext& ctx) {
  const auto& c = ctx.config;
  Instance& model = ctx.instance(c["model"].get<std::string>());
  std::optional<ChatPrompter> prompter;
  try {
    prompter.emplace(model.model_capabilities(), c["template"].get<std::string>());
  } catch (const conv::TemplateError& e) {
    throw ConfigError(ctx.id + ".template: " + e.what());
  }
  const conv::Template* t = &prompter->templ();
  conv::Conversation conv;
  if (!c["system"].get<std::string>().empty()) conv.system = c["system"].get<std::string>();
  const int64_t max_tokens = c["max_tokens"].get<int64_t>();
  std::ofstream log(ctx.work_dir / (ctx.id + ".jsonl"), std::ios::app);
  const bool prompt_marks = c["prompt"].get<bool>();
  int turns = 0;
  ctx.out << "chat with " << model.plugin().name << " (" << c["model"].get<std::string>() << "), template " << t->name
          << "; !!exit to quit, !!reset to start over, !!regen to answer again\n";
  std::string line;
  while (true) {
    if (prompt_marks) ctx.out << t->roles[0] << ": " << std::flush;
    if (!std::getline(ctx.in, line)) break;
    if (line == "!!exit") break;
    if (line == "!!reset") {
      conv.messages.clear();
      ctx.out << "(conversation cleared)\n";
      continue;
    }
    if (line == "!!regen") {
      if (conv.messages.size() < 2) {
        ctx.out << "(nothing to regenerate)\n";
        continue;
      }
      conv.messages.pop_back();
    } else {
      if (line.empty()) continue;
      conv.messages.push_back(line);
    }
    // Drop the oldest pairs until the prompt and the reply fit the context.
    const std::string prompt = prompter->fitted(conv, max_tokens, [&](const std::string& p) {
      return static_cast<int64_t>(model.model_encode(p, true, false).size());
    });
    json request = {{"prompts", json::array({prompt})},
                    {"max_tokens", max_tokens},
                    {"temperature", c["temperature"]},
                    {"top_p", c["top_p"]},
                    {"repetition_penalty", c["repetition_penalty"]},
                    {"stop", prompter->stops()},
                    {"add_bos", true}};
    if (c["seed"].get<int64_t>() >= 0) request["seed"] = c["seed"].get<int64_t>() + turns;
    if (prompt_marks) ctx.out << t->roles[1] << ": " << std::flush;
    // Ctrl-C during a reply stops the reply, as in FastChat's CLI; at the prompt it still quits.
    g_chat_interrupted = false;
    struct sigaction stop_reply {}, before {};
    stop_reply.sa_handler = [](int) { g_chat_interrupted = true; };
    sigemptyset(&stop_reply.sa_mask);
    sigaction(SIGINT, &stop_reply, &before);
    json reply;
    try {
      reply = model.model_generate(request, [&](uint32_t, int32_t, const std::string& text) {
        ctx.out << text << std::flush;
        return !g_chat_interrupted.load();
      });
    } catch (...) {
      sigaction(SIGINT, &before, nullptr);
      throw;
    }
    sigaction(SIGINT, &before, nullptr);
    if (g_chat_interrupted) ctx.out << " (stopped)";
    ctx.out << "\n" << std::flush;
    std::string text = reply["choices"][0]["text"].get<std::string>();
    auto b = text.find_first_not_of(" \n");
    auto e = text.find_last_not_of(" \n");
    text = b == std::string::npos ? "" : text.substr(b, e - b + 1);
    conv.messages.push_back(text);
    log << json{{"turn", turns}, {"user", conv.messages[conv.messages.size() - 2]}, {"assistant", text},
                {"finish_reason", reply["choices"][0]["finish_reason"]}}
               .dump()
        << "\n";
    ++turns;
  }
  return {{"turns", turns}, {"template", t->name}, {"transcript", (ctx.work_dir / (ctx.id + ".jsonl")).string()}};
}

}  // namespace

std::vector<StageType> basic_stage_types() {
  return {
      {"info",
       "Creates plugin instances and prints what each reports (device, threads, versions).",
       {option_spec("instances", "string_list", json::array(),
            "instance ids to describe, e.g. [\"backends.cpu\"]; empty: every instance")},
       {},
       {"instances"},
       run_info},
      {"probe",
       "Sends one prompt to a judge and prints the reply and latency.",
       {option_spec("judge", "string", "", "the judge instance (a name under [judges]); empty: the only one"),
        option_spec("prompt", "string", "Reply with the single word: ready", "the prompt"),
        option_spec("max_tokens", "integer", 16, "reply length limit", 1, 1 << 20)},
       {{"judge", VHOST_KIND_JUDGE}},
       {},
       run_probe},
      {"model-init",
       "Writes a randomly initialised checkpoint of a preset shape (kept if it already exists).",
       {option_spec("plugin", "string", "", "the model plugin (empty: the only one on the search path)"),
        option_spec("preset", "string", "tiny", "a preset shape the model plugin knows (it names them when refusing one)"),
        option_spec("out", "path", std::nullopt, "checkpoint folder"),
        option_spec("seed", "integer", 0, "initialisation seed", 0, 9007199254740991.0),
        option_spec("dtype", "string", "float32", "float32, bfloat16, float16"),
        option_spec("context", "integer", 0, "positions (0: the preset's)", 0, 1 << 20),
        option_spec("tokenizer", "path", "", "tokenizer.model to copy"),
        option_spec("tokenizer_text", "path", "", "text file to train a tokenizer on"),
        option_spec("overwrite", "boolean", false, "replace an existing checkpoint")},
       {},
       {},
       run_model_init},
      {"generate",
       "Continues prompts with a model and prints the text (streamed when there is one prompt).",
       {option_spec("model", "string", "", "the model instance (a name under [models]); empty: the only one"),
        option_spec("prompts", "string_list", std::nullopt, "the prompts"),
        option_spec("max_tokens", "integer", 64, "tokens to generate at most", 1, 1 << 20),
        sampling_option(sampling::kTemperature, "float", sampling::kTemperatureGenerate),
        sampling_option(sampling::kTopP, "float", 1.0),
        sampling_option(sampling::kTopK, "integer", 0),
        sampling_option(sampling::kRepetitionPenalty, "float", 1.0),
        option_spec("seed", "integer", -1, "sampling seed (-1: random)", -1, 9007199254740991.0),
        option_spec("stop", "string_list", json::array(), "stop before any of these"),
        option_spec("stream", "boolean", true, "print text as it is generated (one prompt)")},
       {{"model", VHOST_KIND_MODEL}},
       {},
       run_generate},
      {"prepare",
       "Cleans a dataset, splits it to the context length and tokenizes it with labels (train/, eval/, stats.json).",
       {option_spec("dataset", "string", "", "the dataset instance (a name under [datasets]); empty: the only one"),
        option_spec("model", "string", "", "the model whose tokenizer and template to use; empty: the only one"),
        option_spec("out", "path", std::nullopt, "output folder")},
       {{"dataset", VHOST_KIND_DATASET}, {"model", VHOST_KIND_MODEL}},
       {},
       run_prepare},
      {"chat",
       "An interactive multi-turn chat on the terminal with a model and its conversation template.",
       {option_spec("model", "string", "", "the model instance; empty: the only one"),
        option_spec("template", "string", "", "conversation template; empty: the model's"),
        option_spec("system", "string", "", "system message (empty: the template's)"),
        option_spec("max_tokens", "integer", 512, "reply length limit", 1, 1 << 20),
        sampling_option(sampling::kTemperature, "float", sampling::kTemperatureChat),
        sampling_option(sampling::kTopP, "float", 1.0),
        sampling_option(sampling::kRepetitionPenalty, "float", 1.0),
        option_spec("seed", "integer", -1, "sampling seed (-1: random)", -1, 9007199254740991.0),
        option_spec("prompt", "boolean", true, "print the role names before each turn")},
       {{"model", VHOST_KIND_MODEL}},
       {},
       run_chat}
  };
}

}  // namespace vhost::host
