#include "generate.hpp"

#include "decode_kernels.hpp"

#include <vhost/plugin.hpp>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <mutex>
#include <map>
#include <set>

namespace vhost::llama {

void validate(const SamplingParams& p) {
  auto bad = [](const std::string& field, const std::string& why) {
    return vhost::Error(VHOST_ERR_INVALID_ARGUMENT, field + " " + why);
  };
  if (!(p.temperature >= 0) || !std::isfinite(p.temperature)) throw bad("temperature", "must be >= 0");
  if (!(p.top_p > 0 && p.top_p <= 1)) throw bad("top_p", "must be in (0, 1]");
  if (p.top_k < 0) throw bad("top_k", "must be >= 0");
  if (!(p.repetition_penalty > 0) || !std::isfinite(p.repetition_penalty)) throw bad("repetition_penalty", "must be > 0");
  if (!(p.presence_penalty >= -2 && p.presence_penalty <= 2)) throw bad("presence_penalty", "must be in [-2, 2]");
  if (!(p.frequency_penalty >= -2 && p.frequency_penalty <= 2)) throw bad("frequency_penalty", "must be in [-2, 2]");
  if (p.max_tokens < 1) throw bad("max_tokens", "must be >= 1");
  for (const auto& s : p.stop)
    if (s.empty()) throw bad("stop", "strings must not be empty");
}

namespace {

// A uniform draw in [0, 1) from a row's own generator.
double uniform(torch::Generator& gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return static_cast<double>(at::check_generator<at::CPUGeneratorImpl>(gen)->random64() >> 11) * 0x1.0p-53;
}

// Inverse-CDF draw from unnormalised probabilities [V]: the first index whose cumulative mass
// exceeds u * total.
int64_t draw(const torch::Tensor& probs, double u) {
  auto cdf = probs.cumsum(-1).to(torch::kFloat64);  // as sample_tokens compares
  double total = cdf[-1].item<double>();
  int64_t idx = (cdf < u * total).sum().item<int64_t>();
  return std::min<int64_t>(idx, probs.size(0) - 1);
}

// A row's presence and frequency penalties: (token, presence + frequency * its count, rounded to
// float once) for each distinct generated token in [0, V).
std::vector<std::pair<int64_t, float>> count_penalties(const SamplingParams& p, const std::vector<int32_t>* generated,
                                                       int64_t V) {
  std::vector<std::pair<int64_t, float>> out;
  if ((p.presence_penalty == 0.0 && p.frequency_penalty == 0.0) || !generated || generated->empty()) return out;
  std::map<int32_t, int> count;
  for (int32_t t : *generated) ++count[t];
  for (const auto& [t, c] : count)
    if (t >= 0 && t < V) out.emplace_back(t, static_cast<float>(p.presence_penalty + p.frequency_penalty * c));
  return out;
}

bool penalised(const SamplingParams& p) {
  return p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
}
bool plain(const SamplingParams& p) { return !penalised(p) && p.top_k == 0 && p.top_p >= 1.0; }

}  // namespace

int64_t sample_token(const torch::Tensor& logits, const SamplingParams& p, const std::vector<int32_t>& seen,
                     torch::Generator& gen, const std::vector<int32_t>* generated) {
  auto row = logits.to(torch::kCPU, torch::kFloat32).clone();
  for (const auto& [t, d] : count_penalties(p, generated, row.size(0))) row.data_ptr<float>()[t] -= d;
  if (p.repetition_penalty != 1.0 && !seen.empty()) {
    std::set<int64_t> distinct(seen.begin(), seen.end());
    auto idx = torch::tensor(std::vector<int64_t>(distinct.begin(), distinct.end()), torch::kInt64);
    auto vals = row.index_select(0, idx);
    vals = torch::where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty);
    row.index_copy_(0, idx, vals);
  }
  if (p.temperature == 0) return row.argmax().item<int64_t>();
  if (plain(p)) return softmax_draw(row.data_ptr<float>(), row.size(0), static_cast<float>(1.0 / p.temperature), uniform(gen));
  row = row / p.temperature;
  if (p.top_k > 0 && p.top_k < row.size(0)) {
    auto kth = std::get<0>(row.topk(p.top_k)).min();
    row = row.masked_fill(row < kth, -std::numeric_limits<float>::infinity());
  }
  auto probs = torch::softmax(row, -1);
  if (p.top_p < 1.0) {
    auto sorted = probs.sort(-1, /*descending=*/true);
    auto sp = std::get<0>(sorted), si = std::get<1>(sorted);
    auto cum = sp.cumsum(-1);
    auto drop = (cum - sp) >= p.top_p;  // keep the smallest prefix reaching top_p
    sp = sp.masked_fill(drop, 0);
    probs = torch::zeros_like(probs).scatter(0, si, sp);
  }
  return draw(probs, uniform(gen));
}

