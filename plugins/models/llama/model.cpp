#include "model.hpp"

#include "gguf.hpp"
#include "lora.hpp"
#include "page_advice.hpp"
#include "decode_kernels.hpp"
#include "quants.hpp"
#include "safetensors.hpp"

#include <vhost/plugin.hpp>
#include <vhost/torch/compat.hpp>

#include <sys/mman.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>

namespace vhost::llama {

namespace fs = std::filesystem;

torch::ScalarType dtype_from_name(const std::string& name) {
  if (name == "float32" || name == "float") return torch::kFloat32;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16" || name == "half") return torch::kFloat16;
  throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "unknown dtype '" + name + "' (float32, bfloat16, float16)");
}

std::string dtype_name(torch::ScalarType t) {
  if (t == torch::kFloat32) return "float32";
  if (t == torch::kBFloat16) return "bfloat16";
  if (t == torch::kFloat16) return "float16";
  return c10::toString(t);
}

KVCache KVCache::create(const LlamaConfig& cfg, int64_t batch, int64_t capacity, const torch::TensorOptions& opts) {
  KVCache c;
  c.capacity = capacity;
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    c.k.push_back(torch::zeros({batch, cfg.num_key_value_heads, capacity, cfg.head_dim()}, opts));
    c.v.push_back(torch::zeros({batch, cfg.num_key_value_heads, capacity, cfg.head_dim()}, opts));
  }
  return c;
}

KVCache KVCache::rows(int64_t first, int64_t n) const {
  KVCache view;
  for (std::size_t l = 0; l < k.size(); ++l) {
    view.k.push_back(k[l].narrow(0, first, n));
    view.v.push_back(v[l].narrow(0, first, n));
  }
  view.length = length;
  view.capacity = capacity;
  return view;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> LlamaModel::expected_tensors(const LlamaConfig& c) {
  const int64_t d = c.hidden_size, hd = c.head_dim(), f = c.intermediate_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, d}});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    std::string p = "model.layers." + std::to_string(i) + ".";
    out.push_back({p + "self_attn.q_proj.weight", {c.num_attention_heads * hd, d}});
    out.push_back({p + "self_attn.k_proj.weight", {c.num_key_value_heads * hd, d}});
    out.push_back({p + "self_attn.v_proj.weight", {c.num_key_value_heads * hd, d}});
    out.push_back({p + "self_attn.o_proj.weight", {d, c.num_attention_heads * hd}});
    out.push_back({p + "mlp.gate_proj.weight", {f, d}});
    out.push_back({p + "mlp.up_proj.weight", {f, d}});
    out.push_back({p + "mlp.down_proj.weight", {d, f}});
    out.push_back({p + "input_layernorm.weight", {d}});
    out.push_back({p + "post_attention_layernorm.weight", {d}});
  }
  out.push_back({"model.norm.weight", {d}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, d}});
  return out;
}

static std::string shape_str(c10::IntArrayRef s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

torch::Tensor pack_rows_x8(const torch::Tensor& t, const int64_t* order) {
  const QuantFormat* f = quant_format_bytes(t.size(2));
  auto out = torch::empty({t.size(0) / 8, t.size(1), 8, t.size(2)}, torch::TensorOptions().dtype(torch::kUInt8));
#ifdef MADV_HUGEPAGE
  // Transparent huge pages for the packed weights (before they are written, so the first touch
  // gets them; Linux's default "madvise" mode gives them only when asked): a batch-1 step streams
  // all of them, and 2 MiB pages streamed ~15% faster than 4 KiB ones here (2 threads, the two
  // alternating in one process). Paired runs of bench_generate --model, batch 1, with and
  // without, alternating (8 pairs on 7B Q4_K_M and Q4_0, 2026-12-06): faster in all 8, 1.06-1.67x,
  // median 1.13x. Only the whole 2 MiB pages inside the buffer are asked for; advice, so a failure
  // (no THP in this kernel) changes nothing.
  advise_whole_pages(out.data_ptr(), out.nbytes(), std::uintptr_t(2) << 20, MADV_HUGEPAGE);
#endif
  pack_x8(f->type, t.data_ptr(), t.size(0), t.size(1) * f->block_elems, out.data_ptr(), order);
  return out;
}

void LlamaModel::set_int8_activations(bool on) {
  int8_activations_ = on;
  // Every other reference to a matrix, moved with it: the old layout is freed as each one is
  // relaid (all of them kept to the end, a 7B Q4_0 model peaked at 2.0x its weights).
  std::vector<torch::Tensor*> refs;
  for (auto& L : layers_)
    for (auto* t : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) refs.push_back(t);
  refs.push_back(&lm_head_);
  for (auto& [name, t] : tensors_) {
    // The embedding's rows are looked up, never interleaved (as at load).
    if (t.scalar_type() != torch::kUInt8 || name == "model.embed_tokens.weight") continue;
    const QuantFormat* f = quant_format_bytes(t.size(t.dim() - 1));
    torch::Tensor relaid;
    if (!on && t.dim() == 4) {
      relaid = torch::empty({t.size(0) * 8, t.size(1), t.size(3)}, torch::TensorOptions().dtype(torch::kUInt8));
      unpack_x8(packed_x8(f->type), t.data_ptr(), relaid.size(0), t.size(1) * f->block_elems, relaid.data_ptr());
    } else if (on && t.dim() == 3 && packs_x8(f->type) && t.size(0) % 8 == 0) {
      relaid = pack_rows_x8(t);
    } else {
      continue;
    }
    const void* old = t.data_ptr();
    for (auto* r : refs)
      if (r->defined() && r->data_ptr() == old) *r = relaid;
    t = relaid;
  }
}

LlamaModel::LlamaModel(LlamaConfig cfg, std::vector<std::pair<std::string, torch::Tensor>> tensors,
                       const std::string& source, torch::Device device, torch::ScalarType dtype)
    : cfg_(std::move(cfg)), device_(device), dtype_(dtype) {
  std::map<std::string, torch::Tensor> by_name;
  for (auto& [n, t] : tensors) by_name[n] = t;
  std::set<std::string> used;
  for (const auto& [name, shape] : expected_tensors(cfg_)) {
    auto it = by_name.find(name);
    if (it == by_name.end())
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, source + ": missing tensor '" + name + "'");
    const auto& t = it->second;
    // Quantized blocks of a [N, K] matrix (load_gguf_llama with keep_blocks): uint8
    // [N, K / block_elems, block_bytes], the block size naming the format (quants.hpp), or
    // [N / 8, K / block_elems, 8, block_bytes] for Q4_0 / Q4_1 / Q8_0 / Q4_K / Q5_K / Q6_K with eight rows interleaved (pack_x8).
    // The embedding too, [vocab, D / block_elems, block_bytes] (rows looked up, never interleaved).
    const bool x8 = t.dim() == 4 && t.size(2) == 8, embedding = name == "model.embed_tokens.weight";
    if (t.scalar_type() == torch::kUInt8 && (t.dim() == 3 || (x8 && !embedding)) && shape.size() == 2) {
      const QuantFormat* f = quant_format_bytes(t.size(t.dim() - 1));
      if (!f || shape[1] % f->block_elems || (x8 ? t.size(0) * 8 : t.size(0)) != shape[0] ||
          t.size(1) != shape[1] / f->block_elems || (x8 && packed_x8(f->type) == WeightType::f32))
        throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, source + ": tensor '" + name + "' holds blocks " +
                                                           shape_str(t.sizes()) + " that are no quantized format of " +
                                                           shape_str(shape));
      if (!device_.is_cpu() || !small_gemm_supports(f->type) || !t.is_contiguous())
        throw vhost::Error(VHOST_ERR_UNSUPPORTED, source + ": tensor '" + name + "' is " + f->name +
                                                      " blocks, which only the CPU kernels on x86 read; load the file "
                                                      "dequantised (dtype = \"float32\")");
      if (x8 && !packs_x8(f->type))
        throw vhost::Error(VHOST_ERR_UNSUPPORTED, source + ": tensor '" + name + "' is " + f->name +
                                                      " blocks in eight-row groups, which no kernel on this CPU reads");
      tensors_.emplace_back(name, !x8 && !embedding && packs_x8(f->type) && t.size(0) % 8 == 0 ? pack_rows_x8(t) : t);
      used.insert(name);
      ++quant_matrices_[f->name];
      continue;
    }
    if (t.sizes().vec() != shape)
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, source + ": tensor '" + name + "' has shape " +
                                                         shape_str(t.sizes()) + " but config.json implies " +
                                                         shape_str(shape));
    if (!t.is_floating_point())
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, source + ": tensor '" + name + "' has dtype " +
                                                         c10::toString(t.scalar_type()) + ", expected a float type");
    auto moved = t.to(device_, dtype_);
    tensors_.emplace_back(name, moved);
    used.insert(name);
  }
  for (const auto& [name, t] : by_name) {
    if (used.count(name)) continue;
    // Old HF checkpoints store the rotary frequencies; they are recomputed here.
    if (name.size() > 17 && name.compare(name.size() - 17, 17, "rotary_emb.inv_freq") == 0) continue;
    if (name == "lm_head.weight" && cfg_.tie_word_embeddings) continue;
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT,
                       source + ": unexpected tensor '" + name + "' (not part of a LLaMA of this config)");
  }
  std::map<std::string, torch::Tensor> w(tensors_.begin(), tensors_.end());
  embed_ = w.at("model.embed_tokens.weight");
  norm_ = w.at("model.norm.weight");
  lm_head_ = cfg_.tie_word_embeddings ? embed_ : w.at("lm_head.weight");
  for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i) {
    std::string p = "model.layers." + std::to_string(i) + ".";
    layers_.push_back({w.at(p + "input_layernorm.weight"), w.at(p + "self_attn.q_proj.weight"),
                       w.at(p + "self_attn.k_proj.weight"), w.at(p + "self_attn.v_proj.weight"),
                       w.at(p + "self_attn.o_proj.weight"), w.at(p + "post_attention_layernorm.weight"),
                       w.at(p + "mlp.gate_proj.weight"), w.at(p + "mlp.up_proj.weight"),
                       w.at(p + "mlp.down_proj.weight")});
  }
  // HF: inv_freq = 1 / theta^(arange(0, dim, 2) / dim), in float32.
  auto idx = torch::arange(0, cfg_.head_dim(), 2, torch::TensorOptions().dtype(torch::kInt64)).to(torch::kFloat32);
  auto inv_freq = 1.0 / torch::pow(cfg_.rope_theta, idx / static_cast<double>(cfg_.head_dim()));
  // Tables for every position, computed as HF does (float32, then cast), looked up per step.
  auto pos = torch::arange(0, cfg_.max_position_embeddings, torch::TensorOptions().dtype(torch::kInt64)).to(torch::kFloat32);
  auto freqs = torch::outer(pos, inv_freq);
  auto emb = torch::cat({freqs, freqs}, -1);
  cos_ = emb.cos().to(device_, dtype_);
  sin_ = emb.sin().to(device_, dtype_);
  cos32_ = dtype_ == torch::kFloat32 ? cos_ : emb.cos().to(device_);
  sin32_ = dtype_ == torch::kFloat32 ? sin_ : emb.sin().to(device_);
  for (const auto& [name, t] : tensors_)
    if (t.dim() == 2) largest_matrix_ = std::max<int64_t>(largest_matrix_, t.numel());
}

