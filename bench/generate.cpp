// bench/generate: decode throughput of the llama plugin's generator on the stories15M shape
// (dim 288, 6 layers, 6 heads, vocab 32000; random weights), against a naive eager decoder of
// the same model measured in the same run: KV cache grown by concatenation, each op on its own.
//
// Where the CPU has a bfloat16 kernel (AMX, AVX512-BF16, or widened on AVX-512/AVX2), the same
// two runs again with bfloat16 weights (enable_bf16_decode).
//
// Then decoding with another process busy on one core (a spinning child process), in child
// processes: the threads the cpu backend's default now picks (usable cores less busy ones), all
// cores as before with OpenMP's default spinning wait, and all cores with OMP_WAIT_POLICY=PASSIVE;
// printed against the idle machine.
//
//   bench_generate [--threads 2] [--tokens 128] [--batch 16] [--preset stories15m|tiny]
//                  [--bf16-kernel amx|avx512bf16|avx512|avx2]   (default: the best this CPU runs)
//                  [--no-wait-policy]
//
//   bench_generate --model PATH [--threads 2] [--tokens 8] [--batch 16] [--float-activations] [--bf16-activations] [--prompt 512]
//   bench_generate --model PATH --memory-bound [--threads 2]   (the memory bound line alone)
//   bench_generate --gemm N K [--threads 2] [--reps 10] [--only bf16,q4_k,q6_k]
//   (any mode: --kernels avx2|avx512 runs that set of decode kernels, e.g. AVX2's on an AVX-512 CPU)
//                                               (small_gemm alone: f32, bf16, f16 weights and the
//                                                quantized formats, int8 and float32 activations;
//                                                --only: those formats alone)
// A checkpoint as the model plugin loads it (an HF folder or a GGUF file, the stored dtype kept:
// bf16/f16 weights read in place), decoded greedily from a one-token prompt at batch 1 and at
// --batch: tokens/s of the decoding steps alone (after the prefill), and the process's peak RSS
// beside the weights' bytes; with --prompt P, also one prompt of P tokens in one forward (the
// prefill, llama-bench's "pp P"). After batch 1, its memory bound: the bytes of weights a step
// reads, streamed by as many threads right after, as tokens/s (no program decodes faster at batch
// 1 than the rate at which the machine can read its weights). bench/large_model.sh runs it beside
// llama.cpp on the same file.
#include "decode_kernels.hpp"
#include "generate.hpp"
#include "gguf.hpp"
#include "model.hpp"
#include "step_weights.hpp"

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

using namespace vhost::llama;
using Clock = std::chrono::steady_clock;

// The baseline: the forward pass written the obvious way, one token at a time.
struct Naive {
  LlamaConfig c;
  std::map<std::string, torch::Tensor> w;
  std::vector<torch::Tensor> k, v;  // per layer [B, KV, t, hd], grown by torch::cat