// The first largest logit of rows `rows` of lg ([R, V], float32, contiguous, on the CPU), as
// argmax, into out[row].
static void greedy_ids(const torch::Tensor& lg, const std::vector<int64_t>& rows, std::vector<int64_t>& out) {
  const int64_t R = lg.size(0), V = lg.size(1);
  const float* x = lg.data_ptr<float>();
  if (static_cast<int64_t>(rows.size()) == R && static_cast<int64_t>(out.size()) >= R) {
    argmax_rows(x, R, V, out.data());  // rows are 0..R-1 (they are ascending and distinct)
    return;
  }
  for (auto r : rows) argmax_rows(x + r * V, 1, V, &out[static_cast<std::size_t>(r)]);
}

std::vector<int64_t> sample_tokens(const torch::Tensor& logits, const std::vector<const SamplingParams*>& params,
                                   const std::vector<const std::vector<int32_t>*>& seen,
                                   const std::vector<torch::Generator*>& gens,
                                   const std::vector<const std::vector<int32_t>*>& generated) {
  if (!logits.device().is_cpu()) return sample_tokens_on_device(logits, params, seen, gens, generated);
  const int64_t R = logits.size(0);
  std::vector<int64_t> out(static_cast<std::size_t>(R), 0);
  auto lg = logits.to(torch::kCPU, torch::kFloat32);
  // Rows with plain parameters: one argmax for all the greedy ones, softmax_draw for each sampled
  // one; the rest one by one through sample_token.
  std::vector<int64_t> greedy, sampled;
  for (int64_t r = 0; r < R; ++r) {
    const SamplingParams& p = *params[r];
    if (!plain(p)) out[r] = sample_token(lg[r], p, *seen[r], *gens[r], generated.empty() ? nullptr : generated[r]);
    else (p.temperature == 0 ? greedy : sampled).push_back(r);
  }
  auto rows = lg.contiguous();
  if (!greedy.empty()) greedy_ids(rows, greedy, out);
  if (!sampled.empty()) {
    const int64_t V = rows.size(1);
    for (auto r : sampled)
      out[r] = softmax_draw(rows.data_ptr<float>() + r * V, V, static_cast<float>(1.0 / params[r]->temperature),
                            uniform(*gens[r]));
  }
  return out;
}