LlamaModel LlamaModel::load(const fs::path& dir, torch::Device device, std::optional<torch::ScalarType> dtype) {
  if (fs::is_regular_file(dir) && is_gguf(dir)) {  // recognised by content, not by name
    auto g = load_gguf_llama(dir);
    const auto stored = dtype_from_name(g.config.torch_dtype);  // as a folder's: the stored dtype by default
    return LlamaModel(g.config, std::move(g.tensors), dir.string(), device, dtype ? *dtype : stored);
  }
  if (!fs::is_directory(dir))
    throw vhost::Error(VHOST_ERR_IO, dir.string() + ": not a checkpoint folder (expected config.json and safetensors)");
  LlamaConfig cfg = LlamaConfig::load(dir / "config.json");
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::vector<std::shared_ptr<SafetensorsFile>> files;
  fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
  std::string source;
  if (fs::exists(single)) {
    auto f = std::make_shared<SafetensorsFile>(single);
    for (const auto& [name, e] : f->entries()) tensors.emplace_back(name, f->get(name));
    source = single.string();
  } else if (fs::exists(index)) {
    nlohmann::json j;
    try {
      std::ifstream in(index);
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, index.string() + ": not valid JSON: " + e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, index.string() + ": has no \"weight_map\" object");
    std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string())
        throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, index.string() + ": weight_map['" + it.key() + "'] is not a file name");
      std::string shard = it->get<std::string>();
      if (shard.find('/') != std::string::npos)
        throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, index.string() + ": shard name '" + shard + "' is not a plain file name");
      auto& f = shards[shard];
      if (!f) f = std::make_shared<SafetensorsFile>(dir / shard);
      if (!f->contains(it.key()))
        throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, (dir / shard).string() + ": missing tensor '" + it.key() +
                                                           "' (the index says it is here)");
      tensors.emplace_back(it.key(), f->get(it.key()));
    }
    source = index.string();
  } else if (fs::exists(dir / "pytorch_model.bin") || fs::exists(dir / "pytorch_model.bin.index.json")) {
    throw vhost::Error(VHOST_ERR_UNSUPPORTED, dir.string() + ": holds pickled pytorch_model.bin weights; convert them "
                                              "to safetensors (transformers: save_pretrained(safe_serialization=True))");
  } else {
    throw vhost::Error(VHOST_ERR_IO, dir.string() + ": no model.safetensors or model.safetensors.index.json");
  }
  torch::ScalarType dt = dtype ? *dtype : dtype_from_name(cfg.torch_dtype);
  return LlamaModel(cfg, std::move(tensors), source, device, dt);
}

// Random weights in expected_tensors order, drawn from one generator: normal(0, 0.02), norms 1.
static torch::Tensor random_tensor(const std::vector<int64_t>& shape, at::Generator& gen) {
  return shape.size() == 1 ? torch::ones(shape) : torch::randn(shape, gen, torch::TensorOptions()) * 0.02;
}

LlamaModel LlamaModel::random(const LlamaConfig& cfg, uint64_t seed, torch::ScalarType dtype) {
  auto gen = at::detail::createCPUGenerator(seed);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& [name, shape] : expected_tensors(cfg)) tensors.emplace_back(name, random_tensor(shape, gen));
  LlamaConfig c = cfg;
  c.torch_dtype = dtype_name(dtype);
  return LlamaModel(c, std::move(tensors), "random init", torch::kCPU, dtype);
}

