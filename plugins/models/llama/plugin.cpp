// The `llama` model plugin: LLaMA-1/2 checkpoints in HF layout, their SentencePiece tokenizer,
// KV-cache generation; and the tools `init`, `train-tokenizer`, `encode`, `decode`.
#include "engine.hpp"
#include "generate.hpp"
#include "lora.hpp"
#include "gguf.hpp"
#include "decode_kernels.hpp"
#include "model.hpp"
#include "score.hpp"
#include "tokenizer.hpp"
#include "train.hpp"

#include <vhost/conversation.hpp>
#include <vhost/plugin.hpp>
#include <vhost/torch/backend.hpp>
#include <vhost/torch/compat.hpp>

#include <chrono>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <thread>

namespace fs = std::filesystem;
using vhost::json;

namespace {

fs::path tokenizer_file(const std::string& p) {
  fs::path f(p);
  return fs::is_directory(f) ? f / "tokenizer.model" : f;
}

// A tokenizer from a tokenizer.model, a checkpoint folder, or a GGUF file's embedded vocabulary.
vhost::llama::Tokenizer open_tokenizer(const std::string& p) {
  if (fs::is_regular_file(p) && vhost::llama::is_gguf(p))
    return vhost::llama::Tokenizer::from_serialized(vhost::llama::load_gguf_tokenizer(p), p);
  return vhost::llama::Tokenizer::load(tokenizer_file(p));
}

template <class T>
T field(const json& j, const char* name, T def) {
  if (!j.contains(name) || j[name].is_null()) return def;
  try {
    return j[name].get<T>();
  } catch (const json::exception&) {
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, std::string("'") + name + "' has the wrong type (" + j[name].type_name() + ")");
  }
}

class LlamaPlugin final : public vhost::Model {
 public:
  static std::vector<vhost::Option> options() {
    using vhost::Option;
    return {Option::path("path", std::nullopt, "checkpoint: an HF folder (config.json, safetensors, tokenizer.model) or a GGUF file"),
            Option::instance("backend", "backend", "the backend to run on (empty: the only one, or the CPU)"),
            Option::string("dtype", "auto", "weights and activations: auto (the backend's), float32, bfloat16, float16")
                .one_of({"auto", "float32", "bfloat16", "float16"}),
            Option::path("tokenizer", "", "tokenizer.model (default: the one in the checkpoint folder)"),
            Option::boolean("load_weights", true,
                            "false: only the tokenizer and config (data preparation); generation is refused"),
            Option::string("template", "",
                           "the conversation template chat prompts use (vicuna_v1.1, llama-2-chat, ..., or one under "
                           "templates); empty: the checkpoint's conversation_template.json, else vicuna_v1.1"),
            Option::table("templates", "custom templates: name -> {base, style, roles, system_message, sep, sep2, ...}"),
            Option::integer("max_batch", 0,
                            "continuous batching: concurrent generate calls share a running batch of this many "
                            "sequences (0: calls run one at a time)")
                .range(0, 4096),
            Option::integer("max_queue", 64, "with max_batch: requests waiting beyond the batch before BUSY").range(0, 1 << 20),
            Option::integer("max_context", 0, "with max_batch: positions per sequence (0: the model's context)")
                .range(0, 1 << 24),
            Option::path("adapter", "",
                         "a LoRA adapter folder (HF PEFT's adapter_config.json + adapter_model.safetensors, or the "
                         "train stage's out/adapter) merged into the weights at load: the instance answers as base + adapter"),
            Option::table("adapters",
                          "LoRA adapters served on this one base (vLLM's multi-LoRA): name -> adapter folder; each "
                          "is a model of its own to the API, and requests for different adapters share a batch"),
            Option::string("decode_dtype", "auto",
                           "decoding steps on the CPU: auto (bfloat16 for a bfloat16 checkpoint read in place on a "
                           "CPU with AVX512-BF16, as HF and llama.cpp compute a bf16 model; float32 otherwise), "
                           "float32, or bfloat16 (weight products in bfloat16 on AMX "
                           "or AVX512-BF16, or widened to float32 on AVX-512/AVX2, with activations and the "
                           "KV cache in bfloat16; float32 on other CPUs). A bfloat16 checkpoint read in place "
                           "(dtype auto) is not copied: every product, prompts too, takes bf16-rounded activations "
                           "against its stored weights (vdpbf16ps on AVX512-BF16), as llama.cpp does")
                .one_of({"auto", "float32", "bfloat16"}),
            Option::string("quant_activations", "int8",
                           "Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K matrices decoded from their blocks: int8 (the activations rounded to "
                           "8 bits per 32 for integer dot products, as llama.cpp computes: faster) or float32 "
                           "(the weights widened to float32 in registers: the exact float32 model of the blocks)")
                .one_of({"int8", "float32"})};
  }

