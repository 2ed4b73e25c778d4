// `rules = "fastchat"`: the decisions of FastChat's own data scripts (fschat 0.2.36's
// fastchat/data: clean_sharegpt.py, optional_clean.py, split_long_conversation.py,
// filter_wrong_format.py), for users who want Vicuna's training data as FastChat made it. The
// text still goes through vhost's HTML converter (gumbo), not markdownify: what is kept and
// dropped follows FastChat, the Markdown is vhost's. docs/datasets.md lists where they can differ.
#pragma once

#include "prepare.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

namespace vhost::sharegpt::fastchat {

// Python's str.isprintable() for one code point (CPython 3.11, Unicode 14): false for the
// categories Cc, Cf, Cs, Co, Zl, Zp and Zs other than the space. Unassigned code points (Cn),
// which Python also calls unprintable, count as printable here.
bool python_isprintable(char32_t c);

// Python's len() of the text: its code points.
std::size_t code_points(std::string_view utf8);

// Python's str.strip(): leading and trailing characters for which str.isspace() is true.
std::string python_strip(std::string_view utf8);

// clean_sharegpt.py's clean_html_one_sample: fewer than two turns, or after dropping one
// leading non-human turn and a trailing human turn -> "too_short"; a role other than human/gpt
// in its place -> "not_alternating" (FastChat's "wrong format"); "openai", "chatgpt" or one of
// opt.blocked_words in a turn's raw value -> "blocked_words"; a turn empty or starting with an
// unprintable character after conversion ends the conversation there; an odd last turn goes;
// fewer than opt.min_chars code points (counted before that) -> "too_short".
std::optional<std::string> clean_record(const Record& rec, const CleanOptions& opt, Cleaned& out,
                                        std::map<std::string, std::uint64_t>& notes);

// clean_html_all's checks of the conversations clean_record kept, in the file's order: an id
// already kept -> "id_duplicate"; a "plugins" field -> "plugins"; a first question and answer
// already kept -> "duplicate".
class Dedupe {
 public:
  std::optional<std::string> check(const Record& rec, const Cleaned& c);

 private:
  std::unordered_set<std::string> ids_, first_pairs_;
};

// optional_clean.py's skip(): the language of the turns joined by "\n" as polyglot's Detector
// names it (cld2; its best effort when unsure; "unknown" when that is unsure too; ICU's spelling
// of the code, "zh_Hant"), kept only if
// in opt.languages (when set) and not in opt.skip_languages -> "language"; with opt.reduce_rep,
// a digit repeated 9 times in a row in a turn -> "repeated_digits" (ASCII digits only: Python's
// \d matches other scripts' digits too).
std::optional<std::string> optional_clean(const Cleaned& c, const CleanOptions& opt);
std::string polyglot_language(const std::string& text);

// --reduce-rep's test, re.search(r"(\d)\1{8}", text), for ASCII digits.
bool repeated_digits(std::string_view text);

// split_long_conversation.py's split_one_sample over the messages' token counts (each the
// tokenizer's ids for the message with BOS, plus 6): pairs are added to a segment while the
// total stays within max_length. As in FastChat, a pair that does not fit starts the next
// segment, a first pair that does not fit leaves an empty segment (FastChat drops it), and a
// last pair that does not fit is lost.
struct Split {
  std::vector<std::pair<std::size_t, std::size_t>> segments;  // [from, to) message indices, non-empty
  std::size_t empty_segments = 0, lost_pairs = 0;
};
Split split(const std::vector<std::size_t>& message_tokens, std::int64_t max_length);

// filter_wrong_format.py: "\n1. " and, later, with no "2" between them, "\n1. " again (a list
// whose numbering restarts: https://sharegpt.com/c/1pREAGO).
bool wrong_list_indices(std::string_view text);

}  // namespace vhost::sharegpt::fastchat
