// Stages that compute reports from files alone (no instance): the evaluation report recomputed
// from judgments (vhost's or FastChat's), judge agreement, and the arena leaderboard. `vhost eval
// report`, `vhost eval agreement` and `vhost arena report` are these stages run as one-stage
// pipelines; a pipeline may end with them too.
#include "stages/stages.hpp"

#include "stages/common/options.hpp"
#include "stages/eval/agreement.hpp"
#include "stages/eval/arena.hpp"
#include "stages/eval/eval.hpp"

#include <spdlog/spdlog.h>

#include <fstream>

namespace vhost::host {

namespace {

json run_eval_report(StageContext& ctx) {
  const auto& c = ctx.config;
  const auto names = c["names"].get<std::vector<std::string>>();
  if (!names.empty() && names.size() != 2)
    throw ConfigError(ctx.id + ".names: FastChat reviews name the two models, in answer order (got " + std::to_string(names.size()) + ")");
  std::vector<json> all;
  std::vector<std::string> warnings;
  std::map<int64_t, std::string> categories;
  if (const auto q = c["questions"].get<std::string>(); !q.empty())
    for (const auto& question : load_questions(q)) categories[question.id] = question.category;
  for (const auto& f : c["reviews"].get<std::vector<std::string>>()) {
    auto js = read_judgments(f, names, warnings, categories);
    all.insert(all.end(), js.begin(), js.end());
  }
  for (const auto& w : warnings) spdlog::warn("{}", w);
  json r = eval_report(all, c["baseline"].get<std::string>());
  ctx.out << r["markdown"].get<std::string>();
  json output = {{"judgments", all.size()}, {"pairs", r["pairs"]}, {"single", r["single"]}};
  if (const fs::path out = c["out"].get<std::string>(); !out.empty()) {
    const fs::path html = write_eval_report(out, r);
    ctx.out << "\nreport: " << html.string() << "\n";
    output["report"] = html.string();
  }
  return output;
}

json run_agreement(StageContext& ctx) {
  const auto& c = ctx.config;
  const auto judges = c["judges"].get<std::vector<std::string>>();
  if (judges.size() != 2) throw ConfigError(ctx.id + ".judges: name two judges (gpt4-pair human, or human human)");
  std::vector<agreement::Vote> votes;
  for (const auto& f : c["files"].get<std::vector<std::string>>()) {
    auto v = agreement::read_votes(f);
    votes.insert(votes.end(), v.begin(), v.end());
  }
  const json r = agreement::compute(votes, judges[0], judges[1]);
  ctx.out << (c["json"].get<bool>() ? r.dump(2) + "\n" : agreement::text(r));
  return r;
}

// MODEL=RATING pairs: the rating the MLE ratings are shifted to give MODEL.
std::map<std::string, double> anchors_of(const StageContext& ctx) {
  std::map<std::string, double> anchors;
  for (const auto& a : ctx.config["anchors"].get<std::vector<std::string>>()) {
    const auto eq = a.rfind('=');
    double v = 0;
    std::size_t used = 0;
    try {
      if (eq != std::string::npos && eq > 0) v = std::stod(a.substr(eq + 1), &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (eq == std::string::npos || eq == 0 || used == 0 || used != a.size() - eq - 1)
      throw ConfigError(ctx.id + ".anchors: expected MODEL=RATING, got '" + a + "'");
    anchors[a.substr(0, eq)] = v;
  }
  return anchors;
}

json run_arena(StageContext& ctx) {
  const auto& c = ctx.config;
  arena::Options o;
  o.rounds = c["bootstrap"].get<int64_t>();
  o.seed = c["seed"].get<uint64_t>();
  o.anonymous_only = c["anonymous_only"].get<bool>();
  o.anchors = anchors_of(ctx);
  std::vector<arena::Battle> battles;
  std::vector<std::string> notes;
  for (const auto& f : c["files"].get<std::vector<std::string>>()) {
    auto b = arena::read_battles(f, notes);
    battles.insert(battles.end(), b.begin(), b.end());
  }
  for (const auto& n : notes) spdlog::warn("{}", n);
  json r = arena::report(battles, o);
  const bool as_json = c["json"].get<bool>();
  ctx.out << (as_json ? r.dump(2) + "\n" : arena::markdown(r));
  if (const fs::path out = c["out"].get<std::string>(); !out.empty()) {
    fs::create_directories(out);
    std::ofstream(out / "arena.md") << arena::markdown(r);
    std::ofstream(out / "arena.json") << r.dump(2) << "\n";
    std::ofstream(out / "arena.html") << arena::html(r);
    if (!as_json) ctx.out << "\nreport: " << (out / "arena.html").string() << "\n";
    else spdlog::info("report: {}", (out / "arena.html").string());
  }
  return r;
}

}  // namespace

std::vector<StageType> report_stage_types() {
  return {
      {"eval-report",
       "Recomputes the evaluation report from judgment files: vhost's judgments.jsonl or FastChat's reviews "
       "(Markdown on the output; with out, report.md, report.json and report.html).",
       {option_spec("reviews", "path_list", std::nullopt, "judgments.jsonl or FastChat review JSONL files"),
        option_spec("names", "string_list", json::array(), "FastChat reviews: the two models' names, in answer order"),
        option_spec("baseline", "string", "", "the model the others are compared with (default: the first)"),
        option_spec("questions", "path", "", "question JSONL: categories for FastChat reviews that carry none"),
        option_spec("out", "path", "", "also write report.md, report.json and report.html here")},
       {},
       {},
       run_eval_report},
      {"agreement",
       "Agreement between judges on pairwise votes, per turn, with and without ties (FastChat's compute_agreement.py).",
       {option_spec("files", "path_list", std::nullopt,
                    "vote files: FastChat's MT-bench judgment JSON (human and GPT-4), or vhost pairwise judgments.jsonl (as gpt4-pair)"),
        option_spec("judges", "string_list", json::array({"gpt4-pair", "human"}), "the two judges: gpt4-pair human, or human human"),
        option_spec("json", "boolean", false, "print JSON")},
       {},
       {},
       run_agreement},
      {"arena",
       "The arena leaderboard (FastChat's Chatbot Arena): Bradley-Terry MLE ratings with bootstrap intervals and online "
       "Elo, from votes, battles or pairwise judgments.",
       {option_spec("files", "path_list", std::nullopt,
                    "conversation logs with votes (vhost serve|api --log), FastChat battle files, pairwise judgments"),
        option_spec("bootstrap", "integer", 1000, "bootstrap rounds for the 95% intervals (0: none)", 0, 100000),
        option_spec("seed", "integer", 0, "bootstrap seed", 0, 9007199254740991.0),
        option_spec("anonymous_only", "boolean", false, "only battles whose models were hidden until the vote"),
        option_spec("anchors", "string_list", json::array(),
                    "MODEL=RATING: shift every rating so MODEL has RATING (FastChat: llama-13b=800)"),
        option_spec("out", "path", "", "also write arena.md, arena.json and arena.html here"),
        option_spec("json", "boolean", false, "print the report as JSON")},
       {},
       {},
       run_arena},
  };
}

}  // namespace vhost::host