  explicit LlamaPlugin(const vhost::Config& cfg)
      : path_(cfg.get<std::string>("path")) {
    auto t0 = std::chrono::steady_clock::now();
    resolve_template(cfg);
    torch::Device device = torch::kCPU;
    torch::ScalarType dtype = torch::kFloat32;
    std::string backend = cfg.get<std::string>("backend");
    if (!backend.empty()) {
      auto* be = static_cast<const vhost::torch_ext::Backend*>(vhost::find_extension(backend, vhost::torch_ext::kBackend));
      if (!be)
        throw vhost::ConfigError("backend", "'" + backend + "' offers no libtorch device to this plugin (a different libtorch build?)");
      device = be->device();
      dtype = be->dtype();
      backend_ = be;
    }
    device_ = device;
    dtype_ = dtype;
    std::string d = cfg.get<std::string>("dtype");
    if (d != "auto") dtype = vhost::llama::dtype_from_name(d);
    // "auto" on a float32 CPU backend: a bfloat16/float16 checkpoint keeps its stored weights,
    // read in place by the decode kernels with float32 activations (LlamaModel::mixed_cpu); a
    // float32 copy of a 7B model (27 GB) no longer fits a 24 GB machine. Where the kernels cannot
    // read them (not x86), the weights become float32 as before.
    keep_stored_ = d == "auto" && device.is_cpu() && dtype == torch::kFloat32;
    model_dtype_ = dtype;
    std::string tok = cfg.get<std::string>("tokenizer");
    const bool weights = cfg.get<bool>("load_weights");
    if (fs::is_regular_file(path_) && vhost::llama::is_gguf(path_)) {
      // A GGUF file carries its tokenizer.
      if (weights) {
        // Quantized matrices stay blocks where the CPU kernels decode from them (dtype "auto"; every
        // block format needs what Q8_0 does).
        // (Not with an adapter: it is merged into dequantised weights.)
        auto g = vhost::llama::load_gguf_llama(path_, keep_stored_ && cfg.get<std::string>("adapter").empty() &&
                                                          vhost::llama::small_gemm_supports(vhost::llama::WeightType::q8_0));
        config_ = g.config;
        tokenizer_ = std::make_unique<vhost::llama::Tokenizer>(
            tok.empty() ? vhost::llama::Tokenizer::from_serialized(g.tokenizer_model, path_.string())
                        : vhost::llama::Tokenizer::load(tok));
        model_ = std::make_unique<vhost::llama::LlamaModel>(g.config, std::move(g.tensors), path_.string(), device,
                                                            load_dtype(g.config.torch_dtype));
      } else {
        tokenizer_ = std::make_unique<vhost::llama::Tokenizer>(
            tok.empty() ? vhost::llama::Tokenizer::from_serialized(vhost::llama::load_gguf_tokenizer(path_), path_.string())
                        : vhost::llama::Tokenizer::load(tok));
        config_.vocab_size = tokenizer_->vocab_size();
        config_.bos_token_id = tokenizer_->bos_id();
        config_.eos_token_id = tokenizer_->eos_id();
      }
    } else {
      if (!fs::exists(path_))
        throw vhost::ConfigError("path", path_.string() + " does not exist (make a model with: vhost model init --preset tiny --out DIR)");
      if (!fs::exists(path_ / "config.json"))
        throw vhost::ConfigError("path", path_.string() + " has no config.json and is not a GGUF file (make a model with: "
                                                          "vhost model init --preset tiny --out DIR)");
      fs::path tok_file = tok.empty() ? path_ / "tokenizer.model" : fs::path(tok);
      if (!fs::exists(tok_file)) throw vhost::ConfigError(tok.empty() ? "path" : "tokenizer", tok_file.string() + " does not exist");
      tokenizer_ = std::make_unique<vhost::llama::Tokenizer>(vhost::llama::Tokenizer::load(tok_file));
      if (weights) {
        model_ = std::make_unique<vhost::llama::LlamaModel>(vhost::llama::LlamaModel::load(
            path_, device, load_dtype(vhost::llama::LlamaConfig::load(path_ / "config.json").torch_dtype)));
        config_ = model_->config();
      } else {
        config_ = vhost::llama::LlamaConfig::load(path_ / "config.json");
      }
    }
    adapter_ = cfg.get<std::string>("adapter");
    if (!adapter_.empty()) {
      if (!weights) throw vhost::ConfigError("adapter", "needs the weights (load_weights = true)");
      try {
        merge_adapter_into_model(adapter_);
      } catch (const vhost::Error& e) {
        throw vhost::ConfigError("adapter", e.what());
      }
    }
    const json adapters = cfg.get<json>("adapters");
    if (adapters.is_object())
      for (auto it = adapters.begin(); it != adapters.end(); ++it) {
        const std::string field = "adapters." + it.key();
        if (!it->is_string() || it->get<std::string>().empty())
          throw vhost::ConfigError(field, "must be an adapter folder (a path string)");
        if (!model_) throw vhost::ConfigError(field, "needs the weights (load_weights = true)");
        try {
          auto a = vhost::llama::load_adapter(it->get<std::string>(), model_->config());
          adapter_index_[it.key()] = model_->add_adapter(a);
          adapter_dirs_[it.key()] = it->get<std::string>();
        } catch (const vhost::Error& e) {
          throw vhost::ConfigError(field, e.what());
        }
      }
    std::string tok_name = tokenizer_->path().empty() ? path_.string() : tokenizer_->path().string();
    if (tokenizer_->vocab_size() > config_.vocab_size)
      throw vhost::ConfigError("tokenizer", tok_name + " has " + std::to_string(tokenizer_->vocab_size()) +
                                                " pieces but the model only " + std::to_string(config_.vocab_size));
    int8_activations_ = cfg.get<std::string>("quant_activations") == "int8";
    decode_dtype_ = cfg.get<std::string>("decode_dtype");
    apply_decode_options(true);
    load_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    max_batch_ = cfg.get<int64_t>("max_batch");
    max_queue_ = cfg.get<int64_t>("max_queue");
    max_context_ = cfg.get<int64_t>("max_context");
    if (max_batch_ > 0 && model_)
      engine_ = std::make_unique<vhost::llama::Engine>(*model_, tokenizer_.get(), max_batch_, max_context_, max_queue_);
  }

