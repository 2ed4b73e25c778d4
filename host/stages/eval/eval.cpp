#include "stages/eval/eval.hpp"

#include "runtime/stage.hpp"
#include "stages/common/chat_prompt.hpp"
#include "stages/common/html_text.hpp"

#include <vhost/conversation.hpp>
#include <vhost/fingerprint.hpp>
#include <vhost/host/error.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <system_error>
#include <thread>
#include <tuple>

namespace vhost::host {

// ---- questions and verdicts -------------------------------------------------------------------

namespace {

// Calls fn(value, "FILE:LINE") for each non-blank line of a JSONL file; a line that is not JSON is a
// ConfigError naming file, line and byte. `what` names the file in the error when it cannot be opened.
void for_each_jsonl(const fs::path& file, const std::string& what, const std::function<void(const json&, const std::string&)>& fn) {
  std::ifstream in(file);
  if (!in) throw ConfigError(file.string() + ": cannot open" + what);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::string at = file.string() + ":" + std::to_string(n);
    json j;
    try {
      j = json::parse(line);
    } catch (const json::parse_error& e) {
      throw ConfigError(at + ":" + std::to_string(e.byte) + ": not JSON: " + e.what());
    }
    fn(j, at);
  }
}

}  // namespace

std::vector<Question> load_questions(const fs::path& file) {
  std::vector<Question> out;
  std::set<int64_t> ids;
  for_each_jsonl(file, " the question file", [&](const json& j, const std::string& at) {
    Question q;
    if (!j.is_object() || !j.contains("question_id") || !j["question_id"].is_number_integer())
      throw ConfigError(at + ": question_id: missing or not an integer");
    q.id = j["question_id"].get<int64_t>();
    if (!ids.insert(q.id).second) throw ConfigError(at + ": question_id " + std::to_string(q.id) + " appears twice");
    q.category = j.value("category", std::string("general"));
    if (j.contains("turns") && j["turns"].is_array() && !j["turns"].empty()) {
      for (const auto& t : j["turns"]) {
        if (!t.is_string() || t.get<std::string>().empty()) throw ConfigError(at + ": turns: every turn must be a non-empty string");
        q.turns.push_back(t.get<std::string>());
      }
    } else if (j.contains("text") && j["text"].is_string()) {  // FastChat's older Vicuna-bench field
      q.turns.push_back(j["text"].get<std::string>());
    } else {
      throw ConfigError(at + ": turns: missing (a non-empty list of strings)");
    }
    if (j.contains("reference")) {
      if (!j["reference"].is_array()) throw ConfigError(at + ": reference: expected a list of strings");
      for (const auto& r : j["reference"]) q.reference.push_back(r.is_string() ? r.get<std::string>() : r.dump());
    }
    out.push_back(std::move(q));
  });
  if (out.empty()) throw ConfigError(file.string() + ": no questions");
  return out;
}

std::map<int64_t, std::vector<std::string>> load_reference_answers(const fs::path& file) {
  std::map<int64_t, std::vector<std::string>> out;
  std::map<int64_t, std::string> where;
  for_each_jsonl(file, " the reference answer file", [&](const json& j, const std::string& at) {
    if (!j.is_object() || !j.contains("question_id") || !j["question_id"].is_number_integer())
      throw ConfigError(at + ": question_id: missing or not an integer");
    const int64_t id = j["question_id"].get<int64_t>();
    if (where.count(id)) throw ConfigError(at + ": question_id " + std::to_string(id) + " appears twice (first at " + where[id] + ")");
    where[id] = at;
    if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty() || !j["choices"][0].is_object() ||
        !j["choices"][0].contains("turns") || !j["choices"][0]["turns"].is_array() || j["choices"][0]["turns"].empty())
      throw ConfigError(at + ": choices[0].turns: missing (FastChat's answer format: a list of the reference's turns)");
    std::vector<std::string> turns;
    for (const auto& t : j["choices"][0]["turns"]) {
      if (!t.is_string()) throw ConfigError(at + ": choices[0].turns: every turn must be a string");
      turns.push_back(t.get<std::string>());
    }
    out[id] = std::move(turns);
  });
  if (out.empty()) throw ConfigError(file.string() + ": no reference answers");
  return out;
}

namespace {
bool two_scores_line(const std::string& line, double& a, double& b) {
  static const std::regex two(R"(^\s*(?:[Ss]cores?\s*:?\s*)?(\d+(?:\.\d+)?)\s*(?:,|\s|/)\s*(\d+(?:\.\d+)?)\s*$)");
  std::smatch m;
  if (!std::regex_match(line, m, two)) return false;
  double x = std::stod(m[1]), y = std::stod(m[2]);
  if (!(x >= 0 && x <= 10 && y >= 0 && y <= 10)) return false;
  a = x, b = y;
  return true;
}
}  // namespace

bool parse_two_scores(const std::string& text, double& a, double& b) {
  std::string first = text.substr(0, text.find('\n'));
  if (!first.empty() && first.back() == '\r') first.pop_back();
  return two_scores_line(first, a, b);
}

bool parse_review_scores(const std::string& text, double& a, double& b, bool& from_last_line) {
  from_last_line = false;
  if (parse_two_scores(text, a, b)) return true;
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) {
    if (!l.empty() && l.back() == '\r') l.pop_back();
    if (l.find_first_not_of(" \t") != std::string::npos) lines.push_back(l);
  }
  if (lines.size() < 2 || !two_scores_line(lines.back(), a, b)) return false;
  from_last_line = true;
  return true;
}

// As FastChat's llm_judge/common.py: "[[7.5]]", else the backup "[7.5]"; the number as
// \d+\.?\d*; no range check (FastChat has none: the report counts ratings outside 1-10).
bool parse_rating(const std::string& text, double& r) {
  static const std::regex two(R"(\[\[(\d+\.?\d*)\]\])"), one(R"(\[(\d+\.?\d*)\])");
  std::smatch m;
  if (!std::regex_search(text, m, two) && !std::regex_search(text, m, one)) return false;
  r = std::stod(m[1]);
  return true;
}

// FastChat's order: [[A]] anywhere wins, then [[B]], then [[C]].
bool parse_verdict(const std::string& text, char& v) {
  for (char c : {'A', 'B', 'C'})
    if (text.find(std::string("[[") + c + "]]") != std::string::npos) {
      v = c;
      return true;
    }
  return false;
}

// FastChat's "[[rating_a,rating_b]]" output format (backup "[a, b]"); a tie within 0.1.
bool parse_two_ratings(const std::string& text, double& a, double& b) {
  static const std::regex two(R"(\[\[(\d+\.?\d*),\s?(\d+\.?\d*)\]\])"), one(R"(\[(\d+\.?\d*),\s?(\d+\.?\d*)\])");
  std::smatch m;
  if (!std::regex_search(text, m, two) && !std::regex_search(text, m, one)) return false;
  a = std::stod(m[1]);
  b = std::stod(m[2]);
  return true;
}

// ---- judge prompts ----------------------------------------------------------------------------

