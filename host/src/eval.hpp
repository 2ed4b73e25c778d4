// Internal: evaluation with an LLM as judge. Question sets in FastChat's JSONL, answers from the
// pipeline's models, judgments by a judge instance in three modes, and the reports (Vicuna's
// Table 2 totals, win/tie/loss per category, MT-bench means), as Markdown, JSON and HTML.
#pragma once

#include "config.hpp"

#include <map>
#include <string>
#include <vector>

namespace vhost::host {

struct StageContext;
// The `eval` stage.
json run_eval(StageContext& ctx);

struct Question {
  int64_t id = 0;
  std::string category;
  std::vector<std::string> turns;
  std::vector<std::string> reference;  // reference answers per turn (optional)
};

// FastChat's question JSONL ({"question_id", "category", "turns": [...]}, optional "reference");
// errors name the file and line.
std::vector<Question> load_questions(const fs::path& file);

// The judge's verdict parsers. Each returns false when the text holds no valid verdict.
bool parse_two_scores(const std::string& text, double& a, double& b);  // Vicuna: "8 9" on the first line
bool parse_rating(const std::string& text, double& r);                  // MT-bench single: "[[7]]" (1-10)
bool parse_verdict(const std::string& text, char& v);                   // "[[A]]", "[[B]]", "[[C]]" -> 'A','B','C'

// Recomputes the report from judgment records (this stage's judgments.jsonl lines, or FastChat's
// GPT-4 review lines turned into them). Returns {"mode", "tables": ..., "markdown": ...}.
json eval_report(const std::vector<json>& judgments, const std::string& baseline);

// Reads judgment files: vhost judgments.jsonl, or FastChat review JSONL ({"question_id",
// "answer1_id", "answer2_id", "text", "score": [s1, s2]}, scores re-parsed from text and checked
// against "score"; model names from `names` = {model1, model2}). Errors name file and line.
std::vector<json> read_judgments(const fs::path& file, const std::vector<std::string>& names, std::vector<std::string>& warnings);

// The HTML report with SVG charts.
std::string eval_html(const json& report);

}  // namespace vhost::host
