#include "engine.hpp"

#include "score.hpp"

#include <vhost/plugin.hpp>

#include <algorithm>
#include <chrono>
#include <random>

namespace vhost::llama {

struct Engine::Request {
  std::vector<int32_t> prompt;
  SamplingParams p;
  TokenCallback cb;
  GenerationResult result;
  std::optional<Tokenizer::StreamDecoder> decoder;
  std::string text;
  std::size_t sent = 0;
  std::vector<int32_t> seen;
  torch::Tensor step_lsm;           // streamed logprobs: this step's log-softmax, until emit
  nlohmann::json pending = nlohmann::json::array();  // ... and the entries not sent yet
  torch::Generator gen;
  bool done = false;
  std::exception_ptr error;
  std::condition_variable cv;
  std::chrono::steady_clock::time_point queued_at = std::chrono::steady_clock::now();
  void admitted() {
    result.queue_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - queued_at).count();
  }
};

Engine::Engine(const LlamaModel& model, const Tokenizer* tokenizer, int64_t max_batch, int64_t max_context,
               int64_t max_queue)
    : model_(model),
      tokenizer_(tokenizer),
      max_batch_(std::max<int64_t>(1, max_batch)),
      capacity_(max_context > 0 ? std::min(max_context, model.config().max_position_embeddings)
                                : model.config().max_position_embeddings),
      max_queue_(std::max<int64_t>(0, max_queue)) {
  cache_ = KVCache::create(model.config(), max_batch_, capacity_,
                           torch::TensorOptions().dtype(model.cache_dtype()).device(model.device()));
  // Zeroed, not just allocated: a row's slots before its padding are masked by adding -inf to
  // their scores, which would not hide NaN garbage in uninitialised memory (NaN - inf = NaN).
  for (auto& t : cache_.k) t.zero_();
  for (auto& t : cache_.v) t.zero_();
  cache_.length = 0;
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

Engine::Stats Engine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  Stats s;
  s.active = static_cast<int64_t>(rows_.size());
  s.queued = static_cast<int64_t>(waiting_.size());
  s.max_batch = max_batch_;
  s.steps = steps_;
  s.tokens = tokens_;
  s.mean_batch = steps_ ? static_cast<double>(row_steps_) / static_cast<double>(steps_) : 0.0;
  // Rows share one length (left-padded): each active row holds cache_.length slots of capacity_.
  s.kv_cache_usage = static_cast<double>(rows_.size()) * static_cast<double>(cache_.length) /
                     static_cast<double>(std::max<int64_t>(1, max_batch_ * capacity_));
  return s;
}

GenerationResult Engine::generate(const std::vector<int32_t>& prompt, const SamplingParams& p, const TokenCallback& cb) {
  validate(p);
  if (!tokenizer_ && !p.stop.empty()) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "stop strings need a tokenizer");
  if (prompt.empty()) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "the prompt is empty");
  for (int32_t id : prompt)
    if (id < 0 || id >= model_.config().vocab_size)
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "the prompt has token id " + std::to_string(id) +
                                                         " outside the vocabulary");
  if (static_cast<int64_t>(prompt.size()) >= capacity_)
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "prompt of " + std::to_string(prompt.size()) +
                                                       " tokens leaves no room in the " + std::to_string(capacity_) +
                                                       "-token context");
  auto r = std::make_shared<Request>();
  r->prompt = prompt;
  r->p = p;
  r->cb = cb;
  r->result.prompt_tokens = static_cast<int64_t>(prompt.size());
  if (tokenizer_ && (cb || !p.stop.empty())) r->decoder.emplace(*tokenizer_, tokenizer_->continuation_context(prompt));
  r->seen = prompt;
  r->gen = at::detail::createCPUGenerator(p.seed ? *p.seed : static_cast<uint64_t>(std::random_device{}()));
  std::unique_lock<std::mutex> lock(mu_);
  if (static_cast<int64_t>(waiting_.size()) >= max_queue_ + max_batch_ - static_cast<int64_t>(rows_.size()))
    throw vhost::Error(VHOST_ERR_BUSY, "overloaded: " + std::to_string(rows_.size()) + " sequences running and " +
                                           std::to_string(waiting_.size()) + " waiting (max_queue " +
                                           std::to_string(max_queue_) + "); retry later");
  waiting_.push_back(r);
  wake_.notify_all();
  r->cv.wait(lock, [&] { return r->done; });
  if (r->error) std::rethrow_exception(r->error);
  return r->result;
}

