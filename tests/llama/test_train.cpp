// Training: the sharded-unit autograd against plain autograd through the inference model,
// gradient checkpointing, AdamW against torch::optim::AdamW, the schedule, labels, resuming.
#include "model.hpp"
#include "safetensors.hpp"
#include "train.hpp"
#include "train_fixtures.hpp"

#include <vhost/plugin.hpp>
#include <vhost/torch/compat.hpp>

#undef CHECK
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using namespace vhost::llama;
using vhost::llama::testing::random_batch;
using vhost::llama::testing::small;
using Catch::Matchers::Contains;
using vhost::json;

namespace {

fs::path tmpdir(const std::string& name) { return testing::fresh_dir("train", name); }

// A dataset of `n` random sequences (lengths 6..30) whose second half is "assistant" text.
fs::path make_data(const fs::path& dir, int n, int64_t vocab, uint64_t seed = 1) {
  vhost::tokens::Writer w(dir / "train");
  auto gen = at::detail::createCPUGenerator(seed);
  for (int i = 0; i < n; ++i) {
    int64_t len = 6 + torch::randint(25, {1}, gen, torch::kInt64).item<int64_t>();
    auto t = torch::randint(3, vocab, {len}, gen, torch::kInt64);
    std::vector<int32_t> ids(len);
    std::vector<uint8_t> labels(len);
    for (int64_t j = 0; j < len; ++j) {
      ids[j] = static_cast<int32_t>(t[j].item<int64_t>());
      labels[j] = j >= len / 2;
    }
    ids[0] = 1;
    labels[0] = 0;
    w.add(ids, labels);
  }
  w.finish({{"vocab_size", vocab}, {"max_length", 64}});
  return dir;
}

}  // namespace

TEST_CASE("the trainer's forward equals the inference model's", "[train]") {
  for (bool tied : {false, true}) {
    auto m = LlamaModel::random(small(tied), 3);
    Trainer t(m, {}, true);
    auto ids = torch::randint(97, {2, 9}, torch::kInt64);
    auto a = t.logits(ids), b = m.forward(ids);
    CHECK(torch::allclose(a, b, 1e-4, 1e-5));
  }
}

