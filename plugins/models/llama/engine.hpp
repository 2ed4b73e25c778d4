// Continuous batching: requests from many threads share one running batch. A scheduler thread
// admits a request into a free row as soon as one exists (its prompt is prefilled alone, then it
// decodes with the others), steps every active row one token at a time, and retires a row the
// moment it finishes or its client cancels: new requests join at token granularity.
//
// All rows end at the same cache slot; a shorter row is left-padded (LlamaModel::forward's
// left_pad), so one decode step is one forward pass of [rows, 1] tokens. A longer prompt shifts
// the rows right to make room; when the cache is full the common padding is shifted out.
//
// A prompt is prefilled into its own row's slots, attending to its own tokens only. For a small
// model whose step runs in row shards (LlamaModel::decode_shards), each shard decodes, samples
// and detokenises its rows on its own thread, and one waiting prompt a step is prefilled on
// another thread while the step runs, instead of stalling the batch.
#pragma once

#include "generate.hpp"

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

namespace vhost::llama {

class Engine {
 public:
  // max_batch rows of max_context positions each (clamped to the model's context).
  Engine(const LlamaModel& model, const Tokenizer* tokenizer, int64_t max_batch, int64_t max_context,
         int64_t max_queue);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Blocks until the sequence finishes; on_token runs on the scheduler thread (sequence index 0).
  // Throws vhost::Error(VHOST_ERR_UNAVAILABLE...) when the queue is full.
  GenerationResult generate(const std::vector<int32_t>& prompt, const SamplingParams& params,
                            const TokenCallback& on_token = {});

  struct Stats {
    int64_t active = 0, queued = 0, max_batch = 0, steps = 0, tokens = 0;
    double mean_batch = 0;  // rows per decode step, over the engine's life
    double kv_cache_usage = 0;  // share of the KV cache's slots (rows x positions) in use now
  };
  Stats stats() const;

 private:
  struct Request;
  void loop();
  void admit(std::unique_lock<std::mutex>& lock);
  // One decoding step of every active row; `joining` (may be null), a waiting request, is
  // prefilled into the next free row at the same time on another thread and joins the batch.
  void step(const std::shared_ptr<Request>& joining);
  void fail(const std::shared_ptr<Request>& r, std::exception_ptr e);
  // Prefills r's prompt into `row` from slot `first_slot` on; the logits of its next token.
  torch::Tensor prefill(const Request& r, int64_t row, int64_t first_slot) const;
  // false: the row finished. `piece`: the token's text, when already pushed through the row's
  // decoder (by the step's shard).
  bool emit(std::size_t row, int32_t token, std::optional<std::string>* piece = nullptr);
  // Streamed logprobs: the row's log-softmax before sampling, its entry once the token is known,
  // and the entries not yet sent, sent ahead of the next text.
  static void keep_log_softmax(Request& r, const torch::Tensor& logits);
  void add_score(Request& r, int32_t token) const;
  static bool send_scores(Request& r);
  void retire(std::size_t row, const std::string& reason);
  void shift_rows(int64_t by);  // moves every active row's cache right (by > 0) or left (by < 0)

  const LlamaModel& model_;
  const Tokenizer* tokenizer_;
  const int64_t max_batch_, capacity_, max_queue_;
  KVCache cache_;                                  // [max_batch, kv, capacity, hd]; rows 0..active-1 live
  std::vector<std::shared_ptr<Request>> rows_;     // active rows, in cache order
  std::vector<int64_t> pad_;                       // per active row
  std::vector<int32_t> next_;                      // per active row: the token to feed next
  std::deque<std::shared_ptr<Request>> waiting_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  int64_t steps_ = 0, tokens_ = 0, row_steps_ = 0;
  std::thread thread_;
};

}  // namespace vhost::llama
