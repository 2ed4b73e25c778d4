// Continuous batching: concurrent requests through the engine give what each gives alone.
#include "engine.hpp"
#include "model.hpp"
#include "score.hpp"

#include <vhost/plugin.hpp>

#undef CHECK
#include <catch2/catch.hpp>

#include <atomic>
#include <set>
#include <thread>

using namespace vhost::llama;

namespace {
LlamaConfig engine_cfg() {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.vocab_size = 97;
  c.max_position_embeddings = 40;
  return c;
}
std::vector<int32_t> prompt_of(int64_t n, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto t = torch::randint(3, 97, {n}, gen, torch::kInt64);
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(static_cast<int32_t>(t[i].item<int64_t>()));
  return out;
}
}  // namespace

TEST_CASE("the engine's concurrent sequences equal generating each alone", "[engine]") {
  torch::set_num_threads(2);  // so that a batch of 8 rows and more runs as row shards
  auto model = LlamaModel::random(engine_cfg(), 21);
  // 3 rows: one forward a step; 12: two row shards a step (see LlamaModel::forward).
  const int64_t max_batch = GENERATE(3, 12);
  CHECK(model.decode_shards(max_batch) == (max_batch == 12 ? 2 : 1));
  const int N = max_batch == 12 ? 20 : 7;
  SamplingParams p;
  p.temperature = 0;
  p.ignore_eos = true;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < N; ++i) prompts.push_back(prompt_of(3 + (i * 5) % 17, 100 + i));
  std::vector<std::vector<int32_t>> alone;
  std::vector<std::string> reasons;
  for (int i = 0; i < N; ++i) {
    SamplingParams q = p;
    q.max_tokens = 8 + (i % 7) * 6;  // the longest run past the 40-position context: "length"
    auto r = generate(model, nullptr, {prompts[i]}, q)[0];
    alone.push_back(r.tokens);
    reasons.push_back(r.finish_reason);
  }
  Engine engine(model, nullptr, max_batch, 0, 16);
  std::vector<GenerationResult> got(N);
  std::vector<std::thread> threads;
  for (int i = 0; i < N; ++i)
    threads.emplace_back([&, i] {
      SamplingParams q = p;
      q.max_tokens = 8 + (i % 7) * 6;
      got[i] = engine.generate(prompts[i], q);
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < N; ++i) {
    INFO("sequence " << i << " prompt " << prompts[i].size());
    CHECK(got[i].tokens == alone[i]);
    CHECK(got[i].finish_reason == reasons[i]);
  }
  auto s = engine.stats();
  CHECK(s.mean_batch > (max_batch == 12 ? 6 : 1.5));  // they really ran together
  CHECK(s.active == 0);
}

