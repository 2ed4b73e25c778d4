// Evaluation: verdict parsing, report arithmetic on hand-made judgments, FastChat reviews.
#include "helpers.hpp"

#include "stages/common/chat_prompt.hpp"
#include "stages/eval/agreement.hpp"
#include "stages/eval/arena.hpp"
#include "stages/eval/eval.hpp"
#include "stages/serve/http.hpp"
#include "stages/train/loss_svg.hpp"

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
  CHECK(parse_two_scores("0 9", a, b));          // FastChat's scale is 0..10: real reviews have 0
  CHECK((a == 0 && b == 9));
  bool last = true;
  CHECK(parse_review_scores("8 9\nfine", a, b, last));
  CHECK_FALSE(last);
  // Math reviews solve first and give the scores at the end: the last line is the fallback.
  CHECK(parse_review_scores("Let us compute 3*4 = 12.\nAssistant 1 is right.\n\n10 4\n", a, b, last));
  CHECK((a == 10 && b == 4 && last));
  CHECK_FALSE(parse_review_scores("Both are right, 8 and 9 points.", a, b, last));
  CHECK_FALSE(parse_review_scores("one line: 12 4", a, b, last));
  CHECK(parse_rating("Good answer. Rating: [[7]]", r));
  CHECK(r == 7);
  CHECK_FALSE(parse_rating("Rating: 7", r));
  // As FastChat's llm_judge/common.py: decimals, the single-bracket backup, no range check.
  CHECK(parse_rating("Rating: [[0]]", r));
  CHECK(r == 0);
  CHECK(parse_rating("Rating: [[7.5]] (or [[3]])", r));
  CHECK(r == 7.5);
  CHECK(parse_rating("Rating: [8]", r));
  CHECK(r == 8);
  CHECK(parse_rating("[[7.]]", r));
  CHECK(r == 7);
  CHECK(parse_rating("[[11]]", r));  // kept (the report counts it outside 1-10)
  CHECK(parse_verdict("B is clearer. [[B]]", v));
  CHECK(v == 'B');
  CHECK(parse_verdict("[[B]] or maybe [[A]]", v));  // FastChat checks [[A]] first
  CHECK(v == 'A');
  CHECK(parse_verdict("[[C]] ... [[B]]", v));
  CHECK(v == 'B');
  CHECK_FALSE(parse_verdict("A is better", v));
  CHECK(parse_two_ratings("A: 8, B: 6.5 so [[8,6.5]]", a, b));
  CHECK((a == 8 && b == 6.5));
  CHECK(parse_two_ratings("[7, 9]", a, b));
  CHECK((a == 7 && b == 9));
  CHECK_FALSE(parse_two_ratings("[[8]]", a, b));
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
  CHECK_THAT(warnings[0], Contains("review.jsonl:2: the text says 8.0 6.0 but \"score\" says [8,5]; the stored score is used"));
  CHECK_THAT(warnings[1], Contains("review.jsonl:3: no two scores"));
  json r = eval_report(js, "gpt-3.5");
  CHECK(r["pairs"][0]["overall"]["total_model"].get<double>() == Approx(14));  // 9 + 5: the stored verdict wins
  CHECK(r["pairs"][0]["overall"]["errors"] == 1);
  std::ofstream(f) << R"({"question_id": 1, "text": "7 9", "score": ["x", 9]})" "\n";
  warnings.clear();
  REQUIRE(read_judgments(f, {}, warnings).size() == 1);
  REQUIRE(warnings.size() == 1);
  CHECK_THAT(warnings[0], Contains("review.jsonl:1: \"score\" is not two numbers"));
  std::ofstream(f) << "{\"question_id\": 1}\n";
  CHECK_THROWS_WITH(read_judgments(f, {}, warnings), Contains("review.jsonl:1: neither a vhost judgment nor a FastChat review"));
}

