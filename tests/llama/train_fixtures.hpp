// What the trainer's tests share: a small config, a random micro-batch, a fresh scratch folder.
#pragma once

#include "config.hpp"
#include "train.hpp"

#include <torch/torch.h>

#include <filesystem>
#include <string>

namespace vhost::llama::testing {

// A fresh, empty VHOST_TEST_TMP_DIR/GROUP/NAME.
inline std::filesystem::path fresh_dir(const std::string& group, const std::string& name) {
  std::filesystem::path p = std::filesystem::path(VHOST_TEST_TMP_DIR) / group / name;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

// The tiny preset with a 97-word vocabulary and a 64-position context.
inline LlamaConfig small(bool tied = false) {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.vocab_size = 97;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = tied;
  return c;
}

// Random ids and targets [B, T]; the first third of each row untrained (-100).
inline Batch random_batch(int64_t B, int64_t T, int64_t vocab, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  Batch b;
  b.ids = torch::randint(vocab, {B, T}, gen, torch::kInt64);
  b.targets = torch::randint(vocab, {B, T}, gen, torch::kInt64);
  b.targets.index_put_({torch::indexing::Slice(), torch::indexing::Slice(0, T / 3)}, -100);
  b.trained = (b.targets != -100).sum().item<int64_t>();
  b.tokens = B * T;
  return b;
}

}  // namespace vhost::llama::testing
