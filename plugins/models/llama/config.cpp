#include "config.hpp"

#include <vhost/plugin.hpp>

#include <fstream>

namespace vhost::llama {

int64_t LlamaConfig::parameter_count() const {
  int64_t hd = head_dim();
  int64_t attn = hidden_size * (num_attention_heads * hd) * 2 + hidden_size * (num_key_value_heads * hd) * 2;
  int64_t mlp = 3 * hidden_size * intermediate_size;
  int64_t per_layer = attn + mlp + 2 * hidden_size;
  int64_t emb = vocab_size * hidden_size;
  return num_hidden_layers * per_layer + emb * (tie_word_embeddings ? 1 : 2) + hidden_size;
}

LlamaConfig LlamaConfig::load(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw vhost::Error(VHOST_ERR_IO, file.string() + ": cannot open");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT,
                       file.string() + ": not valid JSON at byte " + std::to_string(e.byte) + ": " + e.what());
  }
  return from_json(j, file.string());
}

LlamaConfig LlamaConfig::from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, source + ": not a JSON object");
  LlamaConfig c;
  auto bad = [&](const std::string& field, const std::string& why) {
    return vhost::Error(VHOST_ERR_INVALID_ARGUMENT, source + ": field '" + field + "' " + why);
  };
  auto get_int = [&](const char* field, int64_t& out, bool required, int64_t min) {
    if (!j.contains(field) || j[field].is_null()) {
      if (required) throw bad(field, "is missing");
      return;
    }
    if (!j[field].is_number_integer()) throw bad(field, "must be an integer, is " + std::string(j[field].type_name()));
    out = j[field].get<int64_t>();
    if (out < min) throw bad(field, "must be at least " + std::to_string(min) + ", is " + std::to_string(out));
  };
  auto get_num = [&](const char* field, double& out) {
    if (!j.contains(field) || j[field].is_null()) return;
    if (!j[field].is_number()) throw bad(field, "must be a number");
    out = j[field].get<double>();
    if (!(out > 0)) throw bad(field, "must be positive");
  };
  if (j.contains("model_type") && j["model_type"] != "llama")
    throw bad("model_type", "is " + j["model_type"].dump() + "; this plugin loads \"llama\" checkpoints");
  get_int("vocab_size", c.vocab_size, true, 1);
  get_int("hidden_size", c.hidden_size, true, 1);
  get_int("intermediate_size", c.intermediate_size, true, 1);
  get_int("num_hidden_layers", c.num_hidden_layers, true, 1);
  get_int("num_attention_heads", c.num_attention_heads, true, 1);
  c.num_key_value_heads = c.num_attention_heads;
  get_int("num_key_value_heads", c.num_key_value_heads, false, 1);
  get_int("max_position_embeddings", c.max_position_embeddings, false, 1);
  get_int("bos_token_id", c.bos_token_id, false, 0);
  get_int("eos_token_id", c.eos_token_id, false, 0);
  get_num("rms_norm_eps", c.rms_norm_eps);
  get_num("rope_theta", c.rope_theta);
  if (j.contains("tie_word_embeddings") && !j["tie_word_embeddings"].is_null()) {
    if (!j["tie_word_embeddings"].is_boolean()) throw bad("tie_word_embeddings", "must be true or false");
    c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  }
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"];
  else if (j.contains("dtype") && j["dtype"].is_string()) c.torch_dtype = j["dtype"];  // transformers 5's name
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    throw bad("rope_scaling", "is set; scaled rotary embeddings are not supported yet");
  // transformers 5 writes the rotary settings as "rope_parameters": {"rope_theta", "rope_type"}.
  if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) {
    const auto& rp = j["rope_parameters"];
    if (!rp.is_object()) throw bad("rope_parameters", "must be an object");
    if (rp.contains("rope_type") && rp["rope_type"] != "default")
      throw bad("rope_parameters.rope_type", "is " + rp["rope_type"].dump() + "; only \"default\" rotary embeddings are supported yet");
    if (rp.contains("rope_theta") && !rp["rope_theta"].is_null()) {
      if (!rp["rope_theta"].is_number() || !(rp["rope_theta"].get<double>() > 0))
        throw bad("rope_parameters.rope_theta", "must be a positive number");
      double theta = rp["rope_theta"].get<double>();
      if (j.contains("rope_theta") && j["rope_theta"].is_number() && j["rope_theta"].get<double>() != theta)
        throw bad("rope_theta", "disagrees with rope_parameters.rope_theta");
      c.rope_theta = theta;
    }
  }
  // Variants of the architecture this plugin does not compute: refused, never silently ignored.
  for (const char* f : {"attention_bias", "mlp_bias"})
    if (j.contains(f) && j[f].is_boolean() && j[f].get<bool>()) throw bad(f, "is true; biases are not supported");
  if (j.contains("hidden_act") && j["hidden_act"].is_string() && j["hidden_act"] != "silu")
    throw bad("hidden_act", "is " + j["hidden_act"].dump() + "; only \"silu\" is supported");
  if (j.contains("head_dim") && j["head_dim"].is_number_integer() && c.num_attention_heads > 0 &&
      j["head_dim"].get<int64_t>() != c.hidden_size / c.num_attention_heads)
    throw bad("head_dim", std::to_string(j["head_dim"].get<int64_t>()) + " is not hidden_size / num_attention_heads (" +
                              std::to_string(c.hidden_size / c.num_attention_heads) + "); not supported");
  if (c.hidden_size % c.num_attention_heads != 0)
    throw bad("hidden_size", std::to_string(c.hidden_size) + " is not divisible by num_attention_heads " +
                                 std::to_string(c.num_attention_heads));
  if (c.head_dim() % 2 != 0) throw bad("hidden_size", "gives an odd head dimension; rotary needs it even");
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    throw bad("num_key_value_heads", std::to_string(c.num_key_value_heads) + " does not divide num_attention_heads " +
                                         std::to_string(c.num_attention_heads));
  return c;
}