TEST_CASE("FastChat reviews with real files' quirks give Table 2's kind of totals", "[eval]") {
  // Five questions: a plain one; a math review whose scores come only at its end; a 0 score; a
  // review whose text disagrees with its stored (hand-fixed) score; one whose parse failed in
  // FastChat (-1, -1) but whose text has the scores on its last line. No categories in the
  // reviews: they come from the question file.
  fs::path d = scratch("eval-reviews-quirks");
  std::ofstream(d / "q.jsonl") << R"({"question_id": 1, "category": "generic", "text": "a"})" "\n"
                               << R"({"question_id": 2, "category": "math", "text": "b"})" "\n"
                               << R"({"question_id": 3, "category": "coding", "text": "c"})" "\n"
                               << R"({"question_id": 4, "category": "generic", "text": "d"})" "\n"
                               << R"({"question_id": 5, "category": "math", "text": "e"})" "\n";
  std::ofstream(d / "r.jsonl")
      << R"({"question_id": 1, "answer1_id": "x1", "answer2_id": "y1", "text": "7 9\nB is better.", "score": [7.0, 9.0]})" "\n"
      << R"({"question_id": 2, "answer1_id": "x2", "answer2_id": "y2", "text": "First, solve it: 12.\nA got 12.\n\n10 3", "score": [10.0, 3.0]})" "\n"
      << R"({"question_id": 3, "answer1_id": "x3", "answer2_id": "y3", "text": "0 9\nA wrote no code.", "score": [0.0, 9.0]})" "\n"
      << R"({"question_id": 4, "answer1_id": "x4", "answer2_id": "y4", "text": "8 8\nsame", "score": [8.0, 9.0]})" "\n"
      << R"({"question_id": 5, "answer1_id": "x5", "answer2_id": "y5", "text": "Working: 2+2=4.\n6 6", "score": [-1, -1]})" "\n";
  std::map<int64_t, std::string> cats;
  for (const auto& q : load_questions(d / "q.jsonl")) cats[q.id] = q.category;
  std::vector<std::string> warnings;
  auto js = read_judgments(d / "r.jsonl", {"gpt35", "vicuna"}, warnings, cats);
  REQUIRE(js.size() == 5);
  REQUIRE(warnings.size() == 1);
  CHECK_THAT(warnings[0], Contains("r.jsonl:4: the text says 8.0 8.0 but \"score\" says [8.0,9.0]; the stored score is used"));
  CHECK(js[1]["score_from"] == "stored");
  CHECK(js[4]["score_from"] == "text, last line");
  CHECK(js[2]["category"] == "coding");
  json o = eval_report(js, "gpt35")["pairs"][0]["overall"];
  CHECK(o["total_baseline"].get<double>() == Approx(7 + 10 + 0 + 8 + 6));
  CHECK(o["total_model"].get<double>() == Approx(9 + 3 + 9 + 9 + 6));
  CHECK((o["win"] == 3 && o["tie"] == 1 && o["loss"] == 1 && o["errors"] == 0));
  CHECK(o["relative_percent"].get<double>() == Approx(100.0 * 36 / 31));
  json cat = eval_report(js, "gpt35")["pairs"][0]["categories"];
  CHECK((cat["math"]["win"] == 0 && cat["math"]["tie"] == 1 && cat["math"]["loss"] == 1));
}

