// The arena leaderboard (FastChat's Chatbot Arena, fastchat/serve/monitor/elo_analysis.py):
// battles between two models, from the chat page's votes, FastChat's battle files, or pairwise
// judgments; online Elo, the Bradley–Terry maximum-likelihood rating FastChat's leaderboard
// shows (its L2-regularised logistic regression, solved exactly here by Newton's method), a
// seeded bootstrap for confidence intervals, and the win-fraction and battle-count matrices.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace vhost::host::arena {

using json = nlohmann::json;
namespace fs = std::filesystem;

struct Battle {
  std::string model_a, model_b;
  std::string winner;  // "model_a", "model_b", "tie", "tie (bothbad)" (FastChat's values)
  bool anonymous = false;
};

// Reads battles from one file, any of:
//  - a conversation log of `vhost serve|api --log` (its {"vote": {"models": [a, b], "vote": "A" |
//    "B" | "tie" | "bad", "anonymous"}} records; the other records are conversations, skipped);
//  - FastChat's battles (clean_battle_data.py's JSON list, or JSONL, of {"model_a", "model_b",
//    "winner", "anony"});
//  - pairwise judgments (vhost's judgments.jsonl in pairwise or vicuna mode, FastChat's
//    model_judgment/*_pair.jsonl): per question and turn one battle; the two orders agreeing
//    give the winner, disagreeing a tie (as show_result.py counts them); errors are skipped.
// Malformed records are errors naming file:line and the field; skipped records are counted in
// `notes`.
std::vector<Battle> read_battles(const fs::path& file, std::vector<std::string>& notes);

// Pairwise judgments (vhost judgment records) per question, turn and model pair, in first-seen
// order, with each order's verdict ("model_a", "model_b", "tie"); a failed judgment adds none but
// is counted in `errors`. Two-score (vicuna) judgments count when `two_scores` (the higher score
// wins), single-answer ones never (counted in `single`).
struct JudgedPair {
  int64_t question_id = 0, turn = 1;
  std::string model_a, model_b;
  std::vector<std::string> verdicts;
};
std::vector<JudgedPair> judged_pairs(const std::vector<json>& judgments, bool two_scores, int64_t& errors, int64_t& single);
// A pair's one verdict: its orders' when they agree, else a tie (show_result.py's rule); "" when
// it has none.
std::string combined_verdict(const std::vector<std::string>& verdicts);

// FastChat's battle and vote files are one JSON list, vhost's logs JSON lines: the list, or
// nothing when the file's first non-space character is not '['. An unreadable file, an empty
// one ("empty: no WHAT") and malformed JSON are errors naming the file.
std::optional<json> read_json_list(const fs::path& file, const std::string& what);

// FastChat's compute_elo: one pass in order, K-factor updates.
std::map<std::string, double> online_elo(const std::vector<Battle>& battles, double k = 4, double scale = 400,
                                         double base = 10, double init = 1000);

// FastChat's compute_elo_mle_with_tie: each battle twice, a tie as one win each, L2-regularised
// (C = 1, sklearn's default) logistic regression on +-ln(base) indicators; rating = scale * w +
// init. Solved to machine precision.
std::map<std::string, double> mle_elo(const std::vector<Battle>& battles, double scale = 400, double base = 10,
                                      double init = 1000);

// The bootstrap's resampling, documented so it can be reproduced elsewhere: the splitmix64
// sequence started at `seed`, continued across rounds; the i-th draw picks battle (draw mod n).
uint64_t splitmix64(uint64_t& state);

struct Options {
  int64_t rounds = 1000;  // bootstrap rounds (0: none)
  uint64_t seed = 0;
  bool anonymous_only = false;
  // model -> the rating the MLE ratings are shifted to give it (FastChat's compute_elo_mle_with_tie
  // shifts llama-13b to 800); the first one present counts; online Elo is never shifted.
  std::map<std::string, double> anchors;
};

// {"battles", "anonymous_battles", "models": [{"model", "rating", "ci_low", "ci_high", "online_elo",
// "battles", "wins", "ties", "losses"}...] (by rating), "win_fraction": {"models", "matrix"},
// "battle_counts": {...}, "bootstrap": {"rounds", "seed"}}
json report(const std::vector<Battle>& battles, const Options& options);
std::string markdown(const json& report);
std::string html(const json& report);

}  // namespace vhost::host::arena