namespace {

struct Prompt {
  std::string system, user;  // user: a template with {question}, {answer_a}, ...
  std::string format = "";   // FastChat's output_format when from judge_prompts.jsonl
};

std::string fill(std::string t, const std::map<std::string, std::string>& v) {
  for (const auto& [k, val] : v) {
    const std::string key = "{" + k + "}";
    for (std::size_t p = t.find(key); p != std::string::npos; p = t.find(key, p + val.size())) t.replace(p, key.size(), val);
  }
  return t;
}

// The project's own judge prompts. Output formats follow Vicuna ("s1 s2" on the first line) and
// MT-bench ("[[rating]]", "[[A]]"/"[[B]]"/"[[C]]"), so any judge trained on those formats fits.
const char* kVicunaSystem = "You are a careful, impartial reviewer of answers written by AI assistants.";
const char* kVicunaUser =
    "[Question]\n{question}\n\n[Assistant 1's answer]\n{answer_a}\n[End of Assistant 1's answer]\n\n"
    "[Assistant 2's answer]\n{answer_b}\n[End of Assistant 2's answer]\n\n"
    "[Task]\nReview both answers for helpfulness, relevance, accuracy and level of detail. Give each assistant one "
    "overall score from 1 to 10, higher meaning better.\nWrite the two scores on the first line, Assistant 1's then "
    "Assistant 2's, separated by a space, and nothing else on that line. From the next line on, explain your review. "
    "The order in which the answers appear must not influence you.";
const char* kSingleSystem = "You are a careful, impartial reviewer of answers written by AI assistants.";
const char* kSingleUser =
    "Review the assistant's answer to the user's question below for helpfulness, relevance, accuracy, depth and level "
    "of detail.{reference_note} Explain briefly, then give a score from 1 to 10 in exactly this form: \"Rating: "
    "[[5]]\".\n\n{reference_block}[Question]\n{question}\n\n[Assistant's answer]\n{answer}\n[End of the answer]";
const char* kPairSystem =
    "You are a careful, impartial judge of two AI assistants' answers. Decide which one follows the user's "
    "instructions and answers the question better. Neither the order of the answers, their length nor the assistants' "
    "names may influence you. Explain briefly, then give your verdict in exactly this form: \"[[A]]\" if assistant A "
    "is better, \"[[B]]\" if assistant B is better, \"[[C]]\" for a tie.";
const char* kPairUser =
    "{reference_block}[Question]\n{question}\n\n[Assistant A's answer]\n{answer_a}\n[End of assistant A's answer]\n\n"
    "[Assistant B's answer]\n{answer_b}\n[End of assistant B's answer]";

// A conversation as text: "### User: ... ### Assistant: ..." (multi-turn judging).
std::string transcript(const Question& q, const std::vector<std::string>& answers, std::size_t upto) {
  std::string s;
  for (std::size_t t = 0; t <= upto && t < q.turns.size(); ++t)
    s += "### User:\n" + q.turns[t] + "\n\n### Assistant:\n" + (t < answers.size() ? answers[t] : "") + "\n\n";
  return s;
}

}  // namespace

// ---- reports ----------------------------------------------------------------------------------