  torch::Tensor norm(const torch::Tensor& x, const torch::Tensor& g) {
    return g * (x / torch::sqrt(x.pow(2).mean(-1, true) + c.rms_norm_eps));
  }
  torch::Tensor step(const torch::Tensor& tok, int64_t pos) {  // tok [B]
    const int64_t B = tok.size(0), H = c.num_attention_heads, KV = c.num_key_value_heads, hd = c.head_dim();
    auto x = w["model.embed_tokens.weight"].index_select(0, tok);  // [B, D]
    auto inv = 1.0 / torch::pow(c.rope_theta, torch::arange(0, hd, 2).to(torch::kFloat32) / hd);
    auto f = inv * static_cast<double>(pos);
    auto cos = torch::cat({f.cos(), f.cos()}), sin = torch::cat({f.sin(), f.sin()});
    auto rot = [&](const torch::Tensor& t) {
      auto a = t.narrow(-1, 0, hd / 2), b = t.narrow(-1, hd / 2, hd / 2);
      return t * cos + torch::cat({-b, a}, -1) * sin;
    };
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      std::string p = "model.layers." + std::to_string(l) + ".";
      auto h = norm(x, w[p + "input_layernorm.weight"]);
      auto q = rot(torch::matmul(h, w[p + "self_attn.q_proj.weight"].t()).view({B, H, 1, hd}));
      auto kk = rot(torch::matmul(h, w[p + "self_attn.k_proj.weight"].t()).view({B, KV, 1, hd}));
      auto vv = torch::matmul(h, w[p + "self_attn.v_proj.weight"].t()).view({B, KV, 1, hd});
      if (static_cast<int64_t>(k.size()) <= l) {
        k.push_back(kk);
        v.push_back(vv);
      } else {
        k[l] = torch::cat({k[l], kk}, 2);
        v[l] = torch::cat({v[l], vv}, 2);
      }
      auto keys = k[l].repeat_interleave(H / KV, 1), vals = v[l].repeat_interleave(H / KV, 1);
      auto att = torch::softmax(torch::matmul(q, keys.transpose(-1, -2)) / std::sqrt(double(hd)), -1);
      auto o = torch::matmul(att, vals).view({B, H * hd});
      x = x + torch::matmul(o, w[p + "self_attn.o_proj.weight"].t());
      auto m = norm(x, w[p + "post_attention_layernorm.weight"]);
      auto g = torch::matmul(m, w[p + "mlp.gate_proj.weight"].t());
      auto u = torch::matmul(m, w[p + "mlp.up_proj.weight"].t());
      x = x + torch::matmul(torch::silu(g) * u, w[p + "mlp.down_proj.weight"].t());
    }
    x = norm(x, w["model.norm.weight"]);
    return torch::matmul(x, w["lm_head.weight"].t());
  }
};

static double naive_tokens_per_s(const LlamaModel& m, int64_t batch, int64_t tokens) {
  torch::NoGradGuard ng;
  Naive n{m.config(), {}, {}, {}};
  for (const auto& [name, t] : m.named_tensors()) n.w[name] = t;
  auto tok = torch::ones({batch}, torch::kInt64);
  auto t0 = Clock::now();
  for (int64_t i = 0; i < tokens; ++i) tok = n.step(tok, i).argmax(-1);
  return batch * tokens / std::chrono::duration<double>(Clock::now() - t0).count();
}

static double vhost_tokens_per_s(const LlamaModel& m, int64_t batch, int64_t tokens) {
  std::vector<std::vector<int32_t>> prompts(batch, std::vector<int32_t>{1});
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = tokens;
  p.ignore_eos = true;
  auto t0 = Clock::now();
  auto r = generate(m, nullptr, prompts, p);  // ids only: the baseline decodes no text either
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  int64_t n = 0;
  for (const auto& x : r) n += static_cast<int64_t>(x.tokens.size());
  return n / s;
}

// The output layer of one batch-B decoding step ([B, D] x [D, vocab]): small_gemm against
// torch::linear (OpenBLAS) on the same tensors; milliseconds per call.
static std::pair<double, double> output_layer_ms(const LlamaModel& m, int64_t batch) {
  torch::NoGradGuard ng;
  torch::Tensor w;  // lm_head, or the embedding when they are tied
  for (const auto& [name, t] : m.named_tensors())
    if (name == "lm_head.weight" || (name == "model.embed_tokens.weight" && !w.defined())) w = t.contiguous();
  auto x = torch::randn({batch, w.size(1)});
  auto out = torch::empty({batch, w.size(0)});
  auto time = [&](auto&& f) {
    f();
    auto t0 = Clock::now();
    for (int i = 0; i < 50; ++i) f();
    return std::chrono::duration<double>(Clock::now() - t0).count() / 50 * 1e3;
  };
  double blas = time([&] { torch::linear(x, w); });
  double kernel = time([&] { small_gemm(x.data_ptr<float>(), batch, w.data_ptr<float>(), w.size(0), w.size(1), out.data_ptr<float>()); });
  return {kernel, blas};
}

