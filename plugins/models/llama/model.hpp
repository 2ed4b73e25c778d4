// LLaMA (1 and 2, grouped-query attention included) in libtorch, with HF's tensor names and
// HF's rotary convention (rotate-half), so checkpoints move between vhost and HF transformers.
#pragma once

#include "config.hpp"

#include <torch/torch.h>

#include <array>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace vhost::llama {

struct Adapter;  // lora.hpp

// Keys and values of every layer, preallocated for `capacity` positions: decoding writes into
// it in place instead of growing tensors by concatenation.
struct KVCache {
  std::vector<torch::Tensor> k, v;  // per layer: [batch, kv_heads, capacity, head_dim]
  int64_t length = 0;               // positions filled
  int64_t capacity = 0;
  static KVCache create(const LlamaConfig& cfg, int64_t batch, int64_t capacity, const torch::TensorOptions& opts);
  // Rows first..first+n-1 as a cache of their own (views: writes go to this cache), same length.
  KVCache rows(int64_t first, int64_t n) const;
};

class LlamaModel {
 public:
  // Checks every tensor against the config (names, shapes); `source` names the checkpoint in
  // errors. Tensors are moved to `device` and `dtype`; with the same dtype on CPU they stay
  // views of the memory-mapped file.
  LlamaModel(LlamaConfig cfg, std::vector<std::pair<std::string, torch::Tensor>> tensors, const std::string& source,
             torch::Device device, torch::ScalarType dtype);

  // An HF checkpoint folder: config.json plus model.safetensors, or shards listed in
  // model.safetensors.index.json; or a GGUF file. `dtype` defaults to the stored one (a GGUF's
  // matrices'; float32 for quantized ones).
  static LlamaModel load(const std::filesystem::path& dir, torch::Device device = torch::kCPU,
                         std::optional<torch::ScalarType> dtype = std::nullopt);
  // Random weights (normal, std 0.02; norms 1), deterministic for a seed.
  static LlamaModel random(const LlamaConfig& cfg, uint64_t seed, torch::ScalarType dtype = torch::kFloat32);
  // The checkpoint random(cfg, seed, dtype).save(dir, dtype, max_shard_bytes) would write, made
  // one tensor at a time: the largest tensor in float32 is the most it holds (7B in bf16: 0.8 GB,
  // where random() then save() needs the whole model in float32 and in bf16, 40 GB).
  static void write_random(const std::filesystem::path& dir, const LlamaConfig& cfg, uint64_t seed,
                           torch::ScalarType dtype, int64_t max_shard_bytes = 0);
  // Writes config.json and safetensors (sharded when larger than max_shard_bytes > 0).
  void save(const std::filesystem::path& dir, std::optional<torch::ScalarType> dtype = std::nullopt,
            int64_t max_shard_bytes = 0) const;

  // tokens [batch, time] (int64) -> logits [batch, time, vocab] (float32). With a cache, the
  // tokens continue from cache->length and the cache is extended. `left_pad` ([batch] int64,
  // optional) says how many leading slots of each row are padding: they are never attended to,
  // and positions count from the first real token, so a padded row computes what it would alone.
  // `last_only`: logits of the last position only ([batch, 1, vocab]), as a prefill that samples
  // its next token needs; the output layer then runs on one row instead of `time`.
  // `adapters` ([batch] int64, optional): each row's LoRA adapter (an add_adapter index), -1 the
  // base alone. Token ids on the CPU outside the vocabulary are an error (INVALID_ARGUMENT); ids
  // already on the model's device (its own argmax or samples) are used unread, so a decoding loop
  // that keeps them there never waits for the device.
  torch::Tensor forward(const torch::Tensor& tokens, KVCache* cache = nullptr,
                        const torch::Tensor& left_pad = torch::Tensor(), bool last_only = false,
                        const torch::Tensor& adapters = torch::Tensor()) const;

