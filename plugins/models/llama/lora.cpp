#include "lora.hpp"

#include "model.hpp"
#include "safetensors.hpp"

#include <vhost/plugin.hpp>

#include <algorithm>
#include <fstream>
#include <regex>
#include <set>

namespace vhost::llama {

namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<std::string>& lora_module_names() {
  static const std::vector<std::string> names{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return names;
}

static bool is_attention(const std::string& m) { return m == "q_proj" || m == "k_proj" || m == "v_proj" || m == "o_proj"; }

std::vector<int64_t> lora_module_shape(const LlamaConfig& c, const std::string& m) {
  const int64_t d = c.hidden_size, hd = c.head_dim(), f = c.intermediate_size;
  if (m == "q_proj") return {c.num_attention_heads * hd, d};
  if (m == "k_proj" || m == "v_proj") return {c.num_key_value_heads * hd, d};
  if (m == "o_proj") return {d, c.num_attention_heads * hd};
  if (m == "gate_proj" || m == "up_proj") return {f, d};
  if (m == "down_proj") return {d, f};
  throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "unknown LoRA target module '" + m + "'");
}

static std::string module_path(int64_t layer, const std::string& m) {
  return "model.layers." + std::to_string(layer) + (is_attention(m) ? ".self_attn." : ".mlp.") + m;
}

std::string lora_base_weight(int64_t layer, const std::string& m) { return module_path(layer, m) + ".weight"; }

std::string lora_key(int64_t layer, const std::string& m, char which) {
  return "base_model.model." + module_path(layer, m) + ".lora_" + std::string(1, which) + ".weight";
}

std::string lora_saved_weight(const std::string& m) {
  return m == "lm_head" ? "lm_head.weight" : "model.embed_tokens.weight";
}

std::string lora_saved_key(const std::string& m) { return "base_model.model." + lora_saved_weight(m); }

// PEFT matches a target name against the end of a module's path: "q_proj", "self_attn.q_proj".
static std::string target_name(const std::string& field, const std::string& t) {
  for (const auto& m : lora_module_names())
    if (t == m || t == (is_attention(m) ? "self_attn." : "mlp.") + m) return m;
  throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT,
                     field + ": unknown target module '" + t +
                         "' (a LLaMA's are q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, or all-linear)");
}

static std::vector<std::string> in_layer_order(const std::set<std::string>& s) {
  std::vector<std::string> out;
  for (const auto& m : lora_module_names())
    if (s.count(m)) out.push_back(m);
  return out;
}

static void check_saved(const std::string& field, const std::vector<std::string>& mods, const LlamaConfig& cfg) {
  for (const auto& m : mods) {
    if (m != "lm_head" && m != "embed_tokens")
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, field + ": '" + m + "' cannot be trained whole (embed_tokens, lm_head)");
    if (cfg.tie_word_embeddings)
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT,
                         field + ": '" + m + "': this model ties lm_head to embed_tokens (one tensor); "
                                             "training it whole beside the adapters is not supported");
  }
}