// save()'s file layout for tensors of these shapes: one file, or shards of at most
// max_shard_bytes (a tensor never split), named as HF names them.
static std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::vector<int64_t>>>>> shard_plan(
    const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors, std::size_t element_size,
    int64_t max_shard_bytes) {
  std::vector<std::vector<std::pair<std::string, std::vector<int64_t>>>> shards(1);
  int64_t bytes = 0;
  for (const auto& t : tensors) {
    int64_t n = c10::multiply_integers(t.second) * static_cast<int64_t>(element_size);
    if (max_shard_bytes > 0 && bytes > 0 && bytes + n > max_shard_bytes) {
      shards.emplace_back();
      bytes = 0;
    }
    shards.back().push_back(t);
    bytes += n;
  }
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::vector<int64_t>>>>> out;
  for (std::size_t i = 0; i < shards.size(); ++i) {
    char fname[64];
    std::snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    out.emplace_back(shards.size() == 1 ? std::string("model.safetensors") : std::string(fname), shards[i]);
  }
  return out;
}

// config.json, and the index when there are several files (or no stale one when there is one).
static void write_layout(const fs::path& dir, const LlamaConfig& c,
                         const std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::vector<int64_t>>>>>& plan,
                         int64_t total_bytes) {
  if (plan.size() == 1) {
    fs::remove(dir / "model.safetensors.index.json");
  } else {
    nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", nlohmann::json::object()}};
    for (const auto& [file, tensors] : plan)
      for (const auto& t : tensors) index["weight_map"][t.first] = file;
    std::ofstream(dir / "model.safetensors.index.json") << index.dump(2) << "\n";
    fs::remove(dir / "model.safetensors");
  }
  std::ofstream(dir / "config.json") << c.to_json().dump(2) << "\n";
}

// Writes a checkpoint of `c` (its torch_dtype set to dtype) whose tensors, in this order, come
// from tensor(name, shape) one at a time: each is converted, written and freed before the next.
static void write_checkpoint(const fs::path& dir, LlamaConfig c, torch::ScalarType dtype,
                             const std::vector<std::pair<std::string, std::vector<int64_t>>>& shapes,
                             int64_t max_shard_bytes,
                             const std::function<torch::Tensor(const std::string&, const std::vector<int64_t>&)>& tensor) {
  fs::create_directories(dir);
  c.torch_dtype = dtype_name(dtype);
  const auto plan = shard_plan(shapes, c10::elementSize(dtype), max_shard_bytes);
  int64_t total = 0;
  for (const auto& [file, tensors] : plan) {
    std::vector<SafetensorsWriter::Spec> specs;
    for (const auto& [name, shape] : tensors) specs.push_back({name, dtype, shape});
    SafetensorsWriter w(dir / file, specs, {{"format", "pt"}});
    for (const auto& [name, shape] : tensors) {
      w.write(tensor(name, shape));
      total += c10::multiply_integers(shape) * static_cast<int64_t>(c10::elementSize(dtype));
    }
    w.finish();
  }
  write_layout(dir, c, plan, total);
}

void LlamaModel::write_random(const fs::path& dir, const LlamaConfig& cfg, uint64_t seed, torch::ScalarType dtype,
                              int64_t max_shard_bytes) {
  auto gen = at::detail::createCPUGenerator(seed);
  write_checkpoint(dir, cfg, dtype, expected_tensors(cfg), max_shard_bytes,
                   [&](const std::string&, const std::vector<int64_t>& shape) { return random_tensor(shape, gen); });
}

void LlamaModel::save(const fs::path& dir, std::optional<torch::ScalarType> dtype, int64_t max_shard_bytes) const {
  if (quantized_matrices())
    throw vhost::Error(VHOST_ERR_UNSUPPORTED, "a model holding quantized blocks cannot be saved as safetensors; load it dequantised");
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  std::map<std::string, torch::Tensor> by_name;
  for (const auto& [name, t] : tensors_) {
    shapes.emplace_back(name, t.sizes().vec());
    by_name[name] = t;
  }
  write_checkpoint(dir, cfg_, dtype ? *dtype : dtype_, shapes, max_shard_bytes,
                   [&](const std::string& name, const std::vector<int64_t>&) { return by_name.at(name); });
}

torch::Tensor LlamaModel::rms_norm(const torch::Tensor& x, const torch::Tensor& w) const {
  // float32 on the CPU outside autograd: one pass per row instead of eight libtorch operations
  // (a third of a one-row decoding step of the tiny preset went to them).
  // (A half-precision model's norm weights scale float32 activations as float32: mixed_cpu.)
  if (x.scalar_type() == torch::kFloat32 && x.device().is_cpu() &&
      !(torch::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad()))) {
    auto xc = x.contiguous();
    auto out = torch::empty_like(xc);
    const int64_t D = xc.size(-1), R = xc.numel() / std::max<int64_t>(D, 1);
    rms_norm_rows(xc.data_ptr<float>(), w.to(torch::kFloat32).contiguous().data_ptr<float>(), R, D,
                  static_cast<float>(cfg_.rms_norm_eps), out.data_ptr<float>());
    return out;
  }
  // As HF: normalise in float32, cast back, then scale.
  auto x32 = x.to(torch::kFloat32);
  auto var = x32.pow(2).mean(-1, /*keepdim=*/true);
  return w * (x32 * torch::rsqrt(var + cfg_.rms_norm_eps)).to(x.scalar_type());
}

// x @ W^T. Up to kSmallGemmRows rows (a decoding step) go through small_gemm, which reads the
// weights in place instead of repacking them as BLAS gemm does on every call (1.9x on the
// stories15M output layer at 16 rows), and threads only when a thread's share is worth a wake-up.
// That includes one row (batch-1 decoding): as fast as OpenBLAS gemv on the stories15M shape,
// and 4.5x faster for the serving engine on the tiny preset, where OpenBLAS threads every
// 512x64 gemv and each call pays a futex wake-up of its helper thread (the engine's thread has
// its own OpenMP team, so libgomp throttles spinning).
// Up to this many rows small_gemm beat OpenBLAS on every layer of the stories15M shape here.
constexpr int64_t kSmallGemmRows = 32;

// A CPU weight tensor's memory for the decode kernels, in its stored type.
static WeightsRef weights_ref(const torch::Tensor& w, bool int8 = true, bool bf16_act = false) {
  switch (w.scalar_type()) {
    case torch::kUInt8:  // checked at load; [N / 8, nb, 8, bytes]: eight rows interleaved
      return {w.data_ptr(),
              w.dim() == 4 ? packed_x8(quant_format_bytes(w.size(3))->type) : quant_format_bytes(w.size(2))->type, int8};
    case torch::kBFloat16: return {w.data_ptr(), WeightType::bf16, true, bf16_act};
    case torch::kFloat16: return {w.data_ptr(), WeightType::f16};
    default: return {w.data_ptr<float>()};
  }
}

static torch::Tensor proj(const torch::Tensor& x, const torch::Tensor& w, bool int8, bool bf16_act) {
  const int64_t K = x.size(-1), M = x.numel() / std::max<int64_t>(K, 1);
  const int64_t N = w.dim() == 4 ? w.size(0) * 8 : w.size(0);  // rows of W (interleaved: in groups of 8)
  auto sizes = x.sizes().vec();
  sizes.back() = N;
  const bool f32 = w.scalar_type() == torch::kFloat32;
  if (w.scalar_type() == torch::kUInt8) {  // quantized blocks: the kernels, float32 activations, any rows
    auto a = x.to(torch::kFloat32).contiguous();
    auto out = torch::empty(sizes, a.options());
    TORCH_CHECK(small_gemm(a.data_ptr<float>(), M, weights_ref(w, int8), N, K, out.data_ptr<float>()),
                "no kernel reads these quantized blocks here");
    return out.to(x.scalar_type());
  }
  // float32 activations against bfloat16/float16 weights (a half-precision model on the CPU, see
  // mixed_cpu): the kernels widen the weights in registers, for any number of rows, since BLAS
  // cannot read them without a float32 copy of the matrix.
  if ((M <= kSmallGemmRows || !f32) && x.scalar_type() == torch::kFloat32 && x.device().is_cpu() &&
      w.device().is_cpu() && w.is_contiguous() &&
      !(torch::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad()))) {
    auto a = x.contiguous();
    auto out = torch::empty(sizes, x.options());
    if (small_gemm(a.data_ptr<float>(), M, weights_ref(w, int8, bf16_act), w.size(0), K, out.data_ptr<float>())) return out;
  }
  if (x.scalar_type() != w.scalar_type()) return torch::linear(x.to(w.scalar_type()), w).to(x.scalar_type());
  if (M == 1) return torch::mv(w, x.reshape({-1})).view(sizes);  // gemv beats a one-row gemm (2.4x, 32000x288)
  return torch::linear(x, w);
}

