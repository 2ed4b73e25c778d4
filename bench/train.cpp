// bench/train: training-step throughput of the llama plugin's trainer, against baselines
// measured in the same run:
//  1. tokens/s of a step (forward, backward, clipping, AdamW) on the `tiny` preset versus the
//     same model and batch in Debian's python3-torch, eager and written the obvious way
//     (bench/train_baseline.py); the trainer without and with gradient checkpointing;
//  2. what gradient checkpointing costs (step tokens/s with / without);
//  3. non-pad tokens/s over the bundled sample conversations, micro-batches padded to their
//     longest sequence versus padded to max_length.
//
//   bench_train [--threads 2] [--batch 8] [--seq 256] [--steps 20] [--data PREPARED_DIR]
//   (without --data the sample is prepared with the vhost binary beside this one)
#include "model.hpp"
#include "train.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <algorithm>
#include <string>

namespace fs = std::filesystem;
using namespace vhost::llama;
using Clock = std::chrono::steady_clock;

static double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Tokens/s of full optimizer steps on one fixed random batch.
static double step_rate(const LlamaModel& init, bool checkpointing, int64_t B, int64_t T, int steps) {
  Trainer t(init, {}, checkpointing);
  Batch b;
  b.ids = torch::randint(init.config().vocab_size, {B, T}, torch::kInt64);
  b.targets = torch::randint(init.config().vocab_size, {B, T}, torch::kInt64);
  auto one = [&] {
    t.forward_backward(b, static_cast<double>(B * T));
    t.clip_grad_norm(1.0);
    t.adamw_step(1e-4, 0.9, 0.999, 1e-8, 0.0);
    t.zero_grad();
  };
  one();
  auto t0 = Clock::now();
  for (int i = 0; i < steps; ++i) one();
  return static_cast<double>(B * T * steps) / seconds_since(t0);
}

// Non-pad tokens/s of forward+backward over micro-batches of `n` sequences drawn at random
// (seeded), sorted by length within each step of 16 as group_by_length does.
static double data_rate(const LlamaModel& init, const vhost::tokens::Reader& d, std::size_t n, int64_t micro,
                        int64_t pad_to, int64_t* padded_tokens, int64_t* real_tokens) {
  Trainer t(init, {}, true);
  std::vector<uint64_t> order(d.size());
  for (uint64_t i = 0; i < d.size(); ++i) order[i] = i;
  std::mt19937_64 rng(7);
  std::shuffle(order.begin(), order.end(), rng);
  order.resize(std::min(n, order.size()));
  for (std::size_t b = 0; b < order.size(); b += 16)
    std::stable_sort(order.begin() + b, order.begin() + std::min(order.size(), b + 16),
                     [&](uint64_t x, uint64_t y) { return d.length(x) > d.length(y); });
  *real_tokens = 0;
  *padded_tokens = 0;
  auto t0 = Clock::now();
  for (std::size_t i = 0; i + micro <= order.size(); i += micro) {
    Batch b = make_batch(d, {order.begin() + i, order.begin() + i + micro}, pad_to);
    t.forward_backward(b, 1000.0);
    t.zero_grad();
    *real_tokens += b.tokens;
    *padded_tokens += b.ids.numel();
  }
  return static_cast<double>(*real_tokens) / seconds_since(t0);
}