  // quant_activations and decode_dtype on model_ (at load, and again on the model training makes).
  // A bfloat16 checkpoint read in place takes bf16-rounded activations (vdpbf16ps on the stored
  // weights where the CPU has it; set_bf16_activations refuses any other model), no packed copy;
  // with decode_dtype = "bfloat16" a float32 model packs bf16 copies. auto: only the in-place
  // case, and only where vdpbf16ps multiplies (LlamaModel::set_auto_activations).
  void apply_decode_options(bool warn) {
    if (!model_) return;
    model_->set_int8_activations(int8_activations_);
    if (decode_dtype_ == "auto") model_->set_auto_activations();
    if (decode_dtype_ == "bfloat16" && !model_->set_bf16_activations(true) && !model_->mixed_cpu() &&
        !model_->enable_bf16_decode() && warn)
      vhost::log(VHOST_LOG_WARN, "decode_dtype = \"bfloat16\" needs an x86 CPU with AVX2 or better and float32 weights on the CPU (" +
                                     std::string(*vhost::llama::bf16_gemm_isa() ? "the weights are " + vhost::llama::dtype_name(model_->dtype()) + " on " + model_->device().str()
                                                                                : "this CPU has no bfloat16 kernel") +
                                     "): decoding in " + vhost::llama::dtype_name(model_->dtype()));
  }

  // The served adapters again, on a model_ made anew (after training).
  void reattach_adapters() {
    adapter_index_.clear();
    for (const auto& [name, dir] : adapter_dirs_)
      adapter_index_[name] = model_->add_adapter(vhost::llama::load_adapter(dir, model_->config()));
  }

  // model_ becomes base + the adapter in `dir` (checked against the base's shape), merged.
  void merge_adapter_into_model(const fs::path& dir) {
    auto a = vhost::llama::load_adapter(dir, model_->config());
    auto merged = vhost::llama::merge_adapter(*model_, a);
    const auto dtype = model_->dtype();
    model_.reset();
    model_ = std::make_unique<vhost::llama::LlamaModel>(config_, std::move(merged), dir.string(), device_, dtype);
  }

  json describe() const override {
    const auto& c = config_;
    return {{"path", path_.string()},
            {"adapter", adapter_.empty() ? json(nullptr) : json(adapter_.string())},
            {"adapters", adapter_names()},
            {"parameters", c.parameter_count()},
            {"layers", c.num_hidden_layers},
            {"hidden_size", c.hidden_size},
            {"heads", c.num_attention_heads},
            {"kv_heads", c.num_key_value_heads},
            {"vocab_size", c.vocab_size},
            {"context", c.max_position_embeddings},
            {"dtype", model_ ? vhost::llama::dtype_name(model_->dtype()) : "(weights not loaded)"},
            {"device", model_ ? model_->device().str() : "(weights not loaded)"},
            {"decode_dtype", !model_ ? "(weights not loaded)"
                             : model_->bf16_decode() ? "bfloat16 (" + std::string(vhost::llama::bf16_gemm_isa()) + ")"
                             : model_->bf16_activations() ? "bfloat16 (" + bf16_dot_label() + ")"
                             : model_->mixed_cpu() ? "float32 (" + vhost::llama::dtype_name(model_->dtype()) + " weights)"
                                                   : vhost::llama::dtype_name(model_->dtype())},
            {"weights", model_ ? weights_json() : json("(weights not loaded)")},
            {"tokenizer", tokenizer_->path().empty() ? "embedded in " + path_.string() : tokenizer_->path().string()},
            {"bos_id", tokenizer_->bos_id()},
            {"eos_id", c.eos_token_id},
            {"template", template_.name},
            {"load_seconds", load_seconds_},
            {"engine", engine_ ? engine_json() : json(nullptr)}};
  }

  // The dtype to load a checkpoint stored in `stored` in: the model's `dtype` option, or with
  // "auto" on a float32 CPU backend (keep_stored_) a bfloat16/float16 checkpoint's own, which
  // the decode kernels read in place with float32 activations (LlamaModel::mixed_cpu); a
  // float32 copy of a 7B model (27 GB) does not fit a 24 GB machine. Where the kernels cannot
  // read them (not x86), float32 as before.
  torch::ScalarType load_dtype(const std::string& stored) const {
    if (!keep_stored_ || (stored != "bfloat16" && stored != "float16")) return model_dtype_;
    const auto t = vhost::llama::dtype_from_name(stored);
    return vhost::llama::small_gemm_supports(t == torch::kBFloat16 ? vhost::llama::WeightType::bf16
                                                                   : vhost::llama::WeightType::f16)
               ? t
               : model_dtype_;
  }

  // Which kernel multiplies a bfloat16 checkpoint by bf16-rounded activations.
  static std::string bf16_dot_label() {
    return *vhost::llama::bf16_dot_isa()
               ? std::string("vdpbf16ps (") + vhost::llama::bf16_dot_isa() + ")"
               : std::string("widened to float32 in registers (no AVX512-BF16 on this CPU)");
  }

