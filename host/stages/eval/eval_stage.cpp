// The eval stage's options; the stage itself is run_eval (eval.cpp).
#include "stages/stages.hpp"

#include "stages/common/options.hpp"
#include "stages/eval/eval.hpp"

namespace vhost::host {

std::vector<StageType> eval_stage_types() {
  return {
      {"eval",
       "Answers a question set with models, grades the answers with a judge, and reports (Markdown, JSON, HTML).",
       {option_spec("questions", "path", std::nullopt, "FastChat question JSONL (question_id, category, turns)"),
        option_spec("limit", "integer", 0, "only the first N questions (0: all)", 0, 1e9),
        option_spec("models", "string_list", json::array(), "model instances that answer (empty: every model)"),
        option_spec("answers", "string_list", json::array(), "FastChat answer JSONL files to grade as well"),
        option_spec("endpoints", "string_list", json::array(),
                    "chat endpoints that answer too: judge-kind instances (e.g. the openai plugin at vhost serve)"),
        option_spec("judge", "string", "", "the judge instance; empty: the only one"),
        one_of(option_spec("mode", "string", "vicuna", "vicuna (two scores), single ([[rating]]), pairwise ([[A]]/[[B]]/[[C]])"),
               {"vicuna", "single", "pairwise"}),
        option_spec("baseline", "string", "", "pairwise modes: the model the others are compared with (default: the first)"),
        one_of(option_spec("pairs", "string", "baseline",
                           "pairwise modes: every model against the baseline (FastChat's pairwise-baseline), or all "
                           "pairs of models (pairwise-all)"),
               {"baseline", "all"}),
        option_spec("both_orders", "boolean", true, "pairwise modes: judge each pair in both orders"),
        option_spec("reference_answers", "path", "",
                    "FastChat reference_answer/JUDGE.jsonl: reference answers by question id for math, reasoning and "
                    "coding (instead of the questions' own `reference`)"),
        option_spec("judge_prompts", "path", "", "FastChat judge_prompts.jsonl to use instead of the built-in prompts"),
        option_spec("out", "path", std::nullopt, "answers/, judgments.jsonl, report.md/json/html"),
        option_spec("concurrency", "integer", 8, "judge requests in flight", 1, 1024),
        option_spec("parse_retries", "integer", 2, "ask again when the judge's reply has no verdict", 0, 10),
        option_spec("retry_errors", "boolean", false,
                    "ask again the stored judgments that recorded an error (the old ones go to judgments.previous.jsonl)"),
        option_spec("max_tokens", "integer", 512, "answer length per turn", 1, 1 << 20),
        sampling_option(sampling::kTemperature, "float", sampling::kTemperatureEval),
        option_spec("judge_max_tokens", "integer", 1024, "judge reply length", 1, 1 << 20)},
       {{"judge", VHOST_KIND_JUDGE}},
       {"models", "endpoints"},
       run_eval}
  };
}

}  // namespace vhost::host