  // tokens [batch, time] -> the last hidden states [batch, time, hidden] (float32): after the
  // final norm, before the output layer, as HF's hidden_states[-1]. What /v1/embeddings pools.
  torch::Tensor hidden_states(const torch::Tensor& tokens, const torch::Tensor& adapters = torch::Tensor()) const;

  // Multi-LoRA serving (vLLM's): LoRA adapters kept beside the base weights and applied per row,
  // y = W x + s B (A x), so that one batch mixes rows of several adapters and of the base, and
  // the base is held once. Returns the adapter's index for forward's `adapters`. The adapter must
  // fit this model (load_adapter checks it); one with modules_to_save (whole modules replaced)
  // cannot be applied per row: it is refused (merge it instead). Not while forward runs.
  int32_t add_adapter(const Adapter& a);
  int32_t adapter_count() const { return static_cast<int32_t>(loras_.size()); }

  // How many row shards, one per thread, a decoding step of `rows` rows on this thread should
  // run as (see forward()); 1 where intra-op threading pays better.
  int64_t decode_shards(int64_t rows) const;

  // Decoding steps (one new token per row, float32 on the CPU) multiply by bfloat16 copies of the
  // weight matrices (AMX, AVX512-BF16, or widened on AVX-512/AVX2), with activations rounded to
  // bfloat16 (see decode_kernels.hpp): packs the copies now (half the float32 weights' size
  // again). Steps after an in-place change of a weight (training) use the float32 weights. False,
  // changing nothing, without any of those or where decode_step does not apply (not float32 on
  // the CPU).
  bool enable_bf16_decode();
  bool bf16_decode() const { return bf16_ != nullptr; }
  // The element type of a KV cache for this model: bfloat16 with bf16 decode (half the bytes a
  // decoding step reads from the cache), else the weights'. forward() takes a cache of either.
  torch::ScalarType cache_dtype() const { return bf16_ || mixed_cpu() ? torch::kBFloat16 : dtype_; }

  // A bfloat16/float16 model on the CPU outside training computes in float32 activations against
  // its stored weights, as llama.cpp does: the decode kernels widen the weights in registers
  // (decode_kernels.hpp), so a memory-mapped bf16 checkpoint is read in place, never copied to
  // float32 (7B: 13.5 GB, not 27). libtorch's own bf16 CPU matmuls, HF's way, were 40x slower
  // than memory speed. Its KV cache is bfloat16. Training (autograd on the weights) keeps the
  // stored dtype throughout, as HF.
  bool mixed_cpu() const;

  const LlamaConfig& config() const { return cfg_; }
  // Matrices held as quantized blocks (uint8 [N, K / block_elems, block_bytes], from
  // load_gguf_llama with keep_blocks), by format ("q4_0": 96, ...): the decode kernels dequantise
  // them in registers, every product on the CPU. Empty otherwise.
  const std::map<std::string, int64_t>& quant_matrices() const { return quant_matrices_; }
  // Quantized matrices: products by integer dot products with the activations rounded
  // to 8 bits (true, the default: llama.cpp's arithmetic, decode_kernels.hpp) or with the weights
  // widened to float32 (false: the float32 model of the blocks' values).
  // Q4_0 / Q4_1 / Q8_0 / Q4_K / Q5_K / Q6_K matrices change layout with it: eight rows interleaved for the integer kernels,
  // plain blocks for the float32 path (which reads those at full speed).
  void set_int8_activations(bool on);
  bool int8_activations() const { return int8_activations_; }
  // A bfloat16 model on the CPU (mixed_cpu): products with the activations rounded to bfloat16
  // (true; decode_dtype = "bfloat16"), by vdpbf16ps on the weights in place where the CPU has
  // AVX512-BF16, else widened: llama.cpp's arithmetic for a BF16 model. false (the default):
  // float32 activations. Returns false, and stays off, for any other model.
  bool set_bf16_activations(bool on);
  // decode_dtype = "auto": bf16-rounded activations exactly where vdpbf16ps multiplies them
  // (bf16_dot_isa) for a bfloat16 model read in place, as llama.cpp and HF compute such a model;
  // float32 ones elsewhere (the widened AVX2 path gains nothing from rounding). Returns whether on.
  bool set_auto_activations();
  bool bf16_activations() const { return bf16_activations_; }
  int64_t quantized_matrices() const {  // all formats together
    int64_t n = 0;
    for (const auto& [f, c] : quant_matrices_) n += c;
    return n;
  }
  torch::Device device() const { return device_; }
  torch::ScalarType dtype() const { return dtype_; }
  // HF names, in HF order; the lm_head is absent when tied.
  const std::vector<std::pair<std::string, torch::Tensor>>& named_tensors() const { return tensors_; }