void Engine::loop() {
  c10::InferenceMode inference;
  while (true) {
    std::unique_lock<std::mutex> lock(mu_);
    wake_.wait(lock, [&] { return stop_ || !waiting_.empty() || !rows_.empty(); });
    if (stop_) {
      auto shut = [&](const std::shared_ptr<Request>& r) {
        r->error = std::make_exception_ptr(vhost::Error(VHOST_ERR_CANCELLED, "the model is shutting down"));
        r->done = true;
        r->cv.notify_all();
      };
      for (auto& r : waiting_) shut(r);
      for (auto& r : rows_) shut(r);
      return;
    }
    // A small model's step runs on several threads (row shards); there a waiting prompt's
    // prefill, which would stall the whole batch on this thread, runs beside the step instead.
    std::shared_ptr<Request> joining;
    if (!rows_.empty() && !waiting_.empty() && static_cast<int64_t>(rows_.size()) < max_batch_ &&
        model_.decode_shards(static_cast<int64_t>(rows_.size())) >= 2) {
      joining = waiting_.front();
      waiting_.pop_front();
      joining->admitted();
    } else {
      admit(lock);
    }
    lock.unlock();
    if (!rows_.empty()) {
      try {
        step(joining);
      } catch (...) {
        // A failed step fails every running sequence; the engine itself goes on.
        auto e = std::current_exception();
        for (auto& r : rows_) fail(r, e);
        if (joining && std::find(rows_.begin(), rows_.end(), joining) == rows_.end()) fail(joining, e);
        rows_.clear();
        pad_.clear();
        next_.clear();
        cache_.length = 0;
      }
    }
  }
}

void Engine::fail(const std::shared_ptr<Request>& r, std::exception_ptr e) {
  std::lock_guard<std::mutex> g(mu_);
  if (r->done) return;
  r->error = e;
  r->done = true;
  r->cv.notify_all();
}

// Takes waiting requests into free rows; each prompt is prefilled alone into its row, ending at
// the batch's common last slot.
void Engine::admit(std::unique_lock<std::mutex>& lock) {
  while (static_cast<int64_t>(rows_.size()) < max_batch_ && !waiting_.empty()) {
    auto r = waiting_.front();
    waiting_.pop_front();
    r->admitted();
    lock.unlock();
    try {
      if (rows_.empty()) cache_.length = 0;
      const int64_t n = static_cast<int64_t>(r->prompt.size());
      if (n > cache_.length) shift_rows(n - cache_.length);
      const int64_t row = static_cast<int64_t>(rows_.size()), pad = cache_.length - n;
      auto logits = prefill(*r, row, pad);
      rows_.push_back(r);
      pad_.push_back(pad);
      next_.push_back(0);
      keep_log_softmax(*r, logits);
      int32_t tok = static_cast<int32_t>(sample_token(logits, r->p, r->seen, r->gen, &r->result.tokens));
      emit(rows_.size() - 1, tok);
    } catch (...) {
      if (!rows_.empty() && rows_.back() == r) {
        rows_.pop_back();
        pad_.pop_back();
        next_.pop_back();
      }
      std::lock_guard<std::mutex> g(mu_);
      r->error = std::current_exception();
      r->done = true;
      r->cv.notify_all();
    }
    lock.lock();
  }
}

void Engine::shift_rows(int64_t by) {
  const int64_t A = static_cast<int64_t>(rows_.size()), L = cache_.length;
  if (A > 0 && L > 0) {
    for (std::size_t l = 0; l < cache_.k.size(); ++l)
      for (auto* t : {&cache_.k[l], &cache_.v[l]}) {
        auto rows = t->narrow(0, 0, A);
        if (by > 0)
          rows.narrow(2, by, L).copy_(rows.narrow(2, 0, L).clone());
        else
          rows.narrow(2, 0, L + by).copy_(rows.narrow(2, -by, L + by).clone());
      }
  }
  for (auto& p : pad_) p += by;
  cache_.length += by;
}

