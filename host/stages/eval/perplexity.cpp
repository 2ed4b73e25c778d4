// The perplexity stage: how well a model predicts a text, measured as llama.cpp's
// llama-perplexity measures it, so the numbers of the two can be set side by side (and a
// quantized file's against the float one's).
#include "stages/stages.hpp"

#include "stages/common/options.hpp"
#include "stages/common/text.hpp"

#include <chrono>
#include <cmath>
#include <fstream>
#include <iterator>
#include <sstream>

namespace vhost::host {

namespace {

// The text is tokenized whole (BOS first) and cut into chunks of `context` tokens; each chunk
// starts again with BOS in place of its first token and is scored in one teacher-forced forward
// (the model's `prompt_logprobs`), and only the tokens of its second half count, each predicted
// from at least context/2 tokens before it: llama-perplexity's method (its default, without
// --ppl-stride). Perplexity = exp(mean negative log-likelihood), with the standard error of that
// mean carried through exp as llama.cpp reports it.
json run_perplexity(StageContext& ctx) {
  const auto& c = ctx.config;
  Instance& model = ctx.instance(c["model"].get<std::string>());
  const fs::path file = c["text"].get<std::string>();
  const int64_t n_ctx = c["context"].get<int64_t>(), max_chunks = c["chunks"].get<int64_t>();
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ConfigError(ctx.id + ".text: " + file.string() + ": cannot open");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const json caps = model.model_capabilities();
  const int64_t model_ctx = caps.value("context", int64_t{0});
  if (model_ctx > 0 && n_ctx > model_ctx)
    throw ConfigError(ctx.id + ".context: " + std::to_string(n_ctx) + " is longer than the model's context (" + std::to_string(model_ctx) + ")");
  const json ti = model.model_tokenizer_info();
  const int32_t bos = ti.value("bos_id", int32_t{-1});
  if (bos < 0) throw ConfigError(ctx.id + ".model: the model's tokenizer has no BOS token (the chunks start with it)");

  const std::vector<int32_t> ids = model.model_encode(text, /*bos=*/true, /*eos=*/false);
  int64_t chunks = static_cast<int64_t>(ids.size()) / n_ctx;
  if (chunks < 1)
    throw ConfigError(ctx.id + ".text: " + file.string() + ": " + std::to_string(ids.size()) + " tokens, fewer than one chunk of context = " +
                      std::to_string(n_ctx) + " (give a longer text or a smaller context)");
  if (max_chunks > 0) chunks = std::min(chunks, max_chunks);
  const int64_t first = n_ctx / 2;  // tokens first + 1 .. n_ctx - 1 of each chunk count

  double sum = 0, sum2 = 0;
  int64_t count = 0;
  json per_chunk = json::array();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t k = 0; k < chunks; ++k) {
    std::vector<int32_t> chunk(ids.begin() + k * n_ctx, ids.begin() + (k + 1) * n_ctx);
    chunk[0] = bos;
    json reply = model.model_generate({{"prompt_ids", json::array({chunk})}, {"max_tokens", 0}, {"prompt_logprobs", 0}, {"add_bos", false}},
                                      nullptr);
    const json& lps = reply.at("choices").at(0).at("prompt_logprobs");
    if (!lps.is_array() || static_cast<int64_t>(lps.size()) != n_ctx)
      throw Error(ctx.id + ": the model scored " + std::to_string(lps.size()) + " of a chunk's " +
                                          std::to_string(n_ctx) + " tokens");
    double chunk_nll = 0;
    for (int64_t j = first + 1; j < n_ctx; ++j) {
      const json& lp = lps[static_cast<std::size_t>(j)].at("logprob");
      if (!lp.is_number()) throw Error(ctx.id + ": no log-probability for token " + std::to_string(j));
      const double nll = -lp.get<double>();
      sum += nll;
      sum2 += nll * nll;
      chunk_nll += nll;
      ++count;
    }
    const double running = std::exp(sum / static_cast<double>(count));
    per_chunk.push_back({{"chunk", k}, {"nll", chunk_nll / static_cast<double>(n_ctx - 1 - first)}, {"running_ppl", running}});
    ctx.out << "[" << k + 1 << "/" << chunks << "] " << fmt("%.4f", running) << "\n" << std::flush;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double mean = sum / static_cast<double>(count);
  const double var = count > 1 ? std::max(0.0, sum2 / static_cast<double>(count) - mean * mean) : 0.0;
  const double ppl = std::exp(mean), err = count > 1 ? ppl * std::sqrt(var / static_cast<double>(count - 1)) : 0.0;
  ctx.out << "perplexity " << fmt("%.4f", ppl) << " +/- " << fmt("%.4f", err) << " over " << count << " tokens (" << chunks
          << " chunks of " << n_ctx << ", the last " << n_ctx - 1 - first << " of each scored; " << ids.size()
          << " tokens in " << file.filename().string() << ") in " << human_seconds(seconds) << " ("
          << fmt("%.1f", seconds > 0 ? static_cast<double>(chunks * n_ctx) / seconds : 0.0) << " tokens/s)\n";
  json result = {{"perplexity", ppl},          {"stderr", err},     {"mean_nll", mean},
                 {"tokens_scored", count},     {"chunks", chunks},  {"context", n_ctx},
                 {"text_tokens", ids.size()},  {"text", file.string()}, {"seconds", seconds},
                 {"per_chunk", per_chunk}};
  std::ofstream(ctx.work_dir / (ctx.id + ".json")) << result.dump(2) << "\n";
  return result;
}

}  // namespace

std::vector<StageType> perplexity_stage_types() {
  return {{"perplexity",
           "A model's perplexity on a text file, by llama-perplexity's method (chunks of `context` tokens, each "
           "starting with BOS, the second half of each scored); the result in WORK_DIR/ID.json.",
           {option_spec("model", "string", "", "the model instance (a name under [models]); empty: the only one"),
            option_spec("text", "path", std::nullopt, "the text (UTF-8), tokenized whole"),
            option_spec("context", "integer", 512, "tokens per chunk (llama-perplexity's -c)", 4, 1 << 20),
            option_spec("chunks", "integer", 0, "score only the first N chunks (0: all; llama-perplexity's --chunks)", 0, 1e9)},
           {{"model", VHOST_KIND_MODEL}},
           {},
           run_perplexity}};
}

}  // namespace vhost::host
