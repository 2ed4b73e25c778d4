// Evaluation: verdict parsing, report arithmetic on hand-made judgments, FastChat reviews.
#include "helpers.hpp"

#include "../../host/src/eval.hpp"

#include <fstream>

using namespace vhost::host;
using Catch::Matchers::Contains;

TEST_CASE("judge verdicts are parsed strictly, never guessed", "[eval]") {
  double a, b, r;
  char v;
  CHECK(parse_two_scores("8 9\nAssistant 2 is more detailed.", a, b));
  CHECK((a == 8 && b == 9));
  CHECK(parse_two_scores("7.5, 6", a, b));
  CHECK(parse_two_scores("Scores: 10 3", a, b));
  CHECK_FALSE(parse_two_scores("I think 8 and 9", a, b));
  CHECK_FALSE(parse_two_scores("11 9", a, b));  // out of range
  CHECK_FALSE(parse_two_scores("\n8 9", a, b));  // not on the first line
  CHECK(parse_rating("Good answer. Rating: [[7]]", r));
  CHECK(r == 7);
  CHECK_FALSE(parse_rating("Rating: 7", r));
  CHECK_FALSE(parse_rating("Rating: [[0]]", r));
  CHECK(parse_verdict("B is clearer. [[B]]", v));
  CHECK(v == 'B');
  CHECK_FALSE(parse_verdict("[[A]] or maybe [[B]]", v));
  CHECK_FALSE(parse_verdict("A is better", v));
}

TEST_CASE("Vicuna totals, relative score and win/tie/loss from known judgments", "[eval]") {
  auto j = [](int q, const char* cat, const char* order, double base, double model) {
    return json{{"mode", "vicuna"}, {"question_id", q}, {"category", cat}, {"turn", 1}, {"model_a", "base"},
                {"model_b", "mine"}, {"order", order}, {"score_a", base}, {"score_b", model}};
  };
  std::vector<json> js = {j(1, "math", "ab", 6, 9), j(1, "math", "ba", 6, 9),          // win
                          j(2, "math", "ab", 7, 7), j(2, "math", "ba", 7, 7),          // tie
                          j(3, "writing", "ab", 8, 4), j(3, "writing", "ba", 8, 4),    // loss
                          j(4, "writing", "ab", 5, 8), j(4, "writing", "ba", 9, 6)};   // orders disagree: 7 vs 7 tie
  json err = j(5, "writing", "ab", 0, 0);
  err.erase("score_a");
  err.erase("score_b");
  err["error"] = "no verdict";
  js.push_back(err);
  json r = eval_report(js, "base");
  REQUIRE(r["pairs"].size() == 1);
  const json& o = r["pairs"][0]["overall"];
  CHECK(o["win"] == 1);
  CHECK(o["tie"] == 2);
  CHECK(o["loss"] == 1);
  CHECK(o["errors"] == 1);
  CHECK(o["inconsistent"] == 1);
  CHECK(o["total_model"].get<double>() == Approx(9 + 7 + 4 + 7));
  CHECK(o["total_baseline"].get<double>() == Approx(6 + 7 + 8 + 7));
  CHECK(o["relative_percent"].get<double>() == Approx(100.0 * 27 / 28));
  CHECK(o["better_or_equal"].get<double>() == Approx(0.75));
  CHECK(r["pairs"][0]["categories"]["math"]["win"] == 1);
  CHECK(r["pairs"][0]["categories"]["writing"]["loss"] == 1);
  CHECK_THAT(r["markdown"].get<std::string>(), Contains("96.4% of base over 4 questions"));
  CHECK_THAT(eval_html(r), Contains("<svg"));
}