namespace {

std::string fmt(double v, int digits = 1) {
  char b[32];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

struct Tally {
  int win = 0, tie = 0, loss = 0, inconsistent = 0, errors = 0;
  double score_model = 0, score_base = 0;
  int scored = 0;
  json to_json() const {
    json j = {{"win", win}, {"tie", tie}, {"loss", loss}, {"inconsistent", inconsistent}, {"errors", errors}};
    int n = win + tie + loss;
    auto rate = [&](double x) { return n ? json(x / n) : json(nullptr); };  // null: no data
    j["better_or_equal"] = rate(win + tie);
    // FastChat's show_result.py: over the questions judged (errors out, inconsistent as ties).
    j["win_rate"] = rate(win);
    j["loss_rate"] = rate(loss);
    j["win_rate_adjusted"] = rate(win + 0.5 * tie);
    if (scored) {
      j["total_model"] = score_model;
      j["total_baseline"] = score_base;
      j["relative_percent"] = score_base > 0 ? 100.0 * score_model / score_base : 0.0;
      j["questions_scored"] = scored;
    }
    return j;
  }
};

// A rate as "37.5%", or "-" where there is no data (null).
std::string pct(const json& v) { return v.is_number() ? fmt(100 * v.get<double>()) + "%" : std::string("-"); }

// Rows of (model, tally as JSON), best first as show_result.py prints them; no data last.
void sort_by_win_rate_adjusted(std::vector<std::pair<std::string, json>>& rows) {
  auto v = [](const json& r) { return r["win_rate_adjusted"].is_number() ? r["win_rate_adjusted"].get<double>() : -1.0; };
  std::stable_sort(rows.begin(), rows.end(), [&](const auto& x, const auto& y) { return v(x.second) > v(y.second); });
}

}  // namespace

namespace {

// One question (both orders of a pair, or the one judged) into the pair's totals and its
// category's.
void count_question(const std::string& mode, const std::string& model, const std::vector<const json*>& recs, Tally& all, Tally& c) {
  // Per order: +1 model better, -1 baseline better, 0 tie; scores in model/baseline terms.
  std::vector<int> dirs;
  double sm = 0, sb = 0;
  int ns = 0;
  for (const json* r : recs) {
    if (r->contains("error")) continue;
    bool model_is_a = r->value("model_a", "") == model;
    if (mode == "vicuna") {
      double a = (*r)["score_a"].get<double>(), b = (*r)["score_b"].get<double>();
      double m = model_is_a ? a : b, base = model_is_a ? b : a;
      sm += m, sb += base, ++ns;
      dirs.push_back(m > base ? 1 : m < base ? -1 : 0);
    } else {
      std::string w = r->value("winner", "tie");
      dirs.push_back(w == model ? 1 : w == "tie" ? 0 : -1);
    }
  }
  // pairwise: a question counts only when every order was judged (FastChat drops a match
  // whose g1 or g2 is an error); vicuna: the orders that were scored.
  const bool any_error = std::any_of(recs.begin(), recs.end(), [](const json* r) { return r->contains("error"); });
  if (dirs.empty() || (mode == "pairwise" && any_error)) {
    ++all.errors, ++c.errors;
    return;
  }
  bool up = std::count(dirs.begin(), dirs.end(), 1) > 0, down = std::count(dirs.begin(), dirs.end(), -1) > 0;
  int outcome;
  if (mode == "vicuna") {  // the mean of the orders' scores decides
    outcome = sm > sb ? 1 : sm < sb ? -1 : 0;
  } else {  // a win must hold in both orders; disagreement is a tie (as FastChat counts it)
    outcome = up && !down && std::count(dirs.begin(), dirs.end(), 0) == 0 ? 1
              : down && !up && std::count(dirs.begin(), dirs.end(), 0) == 0 ? -1
                                                                             : 0;
  }
  if (up && down) ++all.inconsistent, ++c.inconsistent;
  for (Tally* t : {&all, &c}) {
    (outcome > 0 ? t->win : outcome < 0 ? t->loss : t->tie)++;
    if (ns) {
      t->score_model += sm / ns;
      t->score_base += sb / ns;
      ++t->scored;
    }
  }
}

// --- pairwise modes: one table per (mode, model vs baseline).
void pair_reports(const std::vector<json>& judgments, std::string& baseline, json& report, std::string& md) {
  // (mode, model, baseline) -> question -> records
  std::map<std::tuple<std::string, std::string, std::string>, std::map<int64_t, std::vector<const json*>>> pairs;
  for (const auto& j : judgments) {
    std::string mode = j.value("mode", "");
    if (mode != "vicuna" && mode != "pairwise") continue;
    std::string a = j.value("model_a", ""), b = j.value("model_b", "");
    if (baseline.empty()) baseline = a;
    // A pair with the baseline reads "model vs baseline"; another pair (pairs = "all", FastChat's
    // pairwise-all files) "model_b vs model_a", model_a being the one the stage or file put first.
    const bool base_is_b = b == baseline && a != baseline;
    const std::string model = base_is_b ? a : b, base = base_is_b ? b : a;
    pairs[{mode, model, base}][j.value("question_id", int64_t{0}) * 16 + j.value("turn", 1)].push_back(&j);
  }
  for (auto& [key, questions] : pairs) {
    const auto& [mode, model, against] = key;
    Tally all;
    std::map<std::string, Tally> cats;
    for (auto& [qk, recs] : questions) count_question(mode, model, recs, all, cats[recs.front()->value("category", "general")]);
    json p = {{"mode", mode}, {"model", model}, {"baseline", against}, {"overall", all.to_json()}, {"categories", json::object()}};
    for (auto& [cat, t] : cats) p["categories"][cat] = t.to_json();
    report["pairs"].push_back(p);
    md += "\n### " + model + " vs " + against + " (" + mode + ")\n\n";
    if (mode == "vicuna" && all.scored)
      md += "Total score: " + model + " " + fmt(all.score_model) + ", " + against + " " + fmt(all.score_base) + " = " +
            fmt(all.score_base > 0 ? 100.0 * all.score_model / all.score_base : 0) + "% of " + against + " over " +
            std::to_string(all.scored) + " questions\n\n";
    md += "| category | win | tie | loss | better or equal | inconsistent | errors |\n|---|---:|---:|---:|---:|---:|---:|\n";
    auto row = [&](const std::string& name, const Tally& t) {
      int n = t.win + t.tie + t.loss;
      md += "| " + name + " | " + std::to_string(t.win) + " | " + std::to_string(t.tie) + " | " + std::to_string(t.loss) +
            " | " + (n ? fmt(100.0 * (t.win + t.tie) / n) + "%" : "-") + " | " + std::to_string(t.inconsistent) + " | " +
            std::to_string(t.errors) + " |\n";
    };
    for (auto& [cat, t] : cats) row(cat, t);
    row("**all**", all);
  }
}

void pairwise_all_report(const std::vector<json>& judgments, json& report, std::string& md) {
  // --- FastChat's pairwise-all (show_result.py --mode pairwise-all): every model over all its
  // pairwise matches, both sides counted; a match counts when both orders gave a verdict; a tie
  // in the first order, or orders that disagree, is a tie for both.
  std::map<std::tuple<int64_t, int, std::string, std::string>, std::map<std::string, const json*>> matches;
  for (const auto& j : judgments)
    if (j.value("mode", "") == "pairwise") {
      std::string a = j.value("model_a", ""), b = j.value("model_b", "");
      matches[{j.value("question_id", int64_t{0}), j.value("turn", 1), a, b}][j.value("order", "ab")] = &j;
    }
  if (!matches.empty()) {
    std::map<std::string, Tally> all_pairs;
    for (const auto& match : matches) {
      const auto& [qid, turn, a, b] = match.first;
      const auto& orders = match.second;  // a plain reference: lambdas may capture it (C++17)
      auto w = [&](const char* o) -> std::string {
        auto it = orders.find(o);
        return it == orders.end() || it->second->contains("error") ? std::string() : it->second->value("winner", "tie");
      };
      // g1 shows model_1 (b, the model) first: vhost's order "ba"; g2 is order "ab".
      const std::string g1 = w("ba"), g2 = w("ab");
      if (g1.empty() || g2.empty()) {
        ++all_pairs[a].errors, ++all_pairs[b].errors;
        continue;
      }
      if (g1 == "tie" || g1 != g2) {
        ++all_pairs[a].tie, ++all_pairs[b].tie;
        if (g1 != g2) ++all_pairs[a].inconsistent, ++all_pairs[b].inconsistent;
      } else {
        ++all_pairs[g1].win;
        ++all_pairs[g1 == a ? b : a].loss;
      }
    }
    std::vector<std::pair<std::string, json>> rows;
    for (auto& [m, t] : all_pairs) rows.emplace_back(m, t.to_json());
    sort_by_win_rate_adjusted(rows);
    md += "\n### All pairs (FastChat's pairwise-all: every model over all its matches)\n\n"
          "| model | win | tie | loss | win rate | loss rate | win rate (adjusted) | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
    report["pairwise_all"] = json::object();
    for (auto& [m, r] : rows) {
      report["pairwise_all"][m] = r;
      md += "| " + m + " | " + r["win"].dump() + " | " + r["tie"].dump() + " | " + r["loss"].dump() + " | " + pct(r["win_rate"]) +
            " | " + pct(r["loss_rate"]) + " | " + pct(r["win_rate_adjusted"]) + " | " + r["errors"].dump() + " |\n";
    }
  }
}

// --- single grading: model -> mean per turn and category
void single_report(const std::vector<json>& judgments, json& report, std::string& md) {
  std::map<std::string, std::vector<const json*>> single;
  for (const auto& j : judgments)
    if (j.value("mode", "") == "single") single[j.value("model", "")].push_back(&j);
  if (!single.empty()) {
    std::set<std::string> categories;
    std::map<std::string, json> rows;
    for (auto& [model, recs] : single) {
      std::map<std::string, std::pair<double, int>> by_cat, by_turn;
      double sum = 0;
      int n = 0, errors = 0, outside = 0;
      for (const json* r : recs) {
        if (r->contains("error")) {
          ++errors;
          continue;
        }
        double v = (*r)["rating"].get<double>();
        outside += v < 1 || v > 10;  // kept, as FastChat keeps them (it has no range check)
        sum += v, ++n;
        auto& c = by_cat[r->value("category", "general")];
        c.first += v, ++c.second;
        auto& t = by_turn[std::to_string(r->value("turn", 1))];
        t.first += v, ++t.second;
        categories.insert(r->value("category", "general"));
      }
      json m = {{"mean", n ? json(sum / n) : json(nullptr)}, {"judged", n}, {"errors", errors}, {"outside_1_10", outside},
                {"turns", json::object()}, {"categories", json::object()}};
      for (auto& [k, v] : by_turn) m["turns"][k] = v.first / v.second;
      for (auto& [k, v] : by_cat) m["categories"][k] = v.first / v.second;
      report["single"][model] = m;
      rows[model] = m;
    }
    md += "\n### Single-answer grading (mean score, 1-10)\n\n| model | mean | turn 1 | turn 2 |";
    for (auto& c : categories) md += " " + c + " |";
    md += " errors |\n|---|---:|---:|---:|";
    for (std::size_t i = 0; i < categories.size(); ++i) md += "---:|";
    md += "---:|\n";
    for (auto& [model, m] : rows) {
      auto cell = [&](const json& obj, const std::string& k) { return obj.contains(k) ? fmt(obj[k].get<double>(), 2) : "-"; };
      md += "| " + model + " | " + (m["mean"].is_null() ? std::string("-") : fmt(m["mean"].get<double>(), 2)) + " | " +
            cell(m["turns"], "1") + " | " + cell(m["turns"], "2") + " |";
      for (auto& c : categories) md += " " + cell(m["categories"], c) + " |";
      md += " " + std::to_string(m["errors"].get<int>()) + " |\n";
    }
  }
}

}  // namespace

json eval_report(const std::vector<json>& judgments, const std::string& baseline_in) {
  json report = {{"pairs", json::array()}, {"single", json::object()}};
  std::string md, baseline = baseline_in;
  pair_reports(judgments, baseline, report, md);
  pairwise_all_report(judgments, report, md);
  single_report(judgments, report, md);
  report["baseline"] = baseline;
  report["markdown"] = md;
  return report;
}

// ---- FastChat llm_judge judgment files ---------------------------------------------------------

namespace {
std::string fastchat_prompt_name(const std::string& mode, bool with_ref, int turn) {
  return std::string(mode == "single" ? "single-" : "pair-") + (with_ref ? "math-v1" : mode == "single" ? "v1" : "v2") +
         (turn == 2 ? "-multi-turn" : "");
}

json write_fastchat_judgments(const std::vector<json>& judgments, const std::string& judge_model, const fs::path& dir) {
  fs::create_directories(dir);
  std::vector<json> single;
  // pairwise: (question, turn, model, baseline) -> {g1 (model shown first, order "ba"), g2}
  std::map<std::tuple<int64_t, int, std::string, std::string>, std::pair<const json*, const json*>> pairs;
  for (const auto& j : judgments) {
    const std::string mode = j.value("mode", "");
    if (mode == "single") {
      single.push_back({{"question_id", j.value("question_id", int64_t{0})},
                        {"model", j.value("model", "")},
                        {"judge", {judge_model, j.value("prompt_name", std::string("single-v1"))}},
                        {"user_prompt", ""},
                        {"judgment", j.value("judge_text", "")},
                        {"score", j.contains("rating") && !j.contains("error") ? j["rating"] : json(-1)},
                        {"turn", j.value("turn", 1)},
                        {"tstamp", 0}});
    } else if (mode == "pairwise") {
      auto key = std::make_tuple(j.value("question_id", int64_t{0}), j.value("turn", 1), j.value("model_b", ""), j.value("model_a", ""));
      (j.value("order", "ab") == "ba" ? pairs[key].first : pairs[key].second) = &j;
    }
  }
  json files = json::object();
  auto write = [&](const std::string& name, const std::vector<json>& recs) {
    if (recs.empty()) return;
    fs::path f = dir / (judge_model + "_" + name + ".jsonl");
    std::ofstream o(f);
    for (const auto& r : recs) o << r.dump() << "\n";
    files[name] = f.string();
  };
  write("single", single);
  std::vector<json> pair;
  for (const auto& [key, g] : pairs) {
    const auto& [qid, turn, model, baseline] = key;
    auto winner = [&, m1 = model, m2 = baseline](const json* r) -> std::string {  // (C++17 lambdas capture no bindings)
      if (!r || r->contains("error")) return "error";
      std::string w = r->value("winner", "");
      return w == m1 ? "model_1" : w == m2 ? "model_2" : w == "tie" ? "tie" : "error";
    };
    const json* any = g.first ? g.first : g.second;
    pair.push_back({{"question_id", qid},
                    {"model_1", model},
                    {"model_2", baseline},
                    {"g1_winner", winner(g.first)},
                    {"g2_winner", winner(g.second)},
                    {"judge", {judge_model, any->value("prompt_name", std::string("pair-v2"))}},
                    {"g1_user_prompt", ""},
                    {"g1_judgment", g.first ? g.first->value("judge_text", "") : ""},
                    {"g2_user_prompt", ""},
                    {"g2_judgment", g.second ? g.second->value("judge_text", "") : ""},
                    {"turn", turn},
                    {"tstamp", 0}});
  }
  write("pair", pair);
  return files;
}
}  // namespace

std::vector<json> read_judgments(const fs::path& file, const std::vector<std::string>& names, std::vector<std::string>& warnings,
                                 const std::map<int64_t, std::string>& categories) {
  std::vector<json> out;
  for_each_jsonl(file, "", [&](const json& j, const std::string& at) {
    if (j.contains("mode")) {
      out.push_back(j);
      return;
    }
    auto category_of = [&](int64_t qid) {
      auto it = categories.find(qid);
      return it == categories.end() ? std::string("general") : it->second;
    };
    // FastChat llm_judge, single: {"question_id", "model", "score" (-1: no verdict), "turn", "judgment"}.
    if (j.contains("model") && j.contains("score") && j.contains("turn") && j.contains("question_id")) {
      if (!j["score"].is_number() || !j["question_id"].is_number_integer() || !j["model"].is_string())
        throw ConfigError(at + ": a FastChat single judgment needs numbers in score and question_id and a model name");
      json r = {{"mode", "single"}, {"question_id", j["question_id"]}, {"turn", j.value("turn", 1)},
                {"category", category_of(j["question_id"].get<int64_t>())}, {"model", j["model"]},
                {"judge_text", j.value("judgment", "")}};
      if (j["score"].get<double>() == -1) r["error"] = "no verdict (FastChat's -1)";
      else r["rating"] = j["score"];
      out.push_back(r);
      return;
    }
    // FastChat llm_judge, pairwise: {"question_id", "model_1", "model_2", "g1_winner", "g2_winner",
    // "turn"}; g1 shows model_1 first. model_2 is the baseline (FastChat's pairwise-baseline).
    if (j.contains("model_1") && j.contains("g1_winner") && j.contains("g2_winner")) {
      const std::string m1 = j.value("model_1", ""), m2 = j.value("model_2", "");
      if (m1.empty() || m2.empty() || !j.contains("question_id") || !j["question_id"].is_number_integer())
        throw ConfigError(at + ": a FastChat pairwise judgment needs question_id, model_1 and model_2");
      for (const char* g : {"g1", "g2"}) {
        const std::string w = j.value(std::string(g) + "_winner", "error");
        if (w != "model_1" && w != "model_2" && w != "tie" && w != "error")
          throw ConfigError(at + ": " + g + "_winner is '" + w + "', not model_1, model_2, tie or error");
        json r = {{"mode", "pairwise"}, {"question_id", j["question_id"]}, {"turn", j.value("turn", 1)},
                  {"category", category_of(j["question_id"].get<int64_t>())}, {"model_a", m2}, {"model_b", m1},
                  {"order", std::string(g) == "g1" ? "ba" : "ab"},
                  {"judge_text", j.value(std::string(g) + "_judgment", "")}};
        if (w == "error") r["error"] = "no verdict (FastChat's error)";
        else r["winner"] = w == "model_1" ? m1 : w == "model_2" ? m2 : std::string("tie");
        out.push_back(r);
      }
      return;
    }
    if (!j.contains("text") || !j["text"].is_string() || !j.contains("question_id") || !j["question_id"].is_number_integer())
      throw ConfigError(at + ": neither a vhost judgment nor a FastChat review (needs question_id and text)");
    const int64_t qid = j["question_id"].get<int64_t>();
    std::string category = j.value("category", std::string());
    if (category.empty() && categories.count(qid)) category = categories.at(qid);
    json r = {{"mode", "vicuna"}, {"question_id", qid}, {"turn", 1}, {"category", category.empty() ? "general" : category},
              {"model_a", names.size() > 0 ? names[0] : "model1"}, {"model_b", names.size() > 1 ? names[1] : "model2"},
              {"order", "ab"}, {"judge_text", j["text"]}};
    double ta = 0, tb = 0;
    bool last_line = false;
    const bool parsed = parse_review_scores(j["text"].get<std::string>(), ta, tb, last_line);
    // The stored verdict: two numbers, not FastChat's failure mark [-1, -1].
    const json* score = j.contains("score") && !j["score"].is_null() ? &j["score"] : nullptr;
    bool stored = false;
    if (score) {
      if (!score->is_array() || score->size() != 2 || !(*score)[0].is_number() || !(*score)[1].is_number())
        warnings.push_back(at + ": \"score\" is not two numbers (" + score->dump() + "); " +
                           (parsed ? "the text's scores are used" : "and the text has none: counted as an error"));
      else if ((*score)[0].get<double>() >= 0 && (*score)[1].get<double>() >= 0)
        stored = true;
    }
    if (stored) {
      r["score_a"] = (*score)[0].get<double>();
      r["score_b"] = (*score)[1].get<double>();
      r["score_from"] = "stored";
      if (parsed && (ta != r["score_a"].get<double>() || tb != r["score_b"].get<double>()))
        warnings.push_back(at + ": the text says " + fmt(ta) + " " + fmt(tb) + (last_line ? " (on its last line)" : "") +
                           " but \"score\" says " + score->dump() + "; the stored score is used (FastChat's recorded verdict)");
    } else if (parsed) {
      r["score_a"] = ta;
      r["score_b"] = tb;
      r["score_from"] = last_line ? "text, last line" : "text";
    } else {
      r["error"] = "no two scores in the review";
      warnings.push_back(at + ": no two scores on the first or last line of the review" +
                         std::string(score ? " and \"score\" is FastChat's failure mark" : "") + ": counted as an error");
    }
    out.push_back(r);
  });
  return out;
}

// ---- HTML with SVG charts ---------------------------------------------------------------------

namespace {
std::string esc(const std::string& s) { return html_escape(s); }
}  // namespace

namespace {

// Who judged, and how many judgments could not be counted; a note when none could.
void html_summary(std::ostream& h, const json& report) {
  if (report.contains("judge") && !report["judge"].is_null()) {
    std::string who;
    for (auto& [k, v] : report["judge"].items()) who += (who.empty() ? "" : ", ") + k + " " + (v.is_string() ? v.get<std::string>() : v.dump());
    h << "<p>Judge: " << esc(who) << ".";
    if (report.contains("judgments"))
      h << " " << report["judgments"].get<int64_t>() << " judgments, " << report.value("errors", 0)
        << " of them not counted (no verdict, or the judge could not be asked: " << report.value("failed_requests", 0)
        << " requests failed in this run).";
    if (report.contains("cost_usd")) h << " Cost: " << (report["cost_usd"].is_number() ? "$" + fmt(report["cost_usd"].get<double>(), 2) : "not known (no price for this judge)") << ".";
    h << "</p>\n";
  }
  bool any_counted = false;
  for (const auto& p : report["pairs"]) {
    const json& o = p["overall"];
    any_counted |= o["win"].get<int>() + o["tie"].get<int>() + o["loss"].get<int>() > 0;
  }
  for (auto& [m, v] : report["single"].items()) any_counted |= v.value("judged", 0) > 0;
  if (!any_counted)
    h << "<p class=\"empty\">No judgment could be counted: every one failed or gave no verdict, so there is nothing to "
         "chart. With the local toy judge of the quickstart this is expected; set OPENAI_API_KEY to grade with GPT-4.</p>\n";
}

// A pair's heading and its win / tie / loss stacked bars per category (Vicuna's Figure 3).
void html_pair_bars(std::ostream& h, const json& p) {
  h << "<h2>" << esc(p["model"].get<std::string>()) << " vs " << esc(p["baseline"].get<std::string>()) << " ("
    << esc(p["mode"].get<std::string>()) << ")</h2>\n";
  const json& o = p["overall"];
  if (o["win"].get<int>() + o["tie"].get<int>() + o["loss"].get<int>() == 0) {
    h << "<p class=\"empty\">No question of this pair could be counted (" << o["errors"].get<int>() << " errors).</p>\n";
    return;
  }
  if (o.contains("relative_percent"))
    h << "<p>Total score " << fmt(o["total_model"].get<double>()) << " vs " << fmt(o["total_baseline"].get<double>())
      << ": <b>" << fmt(o["relative_percent"].get<double>()) << "%</b> of the baseline.</p>\n";
  // Win / tie / loss stacked bars per category (Vicuna's Figure 3).
  std::vector<std::pair<std::string, json>> rows;
  for (auto it = p["categories"].begin(); it != p["categories"].end(); ++it) rows.emplace_back(it.key(), *it);
  rows.emplace_back("all", o);
  const int W = 720, L = 140, bar = 18, gap = 8;
  h << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << rows.size() * (bar + gap) + 30
    << "\" font-size=\"12\">\n";
  int y = 4;
  for (auto& [name, t] : rows) {
    double n = t["win"].get<int>() + t["tie"].get<int>() + t["loss"].get<int>();
    double x = L;
    h << "<text x=\"" << L - 6 << "\" y=\"" << y + 13 << "\" text-anchor=\"end\">" << esc(name) << "</text>";
    if (n == 0)
      h << "<text x=\"" << L << "\" y=\"" << y + 13 << "\" fill=\"#888\">nothing counted (" << t["errors"].get<int>()
        << " errors)</text>";
    const char* colors[] = {"#2ca02c", "#bbbbbb", "#d62728"};
    const char* keys[] = {"win", "tie", "loss"};
    for (int k = 0; k < 3; ++k) {
      double w = n > 0 ? (W - L - 10) * t[keys[k]].get<int>() / n : 0;
      if (w > 0) {
        h << "<rect x=\"" << x << "\" y=\"" << y << "\" width=\"" << w << "\" height=\"" << bar << "\" fill=\"" << colors[k]
          << "\"><title>" << keys[k] << ": " << t[keys[k]].get<int>() << "</title></rect>";
        if (w >= 16)  // the count on its bar
          h << "<text x=\"" << x + w / 2 << "\" y=\"" << y + 13 << "\" text-anchor=\"middle\" fill=\"#fff\">"
            << t[keys[k]].get<int>() << "</text>";
      }
      x += w;
    }
    h << "\n";
    y += bar + gap;
  }
  h << "<text x=\"" << L << "\" y=\"" << y + 14 << "\" fill=\"#2ca02c\">win</text><text x=\"" << L + 40 << "\" y=\"" << y + 14
    << "\" fill=\"#888\">tie</text><text x=\"" << L + 75 << "\" y=\"" << y + 14 << "\" fill=\"#d62728\">loss</text></svg>\n";
}

// A radar chart of the mean score per category, one polygon per model (MT-bench style).
void html_radar(std::ostream& h, const json& single) {
  h << "<h2>Single-answer grading</h2>\n";
  std::set<std::string> cats;
  for (auto& [m, v] : single.items())
    for (auto& [c, s] : v["categories"].items()) cats.insert(c);
  std::vector<std::string> cv(cats.begin(), cats.end());
  const double cx = 260, cy = 230, R = 180;
  h << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"470\" font-size=\"12\">\n";
  auto pt = [&](std::size_t i, double r) {
    double a = 2 * M_PI * static_cast<double>(i) / std::max<std::size_t>(1, cv.size()) - M_PI / 2;
    return std::make_pair(cx + r * std::cos(a), cy + r * std::sin(a));
  };
  for (int ring = 2; ring <= 10; ring += 2) {
    h << "<polygon fill=\"none\" stroke=\"#ddd\" points=\"";
    for (std::size_t i = 0; i < cv.size(); ++i) {
      auto [x, y] = pt(i, R * ring / 10);
      h << x << "," << y << " ";
    }
    h << "\"/>";
  }
  for (std::size_t i = 0; i < cv.size(); ++i) {
    auto [x, y] = pt(i, R + 16);
    h << "<text x=\"" << x << "\" y=\"" << y << "\" text-anchor=\"middle\">" << esc(cv[i]) << "</text>";
  }
  const char* colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"};
  int k = 0;
  for (auto& [m, v] : single.items()) {
    const char* col = colors[k % 6];
    h << "<polygon fill=\"" << col << "\" fill-opacity=\"0.15\" stroke=\"" << col << "\" points=\"";
    for (std::size_t i = 0; i < cv.size(); ++i) {
      double s = v["categories"].contains(cv[i]) ? v["categories"][cv[i]].get<double>() : 0;
      auto [x, y] = pt(i, R * s / 10);
      h << x << "," << y << " ";
    }
    h << "\"/><text x=\"560\" y=\"" << 30 + 18 * k << "\" fill=\"" << col << "\">" << esc(m) << ": "
      << (v["mean"].is_null() ? std::string("-") : fmt(v["mean"].get<double>(), 2)) << "</text>\n";
    ++k;
  }
  h << "</svg>\n";
}

// The numbers, as tables.
void html_tables(std::ostream& h, const json& report) {
  for (const auto& p : report["pairs"]) {
    h << "<h3>" << esc(p["model"].get<std::string>()) << " vs " << esc(p["baseline"].get<std::string>()) << "</h3>\n<table><tr>"
      << "<th>category</th><th>win</th><th>tie</th><th>loss</th><th>better or equal</th><th>win rate (adjusted)</th>"
      << "<th>inconsistent</th><th>errors</th></tr>\n";
    auto row = [&](const std::string& name, const json& t) {
      h << "<tr><td>" << esc(name) << "</td><td>" << t["win"] << "</td><td>" << t["tie"] << "</td><td>" << t["loss"] << "</td><td>"
        << pct(t.value("better_or_equal", json(nullptr))) << "</td><td>" << pct(t.value("win_rate_adjusted", json(nullptr)))
        << "</td><td>" << t["inconsistent"] << "</td><td>" << t["errors"] << "</td></tr>\n";
    };
    for (auto it = p["categories"].begin(); it != p["categories"].end(); ++it) row(it.key(), *it);
    row("all", p["overall"]);
    h << "</table>\n";
  }
  if (report.contains("pairwise_all")) {
    h << "<h3>All pairs (FastChat's pairwise-all)</h3>\n<table><tr><th>model</th><th>win</th><th>tie</th><th>loss</th>"
      << "<th>win rate</th><th>loss rate</th><th>win rate (adjusted)</th><th>errors</th></tr>\n";
    std::vector<std::pair<std::string, json>> rows;
    for (const auto& [m, t] : report["pairwise_all"].items()) rows.emplace_back(m, t);
    sort_by_win_rate_adjusted(rows);
    for (const auto& [m, t] : rows)
      h << "<tr><td>" << esc(m) << "</td><td>" << t["win"] << "</td><td>" << t["tie"] << "</td><td>" << t["loss"] << "</td><td>"
        << pct(t["win_rate"]) << "</td><td>" << pct(t["loss_rate"]) << "</td><td>" << pct(t["win_rate_adjusted"]) << "</td><td>"
        << t["errors"] << "</td></tr>\n";
    h << "</table>\n";
  }
  if (!report["single"].empty()) {
    h << "<h3>Single-answer grading</h3>\n<table><tr><th>model</th><th>mean</th><th>turn 1</th><th>turn 2</th>"
      << "<th>judged</th><th>errors</th><th>outside 1-10</th></tr>\n";
    auto num = [](const json& o, const std::string& k) {
      return o.contains(k) && o[k].is_number() ? fmt(o[k].get<double>(), 2) : std::string("-");
    };
    for (auto& [m, v] : report["single"].items())
      h << "<tr><td>" << esc(m) << "</td><td>" << num(v, "mean") << "</td><td>" << num(v["turns"], "1") << "</td><td>"
        << num(v["turns"], "2") << "</td><td>" << v.value("judged", 0) << "</td><td>" << v.value("errors", 0) << "</td><td>"
        << v.value("outside_1_10", 0) << "</td></tr>\n";
    h << "</table>\n";
  }
}

}  // namespace

fs::path write_eval_report(const fs::path& dir, const json& report) {
  fs::create_directories(dir);
  std::ofstream(dir / "report.md") << report["markdown"].get<std::string>();
  std::ofstream(dir / "report.json") << report.dump(2) << "\n";
  std::ofstream(dir / "report.html") << eval_html(report);
  return dir / "report.html";
}

std::string eval_html(const json& report) {
  std::ostringstream h;
  h << "<!doctype html><html><head><meta charset=\"utf-8\"><title>vhost evaluation</title><style>"
       "body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
       "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}td:first-child,th:first-child{text-align:left}"
       ".empty{padding:1em;background:#fff4e5;border:1px solid #f0c36d}"
       "</style></head><body><h1>Evaluation</h1>\n";
  html_summary(h, report);
  for (const auto& p : report["pairs"]) html_pair_bars(h, p);
  if (!report["single"].empty()) html_radar(h, report["single"]);
  html_tables(h, report);
  h << "</body></html>\n";
  return h.str();
}

// ---- the stage --------------------------------------------------------------------------------

namespace {

std::map<int64_t, json> read_jsonl_by_qid(const fs::path& f) {
  std::map<int64_t, json> out;
  std::ifstream in(f);
  std::string line;
  while (std::getline(in, line)) {
    try {
      json j = json::parse(line);
      out[j.at("question_id").get<int64_t>()] = j;
    } catch (const std::exception&) {
      // a line torn by an interruption: that answer is made again
    }
  }
  return out;
}

// Runs fn(0..n-1) on `threads` threads; the first exception is rethrown after all finish.
void parallel_for(std::size_t n, int threads, const std::function<void(std::size_t)>& fn) {
  std::atomic<std::size_t> next{0};
  std::mutex m;
  std::exception_ptr failure;
  auto worker = [&] {
    for (std::size_t i = next++; i < n; i = next++) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> g(m);
        if (!failure) failure = std::current_exception();
      }
    }
  };
  std::vector<std::thread> ts;
  for (int k = 0; k < std::min<int>(std::max(1, threads), static_cast<int>(std::max<std::size_t>(1, n))); ++k) ts.emplace_back(worker);
  for (auto& t : ts) t.join();
  if (failure) std::rethrow_exception(failure);
}

