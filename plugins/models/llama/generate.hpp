// Text generation: greedy and sampled decoding with a KV cache, several prompts of different
// lengths in one batch, stop conditions and per-token streaming.
#pragma once

#include "model.hpp"
#include "tokenizer.hpp"

#include <vhost/c/vhost.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace vhost::llama {

struct SamplingParams {
  double temperature = 1.0;         // 0: greedy
  double top_p = 1.0;               // nucleus: smallest set of tokens with this much probability
  int64_t top_k = 0;                // 0: no limit
  double repetition_penalty = 1.0;  // > 1 discourages tokens already in the sequence (CTRL / HF)
  // OpenAI's: subtracted from the logit of each token already generated (presence), and once
  // per time it was (frequency); over the generated tokens only, as vLLM does. In [-2, 2].
  double presence_penalty = 0.0, frequency_penalty = 0.0;
  int64_t max_tokens = 256;
  std::vector<std::string> stop;    // the text ends before the first of these
  std::optional<uint64_t> seed;     // sequence i of a batch samples with seed + i
  bool ignore_eos = false;
  int32_t adapter = -1;  // the LoRA adapter (LlamaModel::add_adapter) the sequence runs with; -1: none
  // The engine only: each token's log-probability and this many alternatives, from the logits it
  // was sampled from, sent through the callback as kScoresToken events; -1: none.
  int64_t stream_logprobs = -1;
};

// The token a TokenCallback gets for a scores event: its text is a JSON array of the scores of
// the tokens generated since the last event ({"id", "text", "logprob", "top": [[id, text,
// logprob]...]}), sent before the text those tokens make (VHOST_TOKEN_SCORES in vhost.h).
inline constexpr int32_t kScoresToken = VHOST_TOKEN_SCORES;

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids (EOS not included)
  std::string text;             // decoded, cut before a stop string
  std::string finish_reason;    // "stop" (EOS or stop string), "length", "cancelled"
  int64_t prompt_tokens = 0;
  double queue_seconds = 0;  // waiting for a batch row (the engine), before the prefill
  double first_token_seconds = -1;  // from the call to the first token sampled (EOS too); -1: none
};

// Called for each sequence as text becomes final: whole UTF-8 characters, never part of a stop
// string. Return false to cancel that sequence.
using TokenCallback = std::function<bool(std::size_t sequence, int32_t token, const std::string& delta)>;

// Throws vhost::Error for bad parameters or prompts that do not fit the context. Without a
// tokenizer (nullptr) only ids are produced: no text, no stop strings, no streaming text.
std::vector<GenerationResult> generate(const LlamaModel& model, const Tokenizer* tokenizer,
                                       const std::vector<std::vector<int32_t>>& prompts, const SamplingParams& params,
                                       const TokenCallback& on_token = {});

void validate(const SamplingParams& p);

// One token from a row of logits [V]: repetition penalty over `seen`, presence and frequency
// penalties over `generated` (the tokens generated so far), then greedy, or temperature, top-k,
// top-p and a draw from `gen`.
int64_t sample_token(const torch::Tensor& logits, const SamplingParams& p, const std::vector<int32_t>& seen,
                     torch::Generator& gen, const std::vector<int32_t>* generated = nullptr);

// One token per row of logits [R, V], each row with its own parameters, history and generator.
// Rows without penalty, top-k or top-p are sampled together (one softmax for all); a row draws
// the same token here as sample_token would give it alone.
std::vector<int64_t> sample_tokens(const torch::Tensor& logits, const std::vector<const SamplingParams*>& params,
                                   const std::vector<const std::vector<int32_t>*>& seen,
                                   const std::vector<torch::Generator*>& gens,
                                   const std::vector<const std::vector<int32_t>*>& generated = {});

// sample_tokens in tensor operations on the logits' own device (sample_tokens calls it for logits
// that are not on the CPU): penalties, greedy argmax, temperature, top-k, top-p and the
// inverse-CDF draw for all rows at once, the uniform draws still from each row's CPU generator,
// and one transfer back: the R ids. Row for row the same operations as sample_token, so on the
// CPU it picks the same tokens (test_engine.cpp compares them); on a GPU the sums may round
// differently, which moves a draw only when it lands on a boundary.
std::vector<int64_t> sample_tokens_on_device(const torch::Tensor& logits, const std::vector<const SamplingParams*>& params,
                                             const std::vector<const std::vector<int32_t>*>& seen,
                                             const std::vector<torch::Generator*>& gens,
                                             const std::vector<const std::vector<int32_t>*>& generated = {});

// Length of the longest suffix of `text` that is a proper prefix of a stop string: text that
// may still become a stop string, and so must not be streamed yet.
std::size_t held_back(const std::string& text, const std::vector<std::string>& stops);  // throws vhost::Error(VHOST_ERR_INVALID_ARGUMENT) naming the field

}  // namespace vhost::llama