// vhost batch 1 tokens/s of a child process with `threads` threads, under OMP_WAIT_POLICY=policy
// (none: unset), with one core kept busy by a spinning process while it runs when `busy`.
static double child_tokens_per_s(const char* policy, bool busy, int threads, int64_t tokens, const std::string& preset) {
  pid_t spinner = -1;
  if (busy) {
    spinner = fork();
    if (spinner == 0) {
      volatile unsigned long x = 0;
      for (;;) x = x + 1;
    }
  }
  std::string cmd = std::string(policy ? std::string("OMP_WAIT_POLICY=") + policy + " " : std::string()) + "/proc/" +
                    std::to_string(getpid()) + "/exe --child 1 --threads " + std::to_string(threads) + " --tokens " +
                    std::to_string(tokens) + " --preset " + preset;
  double best = 0;
  if (FILE* f = popen(cmd.c_str(), "r")) {
    if (std::fscanf(f, "%lf", &best) != 1) best = 0;
    pclose(f);
  }
  if (spinner > 0) {
    kill(spinner, SIGKILL);
    waitpid(spinner, nullptr, 0);
  }
  return best;
}

// --decode-dtype auto|float32|bfloat16, as the llama plugin's decode_dtype: a bf16 checkpoint's
// products with bf16-rounded activations (bfloat16; vdpbf16ps where the CPU has it) or float32 ones;
// auto (the default, as the plugin's): bfloat16 where vdpbf16ps exists. --bf16-activations: bfloat16.
static std::string g_decode_dtype = "auto";

// Decoding steps of a real checkpoint: tokens/s after the first (prefill) step.
// The memory bound of a batch-1 decoding step: the bytes of the weights one step reads (every
// matrix the model holds, as it holds it -- mapped, or packed at load -- and the embedding only
// when it is also the output layer), summed by `threads` threads, each over a contiguous share of
// them, as the decode kernels split the rows. Returns bytes a second, the best of `passes` passes.
// Plain 8-byte loads in eight chains: on the 2-core development machine this streams as fast as
// 64-byte AVX-512 loads (both 35 GB/s on a mapped 6 GB file, same minute).
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("O3")))
#endif
static uint64_t sum_bytes(const uint8_t* p, std::size_t n) {
  uint64_t a[8] = {};
  std::size_t i = 0;
  for (; i + 64 <= n; i += 64)
    for (int j = 0; j < 8; ++j) {
      uint64_t v;
      std::memcpy(&v, p + i + 8 * j, 8);
      a[j] += v;
    }
  for (; i < n; ++i) a[0] += p[i];
  uint64_t s = 0;
  for (uint64_t v : a) s += v;
  return s;
}

static double stream_bytes_per_s(const std::vector<std::pair<const uint8_t*, std::size_t>>& ranges, int threads, int passes) {
  std::size_t total = 0;
  for (const auto& r : ranges) total += r.second;
  // Thread t reads the bytes [total * t / threads, total * (t + 1) / threads) of the ranges laid end to end.
  auto share = [&](int t) {
    const std::size_t lo = total * t / threads, hi = total * (t + 1) / threads;
    uint64_t s = 0;
    std::size_t at = 0;
    for (const auto& [p, n] : ranges) {
      const std::size_t b = std::max(at, lo), e = std::min(at + n, hi);
      if (b < e) s += sum_bytes(p + (b - at), e - b);
      at += n;
    }
    return s;
  };
  double best = 0;
  uint64_t sink = 0;
  for (int pass = 0; pass < passes; ++pass) {
    std::vector<uint64_t> sums(threads);
    auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back([&, t] { sums[t] = share(t); });
    sums[0] = share(0);
    for (auto& th : pool) th.join();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    for (uint64_t v : sums) sink += v;
    best = std::max(best, static_cast<double>(total) / s);
  }
  if (sink == 1) std::printf(" ");  // keeps the sums
  return best;
}

// Prints "memory bound T tokens/s (...)": the tokens/s of batch 1 if a step took only the time to
// stream the weights it reads; with got > 0, also what share of it `got` tokens/s is.
static void print_memory_bound(const LlamaModel& model, int threads, double got) {
  std::vector<std::pair<const uint8_t*, std::size_t>> ranges;
  double step_bytes = 0;
  for (const auto& t : step_weights(model)) {
    const auto n = static_cast<std::size_t>(t.numel() * t.element_size());
    ranges.push_back({static_cast<const uint8_t*>(t.data_ptr()), n});
    step_bytes += static_cast<double>(n);
  }
  stream_bytes_per_s(ranges, threads, 1);  // faults the pages in, if a step has not yet
  const double bw = stream_bytes_per_s(ranges, threads, 3);
  const double bound = bw / step_bytes;
  std::printf("  memory bound %.3f tokens/s  (a step reads %.2f GB of weights; %d threads streamed them at %.1f GB/s, "
              "best of 3 passes",
              bound, step_bytes / 1e9, threads, bw / 1e9);
  if (got > 0) std::printf("; batch 1 above: %.0f%% of it", 100 * got / bound);
  std::printf(")\n");
}