nlohmann::json LlamaConfig::to_json() const {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"vocab_size", vocab_size},
          {"hidden_size", hidden_size},
          {"intermediate_size", intermediate_size},
          {"num_hidden_layers", num_hidden_layers},
          {"num_attention_heads", num_attention_heads},
          {"num_key_value_heads", num_key_value_heads},
          {"max_position_embeddings", max_position_embeddings},
          {"rms_norm_eps", rms_norm_eps},
          {"rope_theta", rope_theta},
          {"tie_word_embeddings", tie_word_embeddings},
          {"bos_token_id", bos_token_id},
          {"eos_token_id", eos_token_id},
          {"hidden_act", "silu"},
          {"initializer_range", 0.02},
          {"torch_dtype", torch_dtype}};
}

LlamaConfig LlamaConfig::preset(const std::string& name) {
  LlamaConfig c;
  if (name == "tiny") {
    c.vocab_size = 512;
    c.hidden_size = 64;
    c.intermediate_size = 172;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.max_position_embeddings = 512;
    c.rms_norm_eps = 1e-5;
  } else if (name == "stories15m") {
    c.vocab_size = 32000;
    c.hidden_size = 288;
    c.intermediate_size = 768;
    c.num_hidden_layers = 6;
    c.num_attention_heads = 6;
    c.num_key_value_heads = 6;
    c.max_position_embeddings = 256;
    c.rms_norm_eps = 1e-5;
  } else if (name == "1b") {
    // TinyLlama-1.1B's shape (LLaMA-2 architecture with grouped-query attention): the ~1B size
    // bench/large_model.sh measures beside llama.cpp.
    c.hidden_size = 2048;
    c.intermediate_size = 5632;
    c.num_hidden_layers = 22;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 4;
    c.max_position_embeddings = 2048;
  } else if (name == "7b") {
    // LLaMA-1 7B, Vicuna-7B's base (defaults above are its shape).
  } else if (name == "13b") {
    c.hidden_size = 5120;
    c.intermediate_size = 13824;
    c.num_hidden_layers = 40;
    c.num_attention_heads = 40;
    c.num_key_value_heads = 40;
  } else {
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "unknown preset '" + name + "' (tiny, stories15m, 1b, 7b, 13b)");
  }
  return c;
}

}  // namespace vhost::llama