void Engine::step(const std::shared_ptr<Request>& joining) {
  // A full cache: drop the padding every row has; a row without any has used its context.
  if (cache_.length + 1 > capacity_) {
    int64_t common = *std::min_element(pad_.begin(), pad_.end());
    if (common > 0) shift_rows(-common);
    for (std::size_t i = rows_.size(); i-- > 0;)
      if (pad_[i] == 0 && cache_.length + 1 > capacity_) retire(i, "length");
  }
  if (rows_.empty()) {
    if (joining) {
      std::unique_lock<std::mutex> lock(mu_);
      waiting_.push_front(joining);
    }
    return;
  }
  // The joining prompt ends in the slot this step writes, as the batch's rows do: it fills slots
  // L+1-n..L of row A, and the batch first shifts right if it is longer than that.
  const int64_t jn = joining ? static_cast<int64_t>(joining->prompt.size()) : 0;
  if (jn > cache_.length + 1) shift_rows(jn - cache_.length - 1);
  const int64_t A = static_cast<int64_t>(rows_.size()), L = cache_.length;
  // The step's tasks: `shards` groups of rows, each decoded, sampled and detokenised on its own
  // thread (rows are independent in all three), and the joining prompt's prefill. A model that
  // threads inside its operations instead (decode_shards 1) runs one group here.
  const int64_t shards = joining ? 1 : model_.decode_shards(A);
  std::vector<int64_t> picks(static_cast<std::size_t>(A));
  std::vector<std::optional<std::string>> pieces(static_cast<std::size_t>(A));
  auto ids = torch::tensor(std::vector<int64_t>(next_.begin(), next_.end()), torch::kInt64).view({A, 1});
  auto pads = torch::tensor(pad_, torch::kInt64);
  // Each row's LoRA adapter: rows of several adapters and of the base share the step.
  torch::Tensor adapters;
  if (model_.adapter_count() > 0) {
    std::vector<int64_t> a;
    for (const auto& r : rows_) a.push_back(r->p.adapter);
    adapters = torch::tensor(a, torch::kInt64);
  }
  const int32_t eos = static_cast<int32_t>(model_.config().eos_token_id);
  auto run_shard = [&](int64_t s) {
    const int64_t r0 = A * s / shards, n = A * (s + 1) / shards - r0;
    KVCache view = cache_.rows(r0, n);
    auto logits = model_.forward(ids.narrow(0, r0, n), &view, pads.narrow(0, r0, n), false,
                                 adapters.defined() ? adapters.narrow(0, r0, n) : adapters)
                      .select(1, 0)
                      .to(torch::kFloat32);  // on a GPU they stay there: sample_tokens samples on the device
    std::vector<const SamplingParams*> ps;
    std::vector<const std::vector<int32_t>*> ss, generated;
    std::vector<torch::Generator*> gs;
    for (int64_t i = r0; i < r0 + n; ++i) {
      auto& r = rows_[static_cast<std::size_t>(i)];
      ps.push_back(&r->p), ss.push_back(&r->seen), gs.push_back(&r->gen), generated.push_back(&r->result.tokens);
      keep_log_softmax(*r, logits[i - r0]);
    }
    auto got = sample_tokens(logits, ps, ss, gs, generated);
    for (int64_t i = r0; i < r0 + n; ++i) {
      const int32_t tok = static_cast<int32_t>(got[static_cast<std::size_t>(i - r0)]);
      picks[static_cast<std::size_t>(i)] = tok;
      auto& r = *rows_[static_cast<std::size_t>(i)];
      if (r.decoder && !(tok == eos && !r.p.ignore_eos)) pieces[static_cast<std::size_t>(i)] = r.decoder->push(tok);
    }
  };
  torch::Tensor joining_logits;
  std::exception_ptr joining_error;
  if (shards == 1 && !joining) {
    run_shard(0);
  } else {
    std::exception_ptr decode_error;
    std::mutex error_mu;
    at::parallel_for(0, shards + (joining ? 1 : 0), 1, [&](int64_t t0, int64_t t1) {
      c10::InferenceMode guard;  // thread-local: a helper thread does not inherit it
      for (int64_t t = t0; t < t1; ++t) try {
          if (t < shards) run_shard(t);
          else joining_logits = prefill(*joining, A, L + 1 - jn);
        } catch (...) {
          std::lock_guard<std::mutex> g(error_mu);
          (t < shards ? decode_error : joining_error) = std::current_exception();
        }
    });
    if (joining_error) fail(joining, joining_error);
    if (decode_error) std::rethrow_exception(decode_error);
    if (joining && !joining_error) {  // it is a row now; its first token goes out after the others'
      rows_.push_back(joining);
      pad_.push_back(L + 1 - jn);
      next_.push_back(0);
    }
  }
  cache_.length = L + 1;  // as each shard's view
  {
    std::lock_guard<std::mutex> g(mu_);
    ++steps_;
    row_steps_ += A;
  }
  // Backwards: retiring row i moves the last row into i, which is then already done (or is the
  // joining row, emitted below).
  for (int64_t i = A - 1; i >= 0; --i)
    emit(static_cast<std::size_t>(i), static_cast<int32_t>(picks[static_cast<std::size_t>(i)]), &pieces[static_cast<std::size_t>(i)]);
  if (joining && !joining_error) {
    auto at = std::find(rows_.begin(), rows_.end(), joining) - rows_.begin();
    keep_log_softmax(*joining, joining_logits);
    emit(static_cast<std::size_t>(at),
         static_cast<int32_t>(sample_token(joining_logits, joining->p, joining->seen, joining->gen, &joining->result.tokens)));
  }
}