  // What the weights cost and which kernel multiplies by them in a decoding step.
  json weights_json() const {
    int64_t bytes = 0, elements = 0;
    std::map<std::string, int64_t> numel;  // from the shapes: a quantized tensor's own counts bytes
    for (const auto& [name, shape] : vhost::llama::LlamaModel::expected_tensors(model_->config()))
      numel[name] = shape.size() == 2 ? shape[0] * shape[1] : 0;
    for (const auto& [name, t] : model_->named_tensors()) {
      if (name == "lm_head.weight" || t.dim() < 2 || name == "model.embed_tokens.weight") continue;
      bytes += t.numel() * static_cast<int64_t>(t.element_size());
      elements += numel[name];
    }
    std::string kernel;
    if (!model_->device().is_cpu())
      kernel = "libtorch (" + model_->device().str() + ")";
    else if (model_->bf16_decode())
      kernel = std::string("packed bfloat16 (") + vhost::llama::bf16_gemm_isa() + ")";
    else if (*vhost::llama::small_gemm_isa() && (model_->dtype() == torch::kFloat32 || model_->mixed_cpu()))
      kernel = std::string(vhost::llama::small_gemm_isa()) +
               (model_->quantized_matrices() ? ", " + vhost::llama::quant_summary(*model_) + " blocks dequantised in registers" +
                                                   (*vhost::llama::int8_dot_isa() && model_->int8_activations() ? std::string("; q4_0/q4_1/q5_0/q5_1/q8_0/q4_k/q5_k/q6_k by integer dot products with 8-bit activations (") + vhost::llama::int8_dot_isa() + ")" : std::string())
                : model_->bf16_activations() ? ", bfloat16 against bfloat16-rounded activations: " + bf16_dot_label()
                : model_->mixed_cpu() ? ", " + vhost::llama::dtype_name(model_->dtype()) + " widened to float32 in registers"
                                      : "");
    else
      kernel = "libtorch";
    return {{"bytes_per_weight", elements ? static_cast<double>(bytes) / static_cast<double>(elements) : 0.0},
            {"layer_weight_bytes", bytes},
            {"activations", model_->bf16_activations() ? "bfloat16" : model_->mixed_cpu() ? "float32" : vhost::llama::dtype_name(model_->dtype())},
            {"kernel", kernel}};
  }

