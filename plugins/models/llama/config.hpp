// The LLaMA shape, read from and written to HF's config.json.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>

namespace vhost::llama {

struct LlamaConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // < heads: grouped-query attention (LLaMA-2 70B style)
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  std::string torch_dtype = "float32";  // the dtype the weights are stored in

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  int64_t parameter_count() const;

  // Reads config.json; errors name the file and the field.
  static LlamaConfig load(const std::filesystem::path& config_json);
  static LlamaConfig from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
  // "tiny" (tests, demo), "stories15m" (dim 288, 6 layers, 6 heads, vocab 32000), "1b" (TinyLlama-1.1B's shape), "7b", "13b".
  static LlamaConfig preset(const std::string& name);
};

}  // namespace vhost::llama
