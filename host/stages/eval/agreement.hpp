// Agreement between judges on pairwise votes, as FastChat's llm_judge/compute_agreement.py
// computes it for MT-bench (the paper's "GPT-4 agrees with humans 66% / 85% without ties"):
// per turn, with and without ties, GPT-4-pair against human experts, or humans among themselves.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace vhost::host::agreement {

using json = nlohmann::json;

struct Vote {
  int64_t question_id = 0;
  int64_t turn = 1;
  std::string model_a, model_b;
  std::string winner;  // model_a, model_b, tie, tie (bothbad)
  std::string judge;   // gpt4-pair, human, author, or "" (FastChat's get_judge_name; others: "")
};

// Reads a vote file: FastChat's MT-bench judgment JSON (a list of {"question_id", "model_a",
// "model_b", "winner", "judge", "turn"}, judge "expert_N", "author_N" or ["gpt-4", "pair-v2"]), or
// vhost's pairwise judgments.jsonl (the two orders of a question and turn give one gpt4-pair vote;
// disagreeing orders a tie; failed ones skipped). Errors name file and index or line.
std::vector<Vote> read_votes(const std::filesystem::path& file);

// {"turn1": {"with_tie": {"agree", "total", "ratio"}, "without_tie": {...}}, "turn2": {...}}.
// judge1/judge2: "gpt4-pair" and "human", or "human" and "human" (FastChat supports only these).
json compute(const std::vector<Vote>& votes, const std::string& judge1, const std::string& judge2);

std::string text(const json& result);  // FastChat's four lines

}  // namespace vhost::host::agreement
