// Fine-tuning a LLaMA on a prepared token dataset (vhost/token_dataset.hpp): the Vicuna recipe
// (masked cross-entropy on the assistant's tokens, AdamW, warmup + cosine, gradient
// accumulation and clipping, per-layer gradient checkpointing) with fully sharded data
// parallelism over a backend's collective, and atomic, resumable checkpoints.
//
// Sharding (FSDP / ZeRO-3): the model is cut into units (the embedding, each decoder layer, the
// final norm with the output layer). Each unit's parameters are one flat float32 vector; a rank
// keeps 1/world of it (its shard) with the AdamW moments of that shard. A unit runs as one
// autograd function: forward all-gathers the flat vector, runs the unit and lets the gathered
// copy go; backward gathers again, recomputes the unit (gradient checkpointing) or replays the
// graph kept from forward, and reduce-scatters the parameter gradient onto the shards. With one
// process the shard is the whole vector and nothing is communicated.
#pragma once

#include "lora.hpp"
#include "model.hpp"

#include <vhost/plugin.hpp>
#include <vhost/token_dataset.hpp>
#include <vhost/torch/collective.hpp>

#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace vhost::llama {

struct TrainConfig {
  std::filesystem::path data;  // a prepared folder: meta.json, or train/ (and eval/) holding one
  std::filesystem::path out;   // checkpoints/, model/ (the result)
  int64_t epochs = 3;
  int64_t max_steps = 0;         // > 0: the run has this many optimizer steps (shapes the schedule)
  int64_t stop_at_step = 0;      // > 0: checkpoint and stop at this step (time-boxed jobs); not saved
  int64_t batch_size = 128;      // sequences per optimizer step, all ranks together
  int64_t micro_batch_size = 1;  // sequences per forward pass on one rank
  double lr = 2e-5;
  double warmup_ratio = 0.03;
  int64_t warmup_steps = -1;  // >= 0 overrides warmup_ratio
  std::string schedule = "cosine";  // cosine, linear, constant (all after warmup)
  double weight_decay = 0.0;        // never applied to norm weights
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double max_grad_norm = 1.0;  // 0: no clipping
  bool gradient_checkpointing = true;
  std::string padding = "longest";  // longest (in the micro-batch) or max_length
  bool group_by_length = true;      // similar lengths share a micro-batch (less padding)
  int64_t save_every = 0;           // steps between checkpoints (0: only at the end and on a stop)
  int64_t keep_last = 2;            // checkpoints kept
  int64_t eval_every = 0;           // steps between evaluations on eval/ (0: only at the end)
  uint64_t seed = 42;
  double peak_tflops = 0;  // device peak for MFU (0: the backend's, TrainEnv::peak_tflops)
  // method = "lora": the base stays frozen (no gradients, no optimizer state) and only LoRA
  // adapters (and lora.modules_to_save) train; the result is a PEFT adapter folder, out/adapter.
  std::optional<LoraConfig> lora;

  // Errors name the field; `model` is the model to be trained (LoRA's r and modules_to_save are
  // checked against it).
  static TrainConfig from_json(const json& j, const LlamaConfig& model = LlamaConfig());
  // The recipe's options with their defaults, ranges and help (everything from_json reads but
  // data and out): what the plugin's tool "train-options" publishes for the host's train stage.
  static std::vector<vhost::Option> options();
};

// What the trainer reports while it runs; return false to ask for a checkpoint and a stop.
using TrainEvents = std::function<bool(const json&)>;

struct TrainEnv {
  torch::Device device = torch::kCPU;
  torch::ScalarType compute_dtype = torch::kFloat32;  // bf16 on GPUs: weights cast per unit
  torch_ext::Collective* collective = nullptr;        // null: one process
  std::filesystem::path tokenizer;                    // copied beside every saved model
  std::string tokenizer_proto;                        // or these bytes (a GGUF's embedded vocabulary)
  double peak_tflops = 0;                             // the backend's device peak (0: unknown, no MFU)
  std::string base_model;                             // LoRA: the base checkpoint's path, for adapter_config.json
};