static int model_mode(const std::string& path, int threads, int64_t tokens, int64_t batch, int64_t prompt, bool bound_only) {
  auto t0 = Clock::now();
  // As the plugin on the CPU: the stored dtype, mapped; a GGUF's Q8_0 matrices kept as blocks.
  auto model = [&] {
    if (!is_gguf(path)) return LlamaModel::load(path);
    auto g = load_gguf_llama(path, small_gemm_supports(WeightType::q8_0));  // every block format needs what Q8_0 does
    return LlamaModel(g.config, std::move(g.tensors), path, torch::kCPU, dtype_from_name(g.config.torch_dtype));
  }();
  // As the plugin's quant_activations: float32 activations take the blocks in their plain layout.
  if (!*int8_dot_isa()) model.set_int8_activations(false);
  if (g_decode_dtype == "auto") model.set_auto_activations();
  if (g_decode_dtype == "bfloat16" && !model.set_bf16_activations(true))
    std::fprintf(stderr, "--decode-dtype bfloat16: not a bfloat16 model read in place; float32 activations\n");
  const double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
  c10::InferenceMode inference;
  double weight_bytes = 0;
  for (const auto& [name, t] : model.named_tensors()) weight_bytes += static_cast<double>(t.numel() * t.element_size());
  const auto& cfg = model.config();
  std::printf("bench/generate --model %s: %s%s, %lld layers, dim %lld, %.2f GB of weights, %d threads\n", path.c_str(),
              dtype_name(model.dtype()).c_str(), model.quantized_matrices() ? (" with " + quant_summary(model) + " matrices").c_str() : "", (long long)cfg.num_hidden_layers, (long long)cfg.hidden_size,
              weight_bytes / 1e9, threads);
  std::printf("  kernels: %s%s; load %.2f s\n", *small_gemm_isa() ? small_gemm_isa() : "libtorch",
              model.quantized_matrices() ? (*int8_dot_isa() ? " (blocks dequantised in registers; Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K as integer dot products with 8-bit activations, " + std::string(int8_dot_isa()) + ")" : std::string(" (blocks dequantised in registers, float32 activations)")).c_str()
              : model.bf16_activations() ? (" (bf16 activations: " + (*bf16_dot_isa() ? "vdpbf16ps" : std::string("widened")) + ")").c_str()
              : model.mixed_cpu() ? " (stored weights widened in registers, float32 activations)" : "", load_s);
  if (bound_only) {  // bench/large_model.sh: the bound again, right before llama.cpp's batch 1
    print_memory_bound(model, threads, 0);
    return 0;
  }
  for (int64_t b : {int64_t{1}, batch}) {
    {  // Untimed warm-up steps, as llama-bench's warm-up run: at least 2 and 0.25 s. libtorch's
       // set_num_threads starts a pthreadpool whose idle workers spin on the cores for tens of
       // milliseconds (perf: ~65 ms of CPU on this 2-core VM); on a small model the timed steps
       // began inside that.
      const int64_t slots = std::min<int64_t>(34, cfg.max_position_embeddings);
      auto warm = KVCache::create(cfg, b, slots, torch::TensorOptions().dtype(model.cache_dtype()));
      auto t = torch::ones({b, 1}, torch::kInt64);
      const auto w0 = Clock::now();
      for (int64_t i = 0; i + 2 < slots && (i < 2 || std::chrono::duration<double>(Clock::now() - w0).count() < 0.25); ++i)
        t = model.forward(t, &warm).argmax(-1);
    }
    auto cache = KVCache::create(cfg, b, tokens + 2, torch::TensorOptions().dtype(model.cache_dtype()));
    auto tok = torch::ones({b, 1}, torch::kInt64);
    auto s0 = Clock::now();
    tok = model.forward(tok, &cache).argmax(-1);  // the prompt's step
    const double first = std::chrono::duration<double>(Clock::now() - s0).count();
    auto s1 = Clock::now();
    for (int64_t i = 0; i < tokens; ++i) tok = model.forward(tok, &cache).argmax(-1);
    const double s = std::chrono::duration<double>(Clock::now() - s1).count();
    std::printf("  batch %-3lld %8.3f tokens/s  (%lld steps, %.2f s a step; the prompt's step %.2f s)\n", (long long)b,
                b * tokens / s, (long long)tokens, s / tokens, first);
    // The bound right after the steps it bounds (this VM's bandwidth moves by tens of percent
    // within minutes).
    if (b == 1) print_memory_bound(model, threads, b * tokens / s);
    if (b == batch) break;
  }
  if (prompt > 0) {  // one prompt of `prompt` tokens in one forward (llama-bench's pp test)
    auto cache = KVCache::create(cfg, 1, prompt + 2, torch::TensorOptions().dtype(model.cache_dtype()));
    auto ids = torch::randint(3, cfg.vocab_size, {1, prompt}, torch::kInt64);
    auto s0 = Clock::now();
    model.forward(ids, &cache);
    const double s = std::chrono::duration<double>(Clock::now() - s0).count();
    std::printf("  prompt %-4lld %8.3f tokens/s  (%.2f s)\n", (long long)prompt, prompt / s, s);
  }
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  const double peak = static_cast<double>(ru.ru_maxrss) * 1024;
  std::printf("  peak RSS %.2f GB (%.2fx the weights)\n", peak / 1e9, peak / weight_bytes);
  return 0;
}