std::vector<int64_t> sample_tokens_on_device(const torch::Tensor& logits, const std::vector<const SamplingParams*>& params,
                                             const std::vector<const std::vector<int32_t>*>& seen,
                                             const std::vector<torch::Generator*>& gens,
                                             const std::vector<const std::vector<int32_t>*>& generated) {
  const int64_t R = logits.size(0), V = logits.size(1);
  const auto dev = logits.device();
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  auto x = logits.to(torch::kFloat32).clone();
  // Penalties, as sample_token: presence and frequency first (count_penalties), then the
  // repetition penalty on each distinct seen token.
  std::vector<int64_t> pr, pt, rr, rt;
  std::vector<float> pd, rp;
  for (int64_t r = 0; r < R; ++r) {
    const SamplingParams& p = *params[r];
    for (const auto& [t, d] : count_penalties(p, generated.empty() ? nullptr : generated[r], V)) {
      pr.push_back(r);
      pt.push_back(t);
      pd.push_back(-d);
    }
    if (p.repetition_penalty != 1.0 && !seen[r]->empty())
      for (int64_t t : std::set<int64_t>(seen[r]->begin(), seen[r]->end())) {
        rr.push_back(r);
        rt.push_back(t);
        rp.push_back(static_cast<float>(p.repetition_penalty));
      }
  }
  auto up = [&](auto& v, const torch::TensorOptions& o) {
    return torch::from_blob(v.data(), {static_cast<int64_t>(v.size())}, o).to(dev);
  };
  if (!pr.empty()) {
    const auto ri = up(pr, i64), ti = up(pt, i64);
    x.index_put_({ri, ti}, x.index({ri, ti}) + up(pd, f32));
  }
  if (!rr.empty()) {
    const auto ri = up(rr, i64), ti = up(rt, i64), pen = up(rp, f32);
    const auto vals = x.index({ri, ti});
    x.index_put_({ri, ti}, torch::where(vals > 0, vals / pen, vals * pen));
  }
  // Per row: temperature (1 for greedy rows), top-k (0: none), top-p, the uniform draw.
  std::vector<float> temp(R), top_p(R);
  std::vector<int64_t> top_k(R);
  std::vector<double> u(R);
  std::vector<uint8_t> greedy(R);
  bool any_k = false, any_p = false, any_draw = false;
  for (int64_t r = 0; r < R; ++r) {
    const SamplingParams& p = *params[r];
    greedy[r] = p.temperature == 0;
    temp[r] = greedy[r] ? 1.0f : static_cast<float>(p.temperature);
    top_k[r] = !greedy[r] && p.top_k > 0 && p.top_k < V ? p.top_k : 0;
    top_p[r] = greedy[r] ? 1.0f : static_cast<float>(p.top_p);
    u[r] = greedy[r] ? 0.0 : uniform(*gens[r]);  // a greedy row draws nothing, as in sample_token
    any_k |= top_k[r] > 0;
    any_p |= top_p[r] < 1.0f;
    any_draw |= !greedy[r];
  }
  auto ids = x.argmax(-1);
  if (any_draw) {
    auto y = x / up(temp, f32).unsqueeze(1);
    if (any_k) {  // below the k-th largest: -inf (rows without top-k keep everything)
      const auto k = up(top_k, i64).unsqueeze(1);
      const auto sorted = std::get<0>(y.sort(-1, /*descending=*/true));
      const auto kth = torch::where(k > 0, sorted.gather(1, (k - 1).clamp_min(0)),
                                    torch::full_like(k, -std::numeric_limits<float>::infinity(), f32.device(dev)));
      y = y.masked_fill(y < kth, -std::numeric_limits<float>::infinity());
    }
    auto probs = torch::softmax(y, -1);
    if (any_p) {  // the smallest prefix of the sorted probabilities reaching top_p, the rest 0
      const auto sorted = probs.sort(-1, /*descending=*/true);
      auto sp = std::get<0>(sorted);
      const auto si = std::get<1>(sorted);
      const auto tp = up(top_p, f32).unsqueeze(1);
      sp = sp.masked_fill(((sp.cumsum(-1) - sp) >= tp) & (tp < 1.0f), 0);
      probs = torch::zeros_like(probs).scatter(1, si, sp);
    }
    const auto cdf = probs.cumsum(-1).to(torch::kFloat64);
    const auto target = torch::from_blob(u.data(), {R, 1}, torch::TensorOptions().dtype(torch::kFloat64)).to(dev) *
                        cdf.slice(1, V - 1, V);
    const auto drawn = (cdf < target).sum(-1).clamp_max(V - 1);
    ids = torch::where(up(greedy, torch::TensorOptions().dtype(torch::kBool)), ids, drawn);
  }
  ids = ids.to(torch::kCPU, torch::kInt64).contiguous();  // the one transfer back
  return std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + R);
}

std::size_t held_back(const std::string& text, const std::vector<std::string>& stops) {
  std::size_t hold = 0;
  for (const auto& s : stops)
    for (std::size_t k = std::min(s.size() - 1, text.size()); k > hold; --k)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  return hold;
}

