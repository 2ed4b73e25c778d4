#include "prepare.hpp"

#include "fastchat_rules.hpp"
#include "html.hpp"

#include <vhost/token_dataset.hpp>

#include <cld2/public/compact_lang_det.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <fstream>
#include <sstream>
#include <unordered_set>

namespace CLD2 {
const char* LanguageCode(Language lang);  // exported by libcld2, declared in an internal header
}

namespace vhost::sharegpt {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isspace(static_cast<unsigned char>(c)); });
}

std::string trim(const std::string& s) {
  std::size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

}  // namespace

std::string detect_language(const std::string& text) {
  bool reliable = false;
  // Plain text; at most 16 KB is plenty to tell a language and keeps long chats cheap.
  int n = static_cast<int>(std::min<std::size_t>(text.size(), 16384));
  // Do not cut a UTF-8 character in half.
  while (n > 0 && n < static_cast<int>(text.size()) && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
  CLD2::Language lang = CLD2::DetectLanguage(text.data(), n, true, &reliable);
  if (!reliable || lang == CLD2::UNKNOWN_LANGUAGE) return "un";
  return CLD2::LanguageCode(lang);
}

std::optional<std::string> record_start(const Record& rec, const CleanOptions& opt, Cleaned& out,
                                        std::map<std::string, std::uint64_t>& notes, const json*& conversations) {
  out = Cleaned{};
  conversations = nullptr;
  const json& r = rec.value;
  if (rec.utf8_repaired) {
    if (opt.invalid_utf8 == "drop") return "invalid_utf8";
    ++notes["utf8_repaired"];
  }
  if (!r.is_object()) return "malformed_record";
  if (r.contains("id")) {
    if (r["id"].is_string()) out.id = r["id"].get<std::string>();
    else if (r["id"].is_number()) out.id = r["id"].dump();
  }
  if (out.id.empty()) out.id = "#" + std::to_string(rec.index);
  auto it = r.find("conversations");
  if (it == r.end() || !it->is_array()) return "malformed_record";
  conversations = &*it;
  return std::nullopt;
}

std::optional<std::string> clean_record(const Record& rec, const CleanOptions& opt, Cleaned& out,
                                        std::map<std::string, std::uint64_t>& notes) {
  const json* it = nullptr;
  if (auto reason = record_start(rec, opt, out, notes, it)) return reason;
  struct Turn {
    conv::Speaker who;
    std::string text;
  };
  std::vector<Turn> turns;
  for (const auto& t : *it) {
    if (!t.is_object()) return "malformed_record";
    auto f = t.find("from");
    auto v = t.find("value");
    if (f == t.end() || !f->is_string() || v == t.end() || !v->is_string()) return "malformed_record";
    auto who = conv::speaker_of(f->get<std::string>());
    if (who == conv::Speaker::Unknown) return "unknown_role";
    turns.push_back({who, v->get<std::string>()});
  }
  // A leading system turn is the conversation's system message.
  std::size_t i = 0;
  if (!turns.empty() && turns[0].who == conv::Speaker::System) {
    out.system = trim(turns[0].text);
    i = 1;
  }
  // Leading assistant turns (a conversation shared from its middle) go.
  while (i < turns.size() && turns[i].who == conv::Speaker::Assistant) {
    ++notes["leading_gpt_dropped"];
    ++i;
  }
  std::size_t total_chars = 0;
  for (std::size_t k = i; k < turns.size(); ++k) {
    const bool want_user = (k - i) % 2 == 0;
    const auto who = turns[k].who;
    if (who == conv::Speaker::System || (who == conv::Speaker::User) != want_user) return "not_alternating";
    std::string text = turns[k].text;
    const bool convert = opt.html == "always" || (opt.html == "auto" && looks_like_html(text));
    if (convert) {
      text = html_to_markdown(text);
      ++notes["html_converted"];
    } else {
      text = trim(text);
    }
    // An empty turn ends the usable part (FastChat keeps what came before it).
    if (text.empty() || blank(text)) {
      ++notes["cut_at_empty_turn"];
      break;
    }
    total_chars += text.size();
    out.messages.push_back(std::move(text));
  }
  if (out.messages.size() % 2 == 1) {
    out.messages.pop_back();  // a question without an answer
    ++notes["trailing_human_dropped"];
  }
  if (out.messages.empty()) {
    // Nothing usable: say why.
    bool any_empty = false;
    for (std::size_t k = i; k < turns.size(); ++k) any_empty |= blank(turns[k].text);
    return any_empty ? "empty" : "too_short";
  }
  if (static_cast<std::int64_t>(total_chars) < opt.min_chars) return "too_short";
  if (opt.max_turns > 0 && static_cast<std::int64_t>(out.messages.size()) > opt.max_turns) return "too_many_turns";
  if (!opt.blocked_words.empty()) {
    for (const auto& m : out.messages) {
      std::string l = lower(m);
      for (const auto& w : opt.blocked_words)
        if (!w.empty() && l.find(lower(w)) != std::string::npos) return "blocked_words";
    }
  }
  if (!opt.languages.empty() || !opt.skip_languages.empty()) {
    std::string all;
    for (const auto& m : out.messages) {
      all += m;
      all += "\n";
      if (all.size() > 16384) break;
    }
    std::string lang = detect_language(all);
    auto listed = [&](const std::vector<std::string>& l) { return std::find(l.begin(), l.end(), lang) != l.end(); };
    if (lang == "un") ++notes["language_unknown_kept"];
    else if ((!opt.languages.empty() && !listed(opt.languages)) || listed(opt.skip_languages)) return "language";
  }
  if (opt.reduce_rep)
    for (const auto& m : out.messages)
      if (fastchat::repeated_digits(m)) return "repeated_digits";
  return std::nullopt;
}

Tokenized tokenize(const conv::Rendered& r, const TokenizerFns& tok, bool add_bos) {
  Tokenized out;
  if (add_bos) {
    out.ids.push_back(tok.bos_id);
    out.labels.push_back(0);
    out.offsets.push_back(0);
  }
  std::size_t chunk_base = 0;  // where the current chunk starts in text()
  std::string chunk;
  struct Trained {
    std::size_t b, e;
  };
  std::vector<Trained> trained;
  std::vector<std::int32_t> ids;
  std::vector<std::uint32_t> begin, end;
  auto flush = [&] {
    if (chunk.empty()) return;
    tok.encode_spans(chunk, ids, begin, end);
    std::size_t t = 0;
    for (std::size_t k = 0; k < ids.size(); ++k) {
      // Spans come in order; advance past trained ranges that end before this token.
      while (t < trained.size() && trained[t].e <= begin[k]) ++t;
      bool on = false;
      for (std::size_t u = t; u < trained.size() && trained[u].b < std::max(end[k], begin[k] + 1); ++u)
        if (trained[u].e > begin[k]) on = true;
      out.ids.push_back(ids[k]);
      out.labels.push_back(on ? 1 : 0);
      out.offsets.push_back(static_cast<std::uint32_t>(chunk_base + begin[k]));
    }
    chunk_base += chunk.size();
    chunk.clear();
    trained.clear();
  };
  for (const auto& s : r.segments) {
    if (s.kind == conv::Segment::Text) {
      if (s.trained) trained.push_back({chunk.size(), chunk.size() + s.text.size()});
      chunk += s.text;
    } else {
      flush();
      out.ids.push_back(s.kind == conv::Segment::Bos ? tok.bos_id : tok.eos_id);
      out.labels.push_back(s.trained ? 1 : 0);
      out.offsets.push_back(static_cast<std::uint32_t>(chunk_base));
      chunk_base += s.text.size();
    }
  }
  flush();
  return out;
}

namespace {

struct Stats {
  std::uint64_t in = 0, out = 0, segments = 0, turns = 0, tokens = 0, trained = 0, truncated = 0;
  std::uint64_t train_seq = 0, eval_seq = 0, longest = 0;
  std::map<std::string, std::uint64_t> drops, notes, segments_dropped;
  std::vector<std::uint64_t> hist;  // bins: [0,64), [64,128), ... up to max_length
  std::vector<std::uint64_t> edges;
};

// The length in tokens of each pair (from its user message to the next one's) and of what
// precedes the first (BOS, system prompt, first role tag), read off the whole conversation's
// tokenization; the split then checks each segment's real length.
std::vector<std::size_t> pair_lengths(const conv::Rendered& r, const Tokenized& t, std::size_t& header) {
  std::vector<std::size_t> tok_start;
  std::size_t pos = 0, k = 0;
  for (const auto& s : r.segments) {
    if (s.kind == conv::Segment::Text && s.role == conv::Segment::User) {
      while (k < t.offsets.size() && t.offsets[k] < pos) ++k;
      tok_start.push_back(k);
    }
    pos += s.text.size();
  }
  header = tok_start.empty() ? t.ids.size() : tok_start[0];
  std::vector<std::size_t> lens;
  for (std::size_t p = 0; p < tok_start.size(); ++p)
    lens.push_back((p + 1 < tok_start.size() ? tok_start[p + 1] : t.ids.size()) - tok_start[p]);
  return lens;
}

}  // namespace

json prepare(const PrepareOptions& opt, const TokenizerFns& tok) {
  const auto t0 = std::chrono::steady_clock::now();
  if (opt.max_length < 8) throw std::invalid_argument("max_length must be at least 8");
  fs::create_directories(opt.out_dir);
  Stats st;
  for (std::uint64_t e = 64; e < static_cast<std::uint64_t>(opt.max_length); e *= 2) st.edges.push_back(e);
  st.edges.push_back(static_cast<std::uint64_t>(opt.max_length) + 1);
  st.hist.assign(st.edges.size(), 0);
  for (const auto& r : drop_reasons()) st.drops[r] = 0;

  json meta = {{"source", opt.input.string()},
               {"template", opt.templ.name},
               {"template_definition", conv::template_to_json(opt.templ)},  // the trainer keeps it with the model
               {"max_length", opt.max_length},
               {"bos_id", tok.bos_id},
               {"eos_id", tok.eos_id},
               {"vocab_size", tok.vocab_size}};
  tokens::Writer train(opt.out_dir / "train");
  std::unique_ptr<tokens::Writer> eval;
  if (opt.eval_fraction > 0) eval = std::make_unique<tokens::Writer>(opt.out_dir / "eval");
  fs::path json_tmp = opt.out_dir / "cleaned.json.tmp";
  std::ofstream cleaned;
  bool first_json = true;
  if (opt.write_json) {
    cleaned.open(json_tmp);
    if (!cleaned) tokens::io_error(json_tmp, "cannot create");
    cleaned << "[";
  }
  std::unordered_set<std::uint64_t> seen;
  auto last_log = std::chrono::steady_clock::now();

  auto write_segment = [&](const Cleaned& c, std::size_t from, std::size_t to, std::size_t part, Tokenized t,
                           const std::string& id = std::string()) {
    if (t.ids.size() > static_cast<std::size_t>(opt.max_length)) {
      t.ids.resize(opt.max_length);
      t.labels.resize(opt.max_length);
      ++st.truncated;
    }
    const std::uint64_t h = std::hash<std::string>{}(c.id + "\x1f" + std::to_string(opt.split_seed));
    const bool to_eval = eval && static_cast<double>(h % 1000000) < opt.eval_fraction * 1000000.0;
    (to_eval ? *eval : train).add(t.ids, t.labels);
    (to_eval ? st.eval_seq : st.train_seq) += 1;
    ++st.segments;
    st.turns += to - from;
    st.tokens += t.ids.size();
    for (auto l : t.labels) st.trained += l;
    st.longest = std::max<std::uint64_t>(st.longest, t.ids.size());
    std::size_t bin = 0;
    while (bin + 1 < st.edges.size() && t.ids.size() >= st.edges[bin]) ++bin;
    ++st.hist[bin];
    if (opt.write_json) {
      json rec = {{"id", !id.empty() ? id : part == 0 ? c.id : c.id + "_" + std::to_string(part)},
                  {"split", to_eval ? "eval" : "train"}};
      json turns = json::array();
      if (c.system) turns.push_back({{"from", "system"}, {"value", *c.system}});
      for (std::size_t k = from; k < to; ++k) turns.push_back({{"from", (k % 2 == 0) ? "human" : "gpt"}, {"value", c.messages[k]}});
      rec["conversations"] = std::move(turns);
      cleaned << (first_json ? "\n" : ",\n") << rec.dump();
      first_json = false;
    }
  };

  const bool fastchat_rules = opt.clean.rules == "fastchat";
  fastchat::Dedupe fastchat_dedupe;
  auto on_record = [&](Record&& rec) {
    ++st.in;
    // Every 10 s, whichever way the last record went (most are written whole, or dropped).
    if (opt.progress && std::chrono::steady_clock::now() - last_log > std::chrono::seconds(10)) {
      last_log = std::chrono::steady_clock::now();
      opt.progress(std::to_string(st.in) + " conversations read, " + std::to_string(st.segments) + " sequences written");
    }
    Cleaned c;
    std::optional<std::string> reason;
    if (fastchat_rules) {  // clean_sharegpt.py (its dedupe included), then optional_clean.py
      reason = fastchat::clean_record(rec, opt.clean, c, st.notes);
      if (!reason && opt.clean.dedupe) reason = fastchat_dedupe.check(rec, c);
      if (!reason) reason = fastchat::optional_clean(c, opt.clean);
    } else {
      reason = clean_record(rec, opt.clean, c, st.notes);
      if (!reason && opt.clean.dedupe) {  // the whole conversation seen before
        std::string key;
        if (c.system) key += *c.system;
        for (const auto& m : c.messages) key += "\x1e" + m;
        if (!seen.insert(std::hash<std::string>{}(key)).second) reason = "duplicate";
      }
    }
    if (reason) {
      ++st.drops[*reason];
      return;
    }
    ++st.out;
    const std::size_t limit = static_cast<std::size_t>(opt.max_length);
    // A message can only ever contribute max_length tokens to a sequence, and a SentencePiece
    // piece covers at most 16 characters (64 bytes; 128 allowed here): anything past
    // max_length * 128 bytes is cut before tokenizing, at a space where one is near, so that
    // the tokens kept are the ones the whole message gives. Without it a 50 MB message took
    // 11.9 GB and a minute to tokenize, only to be truncated.
    const std::size_t cap = limit * 128;
    for (auto& m : c.messages) {
      if (m.size() <= cap) continue;
      std::size_t cut = cap;
      while (cut > 0 && (static_cast<unsigned char>(m[cut]) & 0xC0) == 0x80) --cut;  // a whole UTF-8 character
      auto space = m.find_last_of(" \n\t", cut);
      if (space != std::string::npos && space > cap / 2) cut = space;
      m.resize(cut);
      m.shrink_to_fit();
      ++st.notes["long_messages_cut_before_tokenizing"];
    }
    if (fastchat_rules) {  // split_long_conversation.py, then filter_wrong_format.py per segment
      std::vector<std::size_t> lens;
      std::vector<std::int32_t> ids;
      std::vector<std::uint32_t> b, e;
      for (const auto& m : c.messages) {
        tok.encode_spans(m, ids, b, e);
        lens.push_back(ids.size() + 1 + 6);  // LlamaTokenizer's ids (BOS first) + 6, as FastChat counts
      }
      const fastchat::Split sp = fastchat::split(lens, opt.max_length);
      st.segments_dropped["split_empty_segment"] += sp.empty_segments;
      st.segments_dropped["split_lost_last_pair"] += sp.lost_pairs;
      for (const auto& [from, to] : sp.segments) {
        if (std::any_of(c.messages.begin() + from, c.messages.begin() + to,
                        [](const std::string& m) { return fastchat::wrong_list_indices(m); })) {
          ++st.segments_dropped["wrong_list_indices"];
          continue;
        }
        conv::Conversation seg{c.system, std::vector<std::string>(c.messages.begin() + from, c.messages.begin() + to)};
        write_segment(c, from, to, 0, tokenize(conv::render(opt.templ, seg), tok), c.id + "_" + std::to_string(from));
      }
      if (sp.segments.size() > 1) st.notes["split_conversations"] += 1;
      return;
    }
    // Most conversations fit: one tokenization, one sequence.
    conv::Rendered rendered = conv::render(opt.templ, {c.system, c.messages});
    Tokenized whole = tokenize(rendered, tok);
    if (whole.ids.size() <= limit || c.messages.size() == 2) {
      write_segment(c, 0, c.messages.size(), 0, std::move(whole));
      return;
    }
    // Split at pair boundaries into segments of at most max_length tokens.
    std::size_t header = 0;
    auto lens = pair_lengths(rendered, whole, header);
    std::size_t from = 0, part = 0;
    while (from < lens.size()) {
      std::size_t to = from, len = header;
      while (to < lens.size() && (to == from || len + lens[to] <= limit)) len += lens[to++];
      // The estimate can be off by a token or two at the seams: check, and give back pairs.
      Tokenized t;
      while (true) {
        conv::Conversation seg{c.system, std::vector<std::string>(c.messages.begin() + 2 * from, c.messages.begin() + 2 * to)};
        t = tokenize(conv::render(opt.templ, seg), tok);
        if (t.ids.size() <= limit || to - from == 1) break;
        --to;
      }
      write_segment(c, 2 * from, 2 * to, part++, std::move(t));
      from = to;
    }
    if (part > 1) st.notes["split_conversations"] += 1;
  };

  ReadTotals totals;
  try {
    totals = read_sharegpt(opt.input, on_record);
  } catch (...) {
    // Nothing half-written stays behind: the writers' .tmp folders and the JSON go.
    std::error_code ec;
    cleaned.close();
    fs::remove(json_tmp, ec);
    fs::remove_all(opt.out_dir / "train.tmp", ec);
    fs::remove_all(opt.out_dir / "eval.tmp", ec);
    throw;
  }
  std::uint64_t dropped = 0;
  for (const auto& [_, n] : st.drops) dropped += n;
  if (st.in != st.out + dropped)
    throw std::logic_error("internal: " + std::to_string(st.in) + " conversations in but " + std::to_string(st.out) +
                           " kept and " + std::to_string(dropped) + " dropped");
  train.finish(meta);
  if (eval) eval->finish(meta);
  if (opt.write_json) {
    cleaned << "\n]\n";
    cleaned.close();
    if (!cleaned) tokens::io_error(json_tmp, "write failed");
    fs::rename(json_tmp, opt.out_dir / "cleaned.json");
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  json hist = json::array();
  std::uint64_t lo = 0;
  for (std::size_t i = 0; i < st.edges.size(); ++i) {
    hist.push_back({{"min", lo}, {"max", st.edges[i] - 1}, {"sequences", st.hist[i]}});
    lo = st.edges[i];
  }
  json stats = {{"input", opt.input.string()},
                {"bytes", totals.bytes},
                {"seconds", seconds},
                {"conversations_in", st.in},
                {"conversations_out", st.out},
                {"dropped", st.drops},
                {"rules", opt.clean.rules},
                {"segments_dropped", st.segments_dropped},
                {"changes", st.notes},
                {"utf8_bytes_repaired", totals.repaired_bytes},
                {"sequences", st.segments},
                {"train_sequences", st.train_seq},
                {"eval_sequences", st.eval_seq},
                {"turns", st.turns},
                {"tokens", st.tokens},
                {"trained_tokens", st.trained},
                {"truncated_sequences", st.truncated},
                {"longest_sequence", st.longest},
                {"max_length", opt.max_length},
                {"template", opt.templ.name},
                {"template_definition", conv::template_to_json(opt.templ)},
                {"length_histogram", hist},
                {"out_dir", opt.out_dir.string()}};
  std::ofstream(opt.out_dir / "stats.json") << stats.dump(2) << "\n";
  return stats;
}

std::string stats_table(const json& s) {
  std::ostringstream o;
  auto row = [&](const std::string& k, const json& v) {
    std::string val = v.is_string() ? v.get<std::string>() : v.dump();
    o << "  " << k << std::string(k.size() < 26 ? 26 - k.size() : 1, ' ') << val << "\n";
  };
  row("conversations in", s["conversations_in"]);
  row("conversations kept", s["conversations_out"]);
  for (auto it = s["dropped"].begin(); it != s["dropped"].end(); ++it)
    if (it->get<std::uint64_t>() > 0) row("  dropped: " + it.key(), *it);
  for (auto it = s["changes"].begin(); it != s["changes"].end(); ++it) row("  changed: " + it.key(), *it);
  if (s.contains("segments_dropped"))
    for (auto it = s["segments_dropped"].begin(); it != s["segments_dropped"].end(); ++it)
      if (it->get<std::uint64_t>() > 0) row("segments dropped: " + it.key(), *it);
  row("sequences (train / eval)", json(std::to_string(s["train_sequences"].get<std::uint64_t>()) + " / " +
                                       std::to_string(s["eval_sequences"].get<std::uint64_t>())));
  row("turns", s["turns"]);
  row("tokens", s["tokens"]);
  row("trained tokens", s["trained_tokens"]);
  row("truncated sequences", s["truncated_sequences"]);
  row("longest sequence", s["longest_sequence"]);
  o << "  length histogram (tokens: sequences)\n";
  std::uint64_t peak = 1;
  for (const auto& b : s["length_histogram"]) peak = std::max(peak, b["sequences"].get<std::uint64_t>());
  for (const auto& b : s["length_histogram"]) {
    std::string range = std::to_string(b["min"].get<std::uint64_t>()) + "-" + std::to_string(b["max"].get<std::uint64_t>());
    auto n = b["sequences"].get<std::uint64_t>();
    o << "    " << range << std::string(range.size() < 12 ? 12 - range.size() : 1, ' ') << std::to_string(n)
      << std::string(8 - std::min<std::size_t>(7, std::to_string(n).size()), ' ')
      << std::string(static_cast<std::size_t>(40.0 * n / peak + (n > 0 ? 0.999 : 0)), '#') << "\n";
  }
  return o.str();
}

}  // namespace vhost::sharegpt
