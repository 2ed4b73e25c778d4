#include "score.hpp"

#include <vhost/plugin.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>

namespace vhost::llama {

std::string token_text(const Tokenizer& tokenizer, const std::vector<int32_t>& before, int32_t id) {
  constexpr std::size_t kContext = 6;
  std::vector<int32_t> ctx(before.size() > kContext ? before.end() - kContext : before.begin(), before.end());
  std::string t = tokenizer.decode_after(tokenizer.continuation_context(ctx), {id});
  // SentencePiece's byte fallback: ids 3..258 are <0x00>..<0xFF> in LLaMA's layout.
  if (t.find("\xEF\xBF\xBD") != std::string::npos && id >= 3 && id < 259 && tokenizer.decode({id}) == "\xEF\xBF\xBD") {
    char b[16];
    std::snprintf(b, sizeof b, "bytes:\\x%02X", static_cast<unsigned>(id - 3));
    return b;
  }
  return t;
}

std::vector<TokenScore> score(const LlamaModel& model, const Tokenizer* tokenizer, const std::vector<int32_t>& ids,
                              std::size_t from, int64_t top_k, int32_t adapter) {
  const int64_t T = static_cast<int64_t>(ids.size()), V = model.config().vocab_size;
  if (T == 0) return {};
  if (T > model.config().max_position_embeddings)
    throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "cannot score " + std::to_string(T) + " tokens: the context is " +
                                                       std::to_string(model.config().max_position_embeddings));
  for (int32_t id : ids)
    if (id < 0 || id >= V)
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "token id " + std::to_string(id) + " is outside the vocabulary");
  top_k = std::clamp<int64_t>(top_k, 0, V);
  torch::NoGradGuard no_grad;
  auto t = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kInt64).view({1, T}).to(model.device());
  // Position j's distribution predicts token j + 1: rows from - 1 .. T - 2 are the ones needed.
  const int64_t first = std::max<int64_t>(static_cast<int64_t>(from), 1) - 1;
  auto logits = model.forward(t, nullptr, torch::Tensor(), false,
                              adapter >= 0 ? torch::full({1}, adapter, torch::kInt64) : torch::Tensor())[0]
                    .narrow(0, first, std::max<int64_t>(T - 1 - first, 0));
  auto lsm = torch::log_softmax(logits.to(torch::kCPU, torch::kFloat32), -1).contiguous();
  torch::Tensor top_v, top_i;
  if (top_k > 0 && lsm.size(0) > 0) std::tie(top_v, top_i) = lsm.topk(top_k, -1);
  std::vector<TokenScore> out;
  for (std::size_t j = from; j < ids.size(); ++j) {
    TokenScore s;
    s.id = ids[j];
    std::vector<int32_t> before(ids.begin() + static_cast<std::ptrdiff_t>(j > 6 ? j - 6 : 0),
                                ids.begin() + static_cast<std::ptrdiff_t>(j));  // token_text needs no more
    if (tokenizer) s.text = j == 0 ? tokenizer->decode({s.id}) : token_text(*tokenizer, before, s.id);
    if (j > 0) {
      const int64_t row = static_cast<int64_t>(j) - 1 - first;
      s.logprob = lsm[row][s.id].item<double>();
      for (int64_t k = 0; k < top_k; ++k) {
        int32_t alt = static_cast<int32_t>(top_i[row][k].item<int64_t>());
        s.top.push_back({alt, tokenizer ? token_text(*tokenizer, before, alt) : std::string(), top_v[row][k].item<double>()});
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace vhost::llama
