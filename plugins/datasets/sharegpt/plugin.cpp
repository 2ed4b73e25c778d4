// The `sharegpt` dataset plugin: ShareGPT JSON -> cleaned, split, tokenized conversations with
// the loss on the assistant's turns, as Vicuna's training data was made.
#include "prepare.hpp"

#include <vhost/conversation.hpp>
#include <vhost/plugin.hpp>

#include <filesystem>

namespace fs = std::filesystem;
using vhost::json;

namespace {

class ShareGptPlugin final : public vhost::Dataset {
 public:
  static std::vector<vhost::Option> options() {
    using vhost::Option;
    return {
        Option::path("path", std::nullopt, "ShareGPT JSON file: a list of {\"id\", \"conversations\": [{\"from\", \"value\"}]}"),
        Option::string("template", "", "conversation template (vicuna_v1.1, vicuna_v0, alpaca, llama-2-chat, chatml, "
                                       "or one under templates); empty: the model's"),
        Option::table("templates", "custom templates: name -> {base, style, roles, system_message, sep, sep2, ...}"),
        Option::integer("max_length", 2048, "tokens per training sequence; longer conversations are split at turns")
            .range(8, 1 << 24),
        Option::string("rules", "vhost",
                       "vhost (its own cleaning), or fastchat: FastChat's clean_sharegpt, optional_clean, "
                       "split_long_conversation and filter_wrong_format decisions (docs/datasets.md)")
            .one_of({"vhost", "fastchat"}),
        Option::string("html", "auto", "convert HTML to Markdown: auto (values that contain HTML), always, never")
            .one_of({"auto", "always", "never"}),
        Option::string("invalid_utf8", "repair", "repair (bad bytes become U+FFFD) or drop the conversation")
            .one_of({"repair", "drop"}),
        Option::boolean("dedupe", true, "drop conversations whose turns repeat an earlier one's exactly"),
        Option::string_list("languages", std::vector<std::string>{},
                            "keep only these languages (cld2 codes: en, zh, ...); empty: all"),
        Option::string_list("skip_languages", std::vector<std::string>{},
                            "drop these languages (cld2 codes: ko, ...), FastChat's --skip-lang"),
        Option::boolean("reduce_rep", false, "drop conversations with a digit repeated 9 times in a row (FastChat's --reduce-rep)"),
        Option::string_list("blocked_words", std::vector<std::string>{},
                            "drop conversations containing any (case-insensitive), e.g. [\"as an ai language model\"]"),
        Option::integer("max_turns", 0, "drop conversations with more turns (0: no limit)").range(0, 1 << 24),
        Option::integer("min_chars", 16, "drop conversations with fewer characters in all").range(0, 1 << 30),
        Option::number("eval_fraction", 0.0, "share of conversations held out in out/eval").range(0, 1),
        Option::integer("split_seed", 0, "which conversations go to eval").range(0, 9007199254740991.0),
        Option::boolean("write_json", true, "also write out/cleaned.json (the cleaned, split conversations)")};
  }

  explicit ShareGptPlugin(const vhost::Config& cfg) : cfg_(cfg) {
    path_ = cfg.get<std::string>("path");
    if (!fs::is_regular_file(path_)) throw vhost::ConfigError("path", path_.string() + " does not exist or is not a file");
    try {
      registry_.add(cfg.get<json>("templates"));
    } catch (const vhost::conv::TemplateError& e) {
      throw vhost::ConfigError("templates" + (e.field().empty() ? "" : "." + e.field()), e.what());
    }
    templ_ = cfg.get<std::string>("template");
    if (!templ_.empty()) {
      try {
        registry_.get(templ_);
      } catch (const vhost::conv::TemplateError& e) {
        throw vhost::ConfigError("template", e.what());
      }
    }
  }

  json describe() const override {
    return {{"path", path_.string()},
            {"bytes", fs::file_size(path_)},
            {"template", templ_.empty() ? "(the model's)" : templ_},
            {"max_length", cfg_.get<std::int64_t>("max_length")},
            {"templates", registry_.names()}};
  }

  json prepare(const json& request) override {
    using namespace vhost::sharegpt;
    if (!request.contains("out_dir") || !request["out_dir"].is_string())
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "prepare: 'out_dir' is required");
    if (!request.contains("model") || !request["model"].is_string() || request["model"].get<std::string>().empty())
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "prepare: 'model' (the instance that tokenizes) is required");
    vhost::ModelClient model(request["model"].get<std::string>());
    json info = model.tokenizer_info();
    TokenizerFns tok;
    tok.bos_id = info.value("bos_id", 1);
    tok.eos_id = info.value("eos_id", 2);
    tok.vocab_size = info.value("vocab_size", 0);
    tok.encode_spans = [&](const std::string& text, std::vector<std::int32_t>& ids, std::vector<std::uint32_t>& b,
                           std::vector<std::uint32_t>& e) {
      auto s = model.encode_spans(text);
      ids = std::move(s.ids);
      b = std::move(s.begin);
      e = std::move(s.end);
    };
    PrepareOptions o;
    o.input = path_;
    o.out_dir = request["out_dir"].get<std::string>();
    try {
      o.templ = templ_.empty() ? vhost::conv::model_template(model.capabilities()) : registry_.get(templ_);
    } catch (const vhost::conv::TemplateError& e) {
      throw vhost::ConfigError("template", std::string(e.what()) + " (the model's template; set one here)");
    }
    o.max_length = cfg_.get<std::int64_t>("max_length");
    o.clean.rules = cfg_.get<std::string>("rules");
    o.clean.skip_languages = cfg_.get<std::vector<std::string>>("skip_languages");
    o.clean.reduce_rep = cfg_.get<bool>("reduce_rep");
    o.clean.html = cfg_.get<std::string>("html");
    o.clean.invalid_utf8 = cfg_.get<std::string>("invalid_utf8");
    o.clean.dedupe = cfg_.get<bool>("dedupe");
    o.clean.languages = cfg_.get<std::vector<std::string>>("languages");
    o.clean.blocked_words = cfg_.get<std::vector<std::string>>("blocked_words");
    o.clean.max_turns = cfg_.get<std::int64_t>("max_turns");
    o.clean.min_chars = cfg_.get<std::int64_t>("min_chars");
    o.eval_fraction = cfg_.get<double>("eval_fraction");
    o.split_seed = cfg_.get<std::uint64_t>("split_seed");
    o.write_json = cfg_.get<bool>("write_json");
    o.progress = [](const std::string& line) { vhost::log(VHOST_LOG_INFO, line); };
    try {
      json stats = vhost::sharegpt::prepare(o, tok);
      stats["table"] = stats_table(stats);
      return stats;
    } catch (const SyntaxError& e) {
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, e.what());
    }
  }

 private:
  vhost::Config cfg_;
  fs::path path_;
  std::string templ_;
  vhost::conv::Registry registry_;
};

}  // namespace

VHOST_PLUGIN(ShareGptPlugin, "sharegpt", "0.1.0",
             "ShareGPT chat logs: HTML to Markdown, cleaning, splitting, assistant-only labels")
