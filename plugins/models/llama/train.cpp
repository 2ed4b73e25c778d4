#include "train.hpp"

#include "safetensors.hpp"

#include <vhost/torch/compat.hpp>

#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <numeric>
#include <random>
#include <regex>
#include <set>

namespace vhost::llama {

namespace fs = std::filesystem;
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---- options --------------------------------------------------------------------------------

// The recipe's options as the plugin publishes them (tool "train-options"): the host's train
// stage checks a pipeline's [stages.train] against them and fills in these defaults; from_json
// checks the same table again, since a request may come from another host or an older one.
std::vector<vhost::Option> TrainConfig::options() {
  using vhost::Option;
  const TrainConfig d;
  const LoraConfig l;
  const double big = 1e12;
  return {
      Option::integer("epochs", d.epochs, "passes over the training split").range(1, 100000),
      Option::integer("max_steps", d.max_steps, "stop after this many optimizer steps (0: epochs decide)").range(0, big),
      Option::integer("stop_at_step", d.stop_at_step, "checkpoint and stop at this step; rerun without it to go on")
          .range(0, big),
      Option::integer("batch_size", d.batch_size, "sequences per optimizer step, all processes together").range(1, big),
      Option::integer("micro_batch_size", d.micro_batch_size, "sequences per forward pass per process").range(1, big),
      Option::number("lr", d.lr, "peak learning rate").range(0, 10),
      Option::number("warmup_ratio", d.warmup_ratio, "share of the steps spent warming up").range(0, 1),
      Option::integer("warmup_steps", d.warmup_steps, "warm-up steps (>= 0 overrides warmup_ratio)").range(-1, big),
      Option::string("schedule", d.schedule, "after warm-up: cosine, linear, constant")
          .one_of({"cosine", "linear", "constant"}),
      Option::number("weight_decay", d.weight_decay, "AdamW weight decay (never on norms)").range(0, 10),
      Option::number("beta1", d.beta1, "AdamW beta1").range(0, 0.999999),
      Option::number("beta2", d.beta2, "AdamW beta2").range(0, 0.999999999),
      Option::number("eps", d.eps, "AdamW epsilon").range(1e-30, 1),
      Option::number("max_grad_norm", d.max_grad_norm, "gradient clipping (0: none)").range(0, 1e9),
      Option::boolean("gradient_checkpointing", d.gradient_checkpointing, "recompute each layer in backward (less memory)"),
      Option::string("padding", d.padding, "pad micro-batches to the longest sequence, or max_length")
          .one_of({"longest", "max_length"}),
      Option::boolean("group_by_length", d.group_by_length, "sort each step's sequences by length"),
      Option::integer("save_every", d.save_every, "steps between checkpoints (0: at the end and on SIGTERM)").range(0, big),
      Option::integer("keep_last", d.keep_last, "checkpoints to keep").range(1, 1000000),
      Option::integer("eval_every", d.eval_every, "steps between evaluations (0: at the end)").range(0, big),
      Option::integer("seed", static_cast<int64_t>(d.seed), "data order seed").range(0, 9007199254740991.0),
      Option::number("peak_tflops", d.peak_tflops,
                     "device peak for MFU (0: the backend's: A100 312, H100/H200 989; none on CPU)")
          .range(0, 1e7),
      Option::string("method", "full",
                     "full: every weight trains; lora: the base stays frozen and LoRA adapters train (out/adapter, "
                     "a PEFT folder)")
          .one_of({"full", "lora"}),
      Option::integer("r", l.r, "method = lora: the adapters' rank (at most the model's hidden size)").range(1, 1 << 20),
      Option::number("alpha", l.alpha, "method = lora: the update is scaled by alpha / r").range(1e-9, 1e9),
      Option::number("dropout", l.dropout, "method = lora: dropout on the adapters' input").range(0, 0.999),
      Option::string_list("target_modules", l.target_modules,
                          "method = lora: the projections that get adapters (q_proj, k_proj, v_proj, o_proj, "
                          "gate_proj, up_proj, down_proj, or all-linear)"),
      Option::string_list("modules_to_save", l.modules_to_save,
                          "method = lora: modules trained whole beside the adapters (embed_tokens, lm_head)"),
  };
}

TrainConfig TrainConfig::from_json(const json& j, const LlamaConfig& model) {
  TrainConfig c;
  std::map<std::string, vhost::Option> table;
  for (auto& o : options()) table.emplace(o.key, o);
  auto bad = [](const std::string& field, const std::string& why) {
    return vhost::Error(VHOST_ERR_INVALID_ARGUMENT, field + ": " + why);
  };
  auto range = [&](const char* k) { return std::make_pair(*table.at(k).min, *table.at(k).max); };
  auto num = [&](const char* k, double& v) {
    if (!j.contains(k)) return;
    if (!j[k].is_number()) throw bad(k, "expected a number, got " + j[k].dump());
    v = j[k].get<double>();
    auto [lo, hi] = range(k);
    if (!(v >= lo && v <= hi)) throw bad(k, j[k].dump() + " is outside [" + json(lo).dump() + ", " + json(hi).dump() + "]");
  };
  auto integer = [&](const char* k, int64_t& v) {
    if (!j.contains(k)) return;
    if (!j[k].is_number_integer()) throw bad(k, "expected an integer, got " + j[k].dump());
    v = j[k].get<int64_t>();
    auto [lo, hi] = range(k);
    if (v < lo || v > hi)
      throw bad(k, std::to_string(v) + " is outside [" + json(lo).dump() + ", " + json(hi).dump() + "]");
  };
  auto boolean = [&](const char* k, bool& v) {
    if (!j.contains(k)) return;
    if (!j[k].is_boolean()) throw bad(k, "expected true or false, got " + j[k].dump());
    v = j[k].get<bool>();
  };
  auto choice = [&](const char* k, std::string& v) {
    if (!j.contains(k)) return;
    const auto& allowed = table.at(k).choices;
    if (!j[k].is_string() || std::find(allowed.begin(), allowed.end(), j[k].get<std::string>()) == allowed.end()) {
      std::string list;
      for (auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      throw bad(k, j[k].dump() + " is not one of " + list);
    }
    v = j[k].get<std::string>();
  };
  for (const char* k : {"data", "out"})
    if (!j.contains(k) || !j[k].is_string() || j[k].get<std::string>().empty()) throw bad(k, "required (a folder)");
  c.data = j["data"].get<std::string>();
  c.out = j["out"].get<std::string>();
  const std::pair<const char*, int64_t*> integers[] = {
      {"epochs", &c.epochs},         {"max_steps", &c.max_steps},   {"stop_at_step", &c.stop_at_step},
      {"batch_size", &c.batch_size}, {"micro_batch_size", &c.micro_batch_size},
      {"warmup_steps", &c.warmup_steps}, {"save_every", &c.save_every}, {"keep_last", &c.keep_last},
      {"eval_every", &c.eval_every}};
  for (const auto& [k, v] : integers) integer(k, *v);
  num("lr", c.lr);
  num("warmup_ratio", c.warmup_ratio);
  choice("schedule", c.schedule);
  num("weight_decay", c.weight_decay);
  num("beta1", c.beta1);
  num("beta2", c.beta2);
  num("eps", c.eps);
  num("max_grad_norm", c.max_grad_norm);
  boolean("gradient_checkpointing", c.gradient_checkpointing);
  choice("padding", c.padding);
  boolean("group_by_length", c.group_by_length);
  int64_t seed = static_cast<int64_t>(c.seed);
  integer("seed", seed);
  c.seed = static_cast<uint64_t>(seed);
  num("peak_tflops", c.peak_tflops);
  std::string method = "full";
  choice("method", method);
  if (method == "lora") c.lora = LoraConfig::from_json(j, model);
  return c;
}

double learning_rate(const TrainConfig& c, int64_t step, int64_t total, int64_t warmup) {
  if (step < warmup) return c.lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
  if (c.schedule == "constant") return c.lr;
  double progress = static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
  if (c.schedule == "linear") return c.lr * std::max(0.0, 1.0 - progress);
  return c.lr * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
}

// ---- the sharded model ----------------------------------------------------------------------

namespace {

// Elements per chunk of the optimizer's element-wise work (4 MiB of float32).
constexpr int64_t kUpdateChunk = int64_t{1} << 20;

// Tensors of a unit laid end to end in one flat vector, of which a rank keeps a shard.
struct Group {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<int64_t> offsets;
  int64_t numel = 0, shard_numel = 0;
  Tensor shard;  // trained: a float32 leaf that requires grad; frozen: the base's dtype, no grad
  std::size_t add(const std::string& name, const std::vector<int64_t>& shape) {
    names.push_back(name);
    shapes.push_back(shape);
    offsets.push_back(numel);
    numel += c10::multiply_integers(shape);
    return names.size() - 1;
  }
  Tensor view(const Tensor& full, std::size_t i) const {
    return full.narrow(0, offsets[i], c10::multiply_integers(shapes[i])).view(shapes[i]);
  }
};

// A group's tensors whole, in the compute dtype, as a unit computes with them.
struct Weights {
  Tensor flat;                // their flat vector, where they are one (undefined: separate tensors)
  std::vector<Tensor> parts;  // each tensor, in the group's order
};

// The trained tensors (the Group itself, with their AdamW moments) and, with LoRA, the frozen
// base weights beside them.
struct Unit : Group {
  Tensor m, v;   // AdamW moments of the shard
  Group frozen;  // LoRA: the base weights (none in full fine-tuning)
  // With one process the frozen weights are not copied into frozen.shard: these are the base
  // model's own tensors (views of its memory-mapped checkpoint), read in place.
  std::vector<Tensor> frozen_views;
  // Base tensor k of the unit (in the order the constructor names them): {frozen?, index}.
  std::vector<std::pair<bool, std::size_t>> base;
  // Base tensor k's adapter: indices of lora_A and lora_B among the trained tensors, or -1.
  std::vector<std::pair<int64_t, int64_t>> lora;
};

Tensor rotate_half(const Tensor& x) {
  auto half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

}  // namespace

struct Trainer::Impl {
  LlamaConfig cfg;
  TrainEnv env;
  bool checkpointing = true;
  int rank = 0, world = 1;
  std::optional<LoraConfig> lora;
  std::vector<Unit> units;  // 0: embedding; 1..L: layers; L+1: final norm (+ lm_head unless tied)
  Tensor cos, sin;          // rotary tables [context, head_dim], compute dtype
  // LoRA dropout: on while forward_backward runs; its masks are drawn from step_seed, the unit
  // and the module, so a recomputation (gradient checkpointing) and a resumed run draw the same.
  bool training = false;
  uint64_t step_seed = 0;

  std::size_t head() const { return units.size() - 1; }

  // For each tensor i of group U that overlaps this rank's shard: f(i, offset in the shard,
  // offset in the tensor's flat elements, count).
  template <class F>
  void for_own_slices(const Group& U, F&& f) const {
    const int64_t lo = U.shard_numel * rank, hi = lo + U.shard_numel;
    for (std::size_t i = 0; i < U.names.size(); ++i) {
      const int64_t a = std::max(lo, U.offsets[i]);
      const int64_t b = std::min(hi, U.offsets[i] + c10::multiply_integers(U.shapes[i]));
      if (a < b) f(i, a - lo, a - U.offsets[i], b - a);
    }
  }

  // The all-gather of the unit likely needed next (forward: u + 1; backward: u - 1), started
  // while unit u computes, so the transfer overlaps the compute. At most one in flight.
  struct Prefetch {
    std::size_t unit = SIZE_MAX;
    Tensor part, buf;
    std::vector<Tensor> parts;
    std::unique_ptr<torch_ext::Collective::Work> work;
  } next;

  void prefetch(std::size_t u) {
    if (world == 1 || u >= units.size() || next.unit == u || units[u].numel == 0) return;
    drop_prefetch();
    const Unit& U = units[u];
    next.part = U.shard.detach().to(env.compute_dtype).contiguous();
    next.buf = torch::empty({U.shard_numel * world}, next.part.options());
    next.parts = next.buf.chunk(world);
    next.work = env.collective->all_gather_async(next.parts, next.part);
    next.unit = u;
  }
  // Every rank makes the same calls, so a prefetch nobody takes is still completed everywhere.
  void drop_prefetch() {
    if (next.work) next.work->wait();
    next = Prefetch();
  }

  // The whole flat vector of a group's shards, in the compute dtype.
  Tensor gather_group(const Group& G) {
    Tensor s = G.shard.detach();
    if (world == 1) return s.to(env.compute_dtype).detach();  // no copy in the compute dtype
    auto part = s.to(env.compute_dtype).contiguous();
    // The ranks' parts land side by side in one buffer: no second copy to concatenate them.
    auto buf = torch::empty({G.shard_numel * world}, part.options());
    auto parts = buf.chunk(world);
    env.collective->all_gather(parts, part);
    return buf.narrow(0, 0, G.numel);
  }

  // The whole trained flat vector of unit u, in the compute dtype, as a fresh leaf (undefined
  // when the unit trains nothing).
  Tensor gather(std::size_t u) {
    const Unit& U = units[u];
    if (U.numel == 0) return Tensor();
    if (world > 1 && next.unit == u) {
      next.work->wait();
      Tensor full = next.buf.narrow(0, 0, U.numel);
      next = Prefetch();
      return full;
    }
    if (world > 1) drop_prefetch();
    return gather_group(U);
  }

  // The tensors of group G in the flat vector `flat`.
  static Weights split(const Group& G, const Tensor& flat) {
    Weights w{flat, {}};
    for (std::size_t i = 0; i < G.names.size(); ++i) w.parts.push_back(G.view(flat, i));
    return w;
  }

  // Unit u's frozen base weights (LoRA), whole, in the compute dtype; none without any. With one
  // process, the base's own tensors (cast per use where the compute dtype differs); with several,
  // all-gathered from the shards. (Gathered when used, not prefetched: the adapters' all-gather
  // overlaps instead.)
  Weights gather_frozen(std::size_t u) {
    const Unit& U = units[u];
    if (U.frozen.numel == 0) return {};
    if (world == 1) {
      Weights w;
      for (const auto& t : U.frozen_views) w.parts.push_back(t.to(env.compute_dtype));
      return w;
    }
    drop_prefetch();
    return split(U.frozen, gather_group(U.frozen));
  }

  // The tied head's weight source (unit 0's embedding): a trained flat vector `flat` (requiring
  // grad where its gradient is wanted) as Weights, else the frozen embedding.
  Weights tied_weights(const Tensor& flat) { return tied_trained() ? split(units[0], flat) : gather_frozen(0); }

  // A full-size gradient of unit u's flat vector -> this rank's shard of the sum over ranks.
  Tensor scatter(std::size_t u, const Tensor& g) {
    const Unit& U = units[u];
    auto g32 = g.to(torch::kFloat32);
    if (world == 1) return g32;
    auto padded = torch::zeros({U.shard_numel * world}, g32.options());
    padded.narrow(0, 0, U.numel).copy_(g32);
    auto out = torch::empty({U.shard_numel}, g32.options());
    env.collective->reduce_scatter_sum(out, padded);
    return out;
  }

  Tensor rms_norm(const Tensor& x, const Tensor& w) const {
    auto x32 = x.to(torch::kFloat32);
    auto var = x32.pow(2).mean(-1, true);
    return w * (x32 * torch::rsqrt(var + cfg.rms_norm_eps)).to(x.scalar_type());
  }

  // Whether the tied head's weight (unit 0's embedding) is trained.
  bool tied_trained() const { return cfg.tie_word_embeddings && !units[0].base[0].first; }

  // Unit u on input x with its gathered weights: `full` (the trained flat vector), `frozen`
  // (LoRA's base) and, for a tied head, `extra` (unit 0's: the embedding, trained or frozen).
  // `seed` draws LoRA's dropout masks when `train` is set.
  Tensor compute(std::size_t u, const Tensor& full, const Weights& frozen, const Weights& extra, const Tensor& x,
                 bool train, uint64_t seed) const {
    const Unit& U = units[u];
    auto W = [&](std::size_t k) {
      const auto [fz, i] = U.base[k];
      return fz ? frozen.parts[i] : U.view(full, i);
    };
    // Base tensors k..k+n-1 as one [rows, cols] matrix: a view where they are adjacent in one
    // flat vector, else (the base's own tensors) concatenated.
    auto Wcat = [&](std::size_t k, std::size_t n, int64_t rows, int64_t cols) {
      const auto [fz, i] = U.base[k];
      if (!fz) return full.narrow(0, U.offsets[i], rows * cols).view({rows, cols});
      if (frozen.flat.defined()) return frozen.flat.narrow(0, U.frozen.offsets[i], rows * cols).view({rows, cols});
      std::vector<Tensor> parts(frozen.parts.begin() + static_cast<std::ptrdiff_t>(i),
                                frozen.parts.begin() + static_cast<std::ptrdiff_t>(i + n));
      return torch::cat(parts, 0);
    };
    if (u == 0) return torch::embedding(W(0), x);
    if (u == head()) {
      Tensor w;
      if (cfg.tie_word_embeddings) {
        w = extra.parts[units[0].base[0].second];
      } else {
        w = W(1);
      }
      return torch::linear(rms_norm(x, W(0)), w).to(torch::kFloat32);
    }
    // LoRA's update of base tensor k on its input: s · B (A dropout(in)); undefined without one.
    auto delta = [&](std::size_t k, const Tensor& in) -> Tensor {
      if (U.lora.empty() || U.lora[k].first < 0) return Tensor();
      Tensor xa = in;
      const double p = lora->dropout;
      if (train && p > 0) {
        // Drawn on the CPU from a generator of this (seed, module): the same mask again when
        // the unit is recomputed in backward.
        auto gen = at::detail::createCPUGenerator(seed * 1000003ULL + k);
        auto keep = torch::empty(in.sizes(), torch::kFloat32).bernoulli_(1 - p, gen);
        xa = in * keep.div_(1 - p).to(in.device(), in.scalar_type());
      }
      auto A = U.view(full, static_cast<std::size_t>(U.lora[k].first));
      auto B = U.view(full, static_cast<std::size_t>(U.lora[k].second));
      return torch::linear(torch::linear(xa, A), B) * lora->scaling();
    };
    // out (the fused product of base tensors k0.., sizes along the last dim) plus their updates.
    auto with_deltas = [&](const Tensor& out, std::size_t k0, const std::vector<int64_t>& sizes, const Tensor& in) {
      std::vector<Tensor> parts;
      bool any = false;
      int64_t at = 0;
      for (std::size_t j = 0; j < sizes.size(); ++j) {
        Tensor part = out.narrow(-1, at, sizes[j]);
        Tensor d = delta(k0 + j, in);
        if (d.defined()) {
          part = part + d;
          any = true;
        }
        parts.push_back(part);
        at += sizes[j];
      }
      return any ? torch::cat(parts, -1) : out;
    };
    auto plus = [](const Tensor& y, const Tensor& d) { return d.defined() ? y + d : y; };
    const int64_t B = x.size(0), T = x.size(1);
    const int64_t H = cfg.num_attention_heads, KV = cfg.num_key_value_heads, hd = cfg.head_dim();
    // Order of names: input_norm, q, k, v, o, post_norm, gate, up, down (see the constructor).
    // q, k and v sit next to each other in the flat vector, and so do gate and up: each group
    // is one matrix multiplication (fewer, larger kernels; it halves the step's op count).
    auto h = rms_norm(x, W(0));
    const int64_t D = cfg.hidden_size, F = cfg.intermediate_size, QKV = H + 2 * KV;
    auto qkv = with_deltas(torch::linear(h, Wcat(1, 3, QKV * hd, D)), 1, {H * hd, KV * hd, KV * hd}, h).view({B, T, QKV, hd});
    // Rotary on queries and keys together: [B, H + KV, T, hd].
    auto qk = qkv.narrow(2, 0, H + KV).transpose(1, 2);
    qk = qk * cos.narrow(0, 0, T) + rotate_half(qk) * sin.narrow(0, 0, T);
    auto q = qk.narrow(1, 0, H), k = qk.narrow(1, H, KV);
    auto v = qkv.narrow(2, H + KV, KV).transpose(1, 2);
    auto a = torch_compat::causal_attention(q, k, v).transpose(1, 2).reshape({B, T, H * hd});
    auto y = x + plus(torch::linear(a, W(4)), delta(4, a));
    auto m = rms_norm(y, W(5));
    auto gu = with_deltas(torch::linear(m, Wcat(6, 2, 2 * F, D)), 6, {F, F}, m);
    auto act = torch::silu(gu.narrow(-1, 0, F)) * gu.narrow(-1, F, F);
    return y + plus(torch::linear(act, W(8)), delta(8, act));
  }
};

namespace {

// One unit as an autograd function of (input, own shard[, embedding shard]).
struct UnitFn : public torch::autograd::Function<UnitFn> {
  static variable_list forward(AutogradContext* ctx, Tensor x, at::TensorList shards, Trainer::Impl* t, int64_t u) {
    const auto uu = static_cast<std::size_t>(u);
    const bool train = t->training;
    const uint64_t seed = t->step_seed * 1000003ULL + static_cast<uint64_t>(u);
    ctx->saved_data["t"] = reinterpret_cast<int64_t>(t);
    ctx->saved_data["u"] = u;
    ctx->saved_data["n"] = static_cast<int64_t>(shards.size());
    ctx->saved_data["train"] = train;
    ctx->saved_data["seed"] = static_cast<int64_t>(seed);
    const bool tied = uu == t->head() && t->cfg.tie_word_embeddings;
    Tensor full = t->gather(uu);
    Weights frozen = t->gather_frozen(uu);
    Tensor extra_flat = tied && t->tied_trained() ? t->gather(0) : Tensor();  // a trained tied embedding
    t->prefetch(uu + 1);
    if (t->checkpointing) {
      ctx->save_for_backward({x});
      return {t->compute(uu, full, frozen, tied ? t->tied_weights(extra_flat) : Weights(), x, train, seed)};
    }
    // Keep this unit's graph for backward (more memory, no recomputation).
    torch::AutoGradMode grad(true);
    Tensor xin = x.is_floating_point() ? x.detach().requires_grad_(true) : x;
    if (full.defined()) full.requires_grad_(true);
    if (extra_flat.defined()) extra_flat.requires_grad_(true);
    Tensor y = t->compute(uu, full, frozen, tied ? t->tied_weights(extra_flat) : Weights(), xin, train, seed);
    ctx->saved_data["y"] = y;
    ctx->saved_data["xin"] = xin;
    ctx->saved_data["full"] = full.defined() ? full : torch::Tensor();
    ctx->saved_data["extra"] = extra_flat.defined() ? extra_flat : torch::Tensor();
    return {y.detach()};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto* t = reinterpret_cast<Trainer::Impl*>(ctx->saved_data["t"].toInt());
    const auto u = static_cast<std::size_t>(ctx->saved_data["u"].toInt());
    const auto n = ctx->saved_data["n"].toInt();
    Tensor y, xin, full, extra;
    if (t->checkpointing) {
      Tensor x = ctx->get_saved_variables()[0];
      torch::AutoGradMode grad(true);
      full = t->gather(u);
      if (full.defined()) full.requires_grad_(true);
      Weights frozen = t->gather_frozen(u);
      const bool tied = u == t->head() && t->cfg.tie_word_embeddings;
      if (n == 2) extra = t->gather(0).requires_grad_(true);
      if (u > 0) t->prefetch(u - 1);
      xin = x.is_floating_point() ? x.detach().requires_grad_(true) : x;
      y = t->compute(u, full, frozen, tied ? t->tied_weights(extra) : Weights(), xin, ctx->saved_data["train"].toBool(),
                     static_cast<uint64_t>(ctx->saved_data["seed"].toInt()));
    } else {
      y = ctx->saved_data["y"].toTensor();
      xin = ctx->saved_data["xin"].toTensor();
      full = ctx->saved_data["full"].toTensor();
      if (n == 2) extra = ctx->saved_data["extra"].toTensor();
    }
    std::vector<Tensor> inputs;
    const bool want_x = xin.is_floating_point();
    if (want_x) inputs.push_back(xin);
    if (full.defined()) inputs.push_back(full);
    if (n == 2) inputs.push_back(extra);
    auto grads = torch::autograd::grad({y}, inputs, {grad_out[0]});
    ctx->saved_data.clear();
    variable_list out;
    std::size_t i = 0;
    out.push_back(want_x ? grads[i++] : Tensor());
    out.push_back(full.defined() ? t->scatter(u, grads[i++]) : Tensor());
    if (n == 2) out.push_back(t->scatter(0, grads[i++]));
    out.push_back(Tensor());  // t
    out.push_back(Tensor());  // u
    return out;
  }
};

}  // namespace

Trainer::Trainer(const LlamaModel& init, TrainEnv env, bool gradient_checkpointing, const LoraConfig* lora,
                 uint64_t seed)
    : cfg_(init.config()), impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.cfg = cfg_;
  I.env = env;
  I.checkpointing = gradient_checkpointing;
  if (lora) I.lora = *lora;
  seed_ = seed;
  if (env.collective) {
    I.rank = env.collective->rank();
    I.world = env.collective->world_size();
  }
  if (init.quantized_matrices())
    throw vhost::Error(VHOST_ERR_UNSUPPORTED, "training needs the weights dequantised (this model holds quantized blocks)");
  std::map<std::string, Tensor> w(init.named_tensors().begin(), init.named_tensors().end());
  // The starting value of a trained tensor that is not the base's: LoRA's A (PEFT's
  // kaiming_uniform_(a=sqrt(5)): uniform in +-1/sqrt(in)) and B (zero), drawn whole from a
  // generator of (seed, name) so that every rank, sharded any way, starts from the same.
  std::map<std::string, Tensor> made;
  auto source = [&](const std::string& name, const std::vector<int64_t>& shape) -> Tensor {
    if (auto it = w.find(name); it != w.end()) return it->second;
    auto& t = made[name];
    if (!t.defined()) {
      if (name.find(".lora_A.") != std::string::npos) {
        auto gen = at::detail::createCPUGenerator(seed * 1000003ULL + std::hash<std::string>()(name));
        const double bound = 1.0 / std::sqrt(static_cast<double>(shape[1]));
        t = torch::empty(shape, torch::kFloat32).uniform_(-bound, bound, gen);
      } else {
        t = torch::zeros(shape, torch::kFloat32);
      }
    }
    return t;
  };
  // This rank's slice of a group's flat vector, zero-padded at the end of the last rank. Only
  // the slice is read: from a memory-mapped checkpoint, a rank touches 1/world of its pages.
  auto fill = [&](Group& G, torch::ScalarType dtype) {
    G.shard_numel = (G.numel + I.world - 1) / I.world;
    auto shard = torch::zeros({G.shard_numel}, dtype);
    I.for_own_slices(G, [&](std::size_t i, int64_t at, int64_t from, int64_t n) {
      const Tensor src = source(G.names[i], G.shapes[i]);
      shard.narrow(0, at, n).copy_(src.reshape({-1}).narrow(0, from, n));
    });
    G.shard = shard.to(env.device);
  };
  // `layer` >= 0: a decoder layer, whose projections get adapters with LoRA.
  auto add_unit = [&](const std::vector<std::string>& names, int64_t layer) {
    Unit U;
    for (const auto& n : names) {
      // With LoRA, the base is frozen except for the modules trained whole.
      bool trained = !lora;
      if (lora && layer < 0)
        for (const auto& m : lora->modules_to_save) trained = trained || n == lora_saved_weight(m);
      Group& g = trained ? static_cast<Group&>(U) : U.frozen;
      const std::string key = trained && lora ? "base_model.model." + n : n;  // PEFT's name for a saved module
      U.base.emplace_back(!trained, g.add(key, w.at(n).sizes().vec()));
      if (trained && lora) made[key] = w.at(n);
    }
    if (lora && layer >= 0) {
      U.lora.assign(names.size(), {-1, -1});
      for (const auto& m : lora->target_modules) {
        const auto k = static_cast<std::size_t>(
            std::find(names.begin(), names.end(), lora_base_weight(layer, m)) - names.begin());
        const auto shape = lora_module_shape(cfg_, m);
        U.lora[k].first = static_cast<int64_t>(U.add(lora_key(layer, m, 'A'), {lora->r, shape[1]}));
        U.lora[k].second = static_cast<int64_t>(U.add(lora_key(layer, m, 'B'), {shape[0], lora->r}));
      }
    }
    fill(U, torch::kFloat32);
    U.shard.requires_grad_(true);
    U.m = torch::zeros_like(U.shard).detach();
    U.v = torch::zeros_like(U.shard).detach();
    if (U.frozen.numel && I.world > 1) fill(U.frozen, init.dtype());
    if (U.frozen.numel && I.world == 1)
      for (const auto& n : U.frozen.names) U.frozen_views.push_back(w.at(n).to(env.device));  // no copy on the CPU
    I.units.push_back(std::move(U));
  };
  add_unit({"model.embed_tokens.weight"}, -1);
  for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i) {
    std::string p = "model.layers." + std::to_string(i) + ".";
    add_unit({p + "input_layernorm.weight", p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
              p + "self_attn.v_proj.weight", p + "self_attn.o_proj.weight", p + "post_attention_layernorm.weight",
              p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight"},
             i);
  }
  if (cfg_.tie_word_embeddings)
    add_unit({"model.norm.weight"}, -1);
  else
    add_unit({"model.norm.weight", "lm_head.weight"}, -1);
  auto idx = torch::arange(0, cfg_.head_dim(), 2, torch::kInt64).to(torch::kFloat32);
  auto inv_freq = 1.0 / torch::pow(cfg_.rope_theta, idx / static_cast<double>(cfg_.head_dim()));
  auto pos = torch::arange(0, cfg_.max_position_embeddings, torch::kInt64).to(torch::kFloat32);
  auto freqs = torch::outer(pos, inv_freq);
  auto emb = torch::cat({freqs, freqs}, -1);
  I.cos = emb.cos().to(env.device, env.compute_dtype);
  I.sin = emb.sin().to(env.device, env.compute_dtype);
}

Trainer::~Trainer() = default;

// Units 0 .. `last` on the token ids: the hidden states before the head, or with last = head()
// the logits (float32).
static Tensor run_units(Trainer::Impl& I, const Tensor& ids, std::size_t last) {
  Tensor x = ids.to(I.env.device, torch::kInt64);
  for (std::size_t u = 0; u <= last; ++u) {
    if (I.units[u].numel == 0 && !(x.is_floating_point() && x.requires_grad())) {
      // Trains nothing and nothing before it trains (LoRA's frozen embedding): no graph needed.
      torch::NoGradGuard ng;
      const bool tied = u == I.head() && I.cfg.tie_word_embeddings;
      x = I.compute(u, Tensor(), I.gather_frozen(u), tied ? I.gather_frozen(0) : Weights(), x, false, 0);
      continue;
    }
    std::vector<Tensor> shards{I.units[u].shard};
    if (u == I.head() && I.tied_trained()) shards.push_back(I.units[0].shard);
    x = UnitFn::apply(x, at::TensorList(shards), &I, static_cast<int64_t>(u))[0];
  }
  return x;
}

namespace {

// Rows of the output layer's product taken at once by HeadLossFn: 16 MiB of float32 logits.
int64_t head_chunk_rows(int64_t vocab) { return std::max<int64_t>(1, (int64_t{4} << 20) / std::max<int64_t>(vocab, 1)); }

// The head unit (final norm, output layer) and the summed cross-entropy as one autograd
// function of (hidden states, head shard[, embedding shard]), computed only on the positions
// that have a target, a chunk of rows at a time, in forward and again in backward: the logits
// [batch, time, vocab] never exist whole. With LLaMA's 32000 words they were the largest
// tensors of a step (a 2048-token sequence: 262 MB of float32 logits, as much again for their
// log-softmax and as much for its gradient), larger than a small model's weights.
struct HeadLossFn : public torch::autograd::Function<HeadLossFn> {
  // Sum over rows of (logsumexp(logits) - logits[target]) for the rows of x [N, D] in `rows`.
  static Tensor chunk_loss(Trainer::Impl* t, const Tensor& full, const Weights& frozen, const Weights& extra,
                           const Tensor& xc, const Tensor& tc) {
    auto logits = t->compute(t->head(), full, frozen, extra, xc.unsqueeze(0), false, 0)[0];  // [C, V] float32
    return torch::nn::functional::cross_entropy(logits, tc,
                                                torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  }

  static variable_list forward(AutogradContext* ctx, Tensor x, Tensor targets, at::TensorList shards, Trainer::Impl* t) {
    const std::size_t h = t->head();
    const bool tied = t->cfg.tie_word_embeddings;
    Tensor full = t->gather(h);
    Weights frozen = t->gather_frozen(h);
    Weights extra = tied ? t->tied_weights(t->tied_trained() ? t->gather(0) : Tensor()) : Weights();
    auto tg = targets.to(x.device()).reshape({-1});
    auto rows = (tg != -100).nonzero().reshape({-1});
    auto xs = x.reshape({-1, x.size(-1)});
    const int64_t C = head_chunk_rows(t->cfg.vocab_size), R = rows.size(0);
    auto loss = torch::zeros({}, x.options().dtype(torch::kFloat64));
    for (int64_t r0 = 0; r0 < R; r0 += C) {
      auto idx = rows.narrow(0, r0, std::min(C, R - r0));
      loss += chunk_loss(t, full, frozen, extra, xs.index_select(0, idx), tg.index_select(0, idx)).to(torch::kFloat64);
    }
    ctx->save_for_backward({x, targets});
    ctx->saved_data["t"] = reinterpret_cast<int64_t>(t);
    ctx->saved_data["n"] = static_cast<int64_t>(shards.size());
    return {loss.to(torch::kFloat32)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto* t = reinterpret_cast<Trainer::Impl*>(ctx->saved_data["t"].toInt());
    const auto n = ctx->saved_data["n"].toInt();
    const auto saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    const std::size_t h = t->head();
    torch::AutoGradMode grad(true);
    Tensor full = t->gather(h), extra_flat;
    Weights frozen = t->gather_frozen(h), extra;
    if (full.defined()) full.requires_grad_(true);
    if (n == 2) extra_flat = t->gather(0).requires_grad_(true);
    if (t->cfg.tie_word_embeddings) extra = t->tied_weights(extra_flat);
    t->prefetch(h - 1);
    auto tg = saved[1].to(x.device()).reshape({-1});
    auto rows = (tg != -100).nonzero().reshape({-1});
    auto xs = x.detach().reshape({-1, x.size(-1)});
    auto dx = torch::zeros_like(xs);
    Tensor dfull = full.defined() ? torch::zeros_like(full) : Tensor(), dextra = n == 2 ? torch::zeros_like(extra_flat) : Tensor();
    const int64_t C = head_chunk_rows(t->cfg.vocab_size), R = rows.size(0);
    for (int64_t r0 = 0; r0 < R; r0 += C) {
      auto idx = rows.narrow(0, r0, std::min(C, R - r0));
      auto xc = xs.index_select(0, idx).requires_grad_(true);
      auto l = chunk_loss(t, full, frozen, extra, xc, tg.index_select(0, idx));
      std::vector<Tensor> inputs{xc};
      if (full.defined()) inputs.push_back(full);
      if (n == 2) inputs.push_back(extra_flat);
      auto g = torch::autograd::grad({l}, inputs, {grad_out[0].to(l.scalar_type())});
      dx.index_add_(0, idx, g[0]);
      std::size_t i = 1;
      if (full.defined()) dfull += g[i++];
      if (n == 2) dextra += g[i++];
    }
    variable_list out;
    out.push_back(dx.view(x.sizes()));
    out.push_back(Tensor());  // targets
    out.push_back(full.defined() ? t->scatter(h, dfull) : Tensor());
    if (n == 2) out.push_back(t->scatter(0, dextra));
    out.push_back(Tensor());  // t
    return out;
  }
};

}  // namespace

// The summed cross-entropy of a micro-batch (HeadLossFn after the other units).
static Tensor summed_loss(Trainer::Impl& I, const Batch& b) {
  Tensor x = run_units(I, b.ids, I.head() - 1);
  std::vector<Tensor> shards{I.units[I.head()].shard};
  if (I.tied_trained()) shards.push_back(I.units[0].shard);
  return HeadLossFn::apply(x, b.targets, at::TensorList(shards), &I)[0];
}

double Trainer::forward_backward(const Batch& b, double normaliser) {
  // LoRA dropout's masks: a function of (seed, optimizer step, the micro-batch's index in the
  // step over all ranks), so a resumed run draws what the uninterrupted one drew, and any number
  // of processes what one process draws (micro-batch k of a step goes to rank k % world).
  Impl& I = *impl_;
  const uint64_t k = micro_batches_++ * static_cast<uint64_t>(I.world) + static_cast<uint64_t>(I.rank);
  I.step_seed = (seed_ * 1000003ULL + static_cast<uint64_t>(adam_steps_)) * 1000003ULL + k;
  I.training = true;
  struct Off {
    bool& f;
    ~Off() { f = false; }
  } off{I.training};
  Tensor loss = summed_loss(I, b);
  (loss / normaliser).backward();
  return loss.item<double>();
}

double Trainer::loss_sum(const Batch& b) {
  torch::NoGradGuard ng;
  return summed_loss(*impl_, b).item<double>();
}

Tensor Trainer::logits(const Tensor& ids) {
  torch::NoGradGuard ng;
  return run_units(*impl_, ids, impl_->head());
}

Tensor Trainer::flat_grad() const {
  std::vector<Tensor> g;
  for (auto& U : impl_->units)
    if (U.shard.grad().defined()) g.push_back(U.shard.grad().reshape({-1}));
  return g.empty() ? Tensor() : torch::cat(g);
}

void Trainer::zero_grad() {
  micro_batches_ = 0;
  for (auto& U : impl_->units)
    if (U.shard.grad().defined()) U.shard.mutable_grad() = Tensor();
}

double Trainer::clip_grad_norm(double max_norm) {
  Impl& I = *impl_;
  torch::NoGradGuard ng;
  auto sq = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat64).device(I.env.device));
  // Summed in float64 a chunk at a time: a whole float64 copy of the embedding's gradient would
  // be twice its size again.
  for (auto& U : I.units)
    if (U.shard.grad().defined())
      for (const auto& g : U.shard.grad().split(kUpdateChunk)) sq += g.to(torch::kFloat64).pow(2).sum();
  if (I.world > 1) I.env.collective->all_reduce_sum(sq);
  double norm = std::sqrt(sq.item<double>());
  if (max_norm > 0 && std::isfinite(norm)) {
    double coef = max_norm / (norm + 1e-6);
    if (coef < 1)
      for (auto& U : I.units)
        if (U.shard.grad().defined()) U.shard.mutable_grad().mul_(coef);
  }
  return norm;
}

// torch.optim.AdamW's update, on each shard.
void Trainer::adamw_step(double lr, double beta1, double beta2, double eps, double weight_decay) {
  torch::NoGradGuard ng;
  ++adam_steps_;
  impl_->drop_prefetch();  // the shards are about to change
  const double bc1 = 1 - std::pow(beta1, static_cast<double>(adam_steps_));
  const double bc2 = 1 - std::pow(beta2, static_cast<double>(adam_steps_));
  for (auto& U : impl_->units) {
    if (!U.shard.grad().defined()) continue;
    // Element-wise, so a chunk at a time: the temporaries are chunk-sized, not shard-sized.
    auto ps = U.shard.detach().split(kUpdateChunk), gs = U.shard.grad().split(kUpdateChunk);
    // Decoupled weight decay on the matrices (never on norms), slice by slice of the shard: no
    // per-element mask (which cost 4 bytes a parameter, as much as the parameters).
    if (weight_decay > 0)
      impl_->for_own_slices(U, [&](std::size_t i, int64_t at, int64_t, int64_t n) {
        if (U.shapes[i].size() >= 2) U.shard.detach().narrow(0, at, n).mul_(1 - lr * weight_decay);
      });
    auto ms = U.m.split(kUpdateChunk), vs = U.v.split(kUpdateChunk);
    for (std::size_t k = 0; k < ps.size(); ++k) {
      Tensor p = ps[k];
      const Tensor& g = gs[k];
      ms[k].mul_(beta1).add_(g, 1 - beta1);
      vs[k].mul_(beta2).addcmul_(g, g, 1 - beta2);
      auto denom = (vs[k] / bc2).sqrt_().add_(eps);
      p.addcdiv_(ms[k], denom, -lr / bc1);
    }
  }
}

std::vector<std::pair<std::string, Tensor>> Trainer::full_parameters() { return full_moments(-1); }

std::vector<std::pair<std::string, Tensor>> Trainer::full_moments(int which) {
  Impl& I = *impl_;
  torch::NoGradGuard ng;
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& U : I.units) {
    Tensor s = which < 0 ? U.shard.detach() : which == 0 ? U.m : U.v;
    Tensor full;
    if (I.world == 1) {
      full = s.to(torch::kCPU).clone();
    } else {
      std::vector<Tensor> parts;
      for (int r = 0; r < I.world; ++r) parts.push_back(torch::empty_like(s));
      I.env.collective->all_gather(parts, s.contiguous());
      full = torch::cat(parts).narrow(0, 0, U.numel).to(torch::kCPU);
    }
    for (std::size_t i = 0; i < U.names.size(); ++i) out.emplace_back(U.names[i], U.view(full, i).clone());
  }
  return out;
}

void Trainer::load(const std::vector<std::pair<std::string, Tensor>>& params,
                   const std::vector<std::pair<std::string, Tensor>>& exp_avg,
                   const std::vector<std::pair<std::string, Tensor>>& exp_avg_sq, int64_t adam_steps) {
  Impl& I = *impl_;
  torch::NoGradGuard ng;
  // Only this rank's slices are read (the tensors may view a memory-mapped checkpoint).
  auto fill = [&](const std::vector<std::pair<std::string, Tensor>>& src, int which) {
    std::map<std::string, Tensor> by(src.begin(), src.end());
    for (auto& U : I.units) {
      if (which >= 0 && src.empty()) {  // no moments given: a fresh optimizer
        (which == 0 ? U.m : U.v).zero_();
        continue;
      }
      for (std::size_t i = 0; i < U.names.size(); ++i) {
        auto it = by.find(U.names[i]);
        if (it == by.end()) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "missing tensor '" + U.names[i] + "'");
        if (it->second.sizes().vec() != U.shapes[i])
          throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "tensor '" + U.names[i] + "' has another shape than the model's");
      }
      auto mine = torch::zeros({U.shard_numel}, torch::kFloat32);
      I.for_own_slices(U, [&](std::size_t i, int64_t at, int64_t from, int64_t n) {
        mine.narrow(0, at, n).copy_(by.at(U.names[i]).reshape({-1}).narrow(0, from, n));
      });
      Tensor dst = which < 0 ? U.shard.detach() : which == 0 ? U.m : U.v;
      dst.copy_(mine.to(I.env.device));
    }
  };
  fill(params, -1);
  fill(exp_avg, 0);
  fill(exp_avg_sq, 1);
  adam_steps_ = adam_steps;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> Trainer::tensor_shapes() const {
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (auto& U : impl_->units)
    for (std::size_t i = 0; i < U.names.size(); ++i) out.emplace_back(U.names[i], U.shapes[i]);
  return out;
}