TEST_CASE("a long prompt joins a running batch beside its step, shifting the batch right", "[engine]") {
  // A small model's batch of 8+ rows steps in row shards; a waiting prompt is then prefilled on
  // another thread during the step. This one is longer than the batch's context so far.
  torch::set_num_threads(2);
  auto model = LlamaModel::random(engine_cfg(), 23);
  REQUIRE(model.decode_shards(9) == 2);
  SamplingParams p;
  p.temperature = 0;
  p.ignore_eos = true;
  p.max_tokens = 12;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 9; ++i) prompts.push_back(prompt_of(3, 300 + i));
  prompts.push_back(prompt_of(20, 400));
  std::vector<std::vector<int32_t>> alone;
  for (const auto& pr : prompts) alone.push_back(generate(model, nullptr, {pr}, p)[0].tokens);

  Engine engine(model, nullptr, 12, 0, 16);
  std::vector<GenerationResult> got(10);
  std::thread late;
  auto wait_queued = [&](int64_t n) {
    for (int i = 0; i < 5000 && engine.stats().queued < n; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  };
  std::atomic<int> calls{0};
  // Sequence 0's callback runs on the engine's thread: it holds the engine until the other 8
  // are queued (so all 9 start together), and at its third token sends the long prompt.
  std::thread first([&] {
    got[0] = engine.generate(prompts[0], p, [&](std::size_t, int32_t, const std::string&) {
      ++calls;
      if (calls == 1) wait_queued(8);
      if (calls == 3) {
        late = std::thread([&] { got[9] = engine.generate(prompts[9], p); });
        wait_queued(1);
      }
      return true;
    });
  });
  while (calls == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::vector<std::thread> others;
  for (int i = 1; i < 9; ++i) others.emplace_back([&, i] { got[i] = engine.generate(prompts[i], p); });
  first.join();
  for (auto& t : others) t.join();
  late.join();
  for (int i = 0; i < 10; ++i) {
    INFO("sequence " << i);
    CHECK(got[i].tokens == alone[i]);
  }
}

TEST_CASE("a full queue is refused with BUSY, and a cancelled client frees its row", "[engine][bad-input]") {
  auto model = LlamaModel::random(engine_cfg(), 22);
  Engine engine(model, nullptr, 1, 0, 0);
  SamplingParams p;
  p.temperature = 0;
  p.ignore_eos = true;
  p.max_tokens = 30;
  std::atomic<bool> started{false}, release{false};
  std::thread slow([&] {
    engine.generate(prompt_of(4, 1), p, [&](std::size_t, int32_t, const std::string&) {
      started = true;
      while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      return false;  // cancel
    });
  });
  while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // it holds the only row
  try {
    engine.generate(prompt_of(4, 2), p);
    FAIL("expected BUSY");
  } catch (const vhost::Error& e) {
    CHECK(e.code() == VHOST_ERR_BUSY);
    CHECK_THAT(std::string(e.what()), Catch::Matchers::Contains("overloaded"));
  }
  release = true;
  slow.join();
  CHECK(engine.generate(prompt_of(4, 3), p).tokens.size() == 30);
  SamplingParams bad = p;
  bad.top_p = 0;
  CHECK_THROWS_WITH(engine.generate(prompt_of(4, 3), bad), Catch::Matchers::Contains("top_p"));
  CHECK_THROWS_WITH(engine.generate(prompt_of(45, 3), p), Catch::Matchers::Contains("leaves no room"));
}

TEST_CASE("batched sampling draws what each row draws alone", "[engine][generate]") {
  auto logits = torch::randn({6, 97}) * 3;
  SamplingParams greedy, hot, cold, topk;
  greedy.temperature = 0;
  hot.temperature = 1.3;
  cold.temperature = 0.4;
  topk.temperature = 1.0;
  topk.top_k = 5;  // not plain: sampled one by one
  std::vector<const SamplingParams*> ps = {&hot, &greedy, &cold, &topk, &hot, &cold};
  std::vector<int32_t> none;
  std::vector<const std::vector<int32_t>*> seen(6, &none);
  for (uint64_t trial = 0; trial < 20; ++trial) {
    std::vector<torch::Generator> a, b;
    std::vector<torch::Generator*> pa;
    for (uint64_t r = 0; r < 6; ++r) {
      a.push_back(at::detail::createCPUGenerator(trial * 10 + r));
      b.push_back(at::detail::createCPUGenerator(trial * 10 + r));
    }
    for (auto& g : a) pa.push_back(&g);
    auto batched = sample_tokens(logits, ps, seen, pa);
    for (int64_t r = 0; r < 6; ++r) CHECK(batched[r] == sample_token(logits[r], *ps[r], none, b[r]));
  }
}

TEST_CASE("sampling on the logits' device draws what sample_token draws, one transfer of ids", "[engine][generate]") {
  // sample_tokens_on_device (every row in tensor operations, as a GPU runs them) on CPU tensors
  // against sample_token row by row with the same generators: each kind of row, penalties
  // included. Rows without top-k / top-p / penalties take softmax_draw in sample_token (its own
  // exp), so they may differ where a draw lands on a boundary: at most 2 of their 240 draws.
  const int64_t V = 211;
  auto logits = torch::randn({12, V}) * 2.5;
  std::vector<SamplingParams> p(12);
  p[0].temperature = 0;
  p[1].temperature = 0, p[1].repetition_penalty = 1.3;
  p[2].temperature = 0, p[2].presence_penalty = 1.5, p[2].frequency_penalty = 0.7;
  p[3].temperature = 1.1;  // plain
  p[4].temperature = 0.6;  // plain
  p[5].temperature = 0.9, p[5].top_k = 7;
  p[6].temperature = 1.2, p[6].top_p = 0.8;
  p[7].temperature = 0.8, p[7].top_k = 20, p[7].top_p = 0.5;
  p[8].temperature = 1.0, p[8].repetition_penalty = 0.8, p[8].top_p = 0.95;
  p[9].temperature = 0.7, p[9].frequency_penalty = -1.0, p[9].top_k = 3;
  p[10].temperature = 1.5, p[10].top_p = 0.3;
  p[11].temperature = 0;
  std::vector<int32_t> hist = {3, 9, 9, 40, 77, 77, 77, 150, 3}, none;
  std::vector<const SamplingParams*> ps;
  std::vector<const std::vector<int32_t>*> seen, generated;
  for (int64_t r = 0; r < 12; ++r) {
    ps.push_back(&p[r]);
    seen.push_back(r % 2 ? &hist : &none);
    generated.push_back(r % 3 ? &hist : &none);
  }
  // Make the penalised greedy rows' winners penalised tokens, so the penalties decide them.
  logits[1][77] = 30;
  logits[2][9] = 30;
  int plain_diff = 0, other_diff = 0;
  for (uint64_t trial = 0; trial < 120; ++trial) {
    std::vector<torch::Generator> a, b;
    std::vector<torch::Generator*> pa;
    for (uint64_t r = 0; r < 12; ++r) {
      a.push_back(at::detail::createCPUGenerator(trial * 100 + r));
      b.push_back(at::detail::createCPUGenerator(trial * 100 + r));
    }
    for (auto& g : a) pa.push_back(&g);
    auto dev = sample_tokens_on_device(logits, ps, seen, pa, generated);
    REQUIRE(dev.size() == 12);
    for (int64_t r = 0; r < 12; ++r) {
      const auto host = sample_token(logits[r], p[r], *seen[r], b[r], generated[r]);
      if (dev[r] != host) ++(r == 3 || r == 4 ? plain_diff : other_diff);
      if (p[r].temperature == 0) CHECK(dev[r] == host);
      CHECK(dev[r] >= 0);
      CHECK(dev[r] < V);
    }
  }
  CHECK(other_diff == 0);
  CHECK(plain_diff <= 2);
  // The penalties decided the greedy rows: not the boosted tokens.
  std::vector<torch::Generator> g1(1, at::detail::createCPUGenerator(1));
  std::vector<torch::Generator*> pg = {&g1[0]};
  CHECK(sample_tokens_on_device(logits.slice(0, 1, 2), {&p[1]}, {&hist}, pg, {&none})[0] == 77);  // 30 / 1.3 still leads
  SamplingParams strong = p[1];
  strong.repetition_penalty = 100;
  CHECK(sample_tokens_on_device(logits.slice(0, 1, 2), {&strong}, {&hist}, pg, {&none})[0] != 77);
}

TEST_CASE("presence and frequency penalties count the generated tokens only, as OpenAI's", "[engine][generate]") {
  // Token 3 leads token 5 by 1.5: a presence penalty of 2 once it was generated hands the lead
  // to 5; a frequency penalty of 0.5 needs it generated 4 times (2.0 > 1.5), not 3 (1.5).
  auto logits = torch::zeros({10});
  logits[3] = 2.5;
  logits[5] = 1.0;
  auto gen = at::detail::createCPUGenerator(1);
  SamplingParams p;
  p.temperature = 0;
  std::vector<int32_t> prompt = {3, 3, 3, 3, 3}, once = {3}, thrice = {3, 7, 3, 3}, four = {3, 3, 3, 3};
  CHECK(sample_token(logits, p, prompt, gen, &once) == 3);  // no penalty set
  p.presence_penalty = 2;
  CHECK(sample_token(logits, p, prompt, gen, nullptr) == 3);  // the prompt's tokens do not count
  CHECK(sample_token(logits, p, prompt, gen, &once) == 5);
  p.presence_penalty = 0;
  p.frequency_penalty = 0.5;
  CHECK(sample_token(logits, p, prompt, gen, &thrice) == 3);
  CHECK(sample_token(logits, p, prompt, gen, &four) == 5);
  p.frequency_penalty = -2;  // negative: encourages repetition
  logits[5] = 4.0;
  CHECK(sample_token(logits, p, prompt, gen, &once) == 3);
  p.frequency_penalty = 2.5;
  CHECK_THROWS_WITH(validate(p), Catch::Matchers::Contains("frequency_penalty must be in [-2, 2]"));
}

TEST_CASE("penalised greedy decoding is the same in the engine and in generate, and repeats less", "[engine][generate]") {
  auto model = LlamaModel::random(engine_cfg(), 5);
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 30;
  p.ignore_eos = true;
  auto prompt = prompt_of(4, 3);
  auto plain = generate(model, nullptr, {prompt}, p)[0].tokens;
  p.frequency_penalty = 2;
  p.presence_penalty = 1;
  auto alone = generate(model, nullptr, {prompt}, p)[0].tokens;
  Engine engine(model, nullptr, 4, 0, 4);
  CHECK(engine.generate(prompt, p).tokens == alone);
  auto distinct = [](const std::vector<int32_t>& t) { return std::set<int32_t>(t.begin(), t.end()).size(); };
  CHECK(alone != plain);
  CHECK(distinct(alone) > distinct(plain));
}

TEST_CASE("streamed logprobs: each token's scores come before it, equal to scoring the sequence", "[engine][logprobs]") {
  auto model = LlamaModel::random(engine_cfg(), 9);
  Engine engine(model, nullptr, 3, 0, 4);
  SamplingParams p;
  p.max_tokens = 8;
  p.ignore_eos = true;
  p.stream_logprobs = 2;
  p.temperature = GENERATE(0.0, 1.3);  // scores are the model's own distribution, before temperature
  p.seed = 4;
  std::vector<std::vector<int32_t>> prompts = {prompt_of(3, 1), prompt_of(7, 2), prompt_of(5, 3)};
  std::vector<nlohmann::json> events(prompts.size(), nlohmann::json::array());
  std::vector<GenerationResult> results(prompts.size());
  std::vector<std::thread> threads;
  std::atomic<int> out_of_order{0};
  for (std::size_t i = 0; i < prompts.size(); ++i)
    threads.emplace_back([&, i] {
      std::size_t scored = 0, tokens = 0;
      results[i] = engine.generate(prompts[i], p, [&](std::size_t, int32_t tok, const std::string& text) {
        if (tok == kScoresToken) {
          for (auto& e : nlohmann::json::parse(text)) events[i].push_back(e), ++scored;
        } else if (++tokens > scored) {
          ++out_of_order;  // a token before its scores
        }
        return true;
      });
    });
  for (auto& t : threads) t.join();
  CHECK(out_of_order == 0);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto& toks = results[i].tokens;
    REQUIRE(events[i].size() == toks.size());
    std::vector<int32_t> all(prompts[i]);
    all.insert(all.end(), toks.begin(), toks.end());
    auto ref = score(model, nullptr, all, prompts[i].size(), 2);
    for (std::size_t j = 0; j < toks.size(); ++j) {
      CHECK(events[i][j]["id"] == toks[j]);
      CHECK(events[i][j]["logprob"].get<double>() == Approx(*ref[j].logprob).margin(1e-4));
      REQUIRE(events[i][j]["top"].size() == 2);
      CHECK(events[i][j]["top"][0][0] == ref[j].top[0].id);
      CHECK(events[i][j]["top"][0][2].get<double>() == Approx(ref[j].top[0].logprob).margin(1e-4));
    }
  }
}
