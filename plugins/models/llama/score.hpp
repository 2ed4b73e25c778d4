// Log-probabilities of a token sequence under the model: what OpenAI's `logprobs`, `echo` and
// `max_tokens: 0` scoring return, and what lm-evaluation-harness's loglikelihood tasks read.
#pragma once

#include "model.hpp"
#include "tokenizer.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace vhost::llama {

struct TokenScore {
  int32_t id = 0;
  std::string text;                // the token as it reads at its place (see token_text)
  std::optional<double> logprob;   // log P(id | the ids before it); none for the first token
  struct Alt {
    int32_t id;
    std::string text;
    double logprob;
  };
  std::vector<Alt> top;            // the `top_k` most likely tokens at this place, most likely first
};

// Scores ids[from, end) by one teacher-forced forward over all of `ids` (no sampling, no
// temperature: the model's own distribution, as vLLM's raw logprobs). A generated token's score
// equals the logits it was sampled from up to float rounding (the cached decode path and the
// full forward add in another order).
std::vector<TokenScore> score(const LlamaModel& model, const Tokenizer* tokenizer, const std::vector<int32_t>& ids,
                              std::size_t from, int64_t top_k, int32_t adapter = -1);  // adapter: LlamaModel::add_adapter's

// The text `id` adds after `before` (its leading space kept). A byte-fallback piece that is
// not a whole character by itself reads "bytes:\xNN", as OpenAI writes such tokens.
std::string token_text(const Tokenizer& tokenizer, const std::vector<int32_t>& before, int32_t id);

}  // namespace vhost::llama