void Trainer::stream_full(int which, int root, const std::function<void(const std::string&, const Tensor&)>& take) {
  Impl& I = *impl_;
  torch::NoGradGuard ng;
  for (auto& U : I.units) {
    Tensor s = (which < 0 ? U.shard.detach() : which == 0 ? U.m : U.v).contiguous();
    Tensor full = s;
    if (I.world > 1) {
      Tensor buf;
      std::vector<Tensor> parts;
      if (I.rank == root) {
        buf = torch::empty({U.shard_numel * I.world}, s.options());
        parts = buf.chunk(I.world);
      }
      I.env.collective->gather(parts, s, root);
      if (I.rank != root) continue;
      full = buf.narrow(0, 0, U.numel);
    }
    full = full.to(torch::kCPU);
    for (std::size_t i = 0; i < U.names.size(); ++i) take(U.names[i], U.view(full, i));
  }
}

int64_t Trainer::shard_bytes() const {
  int64_t n = 0;
  for (auto& U : impl_->units) n += U.shard.numel() * 4;
  return n;
}

int64_t Trainer::frozen_bytes() const {
  int64_t n = 0;
  for (auto& U : impl_->units) {
    if (U.frozen.shard.defined()) n += U.frozen.shard.numel() * static_cast<int64_t>(U.frozen.shard.element_size());
    for (const auto& t : U.frozen_views) n += t.numel() * static_cast<int64_t>(t.element_size());
  }
  return n;
}