// Answers the questions `into` lacks with `answer`, appending each to `file` in FastChat's
// answer format as it comes (so an interrupted run keeps what it has).
void answer_questions(StageContext& ctx, const std::string& name, const std::vector<Question>& questions, int threads,
                      const fs::path& file, const char* how, std::map<int64_t, std::vector<std::string>>& into,
                      const std::function<std::vector<std::string>(const Question&)>& answer) {
  for (auto& [qid, j] : read_jsonl_by_qid(file)) into[qid] = j["choices"][0]["turns"].get<std::vector<std::string>>();
  std::vector<const Question*> todo;
  for (const auto& q : questions)
    if (!into.count(q.id)) todo.push_back(&q);
  if (todo.empty()) return;
  ctx.out << name << ": answering " << todo.size() << " of " << questions.size() << " questions" << how << "\n" << std::flush;
  std::ofstream af(file, std::ios::app);
  std::mutex m;
  parallel_for(todo.size(), threads, [&](std::size_t i) {
    const Question& q = *todo[i];
    auto turns = answer(q);
    std::lock_guard<std::mutex> g(m);
    into[q.id] = turns;
    af << json{{"question_id", q.id}, {"answer_id", name + "-" + std::to_string(q.id)}, {"model_id", name},
               {"choices", json::array({{{"index", 0}, {"turns", turns}}})}}.dump()
       << "\n" << std::flush;
  });
}