LoraConfig LoraConfig::from_json(const json& j, const LlamaConfig& cfg) {
  LoraConfig c;
  if (j.contains("r")) {
    if (!j["r"].is_number_integer()) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "r: expected an integer, got " + j["r"].dump());
    c.r = j["r"].get<int64_t>();
    const int64_t most = std::min(cfg.hidden_size, cfg.intermediate_size);
    if (c.r <= 0 || c.r > most)
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "r: " + std::to_string(c.r) + " is outside [1, " + std::to_string(most) +
                                                         "] (the LoRA rank; FastChat uses 8)");
  }
  if (j.contains("alpha")) {
    if (!j["alpha"].is_number() || !(j["alpha"].get<double>() > 0))
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "alpha: expected a number > 0, got " + j["alpha"].dump());
    c.alpha = j["alpha"].get<double>();
  }
  if (j.contains("dropout")) {
    if (!j["dropout"].is_number() || !(j["dropout"].get<double>() >= 0 && j["dropout"].get<double>() < 1))
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "dropout: expected a number in [0, 1), got " + j["dropout"].dump());
    c.dropout = j["dropout"].get<double>();
  }
  auto strings = [&](const char* k) {
    std::vector<std::string> out;
    if (!j[k].is_array()) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, std::string(k) + ": expected a list of names");
    for (const auto& v : j[k]) {
      if (!v.is_string()) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, std::string(k) + ": " + v.dump() + " is not a name");
      out.push_back(v.get<std::string>());
    }
    return out;
  };
  if (j.contains("target_modules")) {
    std::set<std::string> t;
    for (const auto& s : strings("target_modules")) {
      if (s == "all-linear") {
        t.insert(lora_module_names().begin(), lora_module_names().end());
        continue;
      }
      t.insert(target_name("target_modules", s));
    }
    if (t.empty()) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "target_modules: empty (name at least one, e.g. q_proj)");
    c.target_modules = in_layer_order(t);
  }
  if (j.contains("modules_to_save")) {
    c.modules_to_save = strings("modules_to_save");
    check_saved("modules_to_save", c.modules_to_save, cfg);
    std::sort(c.modules_to_save.begin(), c.modules_to_save.end());
    c.modules_to_save.erase(std::unique(c.modules_to_save.begin(), c.modules_to_save.end()), c.modules_to_save.end());
  }
  return c;
}

json LoraConfig::to_json() const {
  return {{"r", r}, {"alpha", alpha}, {"dropout", dropout}, {"target_modules", target_modules},
          {"modules_to_save", modules_to_save}, {"use_rslora", rslora}};
}

json LoraConfig::to_peft_json(const std::string& base) const {
  // The fields PEFT reads for a LoRA adapter; the rest take its defaults.
  return {{"peft_type", "LORA"},
          {"task_type", "CAUSAL_LM"},
          {"base_model_name_or_path", base},
          {"r", r},
          {"lora_alpha", alpha},
          {"lora_dropout", dropout},
          {"target_modules", target_modules},
          {"modules_to_save", modules_to_save.empty() ? json(nullptr) : json(modules_to_save)},
          {"bias", "none"},
          {"fan_in_fan_out", false},
          {"use_rslora", rslora},
          {"use_dora", false},
          {"init_lora_weights", true},
          {"inference_mode", true},
          {"rank_pattern", json::object()},
          {"alpha_pattern", json::object()},
          {"layers_to_transform", nullptr},
          {"layers_pattern", nullptr},
          {"revision", nullptr},
          {"auto_mapping", nullptr}};
}

std::pair<torch::Tensor, torch::Tensor> Adapter::ab(int64_t layer, const std::string& m) const {
  auto a = tensors.find(lora_key(layer, m, 'A')), b = tensors.find(lora_key(layer, m, 'B'));
  if (a == tensors.end() || b == tensors.end()) return {};
  return {a->second, b->second};
}

static std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