int64_t Trainer::trainable_parameters() const {
  int64_t n = 0;
  for (auto& U : impl_->units) n += U.numel;
  return n;
}

// ---- data -----------------------------------------------------------------------------------

namespace {

fs::path split_dir(const fs::path& data, const char* split) {
  if (fs::exists(data / split / "meta.json")) return data / split;
  if (std::string(split) == "train" && fs::exists(data / "meta.json")) return data;
  return {};
}

// Sequence order of one epoch: a seeded shuffle. With group_by_length, each step's sequences
// are sorted longest first, so its micro-batches hold similar lengths (less padding) while the
// steps stay random; it depends on batch_size only, so any split into ranks and micro-batches
// sees the same steps.
std::vector<uint64_t> epoch_order(const tokens::Reader& d, const TrainConfig& c, int64_t epoch) {
  std::vector<uint64_t> order(d.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(c.seed * 1000003ULL + static_cast<uint64_t>(epoch));
  for (std::size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
  if (c.group_by_length) {
    const auto g = static_cast<std::size_t>(c.batch_size);
    for (std::size_t b = 0; b + g <= order.size(); b += g)
      std::stable_sort(order.begin() + b, order.begin() + b + g,
                       [&](uint64_t x, uint64_t y) { return d.length(x) > d.length(y); });
  }
  return order;
}

}  // namespace

Batch make_batch(const tokens::Reader& d, const std::vector<uint64_t>& seqs, int64_t pad_to) {
  int64_t T = pad_to;
  if (T <= 0)
    for (auto s : seqs) T = std::max<int64_t>(T, static_cast<int64_t>(d.length(s)));
  const int64_t B = static_cast<int64_t>(seqs.size());
  auto ids = torch::zeros({B, T}, torch::kInt64);
  auto tg = torch::full({B, T}, -100, torch::kInt64);
  auto* pi = ids.data_ptr<int64_t>();
  auto* pt = tg.data_ptr<int64_t>();
  Batch b;
  for (int64_t r = 0; r < B; ++r) {
    const auto n = static_cast<int64_t>(d.length(seqs[r]));
    const int32_t* x = d.ids(seqs[r]);
    const uint8_t* l = d.labels(seqs[r]);
    for (int64_t t = 0; t < n; ++t) pi[r * T + t] = x[t];
    // Position t predicts token t+1, which is trained when its label says so.
    for (int64_t t = 0; t + 1 < n; ++t)
      if (l[t + 1]) {
        pt[r * T + t] = x[t + 1];
        ++b.trained;
      }
    b.tokens += n;
  }
  b.ids = ids;
  b.targets = tg;
  return b;
}

namespace {

// ---- checkpoints ----------------------------------------------------------------------------

void fsync_path(const fs::path& p, bool dir) {
  int fd = ::open(p.c_str(), dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
  f.flush();
  if (!f) throw vhost::Error(VHOST_ERR_IO, p.string() + ": write failed (disk full?)");
}

std::vector<std::pair<int64_t, fs::path>> list_checkpoints(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  if (!fs::is_directory(dir)) return out;
  static const std::regex re("step-([0-9]{8})");
  for (auto& e : fs::directory_iterator(dir)) {
    std::smatch m;
    std::string name = e.path().filename().string();
    if (e.is_directory() && std::regex_match(name, m, re) && fs::exists(e.path() / "trainer_state.json"))
      out.emplace_back(std::stoll(m[1]), e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string step_name(int64_t step) {
  char b[32];
  std::snprintf(b, sizeof b, "step-%08lld", static_cast<long long>(step));
  return b;
}

// What a model folder holds beside its weights, so that HF transformers and the llama plugin
// both load it: config.json and the tokenizer; and the conversation template the data was
// prepared with (conversation_template.json), so that the model is served as it was trained.
// An adapter folder (with_config false) has no config.json: PEFT's adapter_config.json, which
// names the base, is written beside the weights instead.
void write_model_meta(const fs::path& dir, const LlamaConfig& cfg, const TrainEnv& env, const json& data_meta,
                      bool with_config = true) {
  const fs::path& tokenizer = env.tokenizer;
  fs::create_directories(dir);
  LlamaConfig c = cfg;
  c.torch_dtype = "float32";
  if (with_config) write_text(dir / "config.json", c.to_json().dump(2) + "\n");
  if (!tokenizer.empty() && fs::exists(tokenizer))
    fs::copy_file(tokenizer, dir / "tokenizer.model", fs::copy_options::overwrite_existing);
  else if (!env.tokenizer_proto.empty())
    write_text(dir / "tokenizer.model", env.tokenizer_proto);
  if (data_meta.contains("template") && data_meta["template"].is_string())
    write_text(dir / "conversation_template.json",
               json{{"name", data_meta["template"]}, {"definition", data_meta.value("template_definition", json(nullptr))}}.dump(2) +
                   "\n");
}

// This process's peak resident memory (VmHWM), in bytes; 0 where /proc does not say.
int64_t peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

}  // namespace

// ---- the loop -------------------------------------------------------------------------------

namespace {

// One training run: the data checked against the model, the schedule, resume from the newest
// good checkpoint, the steps, checkpoints and the final model or adapter.
class TrainRun {
 public:
  TrainRun(const LlamaModel& init, const TrainConfig& c, const TrainEnv& env, const TrainEvents& events)
      : init_(init), mc_(init.config()), c_(c), env_(env), events_(events),
        rank_(env.collective ? env.collective->rank() : 0), world_(env.collective ? env.collective->world_size() : 1) {}

  json run() {
    open_data();
    plan();
    // glibc raises its mmap threshold after each large free (up to 32 MiB), after which the
    // unit-sized temporaries of every step come from the heap, where they stay resident: with a
    // fixed threshold, buffers of 1 MiB and more go back to the system when freed. Measured on
    // tests/integration/fsdp_memory.sh: 1.78 GB -> 1.64 GB peak for one process.
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    tr_ = std::make_unique<Trainer>(init_, env_, c_.gradient_checkpointing, c_.lora ? &*c_.lora : nullptr, c_.seed);
    resume();
    bool stop = !emit(start_event());
    t_start_ = clock::now();
    first_ = step_;
    last_ckpt_ = resumed_from_;
    bool interrupted = false;
    while (step_ < total_ && !stop) {
      const bool go_on = train_step();
      if ((c_.eval_every > 0 && step_ % c_.eval_every == 0) && step_ < total_) {
        const double el = evaluate();
        emit({{"event", "eval"}, {"rank", rank_}, {"step", step_}, {"eval_loss", el}});
      }
      // Every rank stops at the same step when any was asked to.
      stop = all_sum(go_on ? 0.0 : 1.0) > 0 || (c_.stop_at_step > 0 && step_ >= c_.stop_at_step);
      if (stop && step_ < total_) interrupted = true;
      if ((c_.save_every > 0 && step_ % c_.save_every == 0) || stop || step_ == total_) last_ckpt_ = save(step_);
    }
    if (step_ == total_ && last_ckpt_.empty() && total_ > 0) last_ckpt_ = save(step_);  // resumed at the end already
    return finish(interrupted);
  }

 private:
  using clock = std::chrono::steady_clock;

  bool emit(const json& ev) const { return !events_ || events_(ev); }

  double all_sum(double x) const {
    if (world_ == 1) return x;
    auto t = torch::tensor({x}, torch::kFloat64);
    env_.collective->all_reduce_sum(t);
    return t.item<double>();
  }

  // The prepared dataset's splits, checked against the model: vocabulary, context, token ids.
  void open_data() {
    train_dir_ = split_dir(c_.data, "train");
    const fs::path eval_dir = split_dir(c_.data, "eval");
    if (train_dir_.empty())
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "data: " + c_.data.string() +
                                                         " is not a prepared dataset (no meta.json, no train/meta.json; "
                                                         "make one with the prepare stage)");
    try {
      data_ = std::make_unique<tokens::Reader>(train_dir_);
      if (!eval_dir.empty()) eval_ = std::make_unique<tokens::Reader>(eval_dir);
    } catch (const std::exception& e) {
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, std::string("data: ") + e.what());
    }
    const json& meta = data_->meta();
    if (meta.contains("vocab_size") && meta["vocab_size"].is_number_integer() && meta["vocab_size"].get<int64_t>() > mc_.vocab_size)
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "data: " + train_dir_.string() + " was tokenized with a vocabulary of " +
                                                         meta["vocab_size"].dump() + " pieces; this model has " +
                                                         std::to_string(mc_.vocab_size) + " (prepare it again with this model)");
    for (uint64_t i = 0; i < data_->size(); ++i) longest_ = std::max<int64_t>(longest_, static_cast<int64_t>(data_->length(i)));
    if (longest_ > mc_.max_position_embeddings)
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "data: " + train_dir_.string() + " has a sequence of " + std::to_string(longest_) +
                                                         " tokens; the model's context is " + std::to_string(mc_.max_position_embeddings));
    for (uint64_t i = 0; i < data_->size(); ++i)
      for (std::size_t t = 0; t < data_->length(i); ++t)
        if (data_->ids(i)[t] < 0 || data_->ids(i)[t] >= mc_.vocab_size)
          throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "data: " + train_dir_.string() + ": sequence " + std::to_string(i) +
                                                             " holds token id " + std::to_string(data_->ids(i)[t]) +
                                                             ", outside the model's vocabulary of " + std::to_string(mc_.vocab_size));
    data_id_ = {{"sequences", data_->size()}, {"tokens", data_->total_tokens()}};
  }

  // The schedule: gradient accumulation, steps, warmup, padding.
  void plan() {
    const int64_t per_rank = c_.micro_batch_size * world_;
    if (c_.batch_size % per_rank != 0)
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "batch_size: " + std::to_string(c_.batch_size) + " is not a multiple of micro_batch_size (" +
                                                         std::to_string(c_.micro_batch_size) + ") x processes (" + std::to_string(world_) + ")");
    accum_ = c_.batch_size / per_rank;
    steps_per_epoch_ = static_cast<int64_t>(data_->size()) / c_.batch_size;
    if (steps_per_epoch_ == 0)
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "batch_size: " + std::to_string(c_.batch_size) + " exceeds the " +
                                                         std::to_string(data_->size()) + " training sequences in " + train_dir_.string());
    total_ = c_.max_steps > 0 ? std::min(c_.max_steps, c_.epochs * steps_per_epoch_) : c_.epochs * steps_per_epoch_;
    warmup_ = c_.warmup_steps >= 0 ? c_.warmup_steps : static_cast<int64_t>(std::ceil(c_.warmup_ratio * static_cast<double>(total_)));
    pad_to_ = c_.padding == "max_length" ? data_->meta().value("max_length", longest_) : 0;
  }

