// The tensors a decoding step of a model reads: every one but the embedding (one row a token) where
// the output head is a tensor of its own. bench_generate streams them for its memory bound;
// bench_device sums their bytes for the device's.
#pragma once
#include "model.hpp"

#include <vector>

inline std::vector<torch::Tensor> step_weights(const vhost::llama::LlamaModel& m) {
  bool has_output = false;
  for (const auto& [name, t] : m.named_tensors()) has_output |= name == "lm_head.weight";
  std::vector<torch::Tensor> out;
  for (const auto& [name, t] : m.named_tensors())
    if (!(name == "model.embed_tokens.weight" && has_output)) out.push_back(t);
  return out;
}
