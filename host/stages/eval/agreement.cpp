#include "stages/eval/agreement.hpp"

#include "stages/eval/arena.hpp"
#include "stages/eval/eval.hpp"

#include <vhost/host/error.hpp>

#include <cctype>
#include <cstdio>
#include <fstream>
#include <map>
#include <tuple>

namespace vhost::host::agreement {

namespace {

std::string judge_name(const json& j) {
  if (j.is_array() && j.size() >= 2 && j[0] == "gpt-4" && j[1].is_string() && j[1].get<std::string>().rfind("pair", 0) == 0)
    return "gpt4-pair";
  if (j.is_string()) {
    const std::string s = j.get<std::string>();
    if (s.rfind("expert", 0) == 0) return "human";
    if (s.rfind("author", 0) == 0) return "author";
  }
  return "";
}

std::string revert(const std::string& v) { return v == "model_a" ? "model_b" : v == "model_b" ? "model_a" : v; }
bool is_tie(const std::string& v) { return v.find("tie") != std::string::npos; }
bool equal_vote(const std::string& a, const std::string& b) { return (is_tie(a) && is_tie(b)) || a == b; }

}  // namespace

std::vector<Vote> read_votes(const std::filesystem::path& file) {
  std::vector<Vote> out;
  if (auto list = arena::read_json_list(file, "votes")) {
    const json& all = *list;
    for (std::size_t i = 0; i < all.size(); ++i) {
      const std::string at = file.string() + ": [" + std::to_string(i) + "]";
      const json& v = all[i];
      if (!v.is_object()) throw ConfigError(at + ": expected a vote object");
      for (const char* k : {"model_a", "model_b", "winner"})
        if (!v.contains(k) || !v[k].is_string()) throw ConfigError(at + ": " + k + ": expected a string");
      if (!v.contains("question_id") || !v["question_id"].is_number_integer())
        throw ConfigError(at + ": question_id: expected an integer");
      if (v.contains("turn") && !v["turn"].is_number_integer()) throw ConfigError(at + ": turn: expected 1 or 2");
      const int64_t turn = v.value("turn", int64_t{1});
      if (turn != 1 && turn != 2) throw ConfigError(at + ": turn: expected 1 or 2");
      if (!v.contains("judge")) throw ConfigError(at + ": judge: missing");
      out.push_back({v["question_id"].get<int64_t>(), turn, v["model_a"].get<std::string>(), v["model_b"].get<std::string>(),
                     v["winner"].get<std::string>(), judge_name(v["judge"])});
    }
    return out;
  }
  // vhost's judgments (pairwise): one vote per question, turn and pair.
  std::vector<std::string> warnings;
  int64_t errors = 0, single = 0;
  for (const auto& p : arena::judged_pairs(read_judgments(file, {}, warnings), /*two_scores=*/false, errors, single)) {
    const std::string w = arena::combined_verdict(p.verdicts);
    if (!w.empty()) out.push_back({p.question_id, p.turn, p.model_a, p.model_b, w, "gpt4-pair"});
  }
  return out;
}

json compute(const std::vector<Vote>& votes, const std::string& judge1, const std::string& judge2) {
  const bool judge_vs_human = judge1.rfind("gpt4", 0) == 0 && judge2 == "human";
  if (!judge_vs_human && !(judge1 == "human" && judge2 == "human"))
    throw ConfigError("--judges " + judge1 + " " + judge2 + ": supported are gpt4-pair human, and human human (as FastChat)");
  // turn -> (question, model, model) with the models in order -> judge -> winners
  std::map<int64_t, std::map<std::tuple<int64_t, std::string, std::string>, std::map<std::string, std::vector<std::string>>>> data;
  for (const auto& v : votes) {
    const bool in_order = v.model_a < v.model_b;
    auto key = std::make_tuple(v.question_id, in_order ? v.model_a : v.model_b, in_order ? v.model_b : v.model_a);
    data[v.turn][key][v.judge].push_back(in_order ? v.winner : revert(v.winner));
  }
  json out = json::object();
  for (int64_t turn : {1, 2}) {
    for (bool ban_tie : {false, true}) {
      int64_t agree = 0, total = 0;
      for (const auto& [key, by] : data[turn]) {
        if (judge_vs_human) {
          if (!by.count(judge1) || !by.count(judge2)) continue;
          if (by.at(judge1).size() != 1)
            throw ConfigError("question " + std::to_string(std::get<0>(key)) + ", " + std::get<1>(key) + " vs " + std::get<2>(key) +
                              ", turn " + std::to_string(turn) + ": " + std::to_string(by.at(judge1).size()) + " " + judge1 +
                              " votes (FastChat expects one)");
          const std::string& j = by.at(judge1)[0];
          if (ban_tie && is_tie(j)) continue;
          for (const auto& h : by.at(judge2)) {
            if (ban_tie && is_tie(h)) continue;
            ++total;
            agree += equal_vote(j, h);
          }
        } else {
          if (!by.count("human")) continue;
          const auto& hs = by.at("human");
          for (std::size_t i = 0; i + 1 < hs.size(); ++i)
            for (std::size_t k = i + 1; k < hs.size(); ++k) {
              if (ban_tie && (is_tie(hs[i]) || is_tie(hs[k]))) continue;
              ++total;
              agree += equal_vote(hs[i], hs[k]);
            }
        }
      }
      out["turn" + std::to_string(turn)][ban_tie ? "without_tie" : "with_tie"] = {
          {"agree", agree}, {"total", total}, {"ratio", total ? json(static_cast<double>(agree) / static_cast<double>(total)) : json(nullptr)}};
    }
  }
  return out;
}

std::string text(const json& r) {
  std::string s;
  for (const char* turn : {"turn1", "turn2"})
    for (const char* tie : {"with_tie", "without_tie"}) {
      const json& x = r[turn][tie];
      char ratio[32] = "-", b[160];
      if (!x["ratio"].is_null()) std::snprintf(ratio, sizeof ratio, "%.2f", x["ratio"].get<double>());
      std::snprintf(b, sizeof b, "turn %c %s tie. #total: %lld, #agree: %lld, ratio: %s\n", turn[4],
                    std::string(tie) == "with_tie" ? "with" : "without", static_cast<long long>(x["total"].get<int64_t>()),
                    static_cast<long long>(x["agree"].get<int64_t>()), ratio);
      s += b;
    }
  return s;
}

}  // namespace vhost::host::agreement