  // The newest checkpoint that loads, made with the same settings (a different one is an error).
  void resume() {
    const fs::path ckdir = c_.out / "checkpoints";
    auto checkpoints = list_checkpoints(ckdir);
    for (auto it = checkpoints.rbegin(); it != checkpoints.rend(); ++it) {
      const fs::path& dir = it->second;
      json st;
      try {
        std::ifstream in(dir / "trainer_state.json");
        st = json::parse(in);
      } catch (const std::exception& e) {
        vhost::log(VHOST_LOG_WARN, dir.string() + ": unreadable trainer_state.json (" + e.what() + "); trying an older one");
        continue;
      }
      auto same = [&](const char* field, const json& now) {
        if (st.value(field, json()) != now)
          throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, field + std::string(": ") + dir.string() + " was made with " +
                                                             st.value(field, json()).dump() + ", this run has " + now.dump() +
                                                             " (resume with the same settings, or use a new out folder)");
      };
      same("batch_size", c_.batch_size);
      same("seed", c_.seed);
      same("data", data_id_);
      same("group_by_length", c_.group_by_length);
      same("lora", c_.lora ? c_.lora->to_json() : json());  // absent in full fine-tuning's
      try {
        load_checkpoint(dir, st);
        break;
      } catch (const std::exception& e) {
        vhost::log(VHOST_LOG_WARN, dir.string() + ": cannot be loaded (" + e.what() + "); trying an older one");
      }
    }
    if (step_ > total_)
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "max_steps: " + resumed_from_.string() + " is at step " + std::to_string(step_) +
                                                         ", beyond this run's " + std::to_string(total_) + " steps");
  }

  void load_checkpoint(const fs::path& dir, const json& st) {
    SafetensorsFile mf(dir / "model.safetensors"), of(dir / "optimizer.safetensors");
    std::vector<std::pair<std::string, Tensor>> p, m, v;
    for (auto& [n, e] : mf.entries()) p.emplace_back(n, mf.get(n));
    for (auto& [n, e] : of.entries()) {
      if (n.rfind("exp_avg_sq.", 0) == 0) v.emplace_back(n.substr(11), of.get(n));
      else if (n.rfind("exp_avg.", 0) == 0) m.emplace_back(n.substr(8), of.get(n));
    }
    tr_->load(p, m, v, st.at("adam_steps").get<int64_t>());
    step_ = st.at("step").get<int64_t>();
    if (st.contains("loss") && st["loss"].is_number()) last_loss_ = st["loss"].get<double>();
    resumed_from_ = dir;
  }

  json start_event() {
    peak_ = c_.peak_tflops != 0 ? c_.peak_tflops : env_.peak_tflops;  // the backend's table (A100 312, H100/H200 989 bf16 dense)
    json start = {{"event", "start"},       {"rank", rank_},
                  {"world_size", world_},     {"total_steps", total_},
                  {"start_step", step_},      {"steps_per_epoch", steps_per_epoch_},
                  {"batch_size", c_.batch_size}, {"micro_batch_size", c_.micro_batch_size},
                  {"grad_accum", accum_},     {"parameters", mc_.parameter_count()},
                  {"param_bytes_per_rank", tr_->shard_bytes()}, {"device", env_.device.str()},
                  {"sequences", data_->size()}, {"warmup_steps", warmup_},
                  {"gradient_checkpointing", c_.gradient_checkpointing},
                  {"method", c_.lora ? "lora" : "full"}, {"trainable_parameters", tr_->trainable_parameters()},
                  {"frozen_bytes_per_rank", tr_->frozen_bytes()}};
    start["attention"] = attention_kernel();
    if (!resumed_from_.empty()) start["resumed_from"] = resumed_from_.string();
    return start;
  }

  // The attention kernel the layers' causal_attention runs: the SDPA dispatcher asked with
  // inputs of one micro-batch row's shape, dtype and device (gradients on, as in training).
  std::string attention_kernel() const {
    const int64_t H = mc_.num_attention_heads, hd = mc_.head_dim(), T = std::max<int64_t>(1, longest_);
    const auto o = torch::TensorOptions().dtype(env_.compute_dtype).device(env_.device);
    auto q = torch::empty({1, H, T, hd}, o).requires_grad_(true), kv = torch::empty({1, H, T, hd}, o);
    return torch_compat::attention_kernel(q, kv, kv);
  }

  // One optimizer step over batch_size sequences (micro-batch k on rank k % world); returns
  // whether the events callback lets the run go on.
  bool train_step() {
    const int64_t epoch = step_ / steps_per_epoch_, in_epoch = step_ % steps_per_epoch_;
    if (epoch != order_epoch_) {
      order_ = epoch_order(*data_, c_, epoch);
      order_epoch_ = epoch;
    }
    const auto t0 = clock::now();
    const auto base = static_cast<std::size_t>(in_epoch * c_.batch_size);
    std::vector<Batch> mine;
    double trained = 0;
    for (int64_t k = 0; k < accum_ * world_; ++k) {
      std::vector<uint64_t> seqs(order_.begin() + base + k * c_.micro_batch_size, order_.begin() + base + (k + 1) * c_.micro_batch_size);
      Batch b = make_batch(*data_, seqs, pad_to_);
      trained += static_cast<double>(b.trained);
      if (k % world_ == rank_) mine.push_back(std::move(b));
    }
    if (trained == 0) trained = 1;  // no trained token: zero gradient, loss 0
    double loss = 0;
    int64_t toks = 0;
    for (auto& b : mine) {
      loss += tr_->forward_backward(b, trained);
      toks += b.tokens;
    }
    loss = all_sum(loss) / trained;
    toks = static_cast<int64_t>(all_sum(static_cast<double>(toks)));
    const double lr = learning_rate(c_, step_, total_, warmup_);
    if (!std::isfinite(loss))
      throw vhost::Error(VHOST_ERR_RUNTIME, "the loss is " + std::string(std::isnan(loss) ? "NaN" : "infinite") + " at step " +
                                                std::to_string(step_ + 1) + " (lr " + std::to_string(lr) + "): training stopped; " +
                                                (last_ckpt_.empty() ? std::string("no checkpoint was written")
                                                                    : "the last good checkpoint is " + last_ckpt_.string()) +
                                                " (lower lr, or check the data)");
    const double gnorm = tr_->clip_grad_norm(c_.max_grad_norm);
    tr_->adamw_step(lr, c_.beta1, c_.beta2, c_.eps, c_.weight_decay);
    tr_->zero_grad();
    ++step_;
    last_loss_ = loss;
    tokens_done_ += toks;
    return emit(step_event(loss, lr, gnorm, toks, std::chrono::duration<double>(clock::now() - t0).count()));
  }

  json step_event(double loss, double lr, double gnorm, int64_t toks, double dt) const {
    const double elapsed = std::chrono::duration<double>(clock::now() - t_start_).count();
    json ev = {{"event", "step"},       {"rank", rank_},           {"step", step_},
               {"total_steps", total_},  {"epoch", static_cast<double>(step_) / steps_per_epoch_},
               {"loss", loss},          {"lr", lr},               {"grad_norm", gnorm},
               {"tokens", toks},        {"tokens_per_s", toks / std::max(dt, 1e-9)},
               {"step_s", dt},          {"elapsed_s", elapsed},
               {"eta_s", elapsed / static_cast<double>(step_ - first_) * static_cast<double>(total_ - step_)}};
    if (peak_ > 0) {
      // FLOPs per token: 6 x parameters + the attention term 12 x layers x hidden x tokens (PaLM).
      // With LoRA the frozen weights take no weight gradient: 4 x theirs.
      const double T = static_cast<double>(toks) / static_cast<double>(c_.batch_size);
      const double params = static_cast<double>(mc_.parameter_count()), trained_params = static_cast<double>(tr_->trainable_parameters());
      const double weights = c_.lora ? 4.0 * params + 6.0 * trained_params : 6.0 * params;
      const double flops = (weights + 12.0 * mc_.num_hidden_layers * mc_.hidden_size * T) * static_cast<double>(toks);
      ev["mfu"] = flops / dt / world_ / (peak_ * 1e12);
    }
    return ev;
  }

  // The eval split's loss per trained token. Every rank runs the same number of forward passes
  // (each gathers every unit: collectives all ranks must join), a rank past the end of the split
  // a discarded one on sequence 0.
  double evaluate() {
    if (!eval_ || eval_->size() == 0) return std::nan("");
    double sum = 0, n = 0;
    const auto mb = static_cast<uint64_t>(c_.micro_batch_size), stride = mb * static_cast<uint64_t>(world_);
    const uint64_t rounds = (eval_->size() + stride - 1) / stride;
    for (uint64_t k = 0; k < rounds; ++k) {
      const uint64_t i = k * stride + static_cast<uint64_t>(rank_) * mb;
      const bool real = i < eval_->size();
      std::vector<uint64_t> seqs;
      for (uint64_t j = i; real && j < std::min<uint64_t>(eval_->size(), i + mb); ++j) seqs.push_back(j);
      if (!real) seqs.push_back(0);
      Batch b = make_batch(*eval_, seqs, 0);
      const double l = tr_->loss_sum(b);
      if (!real) continue;
      sum += l;
      n += static_cast<double>(b.trained);
    }
    sum = all_sum(sum);
    n = all_sum(n);
    return n > 0 ? sum / n : std::nan("");
  }

  // Writes the whole model (and with `optimizer`, the AdamW moments) into `dir` on rank 0,
  // streamed unit by unit: no rank holds more than one unit whole. Rank 0 keeps taking part in
  // the collectives after a failed write, so every rank learns of it and throws. `finish` (rank 0)
  // runs after the files are complete. `adapter` (LoRA's result): PEFT's folder,
  // adapter_config.json and adapter_model.safetensors.
  void write_streamed(const fs::path& dir, bool optimizer, const std::function<void()>& finish,
                      const std::function<std::string(const std::string&)>& failed, bool adapter = false) {
    std::string failure;
    auto attempt = [&](const std::function<void()>& f) {
      if (rank_ != 0 || !failure.empty()) return;
      try {
        f();
      } catch (const std::exception& e) {
        failure = e.what();
      }
    };
    std::unique_ptr<SafetensorsWriter> mw, ow;
    const auto shapes = tr_->tensor_shapes();
    attempt([&] {
      std::error_code ec;
      fs::remove_all(dir, ec);
      write_model_meta(dir, mc_, env_, data_->meta(), !adapter);
      if (adapter) write_text(dir / "adapter_config.json", c_.lora->to_peft_json(env_.base_model).dump(2) + "\n");
      std::vector<SafetensorsWriter::Spec> ps, os;
      for (auto& [n, sh] : shapes) ps.push_back({n, torch::kFloat32, sh});
      mw = std::make_unique<SafetensorsWriter>(dir / (adapter ? "adapter_model.safetensors" : "model.safetensors"), ps,
                                               std::map<std::string, std::string>{{"format", "pt"}});
      if (!optimizer) return;
      for (const char* prefix : {"exp_avg.", "exp_avg_sq."})
        for (auto& [n, sh] : shapes) os.push_back({prefix + n, torch::kFloat32, sh});
      ow = std::make_unique<SafetensorsWriter>(dir / "optimizer.safetensors", os,
                                               std::map<std::string, std::string>{{"format", "vhost-adamw"}});
    });
    tr_->stream_full(-1, 0, [&](const std::string&, const Tensor& t) { attempt([&] { mw->write(t); }); });
    if (optimizer)
      for (int which : {0, 1}) tr_->stream_full(which, 0, [&](const std::string&, const Tensor& t) { attempt([&] { ow->write(t); }); });
    attempt([&] {
      mw->finish();
      if (ow) ow->finish();
      finish();
    });
    mw.reset();
    ow.reset();
    const bool bad = all_sum(failure.empty() ? 0.0 : 1.0) > 0;
    if (!bad) return;
    if (rank_ != 0) throw vhost::Error(VHOST_ERR_IO, "rank 0 could not write " + dir.string() + " (its log says why)");
    std::error_code ec;
    fs::remove_all(dir, ec);
    throw vhost::Error(VHOST_ERR_IO, failed(failure));
  }

  // A checkpoint of step `at`, written whole into a .tmp folder, then renamed; the oldest beyond
  // keep_last removed.
  fs::path save(int64_t at) {
    const auto t0 = clock::now();
    const fs::path ckdir = c_.out / "checkpoints";
    const fs::path final_dir = ckdir / step_name(at), tmp = ckdir / (step_name(at) + ".tmp");
    write_streamed(
        tmp, true,
        [&] {
          json st = {{"format", "vhost-train-state"}, {"version", 1},
                     {"step", at},                     {"adam_steps", tr_->adam_steps()},
                     {"epoch", at / steps_per_epoch_},  {"total_steps", total_},
                     {"batch_size", c_.batch_size},     {"seed", c_.seed},
                     {"group_by_length", c_.group_by_length}, {"data", data_id_},
                     {"world_size", world_},            {"loss", std::isfinite(last_loss_) ? json(last_loss_) : json()},
                     {"lora", c_.lora ? c_.lora->to_json() : json()},
                     {"rng", "the data order is a pure function of seed and epoch"}};
          write_text(tmp / "trainer_state.json", st.dump(2) + "\n");  // written last: marks completeness
          for (auto& e : fs::directory_iterator(tmp)) fsync_path(e.path(), false);
          fsync_path(tmp, true);
          fs::remove_all(final_dir);
          fs::rename(tmp, final_dir);
          fsync_path(ckdir, true);
        },
        [&](const std::string& why) {
          auto prev = list_checkpoints(ckdir);
          return "saving the checkpoint of step " + std::to_string(at) + " to " + tmp.string() + " failed: " + why +
                 "; nothing torn was left" + (prev.empty() ? std::string() : "; the newest good one is " + prev.back().second.string());
        });
    if (rank_ == 0) {
      auto all = list_checkpoints(ckdir);
      for (std::size_t i = 0; i + static_cast<std::size_t>(c_.keep_last) < all.size(); ++i) fs::remove_all(all[i].second);
    }
    if (env_.collective) env_.collective->barrier();
    emit({{"event", "checkpoint"}, {"rank", rank_}, {"step", at}, {"path", final_dir.string()},
          {"seconds", std::chrono::duration<double>(clock::now() - t0).count()}});
    return final_dir;
  }

  // The result; unless interrupted, the eval loss and the model (LoRA: the adapter alone, as
  // PEFT saves it; `vhost model merge` makes a whole model of it).
  json finish(bool interrupted) {
    json result = {{"steps", step_},          {"total_steps", total_},   {"final_loss", last_loss_},
                   {"interrupted", interrupted}, {"checkpoint", last_ckpt_.string()},
                   {"tokens", tokens_done_},  {"seconds", std::chrono::duration<double>(clock::now() - t_start_).count()},
                   {"param_bytes_per_rank", tr_->shard_bytes()}, {"frozen_bytes_per_rank", tr_->frozen_bytes()},
                   {"trainable_parameters", tr_->trainable_parameters()}, {"world_size", world_}};
    if (!resumed_from_.empty()) result["resumed_from"] = resumed_from_.string();
    if (!interrupted) {
      const double el = evaluate();
      if (!std::isnan(el)) {
        result["eval_loss"] = el;
        emit({{"event", "eval"}, {"rank", rank_}, {"step", step_}, {"eval_loss", el}});
      }
      const std::string what = c_.lora ? "adapter" : "model";
      const fs::path model_dir = c_.out / what, tmp = c_.out / (what + ".tmp");
      write_streamed(
          tmp, false,
          [&] {
            fs::remove_all(model_dir);
            fs::rename(tmp, model_dir);
          },
          [&](const std::string& why) { return "writing the " + what + " to " + tmp.string() + " failed: " + why; }, c_.lora.has_value());
      if (env_.collective) env_.collective->barrier();
      result[what] = model_dir.string();
      if (c_.lora) result["base_model"] = env_.base_model;
    }
    result["peak_rss_bytes"] = peak_rss_bytes();
    emit({{"event", "end"}, {"rank", rank_}, {"result", result}});
    return result;
  }

  const LlamaModel& init_;
  const LlamaConfig& mc_;
  const TrainConfig& c_;
  const TrainEnv& env_;
  const TrainEvents& events_;
  const int rank_, world_;
  fs::path train_dir_;
  std::unique_ptr<tokens::Reader> data_, eval_;
  json data_id_;
  int64_t longest_ = 0, accum_ = 1, steps_per_epoch_ = 1, total_ = 0, warmup_ = 0, pad_to_ = 0;
  std::unique_ptr<Trainer> tr_;
  int64_t step_ = 0, first_ = 0, tokens_done_ = 0;
  double last_loss_ = std::nan("");  // of the newest step done (restored on resume)
  double peak_ = 0;
  fs::path resumed_from_, last_ckpt_;
  std::vector<uint64_t> order_;
  int64_t order_epoch_ = -1;
  clock::time_point t_start_;
};

}  // namespace

json train(const LlamaModel& init, const TrainConfig& c, const TrainEnv& env, const TrainEvents& events) {
  return TrainRun(init, c, env, events).run();
}

}  // namespace vhost::llama