// small_gemm of M = 1, 4, 8, 16 rows against W [N, K] of `bytes` bytes: a line of weight bytes
// streamed per second, from the median call of g_gemm_reps (10 by default, --reps) after one to
// warm up: the median, as this shared VM's neighbours slow some calls by 2x.
// With copies > 1, call i reads copy i % copies of W (each `stride` bytes after the last): the
// weights come from memory, not from the last-level cache, as in a model's step.
static int g_gemm_reps = 10;
static std::string g_gemm_only;  // --only: the formats named (bf16,q4_k,q6_k), the others not measured
// The quantized formats --gemm measures, in its order.
static const WeightType kGemmQuant[] = {WeightType::q8_0, WeightType::q4_0, WeightType::q4_1, WeightType::q5_0,
                                        WeightType::q5_1, WeightType::q4_k, WeightType::q5_k, WeightType::q6_k};
static void print_gemm_rows(WeightsRef W, int64_t N, int64_t K, double bytes, int copies = 1, int64_t stride = 0) {
  for (int64_t M : {1, 4, 8, 16}) {
    auto A = torch::randn({M, K}), C = torch::empty({M, N});
    int i = 0;
    auto call = [&] {
      WeightsRef w = W;
      w.data = static_cast<const char*>(W.data) + (i++ % copies) * stride;
      small_gemm(A.data_ptr<float>(), M, w, N, K, C.data_ptr<float>());
    };
    call();
    const int reps = std::max(g_gemm_reps, copies);
    std::vector<double> times;
    for (int r = 0; r < reps; ++r) {
      auto t0 = Clock::now();
      call();
      times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::nth_element(times.begin(), times.begin() + reps / 2, times.end());
    const double s = times[reps / 2];
    std::printf("  M=%-2lld %6.1f GB/s (%.2f ms)", (long long)M, bytes / s / 1e9, s * 1e3);
  }
  std::printf("\n");
}

// print_gemm_rows on copies of W's `bytes` bytes filling 512 MB (at least two), read one after
// another: the rate from memory, as a model's step reads its weights, not from the last-level cache.
static void print_gemm_rows_mem(WeightsRef W, int64_t N, int64_t K, std::size_t bytes) {
  const int copies = static_cast<int>(std::max<std::size_t>(2, (std::size_t(512) << 20) / bytes));
  std::vector<uint8_t> many(bytes * copies);
  for (int c = 0; c < copies; ++c) std::memcpy(many.data() + c * bytes, W.data, bytes);
  WeightsRef w = W;
  w.data = many.data();
  print_gemm_rows(w, N, K, static_cast<double>(bytes), copies, static_cast<int64_t>(bytes));
}

// small_gemm alone on one [N, K] weight matrix in float32, bfloat16, float16 and the quantized
// formats: weight bytes streamed per second.
static int gemm_mode(int64_t N, int64_t K, int threads) {
  // --only's names, each one of the formats measured below.
  std::set<std::string> only;
  for (std::size_t at = 0; !g_gemm_only.empty() && at <= g_gemm_only.size();) {
    const std::size_t end = std::min(g_gemm_only.find(',', at), g_gemm_only.size());
    const std::string name = g_gemm_only.substr(at, end - at);
    if (name != "f32" && name != "bf16" && name != "f16" &&
        std::none_of(std::begin(kGemmQuant), std::end(kGemmQuant), [&](WeightType t) { return name == quant_format(t)->name; })) {
      std::fprintf(stderr, "bench_generate: --only: '%s' is not one of f32, bf16, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k\n",
                   name.c_str());
      return 2;
    }
    only.insert(name);
    at = end + 1;
  }
  std::printf("bench/generate --gemm %lld %lld: small_gemm (%s), %d threads, GB/s of weights (ms a call)\n", (long long)N,
              (long long)K, small_gemm_isa(), threads);
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    if (!only.empty() && !only.count(dt == torch::kBFloat16 ? "bf16" : dt == torch::kFloat16 ? "f16" : "f32")) continue;
    auto w32 = torch::randn({N, K}) * 0.02;
    auto W = w32.to(dt).contiguous();
    const WeightType wt = dt == torch::kBFloat16 ? WeightType::bf16 : dt == torch::kFloat16 ? WeightType::f16 : WeightType::f32;
    std::printf("  %-9s", dtype_name(dt).c_str());
    print_gemm_rows(WeightsRef(W.data_ptr(), wt), N, K, static_cast<double>(W.numel() * W.element_size()));
    if (dt == torch::kBFloat16 && *bf16_dot_isa()) {  // the same weights against bf16-rounded activations
      std::printf("  %-9s", "bf16 dot");
      print_gemm_rows(WeightsRef(W.data_ptr(), wt, true, true), N, K, static_cast<double>(W.numel() * W.element_size()));
    }
    if (dt == torch::kBFloat16) {  // both again from memory
      const std::size_t bytes = static_cast<std::size_t>(W.numel() * W.element_size());
      std::printf("  %-9s", "bf16 mem");
      print_gemm_rows_mem(WeightsRef(W.data_ptr(), wt), N, K, bytes);
      if (*bf16_dot_isa()) {
        std::printf("  %-9s", "dot mem");
        print_gemm_rows_mem(WeightsRef(W.data_ptr(), wt, true, true), N, K, bytes);
      }
    }
  }
  // Quantized blocks: random bytes with finite float16 scales (the speed does not depend on the
  // values); each by its integer kernel (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) and by the float32 path.
  for (WeightType t : kGemmQuant) {
    const QuantFormat& f = *quant_format(t);
    if (K % f.block_elems) continue;
    if (!only.empty() && !only.count(f.name)) continue;
    std::vector<uint8_t> blocks(static_cast<std::size_t>(N * K / f.block_elems * f.block_bytes));
    uint32_t x = 1;
    for (auto& b : blocks) b = static_cast<uint8_t>((x = x * 1664525u + 1013904223u) >> 24);
    const int64_t scale_at = t == WeightType::q6_k ? 208 : 0;
    for (int64_t i = 0; i < N * K / f.block_elems; ++i) {
      const uint16_t h = fp16_from_float(0.01f);
      std::memcpy(blocks.data() + i * f.block_bytes + scale_at, &h, 2);
      if (t == WeightType::q4_k || t == WeightType::q5_k || t == WeightType::q4_1 || t == WeightType::q5_1)
        std::memcpy(blocks.data() + i * f.block_bytes + 2, &h, 2);  // dmin, m
    }
    for (bool int8 : {true, false}) {
      set_int8_activations(int8);
      const bool has_int = t == WeightType::q8_0 || t == WeightType::q4_0 || t == WeightType::q4_1 || t == WeightType::q5_0 ||
                           t == WeightType::q5_1 || t == WeightType::q4_k ||
                           t == WeightType::q5_k || t == WeightType::q6_k;
      std::printf("  %-4s %-5s", f.name, int8 && *int8_dot_isa() && has_int ? "int8" : "f32");
      print_gemm_rows(WeightsRef(blocks.data(), t), N, K, static_cast<double>(blocks.size()));
      if (!has_int) break;
    }
    set_int8_activations(true);
    if (packs_x8(t) && N % 8 == 0) {  // the eight-row interleaving a model packs Q4_0 / Q8_0 / Q4_K / Q5_K / Q6_K into
      std::vector<uint8_t> packed(blocks.size());
      pack_x8(t, blocks.data(), N, K, packed.data());
      std::printf("  %-4s %-5s", f.name, "x8");
      print_gemm_rows(WeightsRef(packed.data(), packed_x8(t)), N, K, static_cast<double>(packed.size()));
      std::printf("  %-4s %-5s", f.name, "x8mem");
      print_gemm_rows_mem(WeightsRef(packed.data(), packed_x8(t)), N, K, packed.size());
    }
  }
  return 0;
}