namespace {

struct SequenceState {
  std::optional<Tokenizer::StreamDecoder> decoder;
  std::string text;     // everything decoded so far
  std::size_t sent = 0;  // bytes of `text` already handed to the callback
  bool done = false;
};

// The longest prompt, each checked: not empty, ids in the vocabulary, room left in the context.
int64_t check_prompts(const LlamaConfig& cfg, const std::vector<std::vector<int32_t>>& prompts) {
  int64_t longest = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "prompt " + std::to_string(i) + " is empty");
    for (int32_t id : prompts[i])
      if (id < 0 || id >= cfg.vocab_size)
        throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "prompt " + std::to_string(i) + " has token id " + std::to_string(id) +
                                                           " outside the vocabulary");
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompts[i].size()));
  }
  if (longest >= cfg.max_position_embeddings)
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "prompt of " + std::to_string(longest) + " tokens leaves no room in the " +
                                                       std::to_string(cfg.max_position_embeddings) + "-token context");
  return longest;
}

// The prompts left-padded to a common length [B, longest], and each row's padding [B].
std::pair<torch::Tensor, torch::Tensor> left_padded(const std::vector<std::vector<int32_t>>& prompts, int64_t longest) {
  const auto B = static_cast<int64_t>(prompts.size());
  auto tokens = torch::zeros({B, longest}, torch::kInt64);
  auto pad = torch::zeros({B}, torch::kInt64);
  auto acc = tokens.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    const auto n = static_cast<int64_t>(prompts[b].size());
    pad[b] = longest - n;
    for (int64_t t = 0; t < n; ++t) acc[b][longest - n + t] = prompts[b][t];
  }
  return {tokens, pad};
}

}  // namespace