  // The template: the `template` option (a built-in or one of `templates`), else the one the
  // checkpoint was trained with (conversation_template.json, written by the train stage), else
  // vicuna_v1.1. Reported whole in capabilities, so that a custom one is served as trained.
  void resolve_template(const vhost::Config& cfg) {
    vhost::conv::Registry reg;
    try {
      const json custom = cfg.get<json>("templates");
      reg.add(custom);
      custom_templates_ = json::object();
      if (custom.is_object())
        for (auto it = custom.begin(); it != custom.end(); ++it)
          custom_templates_[it.key()] = vhost::conv::template_to_json(reg.get(it.key()));
    } catch (const vhost::conv::TemplateError& e) {
      throw vhost::ConfigError("templates" + (e.field().empty() ? "" : "." + e.field()), e.what());
    }
    const std::string name = cfg.get<std::string>("template");
    const fs::path file = path_ / "conversation_template.json";
    if (!name.empty()) {
      try {
        template_ = reg.get(name);
      } catch (const vhost::conv::TemplateError& e) {
        throw vhost::ConfigError("template", e.what());
      }
    } else if (fs::is_directory(path_) && fs::exists(file)) {
      try {
        std::ifstream in(file);
        json j = json::parse(in);
        if (!j.is_object() || !j.contains("name") || !j["name"].is_string())
          throw vhost::conv::TemplateError("name", "must be the template's name (a string)");
        if (j.contains("definition") && !j["definition"].is_null()) {
          if (!j["definition"].is_object()) throw vhost::conv::TemplateError("definition", "must be a table");
          template_ = vhost::conv::template_from_json(j["name"].get<std::string>(), j["definition"], {});
        } else {
          template_ = reg.get(j["name"].get<std::string>());
        }
      } catch (const json::exception& e) {
        throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, file.string() + ": not valid JSON: " + e.what());
      } catch (const vhost::conv::TemplateError& e) {
        throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT,
                           file.string() + ": " + (e.field().empty() ? "" : e.field() + ": ") + e.what());
      }
    } else {
      template_ = reg.get("vicuna_v1.1");
    }
  }

  json engine_json() const {
    auto s = engine_->stats();
    return {{"max_batch", s.max_batch}, {"active", s.active}, {"queued", s.queued}, {"steps", s.steps},
            {"tokens", s.tokens}, {"mean_batch", s.mean_batch}, {"kv_cache_usage", s.kv_cache_usage}};
  }

  std::vector<std::int32_t> encode(std::string_view text, bool bos, bool eos) const override {
    return tokenizer_->encode(std::string(text), bos, eos);
  }
  std::string decode(const std::vector<std::int32_t>& ids) const override { return tokenizer_->decode(ids); }
  Spans encode_spans(std::string_view text) const override {
    auto s = tokenizer_->encode_spans(std::string(text));
    return {std::move(s.ids), std::move(s.begin), std::move(s.end)};
  }
  json tokenizer_info() const override {
    return {{"bos_id", tokenizer_->bos_id()},
            {"bos_token", "<s>"},  // LLaMA's SentencePiece names for them
            {"eos_token", "</s>"},
            {"eos_id", config_.eos_token_id},
            {"vocab_size", tokenizer_->vocab_size()}};
  }
  json capabilities() const override {
    return {{"context", config_.max_position_embeddings},
            {"template", template_.name},
            {"template_definition", vhost::conv::template_to_json(template_)},
            {"templates", custom_templates_},  // the custom ones it was given, which chat/serve may name
            {"max_batch", engine_ ? max_batch_ : 1},  // concurrent generate calls worth making
            {"concurrent", engine_ != nullptr},       // generate may be called from several threads
            {"logprobs", true},                       // generate takes logprobs / prompt_logprobs
            {"stream_logprobs", engine_ != nullptr},  // ... and streams them as it samples (ABI 1.5)
            {"embeddings", true},                     // generate takes {"embed": true}
            {"adapters", adapter_names()}};           // generate takes {"adapter": NAME}
  }

  json adapter_names() const {
    json out = json::array();
    for (const auto& [name, i] : adapter_index_) out.push_back(name);
    return out;
  }

  // Fine-tunes from this instance's checkpoint (re-read in float32: the master weights), on the
  // backend's device and process group. Afterwards the instance generates with the result.
  json train(const json& req, const vhost::EventSink& on_event) override {
    if (!req.is_object()) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "the request is not a JSON object");
    auto cfg = vhost::llama::TrainConfig::from_json(req, config_);
    // Training starts from the checkpoint on disk, which does not hold the merged adapter.
    if (!adapter_.empty())
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "this model instance merges the adapter " + adapter_.string() +
                                                         " at load; training starts from the checkpoint alone: merge them "
                                                         "first (vhost model merge BASE ADAPTER OUT) and train from OUT");
    std::lock_guard<std::mutex> lock(mu_);
    const bool had_weights = model_ != nullptr;
    engine_.reset();
    model_.reset();  // the trainer keeps its own float32 shards
    // In the stored dtype: safetensors stay memory-mapped, and each rank reads only its shards'
    // slices of them (in float32 as it copies them), never a whole float32 copy.
    auto init = vhost::llama::LlamaModel::load(path_, torch::kCPU);
    vhost::llama::TrainEnv env;
    env.device = device_;
    env.compute_dtype = dtype_;
    env.collective = backend_ ? backend_->collective() : nullptr;
    env.peak_tflops = backend_ ? backend_->peak_tflops() : 0;
    env.tokenizer = tokenizer_->path();
    env.base_model = path_.string();
    if (env.tokenizer.empty() && fs::is_regular_file(path_) && vhost::llama::is_gguf(path_))
      env.tokenizer_proto = vhost::llama::load_gguf_tokenizer(path_);  // the GGUF's vocabulary, as a tokenizer.model
    json r = vhost::llama::train(init, cfg, env, on_event ? vhost::llama::TrainEvents(on_event) : nullptr);
    if (backend_ && backend_->peak_allocated_bytes() >= 0) {  // a GPU's allocator
      r["peak_allocated_bytes"] = backend_->peak_allocated_bytes();
      r["peak_reserved_bytes"] = backend_->peak_reserved_bytes();
    }
    if (had_weights) {
      if (r.contains("adapter")) {  // LoRA: the base with the new adapter merged in
        model_ = std::make_unique<vhost::llama::LlamaModel>(vhost::llama::LlamaModel::load(
            path_, device_, load_dtype(config_.torch_dtype)));
        adapter_ = r["adapter"].get<std::string>();
        merge_adapter_into_model(adapter_);
      } else {
        fs::path src = r.contains("model") ? fs::path(r["model"].get<std::string>()) : path_;
        const std::string stored = fs::is_directory(src) ? vhost::llama::LlamaConfig::load(src / "config.json").torch_dtype : "float32";
        model_ = std::make_unique<vhost::llama::LlamaModel>(
            vhost::llama::LlamaModel::load(src, device_, load_dtype(stored)));
      }
      apply_decode_options(false);
      reattach_adapters();  // (served adapters of the old base on the new weights: their shapes still fit)
      if (max_batch_ > 0)
        engine_ = std::make_unique<vhost::llama::Engine>(*model_, tokenizer_.get(), max_batch_, max_context_, max_queue_);
    }
    return r;
  }

  // A generate request's sampling parameters (the adapter by name).
  vhost::llama::SamplingParams sampling_of(const json& req) const {
    vhost::llama::SamplingParams p;
    p.temperature = field(req, "temperature", 1.0);
    p.top_p = field(req, "top_p", 1.0);
    p.top_k = field<int64_t>(req, "top_k", 0);
    p.repetition_penalty = field(req, "repetition_penalty", 1.0);
    p.presence_penalty = field(req, "presence_penalty", 0.0);
    p.frequency_penalty = field(req, "frequency_penalty", 0.0);
    p.max_tokens = field<int64_t>(req, "max_tokens", 256);
    p.stop = field(req, "stop", std::vector<std::string>{});
    p.ignore_eos = field(req, "ignore_eos", false);
    if (req.contains("seed") && !req["seed"].is_null()) p.seed = field<uint64_t>(req, "seed", 0);
    if (const std::string a = field<std::string>(req, "adapter", ""); !a.empty()) {
      auto it = adapter_index_.find(a);
      if (it == adapter_index_.end())
        throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "no adapter '" + a + "' (this model serves " +
                                                           (adapter_index_.empty() ? std::string("none") : adapter_names().dump()) + ")");
      p.adapter = it->second;
    }
    return p;
  }

  // A generate request's prompts: token ids as given, or texts encoded (with BOS unless add_bos
  // is false).
  std::vector<std::vector<int32_t>> prompts_of(const json& req) const {
    bool bos = field(req, "add_bos", true);
    std::vector<std::vector<int32_t>> prompts;
    if (req.contains("prompt_ids")) {
      prompts = field(req, "prompt_ids", std::vector<std::vector<int32_t>>{});
    } else if (req.contains("prompts")) {
      for (const auto& s : field(req, "prompts", std::vector<std::string>{})) prompts.push_back(tokenizer_->encode(s, bos));
    } else {
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "the request has neither 'prompts' nor 'prompt_ids'");
    }
    if (prompts.empty()) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "'prompts' is empty");
    return prompts;
  }

  // Each prompt as one engine sequence (seed + i, as in a batch), all running concurrently;
  // streamed scores (kScoresToken) collected per sequence.
  std::vector<vhost::llama::GenerationResult> run_on_engine(const std::vector<std::vector<int32_t>>& prompts,
                                                            const vhost::llama::SamplingParams& p, const vhost::TokenSink& on_token,
                                                            bool streamed, std::vector<json>& streamed_scores) {
    std::vector<vhost::llama::GenerationResult> results(prompts.size());
    std::vector<std::exception_ptr> errors(prompts.size());
    auto one = [&](std::size_t i) {
      try {
        auto q = p;
        if (p.seed) q.seed = *p.seed + i;
        vhost::llama::TokenCallback cb;
        if (on_token || streamed)
          cb = [&, i](std::size_t, int32_t tok, const std::string& d) {
            if (tok == vhost::llama::kScoresToken) {
              for (auto& e : json::parse(d)) streamed_scores[i].push_back(std::move(e));
              if (!on_token) return true;
            }
            return !on_token || on_token(i, tok, d);
          };
        results[i] = engine_->generate(prompts[i], q, cb);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    };
    std::vector<std::thread> threads;
    for (std::size_t i = 1; i < prompts.size(); ++i) threads.emplace_back(one, i);
    one(0);
    for (auto& t : threads) t.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
    return results;
  }

  json generate(const json& req, const vhost::TokenSink& on_token) override {
    if (!req.is_object()) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "the request is not a JSON object");
    vhost::llama::SamplingParams p = sampling_of(req);
    const std::vector<std::vector<int32_t>> prompts = prompts_of(req);
    if (!model_)
      throw vhost::Error(VHOST_ERR_UNSUPPORTED, path_.string() + ": opened with load_weights = false: cannot generate");
    if (field(req, "embed", false)) return embed(prompts, p.adapter);
    // Log-probabilities: "logprobs": K for the generated tokens, "prompt_logprobs": K for the
    // prompt's (K alternatives each, 0..20); "max_tokens": 0 scores the prompt only.
    auto top_k_of = [&](const char* key) -> int64_t {
      if (!req.contains(key) || req[key].is_null()) return -1;
      int64_t k = field<int64_t>(req, key, 0);
      if (k < 0 || k > 20) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, std::string(key) + " must be in [0, 20]");
      return k;
    };
    const int64_t lp = top_k_of("logprobs"), plp = top_k_of("prompt_logprobs");
    // Streamed logprobs (the engine's, from the logits each token was sampled from): they go out
    // as scores events before the text, and make the reply's "logprobs" too.
    const bool streamed = lp >= 0 && field(req, "stream_logprobs", false) && engine_ && p.max_tokens > 0;
    if (streamed) p.stream_logprobs = lp;
    std::vector<json> streamed_scores(streamed ? prompts.size() : 0, json::array());
    const bool score_only = p.max_tokens == 0;
    if (score_only && plp < 0)
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "max_tokens 0 generates nothing: it needs prompt_logprobs (scoring)");
    std::vector<vhost::llama::GenerationResult> results;
    if (score_only) {
      for (const auto& pr : prompts) {
        vhost::llama::GenerationResult r;
        r.finish_reason = "length";
        r.prompt_tokens = static_cast<int64_t>(pr.size());
        results.push_back(r);
      }
    } else if (engine_) {
      results = run_on_engine(prompts, p, on_token, streamed, streamed_scores);
    } else {
      std::lock_guard<std::mutex> lock(mu_);
      vhost::llama::TokenCallback cb;
      if (on_token) cb = [&](std::size_t seq, int32_t tok, const std::string& d) { return on_token(seq, tok, d); };
      results = vhost::llama::generate(*model_, tokenizer_.get(), prompts, p, cb);
    }
    json choices = json::array();
    int64_t prompt_tokens = 0, completion_tokens = 0;
    for (std::size_t i = 0; i < results.size(); ++i) {
      choices.push_back({{"index", i}, {"text", results[i].text}, {"tokens", results[i].tokens},
                         {"finish_reason", results[i].finish_reason}, {"queue_s", results[i].queue_seconds}});
      if (results[i].first_token_seconds >= 0) choices.back()["first_token_s"] = results[i].first_token_seconds;
      if (streamed) choices.back()["logprobs"] = streamed_scores[i];
      if ((lp >= 0 && !streamed) || plp >= 0) {
        std::vector<int32_t> all(prompts[i]);
        all.insert(all.end(), results[i].tokens.begin(), results[i].tokens.end());
        const std::size_t P = prompts[i].size();
        auto scores = vhost::llama::score(*model_, tokenizer_.get(), all, plp >= 0 ? 0 : P, std::max(lp, plp), p.adapter);
        auto part = [&](std::size_t from, std::size_t to, int64_t k) {
          json out = json::array();
          for (std::size_t j = from; j < to; ++j) {
            const auto& sc = scores[j - (plp >= 0 ? 0 : P)];
            json top = json::array();
            for (std::size_t a = 0; a < sc.top.size() && static_cast<int64_t>(a) < k; ++a)
              top.push_back({sc.top[a].id, sc.top[a].text, sc.top[a].logprob});
            out.push_back({{"id", sc.id}, {"text", sc.text}, {"logprob", sc.logprob ? json(*sc.logprob) : json(nullptr)},
                           {"top", top}});
          }
          return out;
        };
        if (plp >= 0) choices.back()["prompt_logprobs"] = part(0, P, plp);
        if (lp >= 0 && !streamed) choices.back()["logprobs"] = part(P, all.size(), lp);
      }
      prompt_tokens += results[i].prompt_tokens;
      completion_tokens += static_cast<int64_t>(results[i].tokens.size());
    }
    return {{"choices", choices}, {"usage", {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens}}}};
  }

  // {"embed": true}: per prompt, the mean over its tokens of the last hidden state, L2-normalised
  // (FastChat's embedding for LLaMA models).
  json embed(const std::vector<std::vector<int32_t>>& prompts, int32_t adapter) const {
    json data = json::array();
    int64_t tokens = 0;
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      const auto& p = prompts[i];
      if (p.empty()) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "input " + std::to_string(i) + " is empty");
      if (static_cast<int64_t>(p.size()) > config_.max_position_embeddings)
        throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "input " + std::to_string(i) + " has " + std::to_string(p.size()) +
                                                           " tokens; the context is " + std::to_string(config_.max_position_embeddings));
      for (int32_t id : p)
        if (id < 0 || id >= config_.vocab_size)
          throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "token id " + std::to_string(id) + " is outside the vocabulary");
      auto ids = torch::tensor(std::vector<int64_t>(p.begin(), p.end()), torch::kInt64).view({1, -1}).to(model_->device());
      auto h = model_->hidden_states(ids, adapter >= 0 ? torch::full({1}, adapter, torch::kInt64) : torch::Tensor())[0].mean(0);
      h = h / h.norm().clamp_min(1e-12);
      h = h.to(torch::kCPU).contiguous();
      data.push_back({{"index", i}, {"embedding", std::vector<float>(h.data_ptr<float>(), h.data_ptr<float>() + h.numel())}});
      tokens += static_cast<int64_t>(p.size());
    }
    return {{"data", data}, {"usage", {{"prompt_tokens", tokens}}}};
  }

  static json tool(const std::string& name, const json& args) {
    using vhost::llama::LlamaConfig;
    using vhost::llama::LlamaModel;
    using vhost::llama::Tokenizer;
    auto need = [&](const char* key) -> std::string {
      if (!args.contains(key) || !args[key].is_string() || args[key].get<std::string>().empty())
        throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, name + ": '" + key + "' is required");
      return args[key].get<std::string>();
    };
    if (name == "train-options") {  // the train stage's recipe keys, checked by the host before a run
      json options = json::array();
      for (const auto& o : vhost::llama::TrainConfig::options()) options.push_back(o.to_json());
      return options;
    }
    if (name == "init") {
      fs::path out = need("out");
      auto cfg = LlamaConfig::preset(field<std::string>(args, "preset", "tiny"));
      if (int64_t ctx = field<int64_t>(args, "context", 0); ctx > 0) cfg.max_position_embeddings = ctx;
      std::string tok_src = field<std::string>(args, "tokenizer", ""), text = field<std::string>(args, "tokenizer_text", "");
      fs::create_directories(out);
      if (!text.empty()) {
        auto tok = Tokenizer::load(Tokenizer::train(text, static_cast<int>(cfg.vocab_size), out));
        cfg.vocab_size = tok.vocab_size();  // a small corpus may give fewer pieces
      } else if (!tok_src.empty()) {
        auto tok = Tokenizer::load(tokenizer_file(tok_src));
        cfg.vocab_size = tok.vocab_size();
        fs::copy_file(tokenizer_file(tok_src), out / "tokenizer.model", fs::copy_options::overwrite_existing);
      } else {
        throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "init: give 'tokenizer' (a tokenizer.model to copy) or "
                                                       "'tokenizer_text' (a text file to train one on)");
      }
      auto dtype = vhost::llama::dtype_from_name(field<std::string>(args, "dtype", "float32"));
      LlamaModel::write_random(out, cfg, field<uint64_t>(args, "seed", 0), dtype);  // one tensor at a time
      return {{"out", out.string()}, {"parameters", cfg.parameter_count()}, {"vocab_size", cfg.vocab_size},
              {"dtype", vhost::llama::dtype_name(dtype)}};
    }
    if (name == "train-tokenizer") {
      auto model = Tokenizer::train(need("input"), static_cast<int>(field<int64_t>(args, "vocab", 32000)), need("out"));
      return {{"model", model.string()}, {"vocab_size", Tokenizer::load(model).vocab_size()}};
    }
    if (name == "encode") {
      auto tok = open_tokenizer(need("tokenizer"));
      if (args.contains("texts")) {  // many at once: {"texts": [...]} -> {"ids": [[...]...]}
        json all = json::array();
        for (const auto& t : field(args, "texts", std::vector<std::string>{}))
          all.push_back(tok.encode(t, field(args, "bos", false), field(args, "eos", false)));
        return {{"ids", all}};
      }
      return {{"ids", tok.encode(field<std::string>(args, "text", ""), field(args, "bos", false), field(args, "eos", false))}};
    }
    if (name == "decode") {
      auto tok = open_tokenizer(need("tokenizer"));
      return {{"text", tok.decode(field(args, "ids", std::vector<int32_t>{}))}};
    }
    if (name == "convert") {
      fs::path in = need("in"), out = need("out");
      if (fs::is_directory(in)) {
        // HF layout -> GGUF, in the checkpoint's stored dtype or quantized.
        const std::string quantize = field<std::string>(args, "quantize", "");
        if (!quantize.empty() && !vhost::llama::gguf_quantize_supported(quantize))
          throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "convert: quantize '" + quantize + "' is not supported (" +
                                                             vhost::llama::kGgufQuantizeNames + ")");
        auto model = LlamaModel::load(in);
        std::ifstream t(in / "tokenizer.model", std::ios::binary);
        if (!t) throw vhost::Error(VHOST_ERR_IO, (in / "tokenizer.model").string() + ": cannot open (GGUF embeds the tokenizer)");
        std::string proto((std::istreambuf_iterator<char>(t)), {});
        Tokenizer::from_serialized(proto, (in / "tokenizer.model").string());  // refuse a broken one before writing
        vhost::llama::save_gguf_llama(model, proto, out, quantize);
        return {{"out", out.string()}, {"format", quantize.empty() ? "gguf" : "gguf " + quantize},
                {"parameters", model.config().parameter_count()}};
      }
      if (!(fs::is_regular_file(in) && vhost::llama::is_gguf(in)))
        throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "convert: " + in.string() + " is neither an HF checkpoint folder nor a GGUF file");
      // GGUF -> HF layout: safetensors with HF names and rotary order, config.json, tokenizer.model.
      auto g = vhost::llama::load_gguf_llama(in);
      // In the stored dtype: the tensors stay views of the mapped file while they are written.
      LlamaModel model(g.config, std::move(g.tensors), in.string(), torch::kCPU,
                       vhost::llama::dtype_from_name(g.config.torch_dtype));
      model.save(out);
      auto tmp = out / "tokenizer.model.tmp";
      std::ofstream(tmp, std::ios::binary) << g.tokenizer_model;
      fs::rename(tmp, out / "tokenizer.model");
      return {{"out", out.string()}, {"format", "hf"}, {"parameters", model.config().parameter_count()}};
    }
    if (name == "merge") {
      // base + LoRA adapter -> a whole HF checkpoint (PEFT's merge_and_unload): W + s B A per
      // adapted projection, in the base's stored dtype.
      fs::path base = need("base"), adapter = need("adapter"), out = need("out");
      auto model = LlamaModel::load(base);
      auto a = vhost::llama::load_adapter(adapter, model.config());
      LlamaModel merged(model.config(), vhost::llama::merge_adapter(model, a), adapter.string(), torch::kCPU, model.dtype());
      merged.save(out);
      // The tokenizer (the base's, or a GGUF's embedded one) and the template it was trained with.
      auto tmp = out / "tokenizer.model.tmp";
      if (fs::is_regular_file(base) && vhost::llama::is_gguf(base))
        std::ofstream(tmp, std::ios::binary) << vhost::llama::load_gguf_tokenizer(base);
      else if (fs::exists(base / "tokenizer.model"))
        fs::copy_file(base / "tokenizer.model", tmp, fs::copy_options::overwrite_existing);
      if (fs::exists(tmp)) fs::rename(tmp, out / "tokenizer.model");
      for (const fs::path& from : {adapter, base})
        if (fs::is_directory(from) && fs::exists(from / "conversation_template.json")) {
          fs::copy_file(from / "conversation_template.json", out / "conversation_template.json",
                        fs::copy_options::overwrite_existing);
          break;
        }
      int64_t adapted = 0;
      for (const auto& [k, t] : a.tensors) adapted += k.find(".lora_A.") != std::string::npos;
      return {{"out", out.string()}, {"format", "hf"}, {"dtype", vhost::llama::dtype_name(model.dtype())},
              {"adapted_matrices", adapted}, {"r", a.config.r}, {"scaling", a.config.scaling()},
              {"modules_to_save", a.config.modules_to_save}};
    }
    throw vhost::Error(VHOST_ERR_UNSUPPORTED, "the llama plugin has no tool '" + name +
                                                  "' (init, convert, merge, train-tokenizer, encode, decode)");
  }

 private:
  fs::path path_;
  fs::path adapter_;  // merged into model_ (empty: none)
  std::map<std::string, int32_t> adapter_index_;  // served per request (option adapters)
  std::map<std::string, fs::path> adapter_dirs_;
  vhost::conv::Template template_;
  json custom_templates_ = json::object();
  std::unique_ptr<vhost::llama::Tokenizer> tokenizer_;
  std::unique_ptr<vhost::llama::LlamaModel> model_;  // null with load_weights = false
  const vhost::torch_ext::Backend* backend_ = nullptr;
  std::unique_ptr<vhost::llama::Engine> engine_;  // declared after model_: destroyed first
  int64_t max_batch_ = 0, max_queue_ = 64, max_context_ = 0;
  bool int8_activations_ = true;  // quant_activations = "int8"
  std::string decode_dtype_;      // see apply_decode_options
  torch::Device device_ = torch::kCPU;
  torch::ScalarType dtype_ = torch::kFloat32;        // the backend's compute dtype (training)
  torch::ScalarType model_dtype_ = torch::kFloat32;  // the model's dtype option, else the backend's
  bool keep_stored_ = false;                         // see load_dtype
  vhost::llama::LlamaConfig config_;
  double load_seconds_ = 0;
  std::mutex mu_;
};

}  // namespace

VHOST_PLUGIN(LlamaPlugin, "llama", "0.1.0", "LLaMA 1/2 in libtorch: HF safetensors, SentencePiece, KV-cache generation")