torch::Tensor Engine::prefill(const Request& r, int64_t row, int64_t first_slot) const {
  // The prompt goes into its row's slots first_slot.. as a cache of its own that starts there:
  // its attention covers its own tokens, not the padding before them.
  KVCache own = cache_.rows(row, 1);
  for (std::size_t l = 0; l < own.k.size(); ++l) {
    own.k[l] = own.k[l].narrow(2, first_slot, capacity_ - first_slot);
    own.v[l] = own.v[l].narrow(2, first_slot, capacity_ - first_slot);
  }
  own.length = 0;
  own.capacity = capacity_ - first_slot;
  const int64_t n = static_cast<int64_t>(r.prompt.size());
  auto ids = torch::tensor(std::vector<int64_t>(r.prompt.begin(), r.prompt.end()), torch::kInt64).view({1, n});
  auto adapter = r.p.adapter >= 0 ? torch::full({1}, r.p.adapter, torch::kInt64) : torch::Tensor();
  return model_.forward(ids, &own, torch::Tensor(), /*last_only=*/true, adapter).select(1, 0)[0];
}

void Engine::keep_log_softmax(Request& r, const torch::Tensor& logits) {
  if (r.p.stream_logprobs >= 0) r.step_lsm = torch::log_softmax(logits.to(torch::kCPU, torch::kFloat32), -1).contiguous();
}

void Engine::add_score(Request& r, int32_t tok) const {
  if (!r.step_lsm.defined()) return;
  std::vector<int32_t> before;  // the last ids before it: all token_text needs
  for (auto it = r.result.tokens.rbegin(); it != r.result.tokens.rend() && before.size() < 6; ++it) before.insert(before.begin(), *it);
  for (auto it = r.prompt.rbegin(); it != r.prompt.rend() && before.size() < 6; ++it) before.insert(before.begin(), *it);
  auto text = [&](int32_t id) { return tokenizer_ ? token_text(*tokenizer_, before, id) : std::string(); };
  const float* lsm = r.step_lsm.data_ptr<float>();
  nlohmann::json top = nlohmann::json::array();
  const int64_t k = std::min<int64_t>(r.p.stream_logprobs, r.step_lsm.size(0));
  if (k > 0) {
    auto [v, i] = r.step_lsm.topk(k);
    for (int64_t a = 0; a < k; ++a) {
      const auto id = static_cast<int32_t>(i[a].item<int64_t>());
      top.push_back({id, text(id), static_cast<double>(v[a].item<float>())});
    }
  }
  r.pending.push_back({{"id", tok}, {"text", text(tok)}, {"logprob", static_cast<double>(lsm[tok])}, {"top", top}});
  r.step_lsm = torch::Tensor();
}