static torch::Tensor rotate_half(const torch::Tensor& x) {
  auto half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// Attention of queries q [B, H, T, hd] over keys and values [B, KV, S, hd] with libtorch ops:
// returns [B, T, H * hd]. Grouped-query attention without copying keys: query head h uses kv head
// h / rep.
static torch::Tensor torch_attention(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& values,
                                     const torch::Tensor& mask, int64_t KV, int64_t rep, double scale) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3), S = keys.size(2);
  auto qg = q.reshape({B, KV, rep, T, hd});
  // One new token against a short cache: broadcast-multiply and reduce. libtorch 1.13's CPU
  // bmm runs one small gemm per (row, head) without a batched BLAS, which cost 4x the rest of
  // a batch-16 decoding step here. The temporary is B*H*S*hd, so only while that stays small.
  const bool fused = T == 1 && B * H * S * hd <= (int64_t(1) << 22);
  torch::Tensor scores, attn;
  if (fused)
    scores = (qg * keys.unsqueeze(2)).sum(-1).unsqueeze(-2).to(torch::kFloat32) * scale;  // [B,KV,rep,1,S]
  else
    scores = torch::matmul(qg, keys.unsqueeze(2).transpose(-1, -2)).to(torch::kFloat32) * scale;  // [B,KV,rep,T,S]
  if (mask.defined()) scores = scores + mask;
  auto probs = torch::softmax(scores, -1).to(q.scalar_type());
  if (fused)
    attn = (probs.squeeze(-2).unsqueeze(-1) * values.unsqueeze(2)).sum(-2).unsqueeze(-2);  // [B,KV,rep,1,hd]
  else
    attn = torch::matmul(probs, values.unsqueeze(2));  // [B, KV, rep, T, hd]
  return attn.reshape({B, H, T, hd}).transpose(1, 2).reshape({B, T, H * hd});
}

// The same for one new token per row (T = 1) with decode_attention, reading layer li's cache
// (slots 0..S-1 filled) in place. Undefined when it does not apply: not float32 on the CPU, a
// graph being recorded, or no kernel for this CPU.
static torch::Tensor kernel_decode_attention(const torch::Tensor& q, const KVCache& cache, std::size_t li,
                                             const torch::Tensor& pad, int64_t S, double scale) {
  const auto& kc = cache.k[li];
  const auto& vc = cache.v[li];
  if (q.scalar_type() != torch::kFloat32 || !q.device().is_cpu() || kc.scalar_type() != torch::kFloat32 ||
      !kc.is_contiguous() || !vc.is_contiguous() || (torch::GradMode::is_enabled() && q.requires_grad()))
    return {};
  const int64_t B = q.size(0), H = q.size(1), hd = q.size(3);
  auto qc = q.contiguous();
  auto padc = pad.defined() ? pad.contiguous() : pad;
  auto out = torch::empty({B, 1, H * hd}, qc.options());
  DecodeAttention a{qc.data_ptr<float>(), kc.data_ptr<float>(), vc.data_ptr<float>(),
                    padc.defined() ? padc.data_ptr<int64_t>() : nullptr, out.data_ptr<float>(), B, H, kc.size(1), hd,
                    kc.size(2), S, static_cast<float>(scale)};
  return decode_attention(a) ? out : torch::Tensor();
}

// Threads on a model too small for intra-op threading. On the `tiny` preset every operation's
// parallel region woke a sleeping helper thread (in a thread other than libgomp's initial one,
// spinning is throttled, so the helper sleeps between regions) for microseconds of work, and the
// serial operations between regions left the second core idle. So when even the largest
// projection of a call is under kSmallWork multiply-adds:
//  - a decoding step of several rows runs as row shards, one per thread, each the whole forward
//    of its rows single-threaded: one parallel region a step instead of one per operation. Rows
//    are independent in a decoding step, so a shard computes exactly what the whole batch
//    computes for its rows;
//  - any other call runs inside one region on one thread, its operations serial, unless it is
//    so small that it opens no region anyway (a one-row decoding step), where that region would
//    be the only one.
// Larger models keep intra-op threading: there each shard would stream all weights again
// (stories15M at batch 16 was slower sharded) and an operation's share is worth a wake-up.
constexpr int64_t kSmallWork = int64_t(1) << 22;
constexpr int64_t kMinShardRows = 4;
constexpr int64_t kNoRegions = int64_t(1) << 17;  // small_gemm splits a projection from 2 x 64K multiply-adds

int64_t LlamaModel::decode_shards(int64_t rows) const {
  if (!device_.is_cpu() || at::in_parallel_region() || rows * largest_matrix_ > kSmallWork) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows / kMinShardRows));
}

torch::Tensor LlamaModel::forward(const torch::Tensor& tokens, KVCache* cache, const torch::Tensor& left_pad,
                                  bool last_only, const torch::Tensor& adapters) const {
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [batch, time]");
  const int64_t B = tokens.size(0), T = tokens.size(1);
  if (adapters.defined()) TORCH_CHECK(adapters.dim() == 1 && adapters.size(0) == B, "adapters must be [batch]");
  const int64_t work = B * T * largest_matrix_, shards = T == 1 && cache ? decode_shards(B) : 1;
  if (!device_.is_cpu() || at::in_parallel_region() || at::get_num_threads() < 2 || work > kSmallWork ||
      (shards == 1 && work <= kNoRegions) || (torch::GradMode::is_enabled() && embed_.requires_grad()))
    return forward_rows(tokens, cache, left_pad, last_only, false, adapters);
  std::vector<torch::Tensor> parts(static_cast<std::size_t>(shards));
  const bool inference = c10::InferenceMode::is_enabled(), grad = torch::GradMode::is_enabled();
  at::parallel_for(0, std::max<int64_t>(shards, 2), 1, [&](int64_t s0, int64_t s1) {
    // The caller's autograd modes are thread-local: a helper thread does not inherit them.
    std::optional<c10::InferenceMode> inference_mode;
    if (inference) inference_mode.emplace();
    torch::AutoGradMode grad_mode(grad && !inference);
    for (int64_t s = s0; s < std::min(s1, shards); ++s) {
      const int64_t r0 = B * s / shards, n = B * (s + 1) / shards - r0;
      KVCache view = cache ? cache->rows(r0, n) : KVCache();
      parts[static_cast<std::size_t>(s)] = forward_rows(tokens.narrow(0, r0, n), cache ? &view : nullptr,
                                                        left_pad.defined() ? left_pad.narrow(0, r0, n) : left_pad, last_only,
                                                        false, adapters.defined() ? adapters.narrow(0, r0, n) : adapters);
    }
  });
  if (cache) cache->length += T;  // as each shard's view
  return shards == 1 ? parts[0] : torch::cat(parts);
}

