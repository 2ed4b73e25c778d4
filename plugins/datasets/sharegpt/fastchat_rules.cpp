#include "fastchat_rules.hpp"

#include "html.hpp"

#include <cld2/public/compact_lang_det.h>
#include <cld2/public/encodings.h>

#include <algorithm>
#include <array>
#include <cctype>

namespace CLD2 {
const char* LanguageCode(Language lang);  // exported by libcld2, declared in an internal header
}

namespace vhost::sharegpt::fastchat {

namespace {

// One code point from UTF-8 at s[i] (the text is valid UTF-8: the reader repairs it); advances i.
char32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  const int n = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  char32_t c = n == 1 ? b : n == 2 ? b & 0x1F : n == 3 ? b & 0x0F : b & 0x07;
  for (int k = 1; k < n && i + k < s.size(); ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += static_cast<std::size_t>(n);
  return c;
}

bool python_isspace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string ascii_lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

}  // namespace

bool python_isprintable(char32_t c) {
  // The assigned code points CPython 3.11 (Unicode 14.0) calls unprintable, as ranges: made with
  // [c for c in range(0x110000) if not chr(c).isprintable() and unicodedata.category(chr(c)) != "Cn"].
  static constexpr std::array<std::pair<char32_t, char32_t>, 28> kNot = {{
      {0x0, 0x1F},         {0x7F, 0xA0},       {0xAD, 0xAD},       {0x600, 0x605},     {0x61C, 0x61C},
      {0x6DD, 0x6DD},      {0x70F, 0x70F},     {0x890, 0x891},     {0x8E2, 0x8E2},     {0x1680, 0x1680},
      {0x180E, 0x180E},    {0x2000, 0x200F},   {0x2028, 0x202F},   {0x205F, 0x2064},   {0x2066, 0x206F},
      {0x3000, 0x3000},    {0xD800, 0xF8FF},   {0xFEFF, 0xFEFF},   {0xFFF9, 0xFFFB},   {0x110BD, 0x110BD},
      {0x110CD, 0x110CD},  {0x13430, 0x13438}, {0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A}, {0xE0001, 0xE0001},
      {0xE0020, 0xE007F},  {0xF0000, 0xFFFFD}, {0x100000, 0x10FFFD},
  }};
  auto it = std::upper_bound(kNot.begin(), kNot.end(), c, [](char32_t v, const auto& r) { return v < r.first; });
  return it == kNot.begin() || c > std::prev(it)->second;
}

std::size_t code_points(std::string_view s) {
  std::size_t n = 0;
  for (char ch : s) n += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;
  return n;
}

std::string python_strip(std::string_view s) {
  std::size_t b = 0, e = s.size();
  while (b < e) {
    std::size_t i = b;
    if (!python_isspace(next_code_point(s, i))) break;
    b = i;
  }
  while (e > b) {
    std::size_t start = e - 1;
    while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    std::size_t i = start;
    if (!python_isspace(next_code_point(s, i))) break;
    e = start;
  }
  return std::string(s.substr(b, e - b));
}

std::optional<std::string> clean_record(const Record& rec, const CleanOptions& opt, Cleaned& out,
                                        std::map<std::string, std::uint64_t>& notes) {
  // A record FastChat stops on (a KeyError) is named here and dropped.
  const json* it = nullptr;
  if (auto reason = record_start(rec, opt, out, notes, it)) return reason;
  std::vector<std::pair<std::string, std::string>> turns;  // (from, value)
  for (const auto& t : *it) {
    if (!t.is_object()) return "malformed_record";
    auto f = t.find("from");
    auto v = t.find("value");
    if (f == t.end() || !f->is_string() || v == t.end() || !v->is_string()) return "malformed_record";
    turns.emplace_back(f->get<std::string>(), v->get<std::string>());
  }
  if (turns.size() <= 1) return "too_short";
  if (turns.front().first != "human") {  // one leading turn of another role goes (a shared middle)
    turns.erase(turns.begin());
    ++notes["leading_turn_dropped"];
  }
  if (turns.size() <= 1) return "too_short";
  if (turns.back().first == "human") {
    turns.pop_back();
    ++notes["trailing_human_dropped"];
  }
  if (turns.size() <= 1) return "too_short";
  std::vector<std::string> blocked = {"openai", "chatgpt"};
  for (const auto& w : opt.blocked_words)
    if (!w.empty()) blocked.push_back(ascii_lower(w));
  std::size_t chars = 0;
  for (std::size_t i = 0; i < turns.size(); ++i) {
    if (turns[i].first != (i % 2 == 0 ? "human" : "gpt")) return "not_alternating";
    const std::string low = ascii_lower(turns[i].second);
    for (const auto& w : blocked)
      if (low.find(w) != std::string::npos) return "blocked_words";
    const std::string& raw = turns[i].second;
    const bool convert = opt.html == "always" || (opt.html == "auto" && looks_like_html(raw));
    std::string text = python_strip(convert ? html_to_markdown(raw) : raw);
    if (convert) ++notes["html_converted"];
    std::size_t at = 0;
    if (text.empty() || !python_isprintable(next_code_point(text, at))) {  // an empty answer: the rest goes
      ++notes["cut_at_empty_turn"];
      break;
    }
    chars += code_points(text);
    out.messages.push_back(std::move(text));
  }
  if (out.messages.size() % 2 == 1) {
    out.messages.pop_back();
    ++notes["trailing_human_dropped"];
  }
  if (static_cast<std::int64_t>(chars) < opt.min_chars || out.messages.empty()) return "too_short";
  if (opt.max_turns > 0 && static_cast<std::int64_t>(out.messages.size()) > opt.max_turns) return "too_many_turns";
  return std::nullopt;
}

std::optional<std::string> Dedupe::check(const Record& rec, const Cleaned& c) {
  if (ids_.count(c.id)) return "id_duplicate";
  if (rec.value.contains("plugins") && !rec.value["plugins"].is_null()) return "plugins";
  std::string first_pair = c.messages[0] + '\0' + c.messages[1];
  if (first_pairs_.count(first_pair)) return "duplicate";
  ids_.insert(c.id);
  first_pairs_.insert(std::move(first_pair));
  return std::nullopt;
}

std::string polyglot_language(const std::string& text) {
  // pycld2.detect(text): not plain text (HTML tags skipped), no hints; polyglot asks again with
  // best effort when the answer is unreliable, and gives up ("unknown") when that is too.
  CLD2::CLDHints hints = {nullptr, nullptr, CLD2::UNKNOWN_ENCODING, CLD2::UNKNOWN_LANGUAGE};
  for (int flags : {0, CLD2::kCLDFlagBestEffort}) {
    CLD2::Language language3[3];
    int percent3[3], text_bytes = 0;
    double scores3[3];
    bool reliable = false;
    CLD2::ExtDetectLanguageSummary(text.data(), static_cast<int>(text.size()), false, &hints, flags, language3, percent3,
                                   scores3, nullptr, &text_bytes, &reliable);
    if (reliable) {
      std::string code = CLD2::LanguageCode(language3[0]);
      std::replace(code.begin(), code.end(), '-', '_');  // polyglot's code is ICU's Locale name: zh_Hant
      return code;
    }
  }
  return "unknown";
}

std::optional<std::string> optional_clean(const Cleaned& c, const CleanOptions& opt) {
  if (!opt.languages.empty() || !opt.skip_languages.empty()) {
    std::string all;
    for (std::size_t k = 0; k < c.messages.size(); ++k) all += (k ? "\n" : "") + c.messages[k];
    const std::string lang = polyglot_language(all);
    if (!opt.languages.empty() && std::find(opt.languages.begin(), opt.languages.end(), lang) == opt.languages.end())
      return "language";
    if (std::find(opt.skip_languages.begin(), opt.skip_languages.end(), lang) != opt.skip_languages.end()) return "language";
  }
  if (opt.reduce_rep)
    for (const auto& m : c.messages)
      if (repeated_digits(m)) return "repeated_digits";
  return std::nullopt;
}

bool repeated_digits(std::string_view text) {
  int run = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const bool digit = std::isdigit(static_cast<unsigned char>(text[i])) != 0;
    run = !digit ? 0 : run > 0 && text[i] == text[i - 1] ? run + 1 : 1;
    if (run >= 9) return true;
  }
  return false;
}