TEST_CASE("pairwise verdicts need both orders to agree, single grading averages per turn", "[eval]") {
  auto p = [](int q, const char* order, const char* winner) {
    return json{{"mode", "pairwise"}, {"question_id", q}, {"category", "c"}, {"turn", 1}, {"model_a", "base"},
                {"model_b", "mine"}, {"order", order}, {"winner", winner}};
  };
  json r = eval_report({p(1, "ab", "mine"), p(1, "ba", "mine"), p(2, "ab", "base"), p(2, "ba", "mine"),
                        p(3, "ab", "tie"), p(3, "ba", "base")},
                       "");
  const json& o = r["pairs"][0]["overall"];
  CHECK(o["win"] == 1);
  CHECK(o["tie"] == 2);
  CHECK(o["loss"] == 0);
  CHECK(o["inconsistent"] == 1);
  auto s = [](int q, int turn, double rating) {
    return json{{"mode", "single"}, {"question_id", q}, {"category", q == 1 ? "math" : "writing"}, {"turn", turn},
                {"model", "m"}, {"rating", rating}};
  };
  r = eval_report({s(1, 1, 8), s(1, 2, 6), s(2, 1, 4), s(2, 2, 10)}, "");
  CHECK(r["single"]["m"]["mean"].get<double>() == Approx(7));
  CHECK(r["single"]["m"]["turns"]["1"].get<double>() == Approx(6));
  CHECK(r["single"]["m"]["turns"]["2"].get<double>() == Approx(8));
  CHECK(r["single"]["m"]["categories"]["math"].get<double>() == Approx(7));
}

TEST_CASE("FastChat GPT-4 reviews: scores re-parsed from the text and checked", "[eval][bad-input]") {
  fs::path f = scratch("eval-reviews") / "review.jsonl";
  std::ofstream(f) << R"({"question_id": 1, "answer1_id": "a", "answer2_id": "b", "text": "7 9\nB is better.", "score": [7, 9]})" "\n"
                   << R"({"question_id": 2, "answer1_id": "a", "answer2_id": "b", "text": "8 6\nA.", "score": [8, 5]})" "\n"
                   << R"({"question_id": 3, "answer1_id": "a", "answer2_id": "b", "text": "A is better", "score": [-1, -1]})" "\n";
  std::vector<std::string> warnings;
  auto js = read_judgments(f, {"gpt-3.5", "vicuna"}, warnings);
  REQUIRE(js.size() == 3);
  REQUIRE(warnings.size() == 2);
  CHECK_THAT(warnings[0], Contains("review.jsonl:2: the text says 8.0 6.0 but \"score\" says [8,5]"));
  CHECK_THAT(warnings[1], Contains("review.jsonl:3: no two scores"));
  json r = eval_report(js, "gpt-3.5");
  CHECK(r["pairs"][0]["overall"]["total_model"].get<double>() == Approx(15));
  CHECK(r["pairs"][0]["overall"]["errors"] == 1);
  std::ofstream(f) << R"({"question_id": 1, "text": "7 9", "score": ["x", 9]})" "\n";
  warnings.clear();
  REQUIRE(read_judgments(f, {}, warnings).size() == 1);
  REQUIRE(warnings.size() == 1);
  CHECK_THAT(warnings[0], Contains("review.jsonl:1: \"score\" is not two numbers"));
  std::ofstream(f) << "{\"question_id\": 1}\n";
  CHECK_THROWS_WITH(read_judgments(f, {}, warnings), Contains("review.jsonl:1: neither a vhost judgment nor a FastChat review"));
}

TEST_CASE("question files: errors name the file and line", "[eval][bad-input]") {
  fs::path d = scratch("eval-questions");
  std::ofstream(d / "ok.jsonl") << R"({"question_id": 1, "category": "math", "turns": ["1+1?"], "reference": ["2"]})" "\n"
                                << R"({"question_id": 2, "text": "old Vicuna format"})" "\n";
  auto qs = load_questions(d / "ok.jsonl");
  REQUIRE(qs.size() == 2);
  CHECK(qs[0].reference[0] == "2");
  CHECK(qs[1].turns[0] == "old Vicuna format");
  std::ofstream(d / "bad.jsonl") << R"({"question_id": 1, "turns": ["a"]})" "\n" << R"({"question_id": 1, "turns": ["b"]})" "\n";
  CHECK_THROWS_WITH(load_questions(d / "bad.jsonl"), Contains("bad.jsonl:2: question_id 1 appears twice"));
  std::ofstream(d / "bad2.jsonl") << R"({"question_id": 1, "turns": []})" "\n";
  CHECK_THROWS_WITH(load_questions(d / "bad2.jsonl"), Contains("bad2.jsonl:1: turns: missing"));
  std::ofstream(d / "bad3.jsonl") << "{\"question_id\": 1, \"turns\": [\"a\"]\n";
  CHECK_THROWS_WITH(load_questions(d / "bad3.jsonl"), Contains("bad3.jsonl:1:"));
}