int32_t LlamaModel::add_adapter(const Adapter& a) {
  if (!a.config.modules_to_save.empty())
    throw vhost::Error(VHOST_ERR_UNSUPPORTED, a.source.string() + ": trains " + nlohmann::json(a.config.modules_to_save).dump() +
                                                  " whole (modules_to_save), which cannot be applied per request on a shared "
                                                  "base; merge it into the model instead (the llama option adapter, or vhost model merge)");
  const auto act = dtype_ == torch::kFloat32 || mixed_cpu() ? torch::kFloat32 : dtype_;
  Lora l;
  l.scale = a.config.scaling();
  const auto& mods = lora_module_names();  // q, k, v, o, gate, up, down: Lora::ab's order
  for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i) {
    std::array<torch::Tensor, 14> ab;
    for (std::size_t m = 0; m < mods.size(); ++m) {
      auto [A, B] = a.ab(i, mods[m]);
      if (!A.defined()) continue;
      TORCH_CHECK(A.size(1) == lora_module_shape(cfg_, mods[m])[1] && B.size(0) == lora_module_shape(cfg_, mods[m])[0],
                  "adapter shape mismatch");
      ab[2 * m] = A.to(device_, act).contiguous();
      ab[2 * m + 1] = B.to(device_, act).contiguous();
      l.gate_up = l.gate_up || m == 4 || m == 5;
    }
    l.ab.push_back(std::move(ab));
  }
  loras_.push_back(std::move(l));
  return static_cast<int32_t>(loras_.size() - 1);
}

std::vector<LlamaModel::LoraRows> LlamaModel::lora_rows(const torch::Tensor& adapters, int64_t batch) const {
  std::vector<LoraRows> out;
  if (!adapters.defined() || loras_.empty()) {
    if (adapters.defined())
      TORCH_CHECK((adapters < 0).all().item<bool>(), "an adapter was requested but this model holds none");
    return out;
  }
  auto a = adapters.to(torch::kCPU, torch::kInt64).contiguous();
  const int64_t* p = a.data_ptr<int64_t>();
  std::map<int64_t, std::vector<int64_t>> rows;
  for (int64_t b = 0; b < batch; ++b) {
    if (p[b] < 0) continue;
    TORCH_CHECK(p[b] < static_cast<int64_t>(loras_.size()), "adapter ", p[b], " does not exist");
    rows[p[b]].push_back(b);
  }
  for (auto& [i, r] : rows)
    out.push_back({&loras_[static_cast<std::size_t>(i)], torch::tensor(r, torch::kInt64).to(device_)});
  return out;
}

void LlamaModel::lora_add(torch::Tensor& y, const torch::Tensor& in, std::size_t li, int m, const std::vector<LoraRows>& g) {
  for (const auto& G : g) {
    const auto& A = G.lora->ab[li][static_cast<std::size_t>(2 * m)];
    if (!A.defined()) continue;
    const auto& B = G.lora->ab[li][static_cast<std::size_t>(2 * m + 1)];
    auto x = in.index_select(0, G.rows).to(A.scalar_type());
    auto d = torch::linear(torch::linear(x, A), B).mul_(G.lora->scale);
    y.index_add_(0, G.rows, d.to(y.scalar_type()));
  }
}

// The bf16 decode's weights: each matrix of a layer packed in AMX tile order (gate and up as one
// fused product), and the output layer.
struct LlamaModel::Bf16Weights {
  struct Layer {
    PackedBF16 q, k, v, o, gate_up, down;
  };
  std::vector<Layer> layers;
  PackedBF16 lm_head;
  std::vector<std::pair<torch::Tensor, uint32_t>> versions;  // each packed tensor and its version then
};

bool LlamaModel::enable_bf16_decode() {
  if (quantized_matrices() || !*bf16_gemm_isa() || !device_.is_cpu() || dtype_ != torch::kFloat32 || !*small_gemm_isa()) return false;
  auto c = [](const torch::Tensor& t) { return t.contiguous(); };
  auto pack = [&](const torch::Tensor& t) {
    auto x = c(t);
    return pack_bf16(x.data_ptr<float>(), x.size(0), x.size(1));
  };
  auto w = std::make_shared<Bf16Weights>(Bf16Weights{{}, pack(lm_head_), {}});
  for (const Layer& L : layers_) {
    auto g = c(L.gate), u = c(L.up);
    w->layers.push_back({pack(L.q), pack(L.k), pack(L.v), pack(L.o),
                         pack_bf16_gate_up(g.data_ptr<float>(), u.data_ptr<float>(), g.size(0), g.size(1)), pack(L.down)});
    for (const auto* t : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
      if (!t->is_inference()) w->versions.emplace_back(*t, t->_version());  // inference tensors have none (and stay put)
  }
  if (!lm_head_.is_inference()) w->versions.emplace_back(lm_head_, lm_head_._version());
  bf16_ = std::move(w);
  return true;
}

bool LlamaModel::set_bf16_activations(bool on) {
  bf16_activations_ = on && mixed_cpu() && dtype_ == torch::kBFloat16;
  return bf16_activations_ == on;
}

bool LlamaModel::set_auto_activations() {
  set_bf16_activations(*bf16_dot_isa() != '\0');
  return bf16_activations_;
}

bool LlamaModel::mixed_cpu() const {
  const WeightType t = dtype_ == torch::kBFloat16 ? WeightType::bf16 : WeightType::f16;
  return device_.is_cpu() && (dtype_ == torch::kBFloat16 || dtype_ == torch::kFloat16) && small_gemm_supports(t) &&
         !(torch::GradMode::is_enabled() && embed_.requires_grad());
}

bool LlamaModel::bf16_current() const {
  if (!bf16_ || !*bf16_gemm_isa()) return false;
  for (const auto& [t, v] : bf16_->versions)
    if (t._version() != v) return false;
  return true;
}

namespace {
struct StepBuffers {  // see decode_step
  std::vector<float> x, scratch;
  std::vector<uint16_t> a16;
  torch::Tensor logits[2];
};

// The tokens' embedding rows into the residual stream x [B, D] (a half-precision table widened).
void embed_rows(const torch::Tensor& embed, const int64_t* ids, int64_t B, int64_t D, int64_t vocab, float* x) {
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(ids[b] >= 0 && ids[b] < vocab, "token id ", ids[b], " is outside the vocabulary of ", vocab);
    float* row = x + b * D;
    switch (embed.scalar_type()) {
      case torch::kBFloat16: {
        const auto* e = embed.data_ptr<at::BFloat16>() + ids[b] * D;
        for (int64_t i = 0; i < D; ++i) row[i] = static_cast<float>(e[i]);
        break;
      }
      case torch::kHalf: {
        const auto* e = embed.data_ptr<at::Half>() + ids[b] * D;
        for (int64_t i = 0; i < D; ++i) row[i] = static_cast<float>(e[i]);
        break;
      }
      case torch::kUInt8: {  // quantized blocks [vocab, D / block_elems, block_bytes]: the row dequantised
        const int64_t row_bytes = embed.size(1) * embed.size(2);
        dequantize(quant_format_bytes(embed.size(2))->type, embed.data_ptr<uint8_t>() + ids[b] * row_bytes, D, row);
        break;
      }
      default: std::memcpy(row, embed.data_ptr<float>() + ids[b] * D, sizeof(float) * D);
    }
  }
}

// Whether layer li's cache can take this step in place: float32 or bfloat16, on the CPU, dense,
// one row per batch row.
bool cache_usable(const KVCache& cache, std::size_t li, int64_t B) {
  const auto kt = cache.k[li].scalar_type();
  return (kt == torch::kFloat32 || kt == torch::kBFloat16) && cache.v[li].scalar_type() == kt && cache.k[li].device().is_cpu() &&
         cache.k[li].is_contiguous() && cache.v[li].is_contiguous() && cache.k[li].size(0) == B;
}

// One layer's cache, as the step reads and writes it: [rows, capacity, hd] of float32 or
// bfloat16 (written rounded, read widened).
struct LayerCache {
  char* k;
  char* v;
  int64_t capacity;
  bool bf16;
  std::size_t elem() const { return bf16 ? 2 : 4; }
};

// The new cache slots of a layer are far from anything recently touched: asking for them before
// the projections overlaps their misses with the projections (at batch 16 of the stories15M
// shape, writing them cold cost 125 us a step, prefetched 45).
void prefetch_slots(const LayerCache& c, int64_t rows, int64_t start, int64_t hd) {
  const std::size_t es = c.elem();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < hd * static_cast<int64_t>(es); i += 64) {
      __builtin_prefetch(c.k + (r * c.capacity + start) * hd * es + i, 1, 3);
      __builtin_prefetch(c.v + (r * c.capacity + start) * hd * es + i, 1, 3);
    }
}