Split split(const std::vector<std::size_t>& tokens, std::int64_t max_length) {
  Split s;
  const std::size_t n = tokens.size() / 2 * 2;
  if (n < 2) return s;
  const auto limit = static_cast<std::size_t>(max_length);
  std::size_t start = 0, len = 0;
  auto emit = [&](std::size_t from, std::size_t to) {
    if (to > from) s.segments.emplace_back(from, to);
    else ++s.empty_segments;
  };
  for (std::size_t i = 0; i < n; i += 2) {
    const std::size_t pair = tokens[i] + tokens[i + 1];
    if (len + pair > limit) {
      emit(start, i);
      start = i;
      len = 0;
      if (i == n - 2) ++s.lost_pairs;  // FastChat never writes the last segment then
    } else if (i == n - 2) {
      emit(start, i + 2);
    }
    len += pair;
  }
  return s;
}

bool wrong_list_indices(std::string_view text) {
  static constexpr std::string_view kItem = "\n1. ";
  for (std::size_t p = text.find(kItem); p != std::string_view::npos; p = text.find(kItem, p + 1)) {
    const std::size_t q = text.find(kItem, p + kItem.size());
    if (q == std::string_view::npos) return false;
    if (text.substr(p + kItem.size(), q - p - kItem.size()).find('2') == std::string_view::npos) return true;
  }
  return false;
}

}  // namespace vhost::sharegpt::fastchat