TEST_CASE("pairwise-all: every model over all its matches, as FastChat's show_result.py counts", "[eval]") {
  auto p = [](int q, const char* a, const char* b, const char* order, const char* winner) {
    json j{{"mode", "pairwise"}, {"question_id", q}, {"category", "c"}, {"turn", 1}, {"model_a", a}, {"model_b", b}, {"order", order}};
    if (std::string(winner) == "error") j["error"] = "no verdict";
    else j["winner"] = winner;
    return j;
  };
  // x beats y (both orders), y and z disagree (a tie), z beats x, x-y on question 2: an error.
  json r = eval_report({p(1, "x", "y", "ab", "x"), p(1, "x", "y", "ba", "x"), p(1, "y", "z", "ab", "y"), p(1, "y", "z", "ba", "z"),
                        p(1, "x", "z", "ab", "z"), p(1, "x", "z", "ba", "z"), p(2, "x", "y", "ab", "x"), p(2, "x", "y", "ba", "error")},
                       "x");
  const json& all = r["pairwise_all"];
  CHECK((all["x"]["win"] == 1 && all["x"]["loss"] == 1 && all["x"]["tie"] == 0 && all["x"]["errors"] == 1));
  CHECK((all["y"]["win"] == 0 && all["y"]["loss"] == 1 && all["y"]["tie"] == 1 && all["y"]["inconsistent"] == 1));
  CHECK((all["z"]["win"] == 1 && all["z"]["tie"] == 1 && all["z"]["loss"] == 0));
  CHECK(all["z"]["win_rate_adjusted"].get<double>() == Approx(0.75));
  // Pairs with the baseline read "model vs baseline"; the pair without it "model_b vs model_a".
  std::set<std::pair<std::string, std::string>> pairs;
  for (const auto& q : r["pairs"]) pairs.insert({q["model"].get<std::string>(), q["baseline"].get<std::string>()});
  CHECK(pairs == std::set<std::pair<std::string, std::string>>{{"y", "x"}, {"z", "x"}, {"z", "y"}});
  CHECK_THAT(r["markdown"].get<std::string>(), Contains("pairwise-all"));
}