Adapter load_adapter(const fs::path& dir, const LlamaConfig& base) {
  const fs::path cfg_file = dir / "adapter_config.json", weights = dir / "adapter_model.safetensors";
  if (!fs::is_directory(dir))
    throw vhost::Error(VHOST_ERR_IO, dir.string() + ": not an adapter folder (adapter_config.json, adapter_model.safetensors)");
  if (!fs::exists(cfg_file)) throw vhost::Error(VHOST_ERR_IO, cfg_file.string() + ": missing (not a PEFT adapter folder?)");
  if (!fs::exists(weights)) {
    if (fs::exists(dir / "adapter_model.bin"))
      throw vhost::Error(VHOST_ERR_UNSUPPORTED, dir.string() + ": holds a pickled adapter_model.bin; save it as safetensors "
                                                "(peft: save_pretrained(safe_serialization=True))");
    throw vhost::Error(VHOST_ERR_IO, weights.string() + ": missing");
  }
  json j;
  try {
    std::ifstream in(cfg_file);
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, cfg_file.string() + ": not valid JSON: " + e.what());
  }
  auto bad = [&](const std::string& field, const std::string& why) {
    return vhost::Error(VHOST_ERR_INVALID_ARGUMENT, cfg_file.string() + ": " + field + ": " + why);
  };
  auto unsupported = [&](const std::string& field, const std::string& why) {
    return vhost::Error(VHOST_ERR_UNSUPPORTED, cfg_file.string() + ": " + field + ": " + why);
  };
  if (!j.is_object()) throw bad("(top level)", "not a JSON object");
  if (j.value("peft_type", std::string()) != "LORA")
    throw unsupported("peft_type", j.value("peft_type", json()).dump() + " is not \"LORA\" (vhost reads LoRA adapters)");
  Adapter a;
  a.source = dir;
  LoraConfig& c = a.config;
  if (!j.contains("r") || !j["r"].is_number_integer() || j["r"].get<int64_t>() <= 0)
    throw bad("r", "expected an integer >= 1, got " + j.value("r", json()).dump());
  c.r = j["r"].get<int64_t>();
  if (!j.contains("lora_alpha") || !j["lora_alpha"].is_number())
    throw bad("lora_alpha", "expected a number, got " + j.value("lora_alpha", json()).dump());
  c.alpha = j["lora_alpha"].get<double>();
  c.dropout = j.contains("lora_dropout") && j["lora_dropout"].is_number() ? j["lora_dropout"].get<double>() : 0.0;
  auto flag = [&](const char* k) { return j.contains(k) && j[k].is_boolean() && j[k].get<bool>(); };
  c.rslora = flag("use_rslora");
  if (flag("use_dora")) throw unsupported("use_dora", "DoRA adapters are not supported (plain LoRA only)");
  if (flag("fan_in_fan_out")) throw unsupported("fan_in_fan_out", "true is for GPT-2's Conv1D layers, not LLaMA's");
  if (j.contains("bias") && j["bias"] != "none") throw unsupported("bias", j["bias"].dump() + ": only \"none\" is supported");
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    if (j.contains(k) && !j[k].is_null() && !j[k].empty())
      throw unsupported(k, "per-module ranks or alphas are not supported (one r and lora_alpha for every module)");
  // Target modules: a list of names, "all-linear", or a regular expression over module paths.
  std::set<std::string> targets;
  const json t = j.value("target_modules", json());
  if (t.is_string() && t.get<std::string>() == "all-linear") {
    targets.insert(lora_module_names().begin(), lora_module_names().end());
  } else if (t.is_string()) {
    std::regex re;
    try {
      re = std::regex(t.get<std::string>());
    } catch (const std::regex_error& e) {
      throw bad("target_modules", "not a valid regular expression: " + std::string(e.what()));
    }
    for (int64_t i = 0; i < base.num_hidden_layers; ++i)
      for (const auto& m : lora_module_names())
        if (std::regex_match(module_path(i, m), re)) targets.insert(m);
  } else if (t.is_array()) {
    for (const auto& v : t) {
      if (!v.is_string()) throw bad("target_modules", v.dump() + " is not a module name");
      targets.insert(target_name(cfg_file.string() + ": target_modules", v.get<std::string>()));
    }
  } else {
    throw bad("target_modules", "expected a list of module names, got " + t.dump());
  }
  c.target_modules = in_layer_order(targets);
  if (j.contains("modules_to_save") && j["modules_to_save"].is_array())
    for (const auto& v : j["modules_to_save"]) {
      if (!v.is_string()) throw bad("modules_to_save", v.dump() + " is not a module name");
      c.modules_to_save.push_back(v.get<std::string>());
    }
  check_saved(cfg_file.string() + ": modules_to_save", c.modules_to_save, base);

  SafetensorsFile f(weights);
  std::set<std::string> expected;
  auto take = [&](const std::string& key, const std::vector<int64_t>& shape, const std::string& what) {
    if (!f.contains(key)) return false;
    auto t = f.get(key);
    if (t.sizes().vec() != shape)
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT,
                         weights.string() + ": tensor '" + key + "' has shape " + shape_str(t.sizes().vec()) + " but " + what +
                             " needs " + shape_str(shape) + " (an adapter for another base model, or another r?)");
    if (!t.is_floating_point())
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, weights.string() + ": tensor '" + key + "' is not floating point");
    a.tensors[key] = t.to(torch::kFloat32).clone();
    expected.insert(key);
    return true;
  };
  int64_t adapted = 0;
  for (int64_t i = 0; i < base.num_hidden_layers; ++i)
    for (const auto& m : c.target_modules) {
      const auto s = lora_module_shape(base, m);
      const std::string what = "a rank-" + std::to_string(c.r) + " adapter of this base's " + m;
      const bool ha = take(lora_key(i, m, 'A'), {c.r, s[1]}, what), hb = take(lora_key(i, m, 'B'), {s[0], c.r}, what);
      if (ha != hb)
        throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, weights.string() + ": layer " + std::to_string(i) + "'s " + m +
                                                           " has lora_" + (ha ? "A" : "B") + " but no lora_" + (ha ? "B" : "A"));
      adapted += ha;
    }
  for (const auto& m : c.modules_to_save) {
    const std::vector<int64_t> s{base.vocab_size, base.hidden_size};
    if (!take(lora_saved_key(m), s, "this base's " + m))
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, weights.string() + ": modules_to_save names " + m + " but there is no '" +
                                                         lora_saved_key(m) + "'");
  }
  for (const auto& [key, e] : f.entries())
    if (!expected.count(key))
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT,
                         weights.string() + ": unexpected tensor '" + key + "' (not a LoRA of " +
                             std::to_string(base.num_hidden_layers) + "-layer LLaMA's target_modules " +
                             json(c.target_modules).dump() + "; an adapter for another base model?)");
  if (adapted == 0 && c.modules_to_save.empty())
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, weights.string() + ": holds no adapter weights");
  return a;
}

