// ShareGPT -> cleaned conversations -> segments of at most max_length tokens -> token ids with
// labels on the assistant's tokens only -> a prepared dataset (vhost/token_dataset.hpp).
#pragma once

#include "reader.hpp"

#include <vhost/conversation.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace vhost::sharegpt {

struct CleanOptions {
  std::string rules = "vhost";  // vhost | fastchat (FastChat's own scripts' decisions: fastchat_rules.hpp)
  std::string html = "auto";  // auto | always | never
  std::string invalid_utf8 = "repair";  // repair | drop
  bool dedupe = true;
  std::vector<std::string> languages;      // keep only these (cld2 codes, "en"); empty: all
  std::vector<std::string> skip_languages; // drop these (FastChat's --skip-lang)
  bool reduce_rep = false;                 // drop a conversation with a digit 9 times in a row (--reduce-rep)
  std::vector<std::string> blocked_words;  // case-insensitive; a conversation containing one is dropped
  std::int64_t max_turns = 0;              // 0: no limit; more turns than this: dropped
  std::int64_t min_chars = 16;             // fewer characters in all turns: dropped (FastChat: 16)
};

// One cleaned conversation: user/assistant messages alternating, starting with the user.
struct Cleaned {
  std::string id;
  std::optional<std::string> system;
  std::vector<std::string> messages;
};

// The reasons a conversation is dropped (docs/datasets.md: the order each rule set checks them in).
inline const std::vector<std::string>& drop_reasons() {
  static const std::vector<std::string> r = {"malformed_record", "invalid_utf8",   "unknown_role",  "not_alternating",
                                             "empty",            "too_short",      "too_many_turns", "blocked_words",
                                             "id_duplicate",     "plugins",        "duplicate",      "language",
                                             "repeated_digits"};
  return r;
}

// The start both rule sets share: the UTF-8 repair (dropped with invalid_utf8 = "drop"), the id
// (or "#INDEX"), and the record's "conversations" list; returns the drop reason when one is wrong.
std::optional<std::string> record_start(const Record& rec, const CleanOptions& opt, Cleaned& out,
                                        std::map<std::string, std::uint64_t>& notes, const nlohmann::json*& conversations);

// Cleans one record; returns the drop reason, or nothing with `out` filled. `notes` counts
// what was changed without dropping (html_converted, leading_gpt_dropped, ...).
std::optional<std::string> clean_record(const Record& rec, const CleanOptions& opt, Cleaned& out,
                                        std::map<std::string, std::uint64_t>& notes);

// The language cld2 sees in a text ("en", "zh", ...), or "un" when it cannot tell reliably.
std::string detect_language(const std::string& text);

// What tokenization needs from a model (through the SDK's ModelClient in the plugin, or a
// tokenizer directly in tests and benchmarks).
struct TokenizerFns {
  std::function<void(const std::string& text, std::vector<std::int32_t>& ids, std::vector<std::uint32_t>& begin,
                     std::vector<std::uint32_t>& end)>
      encode_spans;
  std::int32_t bos_id = 1, eos_id = 2, vocab_size = 0;
};

struct Tokenized {
  std::vector<std::int32_t> ids;
  std::vector<std::uint8_t> labels;    // 1: the loss is taken on this token
  std::vector<std::uint32_t> offsets;  // where each token starts in the rendering's text()
};

// Tokenizes a rendering: BOS first (when add_bos), the template's <s>/</s> as BOS/EOS ids, text
// between them through the tokenizer; a token is trained when it overlaps a trained segment.
Tokenized tokenize(const conv::Rendered& r, const TokenizerFns& tok, bool add_bos = true);

struct PrepareOptions {
  std::filesystem::path input, out_dir;
  CleanOptions clean;
  conv::Template templ;
  std::int64_t max_length = 2048;
  double eval_fraction = 0.0;
  std::uint64_t split_seed = 0;
  bool write_json = true;  // out_dir/cleaned.json: the conversations after cleaning and splitting
  std::function<void(const std::string&)> progress;  // optional log lines
};

// Runs everything and returns the statistics report (also written to out_dir/stats.json).
// Throws SyntaxError for malformed JSON (nothing is written then).
nlohmann::json prepare(const PrepareOptions& opt, const TokenizerFns& tok);

// The report as a terminal table.
std::string stats_table(const nlohmann::json& stats);

}  // namespace vhost::sharegpt