TEST_CASE("FastChat reference answer files: by question id, errors naming the file and line", "[eval][bad-input]") {
  fs::path d = scratch("eval-references");
  std::ofstream(d / "ok.jsonl") << R"({"question_id": 101, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["4", "8"]}]})" "\n";
  auto refs = load_reference_answers(d / "ok.jsonl");
  REQUIRE(refs.count(101));
  CHECK(refs[101] == std::vector<std::string>{"4", "8"});
  std::ofstream(d / "bad.jsonl") << R"({"question_id": 1, "choices": [{"turns": ["a"]}]})" "\n" << R"({"question_id": 1, "choices": [{"turns": ["b"]}]})" "\n";
  CHECK_THROWS_WITH(load_reference_answers(d / "bad.jsonl"), Contains("bad.jsonl:2: question_id 1 appears twice (first at"));
  std::ofstream(d / "bad2.jsonl") << R"({"question_id": 1, "choices": [{"turns": [3]}]})" "\n";
  CHECK_THROWS_WITH(load_reference_answers(d / "bad2.jsonl"), Contains("bad2.jsonl:1: choices[0].turns: every turn must be a string"));
  std::ofstream(d / "bad3.jsonl") << R"({"question_id": 1, "turns": ["no choices"]})" "\n";
  CHECK_THROWS_WITH(load_reference_answers(d / "bad3.jsonl"), Contains("bad3.jsonl:1: choices[0].turns: missing"));
  CHECK_THROWS_WITH(load_reference_answers(d / "none.jsonl"), Contains("none.jsonl: cannot open"));
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

TEST_CASE("arena ratings: online Elo by hand, the MLE at its optimum, a reproducible bootstrap", "[eval][arena]") {
  using arena::Battle;
  auto e = arena::online_elo({{"a", "b", "model_a"}});
  CHECK(e["a"] == Approx(1002));  // K = 4, expected 0.5
  CHECK(e["b"] == Approx(998));
  e = arena::online_elo({{"a", "b", "tie"}, {"a", "b", "tie (bothbad)"}});
  CHECK(e["a"] == Approx(1000));
  // Three wins of a, one of b: ratings symmetric about 1000, and the regularised likelihood's
  // gradient is zero there: (8 s - 6) ln 10 + t = 0 with t = (r_a - 1000) / 400, s = sigma(2 t ln 10).
  std::vector<Battle> bs = {{"a", "b", "model_a"}, {"a", "b", "model_a"}, {"b", "a", "model_b"}, {"a", "b", "model_b"}};
  auto m = arena::mle_elo(bs);
  CHECK(m["a"] - 1000 == Approx(1000 - m["b"]));
  const double t = (m["a"] - 1000) / 400, s = 1 / (1 + std::exp(-2 * t * std::log(10.0)));
  CHECK(std::abs((8 * s - 6) * std::log(10.0) + t) < 1e-9);
  CHECK(m["a"] > 1000);
  arena::Options o;
  o.rounds = 30;
  o.seed = 5;
  auto r1 = arena::report(bs, o), r2 = arena::report(bs, o);
  CHECK(r1 == r2);
  o.seed = 6;
  CHECK(arena::report(bs, o)["models"] != r1["models"]);
  CHECK(r1["models"][0]["model"] == "a");
  CHECK(r1["models"][0]["wins"] == 3);
  CHECK(r1["win_fraction"]["matrix"][0][1] == Approx(0.75));
  CHECK(r1["battle_counts"]["matrix"][1][0] == 4);
  o.anchors = {{"b", 800.0}};
  CHECK(arena::report(bs, o)["models"][1]["rating"] == Approx(800));
  CHECK_THAT(arena::markdown(r1), Contains("| 1 | a |"));
  CHECK_THAT(arena::html(r1), Contains("<svg"));
  CHECK_THROWS_WITH(arena::report({{"a", "a", "model_a"}}, o), Contains("no battles to rate"));
}

TEST_CASE("arena battles from votes, FastChat battles and judgments, malformed ones named at their line", "[eval][arena][malformed]") {
  fs::path dir = scratch("arena-read");
  std::vector<std::string> notes;
  write_file(dir / "log.jsonl", R"({"endpoint": "chat", "id": "x"}
{"vote": {"models": ["a", "b"], "vote": "bad", "anonymous": true}}
{"vote": {"models": ["b", "a"], "vote": "A"}}
)");
  auto b = arena::read_battles(dir / "log.jsonl", notes);
  REQUIRE(b.size() == 2);
  CHECK((b[0].winner == "tie (bothbad)" && b[0].anonymous && b[1].model_a == "b" && b[1].winner == "model_a" && !b[1].anonymous));
  write_file(dir / "fc.json", R"([{"model_a": "a", "model_b": "b", "winner": "model_b", "anony": true}])");
  b = arena::read_battles(dir / "fc.json", notes);
  CHECK((b.size() == 1 && b[0].winner == "model_b" && b[0].anonymous));
  auto err = [&](const std::string& name, const std::string& text) {
    write_file(dir / name, text);
    try {
      arena::read_battles(dir / name, notes);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(err("b1.jsonl", "{\"vote\": {\"models\": [\"a\", \"b\"], \"vote\": \"A\"}}\n{\"vote\": {\"models\": [\"a\", \"b\"], \"vote\": \"maybe\"}}\n"),
             Contains("b1.jsonl:2: vote.vote: 'maybe' is not A, B, tie or bad"));
  CHECK_THAT(err("b2.json", "[{\"model_a\": \"a\", \"model_b\": 3, \"winner\": \"tie\"}]"), Contains("b2.json: [0]: model_b: expected a string"));
  CHECK_THAT(err("b3.json", "[{\"model_a\": \"a\""), Contains("b3.json: byte"));
  CHECK_THAT(err("b4.jsonl", "{\"vote\": {\"models\": [\"a\", \"b\"], \"vote\": \"A\", \"anonymous\": \"yes\"}}\n"),
             Contains("b4.jsonl:1: vote.anonymous: expected true or false"));
  CHECK_THAT(err("b5.jsonl", "\n  \n"), Contains("b5.jsonl: empty: no battles"));
  CHECK_THAT(err("b6.jsonl", "{\"mode\": \"single\", \"question_id\": 1, \"model\": \"a\", \"rating\": 5, \"turn\": 1}\n"),
             Contains("single-answer judgments compare no two models"));
}

TEST_CASE("Prometheus label values are escaped as the text format requires", "[serve][malformed]") {
  CHECK(http::prom_label("tiny") == "tiny");
  CHECK(http::prom_label("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
}

TEST_CASE("judge agreement counted as FastChat's compute_agreement.py, by hand", "[eval][agreement]") {
  using agreement::Vote;
  // One question, turn 1: GPT-4 says the first model (in name order, "a") wins; three experts: one
  // agrees with the pair given the other way round, one says tie, one the other model.
  std::vector<Vote> v = {{1, 1, "a", "b", "model_a", "gpt4-pair"},
                         {1, 1, "b", "a", "model_b", "human"},
                         {1, 1, "a", "b", "tie (bothbad)", "human"},
                         {1, 1, "a", "b", "model_b", "human"},
                         {1, 1, "a", "b", "model_b", "author"}};
  auto r = agreement::compute(v, "gpt4-pair", "human");
  CHECK(r["turn1"]["with_tie"] == json({{"agree", 1}, {"total", 3}, {"ratio", 1.0 / 3}}));
  CHECK(r["turn1"]["without_tie"]["total"] == 2);
  CHECK(r["turn2"]["with_tie"]["ratio"].is_null());
  r = agreement::compute(v, "human", "human");  // pairs of experts: (agree, tie), (agree, b), (tie, b)
  CHECK(r["turn1"]["with_tie"]["agree"] == 0);
  CHECK(r["turn1"]["with_tie"]["total"] == 3);
  CHECK(r["turn1"]["without_tie"]["total"] == 1);
  CHECK_THAT(agreement::text(r), Contains("turn 1 with tie. #total: 3, #agree: 0, ratio: 0.00"));
  CHECK_THROWS_WITH(agreement::compute(v, "human", "gpt4-pair"), Contains("supported are gpt4-pair human, and human human"));
  v.push_back({1, 1, "a", "b", "tie", "gpt4-pair"});
  CHECK_THROWS_WITH(agreement::compute(v, "gpt4-pair", "human"), Contains("2 gpt4-pair votes (FastChat expects one)"));
}

TEST_CASE("chart axes get round ticks and loss.svg keeps its legend off the plot", "[eval][svg]") {
  // The training loss of the demo: 8.78 down to 0.0324 read as 8.78/6.59/.../0.0324 before.
  AxisTicks y = nice_ticks(0.0324, 8.78, 5);
  CHECK(y.lo == 0);
  CHECK(y.hi == 10);
  CHECK(y.labels == std::vector<std::string>{"0", "2", "4", "6", "8", "10"});
  AxisTicks x = nice_ticks(0, 37, 6);
  CHECK(x.labels == std::vector<std::string>{"0", "10", "20", "30", "40"});
  AxisTicks small = nice_ticks(2.31, 2.37, 5);
  CHECK(small.labels == std::vector<std::string>{"2.30", "2.32", "2.34", "2.36", "2.38"});
  AxisTicks flat = nice_ticks(3, 3, 5);  // one value: a unit around it, never a zero range
  CHECK(flat.hi > flat.lo);
  CHECK(nice_ticks(-0.25, 0.25, 4).labels == std::vector<std::string>{"-0.4", "-0.2", "0.0", "0.2", "0.4"});

  const fs::path file = fs::temp_directory_path() / "vhost-loss-test.svg";
  write_loss_svg(file, {{1, 8.78}, {2, 4.1}, {3, 0.0324}}, {{3, 0.5}}, "training loss, <stages.train>");
  std::ifstream in(file);
  std::string svg((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  fs::remove(file);
  CHECK_THAT(svg, Contains(">10</text>"));
  CHECK_THAT(svg, !Contains("8.78"));
  CHECK_THAT(svg, Contains("&lt;stages.train&gt;"));
  // The legend's text sits above the plot's top edge (y = 56).
  auto pos = svg.find(">eval</text>");
  REQUIRE(pos != std::string::npos);
  auto ypos = svg.rfind(" y=\"", pos);
  CHECK(std::stod(svg.substr(ypos + 4)) < 56);
}

TEST_CASE("the report stages run in a pipeline: arena and agreement from files, errors naming the option", "[eval]") {
  const fs::path dir = scratch("report_stages");
  // Three battles: a beats b twice, then a tie; and the same pairs as pairwise judgments.
  write_file(dir / "battles.json",
             R"([{"model_a": "a", "model_b": "b", "winner": "model_a"}, {"model_a": "b", "model_b": "a", "winner": "model_b"},)"
             R"( {"model_a": "a", "model_b": "b", "winner": "tie"}])");
  vh::Host host(only_dirs({}));
  const std::string head = "[pipeline]\nstages = [\"board\"]\nwork_dir = \"" + (dir / "run").string() + "\"\n";
  auto run = [&](const std::string& table) {
    std::ostringstream out;
    vh::RunOptions ro;
    ro.out = &out;
    auto r = host.run(host.load_string(head + "[stages.board]\ntype = \"arena\"\n" + table, "board.toml"), ro);
    return std::make_pair(r.stages.at(0).output, out.str());
  };
  auto [report, text] = run("files = [\"" + (dir / "battles.json").string() + "\"]\nbootstrap = 0\nout = \"" + (dir / "board").string() + "\"\n");
  REQUIRE(report["models"].size() == 2);
  CHECK(report["models"][0]["model"] == "a");
  CHECK(report["models"][0]["wins"] == 2);
  CHECK(report["models"][0]["ties"] == 1);
  CHECK_THAT(text, Contains("report: " + (dir / "board" / "arena.html").string()));
  CHECK(fs::exists(dir / "board" / "arena.json"));
  // Malformed input, named by the option (at load time, or by the stage when it runs).
  auto msg = config_error_of([&] { run("files = [\"" + (dir / "battles.json").string() + "\"]\nanchors = [\"a=high\"]\n"); });
  CHECK_THAT(msg, Contains("board.anchors: expected MODEL=RATING, got 'a=high'"));
  msg = config_error_of([&] { run("files = []\nbootstrap = -1\n"); });
  CHECK_THAT(msg, Contains("stages.board.bootstrap"));
  msg = config_error_of([&] { run("bootstrap = 0\n"); });
  CHECK_THAT(msg, Contains("stages.board.files"));
  msg = config_error_of([&] { host.load_string(head + "[stages.board]\ntype = \"api\"\n", "board.toml"); });
  CHECK_THAT(msg, Contains("stages.board.controller"));
}

TEST_CASE("chat prompts: the model's template, its stop strings, the oldest pairs dropped to fit the context", "[eval]") {
  // A model reporting a custom template and a context of 100 tokens (counted here as bytes).
  const json custom = {{"base", "vicuna_v1.1"}, {"system_message", "S."}, {"roles", {"Q", "A"}}};
  const json info = {{"context", 100}, {"template", "mine"}, {"templates", {{"mine", custom}}}};
  ChatPrompter p(info);
  CHECK(p.templ().name == "mine");
  vhost::conv::Conversation c;
  c.messages = {"first question", "first answer", "second question", "second answer", "third question"};
  const std::string whole = p.text(c);
  CHECK_THAT(whole, Contains("Q: first question"));
  CHECK_THAT(whole, Contains("A:"));
  auto bytes = [](const std::string& s) { return static_cast<int64_t>(s.size()); };
  const std::string fitted = p.fitted(c, 10, bytes);
  CHECK(static_cast<int64_t>(fitted.size()) + 10 <= 100);
  CHECK(c.messages.size() == 3);
  CHECK(c.messages.size() % 2 == 1);  // whole pairs dropped, the oldest first
  CHECK(c.messages.back() == "third question");
  CHECK_THAT(fitted, !Contains("first question"));
  CHECK(fitted == p.text(c));
  // Nothing fits: the last message is kept all the same.
  c.messages = {"a", "b", std::string(200, 'x')};
  p.fitted(c, 10, bytes);
  CHECK(c.messages.size() == 1);
  // Stop strings: the request's and the template's.
  const auto stops = p.stops({"END"});
  CHECK(stops.front() == "END");
  CHECK(stops.size() == 1 + p.templ().stop_strings().size());
  // Another template by name, and one that does not exist.
  CHECK(ChatPrompter(info, "llama-2-chat").templ().name == "llama-2-chat");
  CHECK_THROWS_AS(ChatPrompter(info, "nope"), vhost::conv::TemplateError);
}