std::vector<GenerationResult> generate(const LlamaModel& model, const Tokenizer* tokenizer,
                                       const std::vector<std::vector<int32_t>>& prompts, const SamplingParams& p,
                                       const TokenCallback& on_token) {
  validate(p);
  const auto t0 = std::chrono::steady_clock::now();
  if (!tokenizer && !p.stop.empty())
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "stop strings need a tokenizer");
  c10::InferenceMode inference;
  // Text is decoded token by token only when someone watches it (a callback, stop strings);
  // otherwise once at the end.
  const bool incremental = tokenizer && (on_token || !p.stop.empty());
  const auto& cfg = model.config();
  const int64_t B = static_cast<int64_t>(prompts.size());
  if (B == 0) return {};
  const int64_t longest = check_prompts(cfg, prompts);
  const int64_t capacity = std::min<int64_t>(cfg.max_position_embeddings, longest + p.max_tokens);
  auto [tokens, pad] = left_padded(prompts, longest);
  auto cache = KVCache::create(cfg, B, capacity, torch::TensorOptions().dtype(model.cache_dtype()).device(model.device()));

  std::vector<GenerationResult> results(B);
  std::vector<SequenceState> state;
  std::vector<torch::Generator> gens;
  std::vector<std::vector<int32_t>> seen(B);  // for the repetition penalty
  for (int64_t b = 0; b < B; ++b) {
    results[b].prompt_tokens = static_cast<int64_t>(prompts[b].size());
    state.emplace_back();
    if (incremental) state.back().decoder.emplace(*tokenizer, tokenizer->continuation_context(prompts[b]));
    uint64_t seed = p.seed ? *p.seed + static_cast<uint64_t>(b) : static_cast<uint64_t>(std::random_device{}());
    gens.push_back(at::detail::createCPUGenerator(seed));
    seen[b] = prompts[b];
  }

  auto finish = [&](int64_t b, const std::string& reason) {
    auto& st = state[b];
    if (st.done) return;
    st.done = true;
    results[b].finish_reason = reason;
    if (st.decoder) {
      if (reason != "cancelled") st.text += st.decoder->flush();
    } else if (tokenizer) {
      st.text = tokenizer->decode_after(tokenizer->continuation_context(prompts[b]), results[b].tokens);
    }
    // Cut at the first stop string; send whatever of the final text was still held back.
    std::size_t end = st.text.size();
    for (const auto& s : p.stop) end = std::min(end, st.text.find(s) == std::string::npos ? end : st.text.find(s));
    if (end < st.sent) end = st.sent;
    if (on_token && end > st.sent && reason != "cancelled") on_token(b, -1, st.text.substr(st.sent, end - st.sent));
    st.text.resize(end);
    results[b].text = st.text;
  };

  const bool any_pad = pad.gt(0).any().item<bool>();
  const torch::Tensor step_pad = any_pad ? pad : torch::Tensor();
  const torch::Tensor adapters = p.adapter >= 0 ? torch::full({B}, p.adapter, torch::kInt64) : torch::Tensor();
  auto logits = model.forward(tokens, &cache, step_pad, /*last_only=*/true, adapters).select(1, 0);  // [B, V]
  const bool plain_greedy = p.temperature == 0 && !penalised(p);
  std::vector<int64_t> next_ids(B), all_rows(B);
  for (int64_t b = 0; b < B; ++b) all_rows[b] = b;
  for (int64_t step = 0; step < p.max_tokens; ++step) {
    // On the CPU the rows are read in place; on a device they stay there (argmax or
    // sample_tokens_on_device) and only the B picked ids come back.
    const bool on_host = logits.device().is_cpu();
    auto lg = on_host ? logits.to(torch::kFloat32).contiguous() : logits;
    if (plain_greedy && on_host) {
      greedy_ids(lg, all_rows, next_ids);
    } else if (plain_greedy) {
      auto ids = lg.argmax(-1).to(torch::kCPU, torch::kInt64).contiguous();
      std::copy(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + B, next_ids.begin());
    } else {  // the rows still going, each with its generator and what it has seen
      std::vector<int64_t> rows;
      std::vector<const std::vector<int32_t>*> ss, gen_so_far;
      std::vector<torch::Generator*> gs;
      for (int64_t b = 0; b < B; ++b)
        if (state[b].done) next_ids[b] = 0;
        else rows.push_back(b), ss.push_back(&seen[b]), gs.push_back(&gens[b]), gen_so_far.push_back(&results[b].tokens);
      std::vector<const SamplingParams*> ps(rows.size(), &p);
      auto picks = sample_tokens(lg.index_select(0, torch::tensor(rows, torch::kInt64).to(lg.device())), ps, ss, gs, gen_so_far);
      for (std::size_t i = 0; i < rows.size(); ++i) next_ids[rows[i]] = picks[i];
    }
    // Account the new tokens; stop what has stopped.
    for (int64_t b = 0; b < B; ++b) {
      auto& st = state[b];
      if (st.done) continue;
      int32_t tok = static_cast<int32_t>(next_ids[b]);
      if (results[b].first_token_seconds < 0)
        results[b].first_token_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (tok == cfg.eos_token_id && !p.ignore_eos) {
        finish(b, "stop");
        continue;
      }
      results[b].tokens.push_back(tok);
      if (p.repetition_penalty != 1.0) seen[b].push_back(tok);
      if (!st.decoder) {
        if (static_cast<int64_t>(results[b].tokens.size()) >= p.max_tokens || cache.length + 1 > capacity)
          finish(b, "length");
        continue;
      }
      st.text += st.decoder->push(tok);
      bool stopped = false;
      for (const auto& s : p.stop)
        if (st.text.find(s, st.sent > s.size() ? st.sent - s.size() : 0) != std::string::npos) stopped = true;
      if (stopped) {
        finish(b, "stop");
        continue;
      }
      std::size_t safe = st.text.size() - held_back(st.text, p.stop);
      if (on_token && safe > st.sent) {
        bool go_on = on_token(b, tok, st.text.substr(st.sent, safe - st.sent));
        st.sent = safe;
        if (!go_on) {
          finish(b, "cancelled");
          continue;
        }
      }
      if (static_cast<int64_t>(results[b].tokens.size()) >= p.max_tokens || cache.length + 1 > capacity)
        finish(b, "length");
    }
    if (std::all_of(state.begin(), state.end(), [](const SequenceState& s) { return s.done; }) || cache.length >= capacity) break;
    for (int64_t b = 0; b < B; ++b)
      if (state[b].done) next_ids[b] = 0;  // finished rows still run along; their input is unused
    auto next = torch::from_blob(next_ids.data(), {B, 1}, torch::kInt64).to(model.device());
    logits = model.forward(next, &cache, step_pad, false, adapters).select(1, 0);
  }
  for (int64_t b = 0; b < B; ++b) finish(b, "length");
  return results;
}

}  // namespace vhost::llama