// The rotary embedding (x * cos + rotate_half(x) * sin) of each row's queries and keys at the
// row's own position (left padding skipped), and its key and value into the cache slot `start`.
void rope_and_cache(float* q, float* k, const float* v, const int64_t* padp, int64_t B, int64_t H, int64_t KV, int64_t hd,
                    int64_t start, const float* cosp, const float* sinp, const LayerCache& cache) {
  const int64_t half = hd / 2;
  auto rotate = [&](float* head, const float* c, const float* s) {
    for (int64_t i = 0; i < half; ++i) {
      const float a = head[i], b = head[i + half];
      head[i] = a * c[i] - b * s[i];
      head[i + half] = b * c[i + half] + a * s[i + half];
    }
  };
  for (int64_t b = 0; b < B; ++b) {
    const int64_t pos = padp ? std::max<int64_t>(start - padp[b], 0) : start;
    const float* c = cosp + pos * hd;
    const float* s = sinp + pos * hd;
    for (int64_t j = 0; j < H; ++j) rotate(q + (b * H + j) * hd, c, s);
    for (int64_t j = 0; j < KV; ++j) {
      float* kh = k + (b * KV + j) * hd;
      rotate(kh, c, s);
      const int64_t slot = ((b * KV + j) * cache.capacity + start) * hd;
      const float* vh = v + (b * KV + j) * hd;
      if (cache.bf16) {
        to_bf16_rows(kh, 1, hd, reinterpret_cast<uint16_t*>(cache.k) + slot, hd);
        to_bf16_rows(vh, 1, hd, reinterpret_cast<uint16_t*>(cache.v) + slot, hd);
      } else {
        std::memcpy(reinterpret_cast<float*>(cache.k) + slot, kh, sizeof(float) * hd);
        std::memcpy(reinterpret_cast<float*>(cache.v) + slot, vh, sizeof(float) * hd);
      }
    }
  }
}

// The logits go out in one of the last two steps' tensors that the caller has let go of (no
// tensor or view of it left: a loop `logits = forward(...)` still holds the last one), else in a
// new one.
torch::Tensor& step_logits(StepBuffers& buf, int64_t B, int64_t vocab) {
  auto free_logits = [&](const torch::Tensor& t) {
    return t.defined() && t.use_count() == 1 && t.storage().use_count() == 1 && t.size(0) == B && t.size(2) == vocab;
  };
  if (!free_logits(buf.logits[0])) std::swap(buf.logits[0], buf.logits[1]);
  torch::Tensor& logits = buf.logits[0];
  if (!free_logits(logits)) logits = torch::empty({B, 1, vocab}, torch::TensorOptions().dtype(torch::kFloat32));
  return logits;
}

// Every layer's weights dense (decode_step reads them as plain arrays).
template <class Layers>
bool layers_dense(const Layers& layers) {
  for (const auto& L : layers)
    for (const auto* t : {&L.input_norm, &L.q, &L.k, &L.v, &L.o, &L.post_norm, &L.gate, &L.up, &L.down})
      if (!t->is_contiguous()) return false;
  return true;
}

// A product on bfloat16 weights: the input rows rounded to bfloat16 first (buf.a16).
void bf16_product(StepBuffers& buf, const float* in, int64_t B, int64_t K, const Bf16Output* outs, int n) {
  const int64_t Kp = outs[0].W->Kp;
  buf.a16.resize(static_cast<std::size_t>(B * Kp));
  to_bf16_rows(in, B, K, buf.a16.data(), Kp);
  bf16_gemm(buf.a16.data(), B, outs, n);
}

// silu(gate) * up with the two products apart, where LoRA adapts one of them or gate and up are
// stored in different types (a llama.cpp mixture may quantize them differently); `adapt(gate,
// up)` adds the LoRA updates in between (may be empty).
void gate_up_apart(const float* h, int64_t B, int64_t D, WeightsRef gate, WeightsRef up, int64_t F, float* act,
                   const std::function<void(float*, float*)>& adapt) {
  thread_local std::vector<float> gate_buf, up_buf;
  gate_buf.resize(static_cast<std::size_t>(B * F));
  up_buf.resize(static_cast<std::size_t>(B * F));
  const GemmOutput gu[2] = {{gate, F, gate_buf.data()}, {up, F, up_buf.data()}};
  small_gemm_many(h, B, D, gu, 2);
  if (adapt) adapt(gate_buf.data(), up_buf.data());
  for (int64_t i = 0; i < B * F; ++i) act[i] = gate_buf[i] / (1.0f + std::exp(-gate_buf[i])) * up_buf[i];
}
}  // namespace