// One run of the eval stage: answers, the judgments to make (resumed from judgments.jsonl), the
// judge's verdicts, the report.
class Evaluation {
 public:
  explicit Evaluation(StageContext& ctx)
      : ctx_(ctx),
        c_(ctx.config),
        out_(c_["out"].get<std::string>()),
        mode_(c_["mode"].get<std::string>()),
        judge_(ctx.instance(c_["judge"].get<std::string>())),
        concurrency_(static_cast<int>(c_["concurrency"].get<int64_t>())) {}

  json run() {
    fs::create_directories(out_ / "answers");
    questions_ = load_questions(c_["questions"].get<std::string>());
    if (c_["limit"].get<int64_t>() > 0 && static_cast<int64_t>(questions_.size()) > c_["limit"].get<int64_t>())
      questions_.resize(static_cast<std::size_t>(c_["limit"].get<int64_t>()));
    collect_answers();
    load_prompts();
    make_tasks();
    const json info = judge_.describe();
    identity_ = info.contains("identity") ? info["identity"] : json{{"plugin", judge_.plugin().name}, {"instance", judge_.id()}};
    for (auto& t : tasks_) t.fingerprint = vhost::fingerprint(identity_.dump() + "\n" + request(t).dump());
    const auto todo = resume();
    ctx_.out << "judging: " << todo.size() << " of " << tasks_.size() << " judgments to make (" << mode_ << ", judge "
             << identity_.dump() << ", concurrency " << concurrency_ << ")\n"
             << std::flush;
    judge_all(todo);
    return report();
  }