int main(int argc, char** argv) {
  int threads = 2, steps = 20;
  int64_t B = 8, T = 256;
  std::string data;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--threads") threads = std::atoi(argv[i + 1]);
    else if (a == "--batch") B = std::atoll(argv[i + 1]);
    else if (a == "--seq") T = std::atoll(argv[i + 1]);
    else if (a == "--steps") steps = std::atoi(argv[i + 1]);
    else if (a == "--data") data = argv[i + 1];
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  torch::set_num_threads(threads);
  LlamaConfig cfg = LlamaConfig::preset("tiny");
  auto init = LlamaModel::random(cfg, 0);
  std::printf("tiny preset: %lld parameters, batch %lld x %lld tokens, %d threads, libtorch %s\n",
              static_cast<long long>(cfg.parameter_count()), static_cast<long long>(B), static_cast<long long>(T),
              threads, TORCH_VERSION);

  // 1. against eager python3-torch
  fs::path scratch = fs::temp_directory_path() / "vhost-bench-train";
  fs::create_directories(scratch);
  std::ofstream(scratch / "config.json") << cfg.to_json().dump();
  fs::path self = fs::read_symlink("/proc/self/exe").parent_path();
  fs::path script = fs::path(VHOST_SOURCE_DIR) / "bench" / "train_baseline.py";
  std::string python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";  // Debian's, with python3-torch
  std::string cmd = python + " " + script.string() + " " + (scratch / "config.json").string() + " " + std::to_string(B) + " " +
                    std::to_string(T) + " " + std::to_string(steps) + " " + std::to_string(threads) + " 2>&1";
  double py = 0;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[4096] = {0};
    std::string outp;
    while (fgets(buf, sizeof buf, p)) outp += buf;
    int rc = pclose(p);
    if (rc == 0) py = std::atof(outp.c_str());
    else std::printf("python baseline failed (python3-torch installed?):\n%s", outp.c_str());
  }
  double fast = step_rate(init, false, B, T, steps);
  double ckpt = step_rate(init, true, B, T, steps);
  if (py > 0) {
    std::printf("python3-torch eager:                 %9.0f tokens/s\n", py);
    std::printf("vhost trainer:                       %9.0f tokens/s  (%.2fx python)\n", fast, fast / py);
    std::printf("vhost trainer, checkpointing:        %9.0f tokens/s  (%.2fx python)\n", ckpt, ckpt / py);
  } else {
    std::printf("vhost trainer: %.0f tokens/s; with checkpointing %.0f tokens/s\n", fast, ckpt);
  }
  // 2.
  std::printf("gradient checkpointing costs %.1f%% of step throughput\n", 100.0 * (1.0 - ckpt / fast));

  // 3. padding. The ShareGPT fixture in ../shared (500 real conversations) with the LLaMA-2
  // tokenizer at Vicuna's max_length 2048 when present; else the bundled sample at 512.
  fs::path shared = fs::path(VHOST_SOURCE_DIR).parent_path() / "shared";
  fs::path sample = shared / "data" / "sharegpt_sample.json", tok = shared / "models" / "llama2_tokenizer.model";
  bool real = data.empty() && fs::exists(sample) && fs::exists(tok);
  int64_t ctx = real ? 2048 : 512;
  if (data.empty()) {
    fs::path vhost = self / "vhost";
    if (!real) {
      sample = fs::path(VHOST_SOURCE_DIR) / "examples" / "data" / "sharegpt_demo.json";
      std::printf("(../shared/data/sharegpt_sample.json absent: using the bundled sample at max_length 512)\n");
    }
    std::string init_cmd = real ? " model init --preset tiny --tokenizer " + tok.string()
                                : " model init --preset tiny --tokenizer-text " + std::string(VHOST_SOURCE_DIR) + "/docs/plugins.md";
    std::string prep = vhost.string() + init_cmd + " --out " + (scratch / "model").string() + " >/dev/null && " +
                       vhost.string() + " prepare " + sample.string() + " --model " + (scratch / "model").string() +
                       " --out " + (scratch / "data").string() + " --max-length " + std::to_string(ctx) +
                       " --eval-fraction 0 --log-level warn >/dev/null";
    fs::remove_all(scratch / "model");
    if (std::system(prep.c_str()) != 0) {
      std::printf("could not prepare the sample data (%s)\n", prep.c_str());
      return 1;
    }
    data = (scratch / "data" / "train").string();
  }
  vhost::tokens::Reader d(data);
  int64_t max_length = d.meta().value("max_length", ctx);
  LlamaConfig pc = LlamaConfig::preset("tiny");
  pc.vocab_size = d.meta().value("vocab_size", pc.vocab_size);
  pc.max_position_embeddings = std::max(pc.max_position_embeddings, max_length);
  auto pinit = LlamaModel::random(pc, 0);
  int64_t slots_longest = 0, slots_max = 0, real_tokens = 0;
  const std::size_t n = 24;
  double maxlen = data_rate(pinit, d, n, 2, max_length, &slots_max, &real_tokens);
  double longest = data_rate(pinit, d, n, 2, 0, &slots_longest, &real_tokens);
  std::printf("%s: %zu of %llu sequences (%lld tokens), micro-batch 2, vocab %lld:\n", data.c_str(),
              std::min<std::size_t>(n, d.size()), static_cast<unsigned long long>(d.size()),
              static_cast<long long>(real_tokens), static_cast<long long>(pc.vocab_size));
  std::printf("  padded to max_length %lld: %9.0f non-pad tokens/s (%lld slots)\n", static_cast<long long>(max_length),
              maxlen, static_cast<long long>(slots_max));
  std::printf("  padded to the longest:     %9.0f non-pad tokens/s (%lld slots)  (%.2fx)\n", longest,
              static_cast<long long>(slots_longest), longest / maxlen);
  return 0;
}