static int run(int argc, char** argv) {
  int threads = 2;
  int64_t tokens = 128, batch = 16;
  std::string preset = "stories15m", bf16_kernel;
  bool child = false, wait_policy = true;
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--no-wait-policy")) wait_policy = false;
  // --float-activations: Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K weights widened to float32 in registers instead of the
  // integer dot products (an A/B run of the two paths on one file).
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--float-activations")) vhost::llama::set_int8_activations(false);
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--bf16-activations")) g_decode_dtype = "bfloat16";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--child")) child = true;
    if (!std::strcmp(argv[i], "--gemm")) ++i;  // two values: N K
    if (!std::strcmp(argv[i], "--no-wait-policy") || !std::strcmp(argv[i], "--float-activations") ||
        !std::strcmp(argv[i], "--bf16-activations") || !std::strcmp(argv[i], "--memory-bound"))
      --i;
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--tokens")) tokens = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--batch")) batch = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--preset")) preset = argv[i + 1];
    if (!std::strcmp(argv[i], "--bf16-kernel")) bf16_kernel = argv[i + 1];
    if (!std::strcmp(argv[i], "--reps")) g_gemm_reps = std::max(1, std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--only")) g_gemm_only = argv[i + 1];
    if (!std::strcmp(argv[i], "--decode-dtype")) {
      g_decode_dtype = argv[i + 1];
      if (g_decode_dtype != "auto" && g_decode_dtype != "float32" && g_decode_dtype != "bfloat16") {
        std::fprintf(stderr, "--decode-dtype %s: expected auto, float32 or bfloat16\n", argv[i + 1]);
        return 2;
      }
    }
    if (!std::strcmp(argv[i], "--kernels") && !vhost::llama::select_kernels(argv[i + 1])) {
      std::fprintf(stderr, "--kernels %s: not runnable on this CPU (avx2, avx512)\n", argv[i + 1]);
      return 2;
    }
  }
  torch::set_num_threads(threads);
  for (int i = 1; i + 2 < argc; ++i)
    if (!std::strcmp(argv[i], "--gemm")) return gemm_mode(std::atoll(argv[i + 1]), std::atoll(argv[i + 2]), threads);
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], "--model")) {
      int64_t t = 8;
      for (int j = 1; j + 1 < argc; ++j)
        if (!std::strcmp(argv[j], "--tokens")) t = tokens;
      int64_t prompt = 0;
      for (int j = 1; j + 1 < argc; ++j)
        if (!std::strcmp(argv[j], "--prompt")) prompt = std::atoll(argv[j + 1]);
      bool bound_only = false;
      for (int j = 1; j < argc; ++j) bound_only |= !std::strcmp(argv[j], "--memory-bound");
      return model_mode(argv[i + 1], threads, t, batch, prompt, bound_only);
    }
  auto cfg = LlamaConfig::preset(preset);
  auto model = LlamaModel::random(cfg, 0);
  if (child) {  // one number: the best of three batch-1 runs
    double v = 0;
    for (int run = 0; run < 3; ++run) v = std::max(v, vhost_tokens_per_s(model, 1, tokens));
    std::printf("%.3f\n", v);
    return 0;
  }
  std::printf("bench/generate: %s shape (dim %lld, %lld layers, %lld heads, vocab %lld), float32, %d threads, "
              "%lld new tokens\n",
              preset.c_str(), (long long)cfg.hidden_size, (long long)cfg.num_hidden_layers, (long long)cfg.num_attention_heads,
              (long long)cfg.vocab_size, threads, (long long)tokens);
  // Each the best of three runs, interleaved: a shared machine's slow moments hit one run, not
  // one configuration.
  if (!bf16_kernel.empty() && !select_bf16_gemm(bf16_kernel.c_str())) {
    std::fprintf(stderr, "--bf16-kernel %s: not runnable on this CPU (amx, avx512bf16, avx512, avx2)\n", bf16_kernel.c_str());
    return 2;
  }
  LlamaModel bf16 = model;
  const bool bf = bf16.enable_bf16_decode();
  double base1 = 0, v1 = 0, vb = 0, h1 = 0, hb = 0;
  for (int run = 0; run < 3; ++run) {
    base1 = std::max(base1, naive_tokens_per_s(model, 1, tokens));
    v1 = std::max(v1, vhost_tokens_per_s(model, 1, tokens));
    vb = std::max(vb, vhost_tokens_per_s(model, batch, tokens));
    if (bf) {
      h1 = std::max(h1, vhost_tokens_per_s(bf16, 1, tokens));
      hb = std::max(hb, vhost_tokens_per_s(bf16, batch, tokens));
    }
  }
  std::printf("naive eager baseline, batch 1:  %8.1f tokens/s\n", base1);
  std::printf("vhost generate, batch 1:        %8.1f tokens/s   (%.2fx baseline)\n", v1, v1 / base1);
  std::printf("vhost generate, batch %-3lld       %8.1f tokens/s   (%.2fx batch 1)\n", (long long)batch, vb, vb / v1);
  if (bf) {
    std::printf("bf16 weights (%s), batch 1:    %8.1f tokens/s   (%.2fx baseline, %.2fx float32)\n", bf16_gemm_isa(), h1, h1 / base1, h1 / v1);
    std::printf("bf16 weights (%s), batch %-3lld   %8.1f tokens/s   (%.2fx bf16 batch 1, %.2fx float32 batch 1)\n",
                bf16_gemm_isa(), (long long)batch, hb, hb / h1, hb / v1);
  } else {
    std::printf("bf16 weights: not run, no bfloat16 kernel for this CPU\n");
  }
  if (*small_gemm_isa()) {
    auto [kernel, blas] = output_layer_ms(model, batch);
    std::printf("output layer at batch %lld: small_gemm (%s) %.3f ms, torch::linear %.3f ms (%.2fx)\n", (long long)batch,
                small_gemm_isa(), kernel, blas, blas / kernel);
  }
  if (wait_policy && threads > 1) {
    const double idle = child_tokens_per_s(nullptr, false, threads, tokens, preset);
    const double spin = child_tokens_per_s(nullptr, true, threads, tokens, preset);
    const double passive = child_tokens_per_s("PASSIVE", true, threads, tokens, preset);
    const double fewer = child_tokens_per_s(nullptr, true, threads - 1, tokens, preset);
    std::printf("another process busy on one core, vhost batch 1 (idle, %d threads: %.1f tokens/s):\n", threads, idle);
    std::printf("  %d threads (the default before):          %8.1f tokens/s (%.2fx idle)\n", threads, spin, spin / idle);
    std::printf("  %d threads, OMP_WAIT_POLICY=PASSIVE:       %8.1f tokens/s (%.2fx idle)\n", threads, passive, passive / idle);
    std::printf("  %d thread%s (the cpu backend's default now): %8.1f tokens/s (%.2fx idle, %.2fx the default before)\n",
                threads - 1, threads - 1 == 1 ? "" : "s", fewer, fewer / idle, fewer / spin);
  }
  return 0;
}

// A bad file or a request the model cannot take (more --tokens than its context) is an error
// message and exit status 2, not std::terminate.
int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "bench_generate: %s\n", e.what());
    return 2;
  }
}