// A decoding step as a dozen kernel calls on preallocated buffers. Through libtorch, every
// elementwise operation of a layer (rotary embedding, cache writes, residual adds, silu, product)
// cost an operator dispatch and a tensor allocation: 0.5 ms of a 3.2 ms batch-16 step of the
// stories15M shape here, more than its attention. Here the rotary embedding and the cache write
// are one loop, the residual adds ride on the output projections (small_gemm accumulates), the
// query/key/value projections share one parallel region and silu(gate) * up never leaves the
// MLP kernel. The formulas are forward_rows' (HF's), up to float rounding order.
torch::Tensor LlamaModel::decode_step(const torch::Tensor& tokens, KVCache& cache, const torch::Tensor& left_pad,
                                      const torch::Tensor& adapters) const {
  const int64_t B = tokens.size(0), D = cfg_.hidden_size, H = cfg_.num_attention_heads, KV = cfg_.num_key_value_heads;
  const int64_t hd = cfg_.head_dim(), F = cfg_.intermediate_size, Vocab = cfg_.vocab_size;
  const int64_t start = cache.length, S = start + 1;
  if (tokens.size(1) != 1 || !device_.is_cpu() || (dtype_ != torch::kFloat32 && !mixed_cpu()) || !*small_gemm_isa() ||
      S > cfg_.max_position_embeddings || S > cache.capacity || (torch::GradMode::is_enabled() && embed_.requires_grad()) ||
      !lm_head_.is_contiguous() || !embed_.is_contiguous() || hd % 2 || !layers_dense(layers_))
    return {};
  for (std::size_t li = 0; li < layers_.size(); ++li)
    if (!cache_usable(cache, li, B)) return {};
  // Rows with LoRA adapters get each update added to the product it belongs to (lora_add, on
  // tensors viewing the step's buffers).
  const auto lora = lora_rows(adapters, B);
  bool lora_gate_up = false;
  for (const auto& g : lora) lora_gate_up = lora_gate_up || g.lora->gate_up;
  if (lora_gate_up && bf16_current()) return {};  // the packed gate+up product is fused with silu
  auto ids = tokens.to(torch::kCPU, torch::kInt64).contiguous();
  torch::Tensor pad = left_pad.defined() ? left_pad.to(torch::kCPU, torch::kInt64).contiguous() : left_pad;
  if (pad.defined()) TORCH_CHECK(pad.dim() == 1 && pad.size(0) == B, "left_pad must be [batch]");
  const int64_t* padp = pad.defined() ? pad.data_ptr<int64_t>() : nullptr;

  // The step's buffers live on between steps (one set per calling thread: the engine's row
  // shards step at once). Allocated anew each step, the logits and scratch of a 16-row step of
  // the stories15M shape (2.2 MB) went back to the kernel when freed and came back as ~240 page
  // faults a step.
  thread_local StepBuffers buf;
  // x: the residual stream [B, D]. Scratch: h (normed input) [B, D], q [B, H*hd], k and v
  // [B, KV*hd], attention output [B, H*hd], MLP activation [B, F].
  buf.x.resize(static_cast<std::size_t>(B * D));
  buf.scratch.resize(static_cast<std::size_t>(B * (D + 2 * H * hd + 2 * KV * hd + F)));
  float* xp = buf.x.data();
  embed_rows(embed_, ids.data_ptr<int64_t>(), B, D, Vocab, xp);
  float* h = buf.scratch.data();
  float* q = h + B * D;
  float* k = q + B * H * hd;
  float* v = k + B * KV * hd;
  float* att = v + B * KV * hd;
  float* act = att + B * H * hd;
  // With bfloat16 weights (enable_bf16_decode): the input of each product rounded to bfloat16.
  const Bf16Weights* bf = bf16_current() ? bf16_.get() : nullptr;
  auto bf16 = [&](const float* in, int64_t K, const Bf16Output* outs, int n) { bf16_product(buf, in, B, K, outs, n); };
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const float* cosp = cos32_.data_ptr<float>();
  const float* sinp = sin32_.data_ptr<float>();
  auto w = [this](const torch::Tensor& t) { return weights_ref(t, int8_activations_, bf16_activations_); };
  // The norms' weights in float32 (a half-precision model's widened each step: D floats each).
  std::vector<torch::Tensor> norms32;
  auto norm_w = [&](const torch::Tensor& t) {
    if (t.scalar_type() == torch::kFloat32) return t.data_ptr<float>();
    norms32.push_back(t.to(torch::kFloat32));
    return norms32.back().data_ptr<float>();
  };
  auto rows = [&](float* p, int64_t n) { return torch::from_blob(p, {B, n}, torch::TensorOptions().dtype(torch::kFloat32)); };
  // A bfloat16 cache (cache_dtype with bf16 decode) is written rounded and read widened.
  const bool kv16 = cache.k[0].scalar_type() == torch::kBFloat16;

  for (std::size_t li = 0; li < layers_.size(); ++li) {
    const Layer& L = layers_[li];
    const LayerCache lc{static_cast<char*>(cache.k[li].data_ptr()), static_cast<char*>(cache.v[li].data_ptr()), cache.capacity, kv16};
    prefetch_slots(lc, B * KV, start, hd);
    rms_norm_rows(xp, norm_w(L.input_norm), B, D, eps, h);
    const Bf16Weights::Layer* P = bf ? &bf->layers[li] : nullptr;
    if (P) {
      const Bf16Output qkv[3] = {{&P->q, q, false}, {&P->k, k, false}, {&P->v, v, false}};
      bf16(h, D, qkv, 3);
    } else {
      const GemmOutput qkv[3] = {{w(L.q), H * hd, q}, {w(L.k), KV * hd, k}, {w(L.v), KV * hd, v}};
      small_gemm_many(h, B, D, qkv, 3);
    }
    if (!lora.empty()) {
      auto ht = rows(h, D), qt = rows(q, H * hd), kt = rows(k, KV * hd), vt = rows(v, KV * hd);
      lora_add(qt, ht, li, 0, lora);
      lora_add(kt, ht, li, 1, lora);
      lora_add(vt, ht, li, 2, lora);
    }
    rope_and_cache(q, k, v, padp, B, H, KV, hd, start, cosp, sinp, lc);
    DecodeAttention a{q, kv16 ? nullptr : reinterpret_cast<const float*>(lc.k), kv16 ? nullptr : reinterpret_cast<const float*>(lc.v),
                      padp, att, B, H, KV, hd, cache.capacity, S,
                      static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd))),
                      kv16 ? reinterpret_cast<const uint16_t*>(lc.k) : nullptr, kv16 ? reinterpret_cast<const uint16_t*>(lc.v) : nullptr};
    decode_attention(a);
    auto xt = rows(xp, D);
    if (P) {
      const Bf16Output o{&P->o, xp, true}, gu{&P->gate_up, act, false}, down{&P->down, xp, true};
      bf16(att, H * hd, &o, 1);
      if (!lora.empty()) lora_add(xt, rows(att, H * hd), li, 3, lora);
      rms_norm_rows(xp, norm_w(L.post_norm), B, D, eps, h);
      bf16(h, D, &gu, 1);
      bf16(act, F, &down, 1);
      if (!lora.empty()) lora_add(xt, rows(act, F), li, 6, lora);
      continue;
    }
    small_gemm(att, B, w(L.o), D, H * hd, xp, /*accumulate=*/true);
    if (!lora.empty()) lora_add(xt, rows(att, H * hd), li, 3, lora);
    rms_norm_rows(xp, norm_w(L.post_norm), B, D, eps, h);
    // The two products apart where LoRA adapts one of them, or where gate and up are stored in
    // different types (a llama.cpp mixture may quantize them differently); else fused.
    if (lora_gate_up || !gate_up_silu(h, B, D, w(L.gate), w(L.up), F, act))
      gate_up_apart(h, B, D, w(L.gate), w(L.up), F, act, [&](float* g, float* u) {
        if (!lora_gate_up) return;
        auto ht = rows(h, D), gt = rows(g, F), ut = rows(u, F);
        lora_add(gt, ht, li, 4, lora);
        lora_add(ut, ht, li, 5, lora);
      });
    small_gemm(act, B, w(L.down), D, F, xp, /*accumulate=*/true);
    if (!lora.empty()) lora_add(xt, rows(act, F), li, 6, lora);
  }
  cache.length = S;
  rms_norm_rows(xp, norm_w(norm_), B, D, eps, h);
  torch::Tensor& logits = step_logits(buf, B, Vocab);
  if (bf) {
    const Bf16Output out{&bf->lm_head, logits.data_ptr<float>(), false};
    bf16(h, D, &out, 1);
  } else {
    small_gemm(h, B, w(lm_head_), Vocab, D, logits.data_ptr<float>());
  }
  return logits;
}

torch::Tensor LlamaModel::hidden_states(const torch::Tensor& tokens, const torch::Tensor& adapters) const {
  return forward_rows(tokens, nullptr, torch::Tensor(), false, /*hidden=*/true, adapters);
}