 private:
  struct Task {
    const Question* q;
    int turn;
    std::string a, b, order;  // pairwise: a and b as shown (order "ab": model_a shown first)
    std::string model_a, model_b, key;
    std::string fingerprint;  // of the judge's identity and the request: see resume()
  };

  // ---- answers: each model answers every question (every turn), resumably
  void collect_answers() {
    for (const auto& f : c_["answers"].get<std::vector<std::string>>()) {  // FastChat answer files
      for (auto& [qid, j] : read_jsonl_by_qid(f)) {
        std::string name = j.value("model_id", fs::path(f).stem().string());
        answers_[name][qid] = j.at("choices").at(0).at("turns").get<std::vector<std::string>>();
      }
    }
    std::vector<std::string> models = c_["models"].get<std::vector<std::string>>();
    if (models.empty())
      for (const auto& d : ctx_.declared)
        if (d.rfind("models.", 0) == 0) models.push_back(d);
    for (const auto& ref : models) answer_with_model(ref);
    for (const auto& ref : c_["endpoints"].get<std::vector<std::string>>()) answer_with_endpoint(ref);
    for (auto& [n, a] : answers_) names_.push_back(n);
    if (names_.empty()) throw ConfigError(ctx_.id + ".models: nothing to evaluate: no model instance and no answers file");
  }

  // A model instance, prompted with its own template (a custom one included), turn by turn.
  void answer_with_model(const std::string& ref) {
    Instance& model = ctx_.instance(ref);
    const std::string name = ref.substr(ref.find('.') + 1);
    const json info = model.model_capabilities();
    std::optional<ChatPrompter> prompter;
    try {
      prompter.emplace(info);
    } catch (const conv::TemplateError& e) {
      throw ConfigError(ref + ": " + e.what());
    }
    const int64_t max_tokens = c_["max_tokens"].get<int64_t>();
    answer_questions(ctx_, name, questions_, std::max(1, info.value("max_batch", 1)), out_ / "answers" / (name + ".jsonl"), "",
                     answers_[name], [&](const Question& q) {
                       conv::Conversation conversation;
                       std::vector<std::string> turns;
                       for (const auto& turn : q.turns) {
                         conversation.messages.push_back(turn);
                         json req = {{"prompts", json::array({prompter->text(conversation)})},
                                     {"max_tokens", max_tokens},
                                     {"temperature", c_["temperature"]},
                                     {"stop", prompter->stops()},
                                     {"add_bos", true},
                                     {"seed", static_cast<int64_t>(q.id)}};
                         std::string text = model.model_generate(req, nullptr)["choices"][0]["text"].get<std::string>();
                         auto b = text.find_first_not_of(" \n"), e = text.find_last_not_of(" \n");
                         text = b == std::string::npos ? "" : text.substr(b, e - b + 1);
                         conversation.messages.push_back(text);
                         turns.push_back(text);
                       }
                       return turns;
                     });
  }

