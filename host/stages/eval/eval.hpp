// Internal: evaluation with an LLM as judge. Question sets in FastChat's JSONL, answers from the
// pipeline's models, judgments by a judge instance in three modes, and the reports (Vicuna's
// Table 2 totals, win/tie/loss per category, MT-bench means), as Markdown, JSON and HTML.
#pragma once

#include "runtime/config.hpp"

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

// FastChat's reference answers (reference_answer/gpt-4.jsonl: {"question_id", "model_id",
// "choices": [{"turns": [...]}]}) by question id; errors name the file and line.
std::map<int64_t, std::vector<std::string>> load_reference_answers(const fs::path& file);

// The judge's verdict parsers. Each returns false when the text holds no valid verdict.
// Vicuna: two scores 0..10 on the first line, space or comma separated ("8 9", "8, 9", "Scores: 8 9"),
// as FastChat's parse_score reads them (which has no range check; 0..10 is FastChat's scale).
bool parse_two_scores(const std::string& text, double& a, double& b);
// The same, then a fallback for reviews that solve the problem first and give the two scores
// only at the end (math): the last line that is two scores. `from_last_line` says which was used.
bool parse_review_scores(const std::string& text, double& a, double& b, bool& from_last_line);
// As FastChat's llm_judge: "[[7.5]]" or the backup "[7.5]", no range check; the first of [[A]],
// [[B]], [[C]] in that order; "[[8,6.5]]" (output_format "[[rating_a,rating_b]]").
bool parse_rating(const std::string& text, double& r);
bool parse_verdict(const std::string& text, char& v);
bool parse_two_ratings(const std::string& text, double& a, double& b);

// Recomputes the report from judgment records (this stage's judgments.jsonl lines, or FastChat's
// GPT-4 review lines turned into them). Returns {"mode", "tables": ..., "markdown": ...}.
json eval_report(const std::vector<json>& judgments, const std::string& baseline);

// Reads judgment files: vhost judgments.jsonl, or FastChat review JSONL ({"question_id",
// "answer1_id", "answer2_id", "text", "score": [s1, s2]}; model names from `names` = {model1,
// model2}). For FastChat reviews the stored "score" is the recorded verdict (FastChat tells
// users to fix it by hand where its parser failed) and wins; the text is parsed too (first line,
// then the last-line fallback) and a disagreement is listed in `warnings`; the text decides only
// where "score" is absent or FastChat's failure mark [-1, -1]. `categories` (question id ->
// category, e.g. from a question file) fills in reviews that carry none. Errors name file and line.
std::vector<json> read_judgments(const fs::path& file, const std::vector<std::string>& names, std::vector<std::string>& warnings,
                                 const std::map<int64_t, std::string>& categories = {});

// The HTML report with SVG charts.
std::string eval_html(const json& report);

// Writes report.md, report.json and report.html of an eval_report into `dir` (made if missing);
// returns the HTML file's path, the one a person opens.
fs::path write_eval_report(const fs::path& dir, const json& report);

}  // namespace vhost::host