// One micro-batch: right-padded ids and next-token targets (-100: no loss).
struct Batch {
  torch::Tensor ids;      // [B, T] int64
  torch::Tensor targets;  // [B, T] int64, targets[:, t] is what position t should predict
  int64_t tokens = 0;     // real (non-pad) tokens
  int64_t trained = 0;    // targets != -100
};

// Sequences `seqs` of `d` as a micro-batch, right-padded to the longest (pad_to <= 0) or to pad_to.
Batch make_batch(const tokens::Reader& d, const std::vector<uint64_t>& seqs, int64_t pad_to);

class Trainer {
 public:
  // `init` holds the starting weights (any dtype/device); they are copied to float32 shards.
  // With `lora`, they are the frozen base (kept in init's dtype, sharded, never updated) and
  // the parameters are the adapters (A: PEFT's kaiming-uniform from `seed`, B: zero) and
  // lora->modules_to_save, under PEFT's names.
  Trainer(const LlamaModel& init, TrainEnv env, bool gradient_checkpointing, const LoraConfig* lora = nullptr,
          uint64_t seed = 0);
  ~Trainer();

  // Sum of the token losses of `b` divided by `normaliser`, with gradients accumulated onto the
  // shards. Returns the (undivided) summed loss.
  double forward_backward(const Batch& b, double normaliser);
  // Summed loss without gradients.
  double loss_sum(const Batch& b);
  // logits [B, T, V] float32 of a forward pass (no gradients): for tests.
  torch::Tensor logits(const torch::Tensor& ids);
  // The shards' gradients, concatenated (tests); undefined before a backward pass.
  torch::Tensor flat_grad() const;
  void zero_grad();
  // Global gradient norm, then clipping to max_norm (0: none); returns the norm before clipping.
  double clip_grad_norm(double max_norm);
  void adamw_step(double lr, double beta1, double beta2, double eps, double weight_decay);

  // Whole tensors by HF name (collective: every rank must call). Parameters, or the AdamW moments.
  std::vector<std::pair<std::string, torch::Tensor>> full_parameters();
  std::vector<std::pair<std::string, torch::Tensor>> full_moments(int which);  // 0: exp_avg, 1: exp_avg_sq
  // Names and shapes of the whole tensors, in the order stream_full hands them out.
  std::vector<std::pair<std::string, std::vector<int64_t>>> tensor_shapes() const;
  // Whole tensors (parameters: which < 0, exp_avg: 0, exp_avg_sq: 1), one unit at a time, to
  // rank `root` alone, which calls take(name, tensor) for each; no rank ever holds more than one
  // unit whole. Collective: every rank must call.
  void stream_full(int which, int root, const std::function<void(const std::string&, const torch::Tensor&)>& take);
  // Loads whole tensors into this rank's shards (a checkpoint from any number of ranks); empty
  // moment lists start the optimizer afresh.
  void load(const std::vector<std::pair<std::string, torch::Tensor>>& params,
            const std::vector<std::pair<std::string, torch::Tensor>>& exp_avg,
            const std::vector<std::pair<std::string, torch::Tensor>>& exp_avg_sq, int64_t adam_steps);
  int64_t adam_steps() const { return adam_steps_; }
  int64_t shard_bytes() const;  // this rank's parameter memory (trained parameters)
  int64_t frozen_bytes() const;  // this rank's frozen base weights (LoRA), in their dtype
  int64_t trainable_parameters() const;
  const LlamaConfig& config() const { return cfg_; }

  struct Impl;

 private:
  LlamaConfig cfg_;
  std::unique_ptr<Impl> impl_;
  int64_t adam_steps_ = 0;
  uint64_t seed_ = 0;            // LoRA: initialisation and dropout
  uint64_t micro_batches_ = 0;  // forward_backward calls since zero_grad
};

// The learning rate of optimizer step `step` (0-based), as HF's schedulers compute it.
double learning_rate(const TrainConfig& c, int64_t step, int64_t total_steps, int64_t warmup);

// Runs the whole recipe: resumes from the newest complete checkpoint in c.out, trains, saves.
// Returns {"steps", "final_loss", "model", "interrupted", ...}.
json train(const LlamaModel& init, const TrainConfig& c, const TrainEnv& env, const TrainEvents& events);

}  // namespace vhost::llama