  // An OpenAI-compatible endpoint: a judge-kind instance (the `openai` plugin is a
  // chat-completions client), asked turn by turn with the conversation so far as messages.
  void answer_with_endpoint(const std::string& ref) {
    Instance& ep = ctx_.instance(ref);
    if (ep.plugin().kind != std::string(VHOST_KIND_JUDGE))
      throw ConfigError(ctx_.id + ".endpoints: '" + ref + "' is a " + ep.plugin().kind + " instance, not a chat endpoint (a judge)");
    const std::string name = ref.substr(ref.find('.') + 1);
    answer_questions(ctx_, name, questions_, concurrency_, out_ / "answers" / (name + ".jsonl"), " over HTTP", answers_[name],
                     [&](const Question& q) {
                       json messages = json::array();
                       std::vector<std::string> turns;
                       for (const auto& turn : q.turns) {
                         messages.push_back({{"role", "user"}, {"content", turn}});
                         json reply = ep.judge_complete(
                             {{"messages", messages}, {"temperature", c_["temperature"]}, {"max_tokens", c_["max_tokens"]}});
                         std::string text = reply.value("text", "");
                         messages.push_back({{"role", "assistant"}, {"content", text}});
                         turns.push_back(text);
                       }
                       return turns;
                     });
  }

  // ---- judge prompts: the project's, or FastChat judge_prompts.jsonl; FastChat's
  // reference_answer/JUDGE.jsonl replaces the questions' own `reference`.
  void load_prompts() {
    if (!c_["judge_prompts"].get<std::string>().empty()) {
      for_each_jsonl(c_["judge_prompts"].get<std::string>(), " (" + ctx_.id + ".judge_prompts)", [&](const json& j, const std::string& at) {
        try {
          fastchat_[j.at("name").get<std::string>()] = {j.at("system_prompt").get<std::string>(),
                                                        j.at("prompt_template").get<std::string>(),
                                                        j.value("output_format", std::string())};
        } catch (const json::exception& e) {
          throw ConfigError(at + ": not a judge prompt: " + e.what());
        }
      });
    }
    if (!c_["reference_answers"].get<std::string>().empty()) {
      auto refs = load_reference_answers(c_["reference_answers"].get<std::string>());
      for (auto& q : questions_)
        if (auto it = refs.find(q.id); it != refs.end()) q.reference = it->second, ++references_;
    }
  }

  // ---- the judgments to make. Pairwise modes, (first, second): the baseline with every other
  // model, or (pairs = "all") every pair of models, the baseline first in its pairs and otherwise
  // the order of `names`.
  void make_tasks() {
    baseline_ = c_["baseline"].get<std::string>();
    std::vector<std::pair<std::string, std::string>> matches;
    if (mode_ != "single") {
      if (baseline_.empty()) baseline_ = names_.front();
      if (!answers_.count(baseline_))
        throw ConfigError(ctx_.id + ".baseline: no answers from '" + baseline_ + "' (have: " + join(names_) + ")");
      for (auto& n : names_)
        if (n != baseline_) matches.emplace_back(baseline_, n);
      if (c_["pairs"].get<std::string>() == "all")
        for (std::size_t i = 0; i < names_.size(); ++i)
          for (std::size_t k = i + 1; k < names_.size(); ++k)
            if (names_[i] != baseline_ && names_[k] != baseline_) matches.emplace_back(names_[i], names_[k]);
    }
    for (const auto& q : questions_) {
      const int turns = mode_ == "vicuna" ? 1 : static_cast<int>(std::min<std::size_t>(2, q.turns.size()));
      for (int turn = 1; turn <= turns; ++turn) {
        if (mode_ == "single") {
          for (auto& n : names_)
            if (answers_[n].count(q.id))
              tasks_.push_back({&q, turn, n, "", "", n, "", "single|" + std::to_string(q.id) + "|" + std::to_string(turn) + "|" + n, ""});
          continue;
        }
        for (const auto& [first, second] : matches) {
          if (!answers_[first].count(q.id) || !answers_[second].count(q.id)) continue;
          for (std::string order : {"ab", "ba"}) {
            if (order == "ba" && !c_["both_orders"].get<bool>()) continue;
            Task t{&q, turn, order == "ab" ? first : second, order == "ab" ? second : first, order, first, second, "", ""};
            t.key = mode_ + "|" + std::to_string(q.id) + "|" + std::to_string(turn) + "|" + first + "|" + second + "|" + order;
            tasks_.push_back(t);
          }
        }
      }
    }
  }

  bool with_reference(const Question& q) const {
    static const std::set<std::string> ref_categories = {"math", "reasoning", "coding"};
    return ref_categories.count(q.category) && !q.reference.empty();
  }

  // The judge's request for a task: FastChat's prompt of that name where judge_prompts has it,
  // else the project's own.
  json request(const Task& t) {
    const Question& q = *t.q;
    const bool with_ref = with_reference(q);
    std::map<std::string, std::string> v;
    v["question"] = v["question_1"] = q.turns[0];
    v["question_2"] = q.turns.size() > 1 ? q.turns[1] : "";
    v["ref_answer_1"] = q.reference.size() > 0 ? q.reference[0] : "";
    v["ref_answer_2"] = q.reference.size() > 1 ? q.reference[1] : "";
    auto ans = [&](const std::string& name, int k) {
      const auto& turns = answers_[name][q.id];
      return k < static_cast<int>(turns.size()) ? turns[k] : std::string();
    };
    Prompt p;
    if (mode_ == "vicuna") {
      p = {kVicunaSystem, kVicunaUser};
      v["answer_a"] = ans(t.a, 0);
      v["answer_b"] = ans(t.b, 0);
    } else {
      const std::string fc = std::string(mode_ == "single" ? "single-" : "pair-") +
                             (with_ref ? "math-v1" : mode_ == "single" ? "v1" : "v2") + (t.turn == 2 ? "-multi-turn" : "");
      if (fastchat_.count(fc)) {
        p = fastchat_[fc];
      } else {
        p = mode_ == "single" ? Prompt{kSingleSystem, kSingleUser} : Prompt{kPairSystem, kPairUser};
        if (t.turn == 2) {  // the whole conversation; the verdict is about the last answer
          if (mode_ == "single") v["question"] = transcript(q, answers_[t.a][q.id], 1) + "(Judge the assistant's last answer.)";
          else v["question"] = "A conversation with two turns; judge the answers to the second turn, in context.\n\n" + q.turns[0] + "\n\n(then) " + q.turns[1];
        }
        v["reference_block"] =
            with_ref ? "[Reference answer]\n" + v[t.turn == 2 ? "ref_answer_2" : "ref_answer_1"] + "\n[End of the reference]\n\n" : "";
        v["reference_note"] = with_ref ? " Compare it with the reference answer, which is correct." : "";
      }
      const int k = t.turn - 1;
      v["answer"] = v["answer_a"] = ans(t.a, k);
      v["answer_b"] = ans(t.b, k);
      v["answer_1"] = v["answer_a_1"] = ans(t.a, 0);
      v["answer_2"] = v["answer_a_2"] = ans(t.a, 1);
      v["answer_b_1"] = ans(t.b, 0);
      v["answer_b_2"] = ans(t.b, 1);
    }
    json req = {{"messages", json::array({{{"role", "system"}, {"content", p.system}}, {{"role", "user"}, {"content", fill(p.user, v)}}})},
                {"temperature", 0.0},
                {"max_tokens", c_["judge_max_tokens"]}};
    if (!p.format.empty()) req["output_format"] = p.format;  // how to read the reply (not sent)
    return req;
  }