TEST_CASE("unit-wise autograd gives the gradients of plain autograd", "[train]") {
  for (bool tied : {false, true}) {
    auto cfg = small(tied);
    auto init = LlamaModel::random(cfg, 5);
    Batch b = random_batch(2, 12, cfg.vocab_size, 9);
    // Reference: the inference model built on leaf tensors that require grad.
    std::vector<std::pair<std::string, torch::Tensor>> leaves;
    for (auto& [n, w] : init.named_tensors()) leaves.emplace_back(n, w.clone().requires_grad_(true));
    LlamaModel ref(cfg, leaves, "leaves", torch::kCPU, torch::kFloat32);
    auto logits = ref.forward(b.ids);
    auto loss = torch::nn::functional::cross_entropy(
        logits.reshape({-1, cfg.vocab_size}), b.targets.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
    loss.backward();
    for (bool ckpt : {true, false}) {
      Trainer t(init, {}, ckpt);
      double l = t.forward_backward(b, 1.0);
      CHECK(l == Approx(loss.item<double>()).epsilon(1e-5));
      // The trainer's units: embedding, layers (norm, q, k, v, o, norm, gate, up, down), norm, head.
      auto g = t.flat_grad();
      std::map<std::string, torch::Tensor> rg;
      for (auto& [n, w] : leaves) rg[n] = w.grad();
      int64_t off = 0;
      auto take = [&](const std::string& n) {
        auto r = rg.at(n).reshape({-1});
        auto mine = g.narrow(0, off, r.numel());
        off += r.numel();
        INFO(n << " tied=" << tied << " ckpt=" << ckpt);
        CHECK(torch::allclose(mine, r, 1e-4, 1e-6));
      };
      take("model.embed_tokens.weight");
      for (int i = 0; i < cfg.num_hidden_layers; ++i) {
        std::string p = "model.layers." + std::to_string(i) + ".";
        for (auto s : {"input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                       "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
          take(p + s + ".weight");
      }
      take("model.norm.weight");
      if (!tied) take("lm_head.weight");
      CHECK(off == g.numel());
    }
  }
}

TEST_CASE("gradient checkpointing changes no gradient", "[train]") {
  auto init = LlamaModel::random(small(), 11);
  Batch b = random_batch(3, 20, 97, 4);
  Trainer with(init, {}, true), without(init, {}, false);
  with.forward_backward(b, 7.0);
  without.forward_backward(b, 7.0);
  CHECK(torch::equal(with.flat_grad(), without.flat_grad()));
}

TEST_CASE("AdamW matches torch::optim::AdamW, without decay on norms", "[train]") {
  auto init = LlamaModel::random(small(), 2);
  Trainer t(init, {}, true);
  std::vector<torch::Tensor> decay, no_decay;
  std::map<std::string, torch::Tensor> ref;
  for (auto& [n, w] : init.named_tensors()) {
    ref[n] = w.clone().requires_grad_(true);
    (w.dim() >= 2 ? decay : no_decay).push_back(ref[n]);
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(1e-2).weight_decay(0.1)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(1e-2).weight_decay(0.1)));
  groups[1].options().set_lr(1e-2);
  static_cast<torch::optim::AdamWOptions&>(groups[1].options()).weight_decay(0);
  torch::optim::AdamW opt(groups);
  // The same gradients for both (the trainer's), so only the update rules are compared.
  std::vector<std::string> order;
  for (auto& [n, w] : t.full_parameters()) order.push_back(n);
  for (int step = 0; step < 3; ++step) {
    Batch b = random_batch(2, 10, 97, 100 + step);
    t.forward_backward(b, 5.0);
    auto g = t.flat_grad();
    int64_t off = 0;
    for (auto& n : order) {
      ref[n].mutable_grad() = g.narrow(0, off, ref[n].numel()).view(ref[n].sizes()).clone();
      off += ref[n].numel();
    }
    t.adamw_step(1e-2, 0.9, 0.999, 1e-8, 0.1);
    t.zero_grad();
    opt.step();
  }
  for (auto& [n, w] : t.full_parameters()) {
    INFO(n);
    CHECK(torch::allclose(w, ref[n].detach(), 1e-5, 1e-6));
  }
}

TEST_CASE("the learning rate warms up linearly, then follows a cosine to zero", "[train]") {
  TrainConfig c;
  c.lr = 2e-5;
  CHECK(learning_rate(c, 0, 100, 3) == 0.0);
  CHECK(learning_rate(c, 1, 100, 3) == Approx(2e-5 / 3));
  CHECK(learning_rate(c, 3, 100, 3) == Approx(2e-5));
  CHECK(learning_rate(c, 3 + 97 / 2, 100, 3) == Approx(1e-5).epsilon(0.02));
  CHECK(learning_rate(c, 100, 100, 3) == Approx(0.0).margin(1e-15));
  c.schedule = "linear";
  CHECK(learning_rate(c, 50, 100, 0) == Approx(1e-5));
  c.schedule = "constant";
  CHECK(learning_rate(c, 99, 100, 10) == 2e-5);
}

TEST_CASE("batches are right-padded and targets are the next trained token", "[train]") {
  auto dir = tmpdir("batch");
  {
    vhost::tokens::Writer w(dir / "d");
    w.add({1, 10, 11, 12, 2}, {0, 0, 1, 1, 1});
    w.add({1, 20, 21}, {0, 1, 0});
    w.finish({});
  }
  vhost::tokens::Reader r(dir / "d");
  Batch b = make_batch(r, {0, 1}, 0);
  CHECK(b.ids.sizes() == torch::IntArrayRef({2, 5}));
  CHECK(b.tokens == 8);
  CHECK(b.trained == 4);
  std::vector<int64_t> t0(b.targets[0].data_ptr<int64_t>(), b.targets[0].data_ptr<int64_t>() + 5);
  std::vector<int64_t> t1(b.targets[1].data_ptr<int64_t>(), b.targets[1].data_ptr<int64_t>() + 5);
  CHECK(t0 == std::vector<int64_t>{-100, 11, 12, 2, -100});
  CHECK(t1 == std::vector<int64_t>{20, -100, -100, -100, -100});
  CHECK(make_batch(r, {1}, 64).ids.size(1) == 64);
}

TEST_CASE("training options are checked field by field", "[train][bad-input]") {
  json ok = {{"data", "d"}, {"out", "o"}};
  CHECK_NOTHROW(TrainConfig::from_json(ok));
  auto err = [&](json patch) {
    json j = ok;
    j.update(patch);
    try {
      TrainConfig::from_json(j);
    } catch (const vhost::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(err({{"lr", "fast"}}), Contains("lr: expected a number"));
  CHECK_THAT(err({{"batch_size", 0}}), Contains("batch_size: 0 is outside"));
  CHECK_THAT(err({{"padding", "left"}}), Contains("padding: \"left\" is not one of longest, max_length"));
  CHECK_THAT(err({{"gradient_checkpointing", 1}}), Contains("gradient_checkpointing: expected true or false"));
  CHECK_THAT(err({{"data", ""}}), Contains("data: required"));
}

namespace {

struct Run {
  std::vector<double> losses;
  json result;
  std::string attention;  // the start event's attention kernel
};

Run run(const LlamaModel& init, TrainConfig c, int stop_after = -1) {
  Run r;
  r.result = train(init, c, {}, [&](const json& e) {
    if (e["event"] == "start") r.attention = e.value("attention", std::string("(not named)"));
    if (e["event"] == "step") {
      r.losses.push_back(e["loss"].get<double>());
      if (static_cast<int>(r.losses.size()) == stop_after) return false;
    }
    return true;
  });
  return r;
}

TrainConfig base(const fs::path& data, const fs::path& out) {
  TrainConfig c;
  c.data = data;
  c.out = out;
  c.epochs = 2;
  c.batch_size = 4;
  c.micro_batch_size = 2;
  c.lr = 3e-3;
  c.warmup_steps = 2;
  return c;
}

}  // namespace

TEST_CASE("training lowers the loss and writes a loadable model", "[train]") {
  auto dir = tmpdir("learn");
  make_data(dir / "data", 16, 97);
  auto init = LlamaModel::random(small(), 7);
  auto c = base(dir / "data", dir / "out");
  c.epochs = 6;
  auto r = run(init, c);
  REQUIRE(r.losses.size() == 24);
  CHECK(r.losses.back() < r.losses.front() - 0.3);
  CHECK(r.result["interrupted"] == false);
  // The start event names the attention kernel the layers run: the SDPA dispatcher's choice on
  // libtorch 2.x (on this CPU float32, causal, with gradients), the math path on 1.13.
#if VHOST_TORCH_AT_LEAST(2, 0)
  CHECK_THAT(r.attention, Catch::Matchers::Matches("math|flash_attention|efficient_attention|cudnn_attention"));
#else
  CHECK_THAT(r.attention, Catch::Matchers::StartsWith("math (libtorch 1.13"));
#endif
  auto m = LlamaModel::load(r.result["model"].get<std::string>());
  CHECK(m.config().vocab_size == 97);
  CHECK(fs::exists(dir / "out" / "checkpoints" / "step-00000024" / "optimizer.safetensors"));
}

TEST_CASE("a stopped run resumes to the same losses and weights", "[train]") {
  auto dir = tmpdir("resume");
  make_data(dir / "data", 16, 97);
  auto init = LlamaModel::random(small(), 8);
  auto full = run(init, base(dir / "data", dir / "full"));
  REQUIRE(full.losses.size() == 8);

  auto c = base(dir / "data", dir / "cut");
  c.save_every = 2;
  auto first = run(init, c, 3);  // asks to stop after step 3: checkpoint at 3
  CHECK(first.result["interrupted"] == true);
  CHECK(first.result["steps"] == 3);
  // A torn checkpoint (killed mid-write) and a newer one without its state file: both ignored.
  fs::create_directories(dir / "cut" / "checkpoints" / "step-00000007.tmp");
  fs::create_directories(dir / "cut" / "checkpoints" / "step-00000006");
  auto second = run(init, c);
  CHECK(second.result["resumed_from"].get<std::string>().find("step-00000003") != std::string::npos);
  std::vector<double> joined = first.losses;
  joined.insert(joined.end(), second.losses.begin(), second.losses.end());
  REQUIRE(joined.size() == full.losses.size());
  for (std::size_t i = 0; i < joined.size(); ++i) CHECK(joined[i] == full.losses[i]);
  auto a = LlamaModel::load(dir / "full" / "model"), b = LlamaModel::load(dir / "cut" / "model");
  for (std::size_t i = 0; i < a.named_tensors().size(); ++i)
    CHECK(torch::equal(a.named_tensors()[i].second, b.named_tensors()[i].second));
  // keep_last = 2: only the two newest complete checkpoints stay.
  int kept = 0;
  for (auto& e : fs::directory_iterator(dir / "cut" / "checkpoints"))
    kept += fs::exists(e.path() / "trainer_state.json");
  CHECK(kept == 2);
}

TEST_CASE("a damaged newest checkpoint falls back to the one before", "[train]") {
  auto dir = tmpdir("damaged");
  make_data(dir / "data", 8, 97);
  auto init = LlamaModel::random(small(), 8);
  auto c = base(dir / "data", dir / "out");
  c.epochs = 3;
  c.save_every = 2;
  c.keep_last = 5;
  run(init, c, 4);  // checkpoints at 2 and 4
  fs::resize_file(dir / "out" / "checkpoints" / "step-00000004" / "model.safetensors", 100);
  auto r = run(init, c);
  CHECK_THAT(r.result["resumed_from"].get<std::string>(), Contains("step-00000002"));
  CHECK(r.losses.size() == 4);
}

TEST_CASE("resuming with other settings is refused, naming the setting", "[train][bad-input]") {
  auto dir = tmpdir("mismatch");
  make_data(dir / "data", 8, 97);
  auto init = LlamaModel::random(small(), 8);
  auto c = base(dir / "data", dir / "out");
  run(init, c, 1);
  c.batch_size = 8;
  c.micro_batch_size = 4;
  try {
    run(init, c);
    FAIL("expected an error");
  } catch (const vhost::Error& e) {
    CHECK_THAT(std::string(e.what()), Contains("batch_size") && Contains("was made with 4"));
  }
}

TEST_CASE("bad data and impossible batches are clear errors", "[train][bad-input]") {
  auto dir = tmpdir("bad");
  auto init = LlamaModel::random(small(), 8);
  auto err = [&](TrainConfig c) {
    try {
      run(init, c);
    } catch (const vhost::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(err(base(dir / "missing", dir / "o")), Contains("is not a prepared dataset"));
  make_data(dir / "big", 8, 500);  // a vocabulary larger than the model's
  CHECK_THAT(err(base(dir / "big", dir / "o")), Contains("vocabulary of 500"));
  make_data(dir / "ok", 8, 97);
  auto c = base(dir / "ok", dir / "o");
  c.micro_batch_size = 3;
  CHECK_THAT(err(c), Contains("batch_size: 4 is not a multiple of micro_batch_size (3)"));
  c = base(dir / "ok", dir / "o");
  c.batch_size = 16;
  c.micro_batch_size = 4;
  CHECK_THAT(err(c), Contains("exceeds the 8 training sequences"));
  fs::resize_file(dir / "ok" / "train" / "labels.bin", 3);
  CHECK_THAT(err(base(dir / "ok", dir / "o")), Contains("labels.bin"));
}

TEST_CASE("a NaN loss stops training and writes no checkpoint", "[train][bad-input]") {
  auto dir = tmpdir("nan");
  make_data(dir / "data", 8, 97);
  auto cfg = small();
  auto good = LlamaModel::random(cfg, 8);
  std::vector<std::pair<std::string, torch::Tensor>> w;
  for (auto& [n, t] : good.named_tensors()) w.emplace_back(n, t.clone());
  w[0].second.fill_(std::nan(""));
  LlamaModel bad(cfg, w, "nan", torch::kCPU, torch::kFloat32);
  try {
    run(bad, base(dir / "data", dir / "out"));
    FAIL("expected an error");
  } catch (const vhost::Error& e) {
    CHECK_THAT(std::string(e.what()), Contains("loss is NaN at step 1") && Contains("no checkpoint was written"));
  }
  CHECK(!fs::exists(dir / "out" / "checkpoints" / "step-00000001"));
}

TEST_CASE("bfloat16 compute keeps float32 master weights and close gradients", "[train]") {
  auto init = LlamaModel::random(small(), 12);
  Batch b = random_batch(2, 16, 97, 3);
  Trainer f32(init, {}, true);
  TrainEnv env;
  env.compute_dtype = torch::kBFloat16;
  Trainer bf16(init, env, true);
  double l32 = f32.forward_backward(b, 1.0), l16 = bf16.forward_backward(b, 1.0);
  CHECK(l16 == Approx(l32).epsilon(0.02));
  auto g32 = f32.flat_grad(), g16 = bf16.flat_grad();
  CHECK(g16.scalar_type() == torch::kFloat32);
  // bf16 keeps 8 bits of mantissa: gradients agree in direction, not digits.
  double cos = (g32 * g16).sum().item<double>() / (g32.norm().item<double>() * g16.norm().item<double>());
  CHECK(cos > 0.99);
  bf16.adamw_step(1e-3, 0.9, 0.999, 1e-8, 0.0);
  for (auto& [n, w] : bf16.full_parameters()) CHECK(w.scalar_type() == torch::kFloat32);
}
