// LoRA: the trainer's adapter gradients against plain autograd through W + s·B·A, the zero-B
// start, dropout under recomputation, PEFT's file layout, merging, resuming, and bad input.
#include "engine.hpp"
#include "generate.hpp"
#include "lora.hpp"
#include "model.hpp"
#include "safetensors.hpp"
#include "train.hpp"
#include "train_fixtures.hpp"

#include <vhost/plugin.hpp>

#undef CHECK
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <thread>

namespace fs = std::filesystem;
using namespace vhost::llama;
using vhost::llama::testing::random_batch;
using vhost::llama::testing::small;
using Catch::Matchers::Contains;
using vhost::json;

namespace {

fs::path tmpdir(const std::string& name) { return testing::fresh_dir("lora", name); }

LoraConfig lora(std::vector<std::string> targets, std::vector<std::string> save = {}, double dropout = 0) {
  LoraConfig l;
  l.r = 4;
  l.alpha = 8;
  l.dropout = dropout;
  l.target_modules = std::move(targets);
  l.modules_to_save = std::move(save);
  return l;
}

// Random adapter tensors (B non-zero, so that both gradients are informative), PEFT's keys.
std::vector<std::pair<std::string, torch::Tensor>> random_adapter(const LlamaConfig& cfg, const LoraConfig& l,
                                                                  const LlamaModel& base, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  std::map<std::string, torch::Tensor> w(base.named_tensors().begin(), base.named_tensors().end());
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    for (const auto& m : l.target_modules) {
      auto s = lora_module_shape(cfg, m);
      out.emplace_back(lora_key(i, m, 'A'), torch::randn({l.r, s[1]}, gen, torch::TensorOptions()) * 0.1);
      out.emplace_back(lora_key(i, m, 'B'), torch::randn({s[0], l.r}, gen, torch::TensorOptions()) * 0.1);
    }
  for (const auto& m : l.modules_to_save)
    out.emplace_back(lora_saved_key(m), w.at(lora_saved_weight(m)) + torch::randn(w.at(lora_saved_weight(m)).sizes(), gen, torch::TensorOptions()) * 0.01);
  return out;
}

double summed_ce(const torch::Tensor& logits, const Batch& b, int64_t vocab) {
  return torch::nn::functional::cross_entropy(
             logits.reshape({-1, vocab}), b.targets.reshape({-1}),
             torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum))
      .item<double>();
}

}  // namespace