  // Resume: a stored judgment is kept only when it was made by this judge (the plugin's
  // "identity": endpoint and model), from the same request (prompt template, question, answers),
  // so that a toy judge's verdicts never stand in for GPT-4's. The others, and with retry_errors
  // those that recorded an error, move to judgments.previous.jsonl: nothing is lost, and
  // judgments.jsonl always holds exactly what the report counts. Returns the tasks left to judge.
  std::vector<const Task*> resume() {
    const fs::path jfile = out_ / "judgments.jsonl", previous = out_ / "judgments.previous.jsonl";
    const bool retry_errors = c_["retry_errors"].get<bool>();
    std::set<std::string> done;
    std::map<std::string, const Task*> by_key;
    for (const auto& t : tasks_) by_key[t.key] = &t;
    std::map<std::string, std::size_t> kept;  // key -> index in `judgments_`
    std::vector<std::string> set_aside;
    std::ifstream in(jfile);
    std::string line;
    int torn = 0;
    while (std::getline(in, line)) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json j;
      try {
        j = json::parse(line);
      } catch (const std::exception&) {
        ++torn;  // a write cut by a kill: asked again
        continue;
      }
      const std::string key = j.is_object() && j.contains("key") && j["key"].is_string() ? j["key"].get<std::string>() : "";
      auto t = by_key.find(key);
      if (t == by_key.end() || j.value("fingerprint", "") != t->second->fingerprint || (retry_errors && j.contains("error"))) {
        set_aside.push_back(line);
        continue;
      }
      if (kept.count(key)) set_aside.push_back(judgments_[kept[key]].dump());  // a later one of the same wins
      else kept[key] = judgments_.size(), judgments_.emplace_back();
      judgments_[kept[key]] = j;
      done.insert(key);
    }
    in.close();
    if (!set_aside.empty() || torn) rewrite(jfile, previous, set_aside);
    if (!set_aside.empty())
      ctx_.out << "judging: " << set_aside.size() << " stored judgments were made by another judge or from another prompt or answers"
               << (retry_errors ? ", or recorded an error (retry_errors)" : "") << "; moved to " << previous.string() << "\n";
    std::vector<const Task*> todo;
    for (const auto& t : tasks_)
      if (!done.count(t.key)) todo.push_back(&t);
    return todo;
  }

  // judgments.jsonl becomes exactly the kept judgments; the lines set aside go to `previous`.
  void rewrite(const fs::path& jfile, const fs::path& previous, const std::vector<std::string>& set_aside) const {
    {
      std::ofstream prev(previous, std::ios::app);
      for (const auto& l : set_aside) prev << l << "\n";
      prev.flush();
      if (!prev) throw std::system_error(errno, std::generic_category(), previous.string() + ": cannot write");
    }
    fs::path tmp = jfile;
    tmp += ".tmp";
    {
      std::ofstream o(tmp, std::ios::trunc);
      for (const auto& j : judgments_) o << j.dump() << "\n";
      o.flush();
      if (!o) throw std::system_error(errno, std::generic_category(), tmp.string() + ": cannot write");
    }
    fs::rename(tmp, jfile);
  }

  json record_of(const Task& t) const {
    json rec = {{"key", t.key}, {"mode", mode_}, {"question_id", t.q->id}, {"category", t.q->category}, {"turn", t.turn}};
    if (mode_ == "single") rec["model"] = t.a;
    else rec["model_a"] = t.model_a, rec["model_b"] = t.model_b, rec["order"] = t.order;
    return rec;
  }

  // The verdict in a judge's reply into `rec` (in model_a / model_b terms, whatever the order);
  // false when the reply holds none.
  bool read_verdict(const Task& t, const json& req, const std::string& text, json& rec) const {
    if (mode_ == "vicuna") {
      double a, b;
      bool last_line = false;
      if (!parse_review_scores(text, a, b, last_line)) return false;
      const bool model_a_first = t.order == "ab";
      rec["score_a"] = model_a_first ? a : b;
      rec["score_b"] = model_a_first ? b : a;
      return true;
    }
    if (mode_ == "single") {
      double r;
      if (!parse_rating(text, r)) return false;
      rec["rating"] = r;
      return true;
    }
    if (req.value("output_format", "") == "[[rating_a,rating_b]]") {
      double ra, rb;
      if (!parse_two_ratings(text, ra, rb)) return false;
      rec["winner"] = std::abs(ra - rb) <= 0.1 ? std::string("tie") : ra > rb ? t.a : t.b;
      return true;
    }
    char verdict;
    if (!parse_verdict(text, verdict)) return false;
    rec["winner"] = verdict == 'C' ? std::string("tie") : verdict == 'A' ? t.a : t.b;
    return true;
  }

  // One judgment. Unparseable output is asked again (at temperature 0.7: a new request, not the
  // cached one), then recorded as an error. Never guessed.
  json judge_one(const Task& t) {
    json rec = record_of(t);
    rec["judge"] = identity_;
    rec["fingerprint"] = t.fingerprint;
    json req = request(t);
    const int retries = static_cast<int>(c_["parse_retries"].get<int64_t>());
    bool ok = false, priced = false;  // a judge without a known price sends no cost_usd
    std::string text;
    double cost = 0;
    int attempt = 0;
    for (; attempt <= retries && !ok; ++attempt) {
      if (attempt > 0) req["temperature"] = 0.7, req["messages"][0]["content"] = req["messages"][0]["content"].get<std::string>() + " ";
      const json reply = judge_.judge_complete(req);
      text = reply.value("text", "");
      if (reply.contains("cost_usd") && reply["cost_usd"].is_number()) cost += reply["cost_usd"].get<double>(), priced = true;
      ok = read_verdict(t, req, text, rec);
    }
    rec["attempts"] = attempt;
    rec["prompt_name"] = fastchat_prompt_name(mode_, with_reference(*t.q), t.turn);
    rec["judge_text"] = text;
    rec["cost_usd"] = priced ? json(cost) : json(nullptr);
    if (!ok) {
      rec["error"] = "no verdict in the judge's reply";
      ++unparsed_;
    }
    return rec;
  }

  void judge_all(const std::vector<const Task*>& todo) {
    std::ofstream jf(out_ / "judgments.jsonl", std::ios::app);
    std::mutex m;
    std::string first_failure;
    parallel_for(todo.size(), concurrency_, [&](std::size_t i) {
      const Task& t = *todo[i];
      try {
        json rec = judge_one(t);
        std::lock_guard<std::mutex> g(m);
        jf << rec.dump() << "\n" << std::flush;
        judgments_.push_back(rec);
      } catch (const std::exception& e) {
        // The judge could not be asked (unreachable, refused the request): counted in this
        // report, not stored, so running the stage again asks again.
        std::lock_guard<std::mutex> g(m);
        if (failed_calls_++ == 0) first_failure = e.what();
        json rec = record_of(t);
        rec["error"] = std::string("judge request failed: ") + e.what();
        judgments_.push_back(rec);
      }
    });
    if (failed_calls_)
      ctx_.out << "warning: " << failed_calls_ << " judge requests failed (counted as errors; run again to retry them); the first: "
               << first_failure << "\n";
  }

  // ---- report; the judgments also in FastChat's llm_judge files (its show_result.py reads them)
  json report() {
    json fastchat_files;
    if (mode_ != "vicuna")
      fastchat_files = write_fastchat_judgments(judgments_, identity_.value("model", judge_.id()), out_ / "model_judgment");
    json report = eval_report(judgments_, baseline_);
    json cost = nullptr;  // null: no judgment had a known price (a local judge is free, not unknown-priced at GPT-4's)
    for (const auto& j : judgments_)
      if (j.contains("cost_usd") && j["cost_usd"].is_number()) cost = (cost.is_null() ? 0.0 : cost.get<double>()) + j["cost_usd"].get<double>();
    report["judge"] = identity_;
    report["judgments"] = judgments_.size();
    report["errors"] = std::count_if(judgments_.begin(), judgments_.end(), [](const json& j) { return j.contains("error"); });
    report["failed_requests"] = failed_calls_;
    report["cost_usd"] = cost;
    const fs::path html = write_eval_report(out_, report);
    ctx_.out << report["markdown"].get<std::string>() << "\nreport: " << html.string() << "\n";
    return {{"questions", questions_.size()}, {"judgments", judgments_.size()}, {"unparsed", unparsed_.load()},
            {"failed_requests", failed_calls_}, {"reference_answers_used", references_},
            {"cost_usd", cost}, {"report", html.string()}, {"pairs", report["pairs"]}, {"single", report["single"]},
            {"pairwise_all", report.value("pairwise_all", json(nullptr))},
            {"fastchat_judgments", fastchat_files}};
  }

  StageContext& ctx_;
  const json& c_;
  const fs::path out_;
  const std::string mode_;
  Instance& judge_;
  const int concurrency_;
  std::vector<Question> questions_;
  std::map<std::string, std::map<int64_t, std::vector<std::string>>> answers_;  // name -> qid -> turns
  std::vector<std::string> names_;
  std::map<std::string, Prompt> fastchat_;
  std::size_t references_ = 0;
  std::string baseline_;
  std::vector<Task> tasks_;
  json identity_;
  std::vector<json> judgments_;
  std::atomic<int> unparsed_{0};
  int failed_calls_ = 0;
};

}  // namespace

json run_eval(StageContext& ctx) { return Evaluation(ctx).run(); }

}  // namespace vhost::host