bool Engine::send_scores(Request& r) {
  if (r.pending.empty()) return true;
  const std::string events = r.pending.dump();
  r.pending = nlohmann::json::array();
  return r.cb(0, kScoresToken, events);
}

bool Engine::emit(std::size_t row, int32_t tok, std::optional<std::string>* piece) {
  auto& r = *rows_[row];
  const auto& p = r.p;
  {
    std::lock_guard<std::mutex> g(mu_);
    ++tokens_;
  }
  if (r.result.first_token_seconds < 0)  // time to first token, for the server's metrics
    r.result.first_token_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - r.queued_at).count();
  if (tok == model_.config().eos_token_id && !p.ignore_eos) {
    r.step_lsm = torch::Tensor();  // EOS is no token of the reply: no score either
    retire(row, "stop");
    return false;
  }
  add_score(r, tok);
  r.result.tokens.push_back(tok);
  if (p.repetition_penalty != 1.0) r.seen.push_back(tok);
  next_[row] = tok;
  if (r.decoder) {
    r.text += piece && *piece ? std::move(**piece) : r.decoder->push(tok);
    for (const auto& s : p.stop)
      if (r.text.find(s, r.sent > s.size() ? r.sent - s.size() : 0) != std::string::npos) {
        retire(row, "stop");
        return false;
      }
    std::size_t safe = r.text.size() - held_back(r.text, p.stop);
    if (r.cb && safe > r.sent) {
      bool go_on = false;
      try {
        go_on = send_scores(r) && r.cb(0, tok, r.text.substr(r.sent, safe - r.sent));
      } catch (...) {
        go_on = false;  // a failing client is a gone client
      }
      r.sent = safe;
      if (!go_on) {
        retire(row, "cancelled");
        return false;
      }
    }
  }
  if (!r.decoder && r.cb) {  // no tokenizer: ids stream, without text
    bool go_on = false;
    try {
      go_on = send_scores(r) && r.cb(0, tok, std::string());
    } catch (...) {
    }
    if (!go_on) {
      retire(row, "cancelled");
      return false;
    }
  }
  const bool full = cache_.length + 1 > capacity_ && pad_[row] == 0;
  if (static_cast<int64_t>(r.result.tokens.size()) >= p.max_tokens || full) {
    retire(row, "length");
    return false;
  }
  return true;
}

void Engine::retire(std::size_t row, const std::string& reason) {
  auto r = rows_[row];
  r->result.finish_reason = reason;
  if (r->decoder) {
    if (reason != "cancelled") r->text += r->decoder->flush();
  } else if (tokenizer_) {
    r->text = tokenizer_->decode_after(tokenizer_->continuation_context(r->prompt), r->result.tokens);
  }
  std::size_t end = r->text.size();
  for (const auto& s : r->p.stop) {
    auto f = r->text.find(s);
    if (f != std::string::npos) end = std::min(end, f);
  }
  if (end < r->sent) end = r->sent;
  if (r->cb && reason != "cancelled") {  // the scores of tokens whose text was held back
    try {
      send_scores(*r);
    } catch (...) {
    }
  }
  if (r->cb && end > r->sent && reason != "cancelled") {
    try {
      r->cb(0, -1, r->text.substr(r->sent, end - r->sent));
    } catch (...) {
    }
  }
  r->text.resize(end);
  r->result.text = r->text;
  // Compact: the last row moves into the freed one.
  const std::size_t last = rows_.size() - 1;
  if (row != last) {
    const int64_t L = cache_.length;
    for (std::size_t l = 0; l < cache_.k.size(); ++l)
      for (auto* t : {&cache_.k[l], &cache_.v[l]})
        if (L > 0) (*t)[row].narrow(1, 0, L).copy_((*t)[last].narrow(1, 0, L));
    rows_[row] = rows_[last];
    pad_[row] = pad_[last];
    next_[row] = next_[last];
  }
  rows_.pop_back();
  pad_.pop_back();
  next_.pop_back();
  if (rows_.empty()) cache_.length = 0;
  std::lock_guard<std::mutex> g(mu_);
  r->done = true;
  r->cv.notify_all();
}

}  // namespace vhost::llama