  // The names and shapes a checkpoint of this config holds.
  static std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const LlamaConfig& cfg);

 private:
  struct Layer {
    torch::Tensor input_norm, q, k, v, o, post_norm, gate, up, down;
  };
  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w) const;
  torch::Tensor forward_rows(const torch::Tensor& tokens, KVCache* cache, const torch::Tensor& left_pad,
                             bool last_only, bool hidden = false, const torch::Tensor& adapters = torch::Tensor()) const;
  // forward_rows for one new token per row, float32 on the CPU outside autograd, on raw buffers
  // with the decode kernels; undefined where it does not apply.
  torch::Tensor decode_step(const torch::Tensor& tokens, KVCache& cache, const torch::Tensor& left_pad,
                            const torch::Tensor& adapters) const;
  // An adapter of add_adapter: per layer, A and B of q, k, v, o, gate, up, down (in that order;
  // undefined where it has none), in the activations' dtype.
  struct Lora {
    double scale = 1;
    std::vector<std::array<torch::Tensor, 14>> ab;
    bool gate_up = false;  // adapts gate_proj or up_proj
  };
  std::vector<Lora> loras_;
  // The rows of a batch that use each adapter present in `adapters` (none: all base).
  struct LoraRows {
    const Lora* lora;
    torch::Tensor rows;  // int64 row indices, on the model's device
  };
  std::vector<LoraRows> lora_rows(const torch::Tensor& adapters, int64_t batch) const;
  // y[rows] += s B (A in[rows]) for module m (0..6) of layer li, for each adapter's rows.
  static void lora_add(torch::Tensor& y, const torch::Tensor& in, std::size_t li, int m, const std::vector<LoraRows>& g);
  struct Bf16Weights;  // the packed copies, decode_kernels.hpp's PackedBF16 (kept out of this header)
  std::shared_ptr<const Bf16Weights> bf16_;
  bool bf16_current() const;  // no weight changed since packing
  int64_t largest_matrix_ = 0;  // elements of the largest weight matrix
  std::map<std::string, int64_t> quant_matrices_;
  bool int8_activations_ = true;
  bool bf16_activations_ = false;
  LlamaConfig cfg_;
  torch::Device device_;
  torch::ScalarType dtype_;
  std::vector<std::pair<std::string, torch::Tensor>> tensors_;
  torch::Tensor embed_, norm_, lm_head_;
  torch::Tensor cos_, sin_;  // rotary tables [max_position_embeddings, head_dim], in dtype_
  torch::Tensor cos32_, sin32_;  // the same in float32 (cos_ and sin_ for a float32 model)
  std::vector<Layer> layers_;
};

// The formats of a model's quantized matrices with their counts: "q4_k x 193, q6_k x 33".
std::string quant_summary(const LlamaModel& model);
// Q4_0 / Q4_1 / Q8_0 / Q4_K / Q5_K / Q6_K blocks [N, nb, bytes] (N a multiple of 8; the block size names the format) with
// eight rows interleaved (quants.hpp's pack_x8) as [N / 8, nb, 8, bytes], the layout the decode
// kernels read fastest; with `order`, packed row r is row order[r] of `blocks` (N entries).
torch::Tensor pack_rows_x8(const torch::Tensor& blocks, const int64_t* order = nullptr);

torch::ScalarType dtype_from_name(const std::string& name);  // "float32", "bfloat16", "float16"
std::string dtype_name(torch::ScalarType t);

}  // namespace vhost::llama