torch::Tensor LlamaModel::forward_rows(const torch::Tensor& tokens, KVCache* cache, const torch::Tensor& left_pad,
                                       bool last_only, bool hidden, const torch::Tensor& adapters) const {
  const int64_t B = tokens.size(0), T = tokens.size(1);
  if (T == 1 && cache && !hidden) {
    auto logits = decode_step(tokens, *cache, left_pad, adapters);
    if (logits.defined()) return logits;
  }
  const auto lora = lora_rows(adapters, B);
  // A projection, plus each row's LoRA update of module m (see lora_add).
  auto proj_lora = [&](const torch::Tensor& in, const torch::Tensor& w, std::size_t li, int m) {
    auto y = proj(in, w, int8_activations_, bf16_activations_);
    if (!lora.empty()) lora_add(y, in, li, m, lora);
    return y;
  };
  const int64_t H = cfg_.num_attention_heads, KV = cfg_.num_key_value_heads, hd = cfg_.head_dim();
  const int64_t rep = H / KV;
  const int64_t start = cache ? cache->length : 0;
  const int64_t S = start + T;  // key length
  if (S > cfg_.max_position_embeddings)
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "sequence of " + std::to_string(S) + " positions exceeds the context of " +
                                                       std::to_string(cfg_.max_position_embeddings));
  if (cache && S > cache->capacity)
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "sequence of " + std::to_string(S) +
                                                       " positions exceeds the KV cache capacity " +
                                                       std::to_string(cache->capacity));
  // Token ids from the host are checked there. Ids already on the device (a decoder's own argmax
  // or sample, kept there) are not read back: that would wait for the device every step.
  if (tokens.device().is_cpu() && tokens.numel()) {
    const auto host = tokens.to(torch::kInt64);
    const int64_t lo = host.min().item<int64_t>(), hi = host.max().item<int64_t>();
    if (lo < 0 || hi >= cfg_.vocab_size)
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "token id " + std::to_string(lo < 0 ? lo : hi) +
                                                         " is outside the vocabulary of " + std::to_string(cfg_.vocab_size));
  }
  auto ids = tokens.to(device_, torch::kInt64);
  torch::Tensor x;  // [B, T, D]
  if (embed_.scalar_type() == torch::kUInt8) {  // quantized rows, dequantised as they are looked up
    auto flat = ids.contiguous();
    x = torch::empty({ids.size(0), ids.size(1), cfg_.hidden_size}, torch::TensorOptions().dtype(torch::kFloat32));
    embed_rows(embed_, flat.data_ptr<int64_t>(), flat.numel(), cfg_.hidden_size, cfg_.vocab_size, x.data_ptr<float>());
  } else {
    x = torch::embedding(embed_, ids);
  }
  if (mixed_cpu()) x = x.to(torch::kFloat32);  // float32 activations (see mixed_cpu)
  const auto& cos_table = x.scalar_type() == torch::kFloat32 ? cos32_ : cos_;
  const auto& sin_table = x.scalar_type() == torch::kFloat32 ? sin32_ : sin_;

  auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(device_);
  auto slots = torch::arange(start, S, i64);  // the query slots
  const bool padded = left_pad.defined();
  torch::Tensor pad;
  if (padded) {
    TORCH_CHECK(left_pad.dim() == 1 && left_pad.size(0) == B, "left_pad must be [batch]");
    pad = left_pad.to(device_, torch::kInt64);
  }
  // Rotary rows for the query positions: [T, hd], or [B, 1, T, hd] when rows are padded and so
  // have their own positions.
  torch::Tensor cos, sin;
  if (padded) {
    auto pos = (slots.unsqueeze(0) - pad.unsqueeze(1)).clamp_min(0).reshape({-1});
    cos = cos_table.index_select(0, pos).view({B, 1, T, hd});
    sin = sin_table.index_select(0, pos).view({B, 1, T, hd});
  } else {
    cos = cos_table.narrow(0, start, T);
    sin = sin_table.narrow(0, start, T);
  }

  // Mask over key slots 0..S-1: causal, and padding keys hidden. A padding query still sees
  // itself, so its (unused) row stays finite. Made on first use: a decoding step that goes
  // through decode_attention never needs it.
  torch::Tensor mask_;
  auto mask = [&]() -> const torch::Tensor& {
    if (mask_.defined() || !(T > 1 || padded)) return mask_;
    auto q_slot = slots.unsqueeze(1);                    // [T, 1]
    auto k_slot = torch::arange(0, S, i64).unsqueeze(0);  // [1, S]
    auto blocked = k_slot > q_slot;                      // [T, S]
    if (padded)
      blocked = blocked.unsqueeze(0) |
                ((k_slot.unsqueeze(0) < pad.view({B, 1, 1})) & (k_slot != q_slot).unsqueeze(0));  // [B, T, S]
    mask_ = torch::zeros(blocked.sizes(), torch::TensorOptions().dtype(torch::kFloat32).device(device_))
                .masked_fill(blocked, -std::numeric_limits<float>::infinity());
    if (padded) mask_ = mask_.view({B, 1, 1, T, S});  // broadcast over [B, KV, rep, T, S]
    return mask_;
  };
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));

  for (std::size_t li = 0; li < layers_.size(); ++li) {
    const Layer& L = layers_[li];
    auto h = rms_norm(x, L.input_norm);
    auto q = proj_lora(h, L.q, li, 0).view({B, T, H, hd}).transpose(1, 2);   // [B, H, T, hd]
    auto k = proj_lora(h, L.k, li, 1).view({B, T, KV, hd}).transpose(1, 2);  // [B, KV, T, hd]
    auto v = proj_lora(h, L.v, li, 2).view({B, T, KV, hd}).transpose(1, 2);
    q = q * cos + rotate_half(q) * sin;
    k = k * cos + rotate_half(k) * sin;
    torch::Tensor keys = k, values = v;
    if (cache) {
      cache->k[li].narrow(2, start, T).copy_(k);
      cache->v[li].narrow(2, start, T).copy_(v);
      keys = cache->k[li].narrow(2, 0, S).to(k.scalar_type());  // a bfloat16 cache: widened (cache_dtype)
      values = cache->v[li].narrow(2, 0, S).to(v.scalar_type());
    }
    // One new token per row in float32 on the CPU: one kernel pass over the cache.
    torch::Tensor attn = T == 1 && cache ? kernel_decode_attention(q, *cache, li, pad, S, scale) : torch::Tensor();
    // A prompt from slot 0 without padding (a prefill, the engine's included: each prompt fills a
    // row of its own) is plain causal attention: on libtorch 2.x scaled_dot_product_attention,
    // whose flash / memory-efficient kernels never hold the [T, S] scores.
    if (!attn.defined() && torch_compat::has_sdpa() && T > 1 && start == 0 && !padded)
      attn = torch_compat::causal_attention(q, keys, values).transpose(1, 2).reshape({B, T, H * hd});
    if (!attn.defined()) attn = torch_attention(q, keys, values, mask(), KV, rep, scale);
    x = x + proj_lora(attn, L.o, li, 3);
    auto m = rms_norm(x, L.post_norm);
    x = x + proj_lora(torch::silu(proj_lora(m, L.gate, li, 4)) * proj_lora(m, L.up, li, 5), L.down, li, 6);
  }
  if (cache) cache->length = S;
  if (last_only && T > 1) x = x.narrow(1, T - 1, 1);
  x = rms_norm(x, norm_);
  if (hidden) return x.to(torch::kFloat32);
  return proj(x, lm_head_, int8_activations_, bf16_activations_).to(torch::kFloat32);
}

std::string quant_summary(const LlamaModel& model) {
  std::string out;
  for (const auto& [f, n] : model.quant_matrices()) out += (out.empty() ? "" : ", ") + f + " x " + std::to_string(n);
  int64_t x8 = 0;
  for (const auto& [name, t] : model.named_tensors()) x8 += t.dim() == 4;
  if (x8) out += " (" + std::to_string(x8) + " with eight rows interleaved)";
  return out;
}

}  // namespace vhost::llama
