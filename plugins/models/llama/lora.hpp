// LoRA adapters (Hu et al. 2021) in HF PEFT's file format: a frozen base weight W [out, in] gets a
// trainable low-rank update, y = W x + s · B (A dropout(x)), with A [r, in], B [out, r] and
// s = alpha / r (alpha / sqrt(r) with rsLoRA). A folder holds adapter_config.json and
// adapter_model.safetensors, whose tensors PEFT names
//   base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight   (and lora_B)
//   base_model.model.lm_head.weight                                     (modules_to_save)
// so that `PeftModel.from_pretrained(base, dir)` loads what vhost trains, and vhost loads what
// PEFT saved.
#pragma once

#include "config.hpp"

#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace vhost::llama {

class LlamaModel;

struct LoraConfig {
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0.05;
  // Module names as HF calls them: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
  std::vector<std::string> target_modules{"q_proj", "v_proj"};
  // Whole modules trained beside the adapters (PEFT's modules_to_save): embed_tokens, lm_head.
  std::vector<std::string> modules_to_save;
  bool rslora = false;
  double scaling() const { return rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r); }

  // The train stage's fields r, alpha, dropout, target_modules, modules_to_save; errors name the
  // field. `cfg` checks modules_to_save against the model (a tied lm_head is the embedding).
  static LoraConfig from_json(const nlohmann::json& j, const LlamaConfig& cfg);
  // What trainer_state.json records (resuming with other LoRA settings is refused).
  nlohmann::json to_json() const;
  // adapter_config.json as PEFT writes it.
  nlohmann::json to_peft_json(const std::string& base_model) const;
};

// The seven projection names, in a decoder layer's order.
const std::vector<std::string>& lora_module_names();
// [out, in] of a projection in a model of this config.
std::vector<int64_t> lora_module_shape(const LlamaConfig& cfg, const std::string& module);
// The HF weight name of layer i's projection ("model.layers.3.self_attn.q_proj.weight").
std::string lora_base_weight(int64_t layer, const std::string& module);
// PEFT's key of layer i's lora_A (which = 'A') or lora_B ('B').
std::string lora_key(int64_t layer, const std::string& module, char which);
// PEFT's key of a saved whole module (embed_tokens, lm_head), and the HF weight it replaces.
std::string lora_saved_key(const std::string& module);
std::string lora_saved_weight(const std::string& module);

// An adapter read from a PEFT folder, checked against the base config: every tensor's shape,
// no unknown keys, and the options vhost applies exactly (LoRA, no DoRA, no bias, no fan-in/out).
struct Adapter {
  LoraConfig config;
  std::filesystem::path source;
  std::map<std::string, torch::Tensor> tensors;  // PEFT keys -> float32 CPU tensors
  // (A, B) of layer i's module, or undefined tensors when it has no adapter there.
  std::pair<torch::Tensor, torch::Tensor> ab(int64_t layer, const std::string& module) const;
};
Adapter load_adapter(const std::filesystem::path& dir, const LlamaConfig& base);

// Writes adapter_config.json (base_model_name_or_path = base) and adapter_model.safetensors
// (float32) into dir, atomically per file.
void save_adapter(const std::filesystem::path& dir, const LoraConfig& cfg, const std::string& base,
                  const std::vector<std::pair<std::string, torch::Tensor>>& tensors);

// The base's tensors with the adapter merged in: W + s · B A (in float32, then the base's dtype)
// for every adapted projection, saved modules replaced; the others are the base's own tensors.
std::vector<std::pair<std::string, torch::Tensor>> merge_adapter(const LlamaModel& base, const Adapter& a);

}  // namespace vhost::llama