TEST_CASE("LoRA gradients equal plain autograd through W + s B A", "[lora]") {
  auto cfg = small();
  auto init = LlamaModel::random(cfg, 5);
  Batch b = random_batch(2, 12, cfg.vocab_size, 9);
  for (const auto& l : {lora({"q_proj", "v_proj"}), lora({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, {"lm_head"})}) {
    auto adapter = random_adapter(cfg, l, init, 11);
    std::map<std::string, torch::Tensor> leaves;
    for (auto& [k, t] : adapter) leaves[k] = t.clone().requires_grad_(true);
    // Reference: the inference model on W + s B A, built from leaves that require grad.
    std::vector<std::pair<std::string, torch::Tensor>> eff;
    for (auto& [n, w] : init.named_tensors()) {
      torch::Tensor t = w;
      for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
        for (const auto& m : l.target_modules)
          if (n == lora_base_weight(i, m))
            t = w + torch::mm(leaves.at(lora_key(i, m, 'B')), leaves.at(lora_key(i, m, 'A'))) * l.scaling();
      for (const auto& m : l.modules_to_save)
        if (n == lora_saved_weight(m)) t = leaves.at(lora_saved_key(m));
      eff.emplace_back(n, t);
    }
    LlamaModel ref(cfg, eff, "reference", torch::kCPU, torch::kFloat32);
    auto loss = torch::nn::functional::cross_entropy(
        ref.forward(b.ids).reshape({-1, cfg.vocab_size}), b.targets.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
    loss.backward();
    for (bool ckpt : {true, false}) {
      Trainer t(init, {}, ckpt, &l, 1);
      t.load(adapter, {}, {}, 0);
      CHECK(t.trainable_parameters() > 0);
      const double got = t.forward_backward(b, 1.0);
      CHECK(got == Approx(loss.item<double>()).epsilon(1e-5));
      // The trained tensors in the trainer's order are exactly the adapter's, in PEFT's names.
      std::map<std::string, torch::Tensor> grads;
      auto g = t.flat_grad();
      int64_t off = 0;
      for (auto& [n, shape] : t.tensor_shapes()) {
        const int64_t numel = c10::multiply_integers(shape);
        grads[n] = g.narrow(0, off, numel).view(shape);
        off += numel;
      }
      CHECK(off == g.numel());
      REQUIRE(grads.size() == leaves.size());
      for (auto& [k, leaf] : leaves) {
        INFO(k << " checkpointing=" << ckpt);
        REQUIRE(grads.count(k));
        // Absolute tolerance on the tensor's own scale: float32 sums in another order (the BLAS
        // kernels of an AVX2 CPU against an AVX-512 one) move an element by ~1e-6 of the largest
        // gradient, which an element 1e-4 of that size cannot absorb in a relative 1e-4.
        const double scale = leaf.grad().abs().max().item<double>();
        CHECK(torch::allclose(grads.at(k), leaf.grad(), 1e-4, 1e-5 * scale));
      }
    }
  }
}

TEST_CASE("a fresh adapter (B = 0) starts at the base model, which takes no gradient", "[lora]") {
  for (bool tied : {false, true}) {
    auto cfg = small(tied);
    auto init = LlamaModel::random(cfg, 3);
    auto l = lora({"q_proj", "v_proj", "down_proj"}, {}, 0.05);
    Trainer t(init, {}, true, &l, 7);
    auto ids = torch::randint(97, {2, 9}, torch::kInt64);
    CHECK(torch::allclose(t.logits(ids), init.forward(ids), 1e-5, 1e-6));
    // Only the adapters train: 3 modules x 2 layers x (A + B); the base is kept, not copied to float32 shards.
    CHECK(t.tensor_shapes().size() == 3 * static_cast<std::size_t>(cfg.num_hidden_layers) * 2);
    CHECK(t.frozen_bytes() >= cfg.parameter_count() * 4 - 4 * cfg.num_hidden_layers);
    CHECK(t.shard_bytes() == t.trainable_parameters() * 4);
    // A: PEFT's kaiming-uniform bound 1/sqrt(in); B: zero.
    for (auto& [n, w] : t.full_parameters()) {
      INFO(n);
      if (n.find("lora_B") != std::string::npos) CHECK(w.abs().max().item<float>() == 0);
      else CHECK(w.abs().max().item<float>() <= 1 / std::sqrt(static_cast<float>(w.size(1))) + 1e-6);
    }
  }
}

TEST_CASE("LoRA dropout draws the same masks when a layer is recomputed", "[lora]") {
  auto cfg = small();
  auto init = LlamaModel::random(cfg, 5);
  auto l = lora({"q_proj", "v_proj", "gate_proj"}, {}, 0.3);
  auto adapter = random_adapter(cfg, l, init, 4);
  Batch b = random_batch(2, 10, cfg.vocab_size, 3);
  Trainer a(init, {}, /*checkpointing=*/true, &l, 1), c(init, {}, false, &l, 1), other(init, {}, false, &l, 2);
  for (auto* t : {&a, &c, &other}) t->load(adapter, {}, {}, 0);
  double la = a.forward_backward(b, 1), lc = c.forward_backward(b, 1), lo = other.forward_backward(b, 1);
  CHECK(la == Approx(lc).epsilon(1e-6));
  CHECK(torch::allclose(a.flat_grad(), c.flat_grad(), 1e-4, 1e-6));
  // Dropout is on in training (another seed, another loss) and off for evaluation.
  CHECK(la != Approx(lo).epsilon(1e-6));
  CHECK(a.loss_sum(b) == Approx(other.loss_sum(b)).epsilon(1e-6));
}

TEST_CASE("an adapter saved as PEFT does loads back, merges, and answers as the merged model", "[lora]") {
  auto dir = tmpdir("roundtrip");
  auto cfg = small();
  auto init = LlamaModel::random(cfg, 5);
  auto l = lora({"k_proj", "o_proj", "up_proj"}, {"lm_head"});
  auto tensors = random_adapter(cfg, l, init, 6);
  save_adapter(dir / "a", l, "base", tensors);
  auto cj = json::parse(std::ifstream(dir / "a" / "adapter_config.json"));
  CHECK(cj["peft_type"] == "LORA");
  CHECK(cj["r"] == 4);
  CHECK(cj["lora_alpha"] == 8.0);
  auto a = load_adapter(dir / "a", cfg);
  CHECK(a.config.target_modules == l.target_modules);
  CHECK(a.tensors.size() == tensors.size());
  LlamaModel merged(cfg, merge_adapter(init, a), "merged", torch::kCPU, torch::kFloat32);
  // The trainer holding the same adapter computes the same logits as the merged weights.
  Trainer t(init, {}, true, &l, 0);
  t.load(tensors, {}, {}, 0);
  auto ids = torch::randint(97, {2, 11}, torch::kInt64);
  CHECK(torch::allclose(t.logits(ids), merged.forward(ids), 1e-4, 1e-5));
  CHECK(!torch::allclose(init.forward(ids), merged.forward(ids), 1e-3, 1e-3));
}

TEST_CASE("a LoRA run lowers the loss, resumes to the same losses, and writes a PEFT folder", "[lora]") {
  auto dir = tmpdir("run");
  {
    vhost::tokens::Writer w(dir / "data" / "train");
    auto gen = at::detail::createCPUGenerator(1);
    for (int i = 0; i < 16; ++i) {
      int64_t len = 8 + torch::randint(20, {1}, gen, torch::kInt64).item<int64_t>();
      // A learnable pattern: each token is the previous plus 1 (mod 90).
      int64_t start = torch::randint(90, {1}, gen, torch::kInt64).item<int64_t>();
      std::vector<int32_t> ids(len);
      std::vector<uint8_t> labels(len);
      for (int64_t j = 0; j < len; ++j) {
        ids[j] = static_cast<int32_t>(3 + (start + j) % 90);
        labels[j] = j >= 2;
      }
      w.add(ids, labels);
    }
    w.finish({{"vocab_size", 97}, {"max_length", 64}});
  }
  auto init = LlamaModel::random(small(), 8);
  auto cfg = [&](const fs::path& out) {
    TrainConfig c;
    c.data = dir / "data";
    c.out = out;
    c.epochs = 8;
    c.batch_size = 4;
    c.micro_batch_size = 2;
    c.lr = 1e-2;
    c.warmup_steps = 2;
    c.lora = lora({"q_proj", "v_proj", "o_proj", "down_proj"}, {}, 0.05);
    return c;
  };
  auto run = [&](const TrainConfig& c, int stop_after) {
    std::vector<double> losses;
    json r = train(init, c, {}, [&](const json& e) {
      if (e["event"] == "step") {
        losses.push_back(e["loss"].get<double>());
        if (static_cast<int>(losses.size()) == stop_after) return false;
      }
      return true;
    });
    return std::make_pair(losses, r);
  };
  auto [full, r] = run(cfg(dir / "full"), -1);
  REQUIRE(full.size() == 32);
  CHECK(full.back() < full.front() - 0.3);
  CHECK(r.contains("adapter"));
  CHECK(!r.contains("model"));
  const fs::path ad = r["adapter"].get<std::string>();
  CHECK(fs::exists(ad / "adapter_config.json"));
  CHECK(!fs::exists(ad / "config.json"));  // not mistaken for a whole checkpoint
  auto a = load_adapter(ad, init.config());
  CHECK(a.config.target_modules == std::vector<std::string>{"q_proj", "v_proj", "o_proj", "down_proj"});
  // Checkpoints hold the adapters and their moments only.
  SafetensorsFile ck(dir / "full" / "checkpoints" / "step-00000032" / "model.safetensors");
  CHECK(ck.entries().size() == a.tensors.size());

  auto c = cfg(dir / "cut");
  c.save_every = 2;
  auto [first, r1] = run(c, 5);
  CHECK(r1["interrupted"] == true);
  auto [second, r2] = run(c, -1);
  CHECK_THAT(r2["resumed_from"].get<std::string>(), Contains("step-00000005"));
  first.insert(first.end(), second.begin(), second.end());
  REQUIRE(first.size() == full.size());
  for (std::size_t i = 0; i < full.size(); ++i) CHECK(first[i] == full[i]);
  auto b = load_adapter(r2["adapter"].get<std::string>(), init.config());
  for (auto& [k, t] : a.tensors) CHECK(torch::equal(t, b.tensors.at(k)));

  // Resuming a LoRA run as full fine-tuning (or with another rank) is refused.
  auto other = cfg(dir / "cut");
  other.lora->r = 8;
  CHECK_THROWS_WITH(run(other, -1), Contains("lora") && Contains("was made with"));
}

TEST_CASE("LoRA options and adapter files are checked, naming the field or file", "[lora][bad-input]") {
  auto cfg = small();
  auto err = [&](const json& j) {
    try {
      LoraConfig::from_json(j, cfg);
    } catch (const vhost::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(err({{"r", 0}}), Contains("r: 0 is outside"));
  CHECK_THAT(err({{"r", -3}}), Contains("r: -3"));
  CHECK_THAT(err({{"r", 2.5}}), Contains("r: expected an integer"));
  CHECK_THAT(err({{"alpha", 0}}), Contains("alpha"));
  CHECK_THAT(err({{"dropout", 1.0}}), Contains("dropout"));
  CHECK_THAT(err({{"target_modules", {"q_proj", "c_attn"}}}), Contains("unknown target module 'c_attn'"));
  CHECK_THAT(err({{"target_modules", json::array()}}), Contains("target_modules: empty"));
  CHECK_THAT(err({{"modules_to_save", {"norm"}}}), Contains("modules_to_save: 'norm'"));
  CHECK(err({{"target_modules", {"all-linear"}}, {"modules_to_save", {"lm_head"}}}) == "no error");
  // A tied model's lm_head is its embedding; an unknown method.
  CHECK_THROWS_WITH(LoraConfig::from_json({{"modules_to_save", {"lm_head"}}}, small(true)), Contains("ties lm_head"));
  CHECK_THROWS_WITH(TrainConfig::from_json({{"data", "d"}, {"out", "o"}, {"method", "qlora"}}), Contains("method"));
  CHECK(TrainConfig::from_json({{"data", "d"}, {"out", "o"}, {"method", "lora"}, {"r", 16}}).lora->r == 16);
  CHECK(!TrainConfig::from_json({{"data", "d"}, {"out", "o"}, {"r", 16}}).lora);

  auto dir = tmpdir("bad");
  auto init = LlamaModel::random(cfg, 5);
  auto l = lora({"q_proj", "v_proj"});
  save_adapter(dir / "ok", l, "base", random_adapter(cfg, l, init, 1));
  auto load_err = [&](const fs::path& d, const LlamaConfig& c) {
    try {
      load_adapter(d, c);
    } catch (const vhost::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(load_err(dir / "ok", cfg) == "no error");
  // An adapter for another base shape: the tensor, both shapes, and the hint.
  LlamaConfig wider = cfg;
  wider.hidden_size *= 2;
  wider.intermediate_size *= 2;
  CHECK_THAT(load_err(dir / "ok", wider), Contains("adapter_model.safetensors") && Contains("lora_A.weight' has shape") &&
                                              Contains("another base model"));
  LlamaConfig deeper = cfg;
  deeper.num_hidden_layers = 1;
  CHECK_THAT(load_err(dir / "ok", deeper), Contains("unexpected tensor 'base_model.model.model.layers.1"));
  CHECK_THAT(load_err(dir / "missing", cfg), Contains("not an adapter folder"));
  fs::create_directories(dir / "b");
  fs::copy_file(dir / "ok" / "adapter_model.safetensors", dir / "b" / "adapter_model.safetensors");
  auto put = [&](const std::string& text) { std::ofstream(dir / "b" / "adapter_config.json") << text; };
  put("{not json");
  CHECK_THAT(load_err(dir / "b", cfg), Contains("adapter_config.json: not valid JSON"));
  put(R"({"peft_type": "PREFIX_TUNING"})");
  CHECK_THAT(load_err(dir / "b", cfg), Contains("peft_type") && Contains("PREFIX_TUNING"));
  put(R"({"peft_type": "LORA", "r": 0, "lora_alpha": 8, "target_modules": ["q_proj"]})");
  CHECK_THAT(load_err(dir / "b", cfg), Contains("adapter_config.json: r: expected an integer >= 1"));
  put(R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "fc1"]})");
  CHECK_THAT(load_err(dir / "b", cfg), Contains("unknown target module 'fc1'"));
  put(R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "use_dora": true})");
  CHECK_THAT(load_err(dir / "b", cfg), Contains("use_dora"));
  put(R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})");
  CHECK_THAT(load_err(dir / "b", cfg), Contains("another r"));
  // A PEFT regex over module paths, and a truncated weights file.
  put(R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ".*\\.(q|v)_proj"})");
  CHECK(load_err(dir / "b", cfg) == "no error");
  fs::resize_file(dir / "b" / "adapter_model.safetensors", 200);
  CHECK_THAT(load_err(dir / "b", cfg), Contains("adapter_model.safetensors"));
}

TEST_CASE("a batch mixing two adapters and the base gives each row what it gets alone", "[lora]") {
  auto dir = tmpdir("multi");
  auto cfg = small();
  cfg.max_position_embeddings = 32;
  auto model = LlamaModel::random(cfg, 5);
  auto l1 = lora({"q_proj", "v_proj"}), l2 = lora({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"});
  save_adapter(dir / "a1", l1, "base", random_adapter(cfg, l1, model, 1));
  save_adapter(dir / "a2", l2, "base", random_adapter(cfg, l2, model, 2));
  auto a1 = load_adapter(dir / "a1", cfg), a2 = load_adapter(dir / "a2", cfg);
  LlamaModel m1(cfg, merge_adapter(model, a1), "m1", torch::kCPU, torch::kFloat32);
  LlamaModel m2(cfg, merge_adapter(model, a2), "m2", torch::kCPU, torch::kFloat32);
  const int32_t i1 = model.add_adapter(a1), i2 = model.add_adapter(a2);
  CHECK(model.adapter_count() == 2);
  torch::NoGradGuard ng;
  auto ids = torch::randint(3, 97, {3, 7}, torch::kInt64);
  auto rows = torch::tensor(std::vector<int64_t>{i1, -1, i2}, torch::kInt64);
  auto full = model.forward(ids, nullptr, torch::Tensor(), false, rows);
  const LlamaModel* alone[3] = {&m1, &model, &m2};
  for (int r = 0; r < 3; ++r) {
    INFO("row " << r);
    CHECK(torch::allclose(full[r], alone[r]->forward(ids.narrow(0, r, 1))[0], 1e-4, 1e-5));
  }
  // Decoding: a prefill then one-token steps through the decode kernels, float32 and bf16-packed.
  for (bool packed : {false, true}) {
    if (packed && !model.enable_bf16_decode()) continue;
    auto cache = KVCache::create(cfg, 3, 16, torch::TensorOptions().dtype(model.cache_dtype()));
    model.forward(ids.narrow(1, 0, 5), &cache, torch::Tensor(), false, rows);
    for (int t = 5; t < 7; ++t) {
      auto step = model.forward(ids.narrow(1, t, 1), &cache, torch::Tensor(), false, rows);
      INFO("position " << t << " packed " << packed);
      CHECK(torch::allclose(step.select(1, 0), full.select(1, t), packed ? 5e-2 : 1e-4, packed ? 5e-2 : 1e-5));
    }
  }
  // The engine: sequences of each adapter and of the base decoded together equal each alone.
  auto fresh = LlamaModel::random(cfg, 5);
  fresh.add_adapter(a1);
  fresh.add_adapter(a2);
  Engine engine(fresh, nullptr, 6, 0, 16);
  SamplingParams p;
  p.temperature = 0;
  p.ignore_eos = true;
  p.max_tokens = 10;
  std::vector<GenerationResult> got(6);
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i)
    threads.emplace_back([&, i] {
      SamplingParams q = p;
      q.adapter = i % 3 - 1;  // -1, 0, 1
      got[static_cast<std::size_t>(i)] = engine.generate({1, 5 + i, 9, 11 + i}, q);
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 6; ++i) {
    const LlamaModel& ref = i % 3 == 0 ? fresh : i % 3 == 1 ? m1 : m2;  // the base: fresh with no adapter
    auto want = generate(ref, nullptr, {{1, 5 + i, 9, 11 + i}}, p)[0];
    INFO("sequence " << i);
    CHECK(got[static_cast<std::size_t>(i)].tokens == want.tokens);
  }
  CHECK(engine.stats().mean_batch > 1.5);
  // An adapter that replaces whole modules cannot be applied per row.
  auto l3 = lora({"q_proj"}, {"lm_head"});
  save_adapter(dir / "a3", l3, "base", random_adapter(cfg, l3, model, 3));
  CHECK_THROWS_WITH(model.add_adapter(load_adapter(dir / "a3", cfg)), Contains("modules_to_save") && Contains("merge"));
  CHECK_THROWS_WITH(model.forward(ids, nullptr, torch::Tensor(), false, torch::tensor(std::vector<int64_t>{0, 7, -1})),
                    Contains("adapter 7 does not exist"));
}