void save_adapter(const fs::path& dir, const LoraConfig& cfg, const std::string& base,
                  const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  fs::create_directories(dir);
  std::vector<std::pair<std::string, torch::Tensor>> t32;
  for (const auto& [k, t] : tensors) t32.emplace_back(k, t.to(torch::kFloat32));
  save_safetensors(dir / "adapter_model.safetensors", t32, {{"format", "pt"}});
  const fs::path tmp = dir / "adapter_config.json.tmp";
  {
    std::ofstream out(tmp);
    out << cfg.to_peft_json(base).dump(2) << "\n";
    out.flush();
    if (!out) throw vhost::Error(VHOST_ERR_IO, tmp.string() + ": write failed (disk full?)");
  }
  fs::rename(tmp, dir / "adapter_config.json");
}

std::vector<std::pair<std::string, torch::Tensor>> merge_adapter(const LlamaModel& base, const Adapter& a) {
  if (base.quantized_matrices())
    throw vhost::Error(VHOST_ERR_UNSUPPORTED, a.source.string() + ": merging an adapter needs the base's matrices "
                                                                  "dequantised (it holds quantized blocks)");
  const auto& cfg = base.config();
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> adapted;
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    for (const auto& m : a.config.target_modules) {
      auto ab = a.ab(i, m);
      if (ab.first.defined()) adapted[lora_base_weight(i, m)] = ab;
    }
  std::map<std::string, torch::Tensor> saved;
  for (const auto& m : a.config.modules_to_save) saved[lora_saved_weight(m)] = a.tensors.at(lora_saved_key(m));
  const double s = a.config.scaling();
  torch::NoGradGuard ng;
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, w] : base.named_tensors()) {
    if (auto it = saved.find(name); it != saved.end()) {
      out.emplace_back(name, it->second.to(w.device(), w.scalar_type()));
    } else if (auto jt = adapted.find(name); jt != adapted.end()) {
      auto delta = torch::mm(jt->second.second, jt->second.first).mul_(s);  // B A, float32
      out.emplace_back(name, (w.to(torch::kFloat32) + delta.to(w.device())).to(w.scalar_type()));
    } else {
      out.emplace_back(name, w);
    }
  }
  return out;
}

}  // namespace vhost::llama
