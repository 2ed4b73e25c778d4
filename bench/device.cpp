// bench/device: the llama plugin's model on a libtorch device (cuda:N, or cpu), for
// scripts/gpu-check.sh: what `vhost generate` alone cannot show on a GPU.
//
//   bench_device decode CKPT [--device cuda:0] [--dtype bfloat16] [--batch 1,16,64] [--tokens 64]
//       greedy decoding steps after a one-token prompt, at each batch: tokens/s of the steps alone,
//       beside the device's memory bound: the bytes of weights a step reads over the device's
//       copy bandwidth measured in the same run (read + write bytes of a 1 GiB copy a second),
//       i.e. the batch-1 tokens/s no program can pass. One JSON object a line on stdout.
//   bench_device logits CKPT --out FILE [--device cuda:0] [--dtype float32] [--ids JSON] [--greedy 64]
//       the logits of token ids (default: the two rows of the in-tree reference test) in one
//       forward, and the greedy continuation of the first row (through the KV cache, one token a
//       step, as a decoder runs) into FILE, in the format tests/reference/hf_compare.py reads.
//
// A device this libtorch cannot use, a checkpoint that does not load, bad flags: one line naming
// the flag or the file on stderr, exit status 2.
#include "model.hpp"
#include "step_weights.hpp"

#include <torch/cuda.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

using namespace vhost::llama;
using Clock = std::chrono::steady_clock;

namespace {

struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize(d.index());
}

torch::Device parse_device(const std::string& s) {
  torch::Device d = torch::kCPU;
  try {
    d = torch::Device(s);
  } catch (const std::exception&) {
    throw Usage("--device: '" + s + "' is not a device (cpu, cuda, cuda:N)");
  }
  if (d.is_cuda()) {
    const auto n = torch::cuda::device_count();
    if (n == 0)
      throw Usage("--device " + s + ": no CUDA device visible to this libtorch (a build without CUDA, or no GPU here)");
    if (d.has_index() && d.index() >= static_cast<int>(n))
      throw Usage("--device " + s + ": only " + std::to_string(n) + " CUDA device(s) visible");
    if (!d.has_index()) d = torch::Device(torch::kCUDA, 0);
  } else if (!d.is_cpu()) {
    throw Usage("--device " + s + ": only cpu and cuda devices are measured here");
  }
  return d;
}

torch::ScalarType parse_dtype(const std::string& s) {
  static const std::map<std::string, torch::ScalarType> names = {
      {"float32", torch::kFloat32}, {"bfloat16", torch::kBFloat16}, {"float16", torch::kFloat16}};
  auto it = names.find(s);
  if (it == names.end()) throw Usage("--dtype: '" + s + "' is not float32, bfloat16 or float16");
  return it->second;
}

std::vector<int64_t> parse_batches(const std::string& s) {
  std::vector<int64_t> out;
  std::size_t at = 0;
  while (at <= s.size()) {
    const std::size_t comma = s.find(',', at);
    const std::string part = s.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    char* end = nullptr;
    const long long v = std::strtoll(part.c_str(), &end, 10);
    if (part.empty() || *end || v < 1 || v > 4096) throw Usage("--batch: '" + s + "' is not a list of batch sizes 1..4096 (e.g. 1,16,64)");
    out.push_back(v);
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

int64_t parse_count(const std::string& flag, const std::string& s, int64_t lo, int64_t hi) {
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end || v < lo || v > hi)
    throw Usage(flag + ": '" + s + "' is not a whole number in " + std::to_string(lo) + ".." + std::to_string(hi));
  return v;
}

// Bytes a decoding step reads (step_weights.hpp).
double step_bytes(const LlamaModel& m) {
  double bytes = 0;
  for (const auto& t : step_weights(m)) bytes += static_cast<double>(t.numel() * t.element_size());
  return bytes;
}

// Read + write bytes a second of copying 1 GiB (64 MiB on the CPU) on the device, best of 3 rounds.
double copy_bandwidth(const torch::Device& d) {
  const int64_t n = d.is_cuda() ? (int64_t(1) << 30) : (int64_t(64) << 20);
  auto x = torch::ones({n}, torch::TensorOptions().dtype(torch::kUInt8).device(d)), y = torch::empty_like(x);
  double best = 0;
  for (int round = 0; round < 4; ++round) {
    sync(d);
    auto t0 = Clock::now();
    for (int i = 0; i < 10; ++i) y.copy_(x);
    sync(d);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (round > 0) best = std::max(best, 2.0 * 10 * static_cast<double>(n) / s);  // round 0 warms up
  }
  return best;
}

int decode(const LlamaModel& model, const torch::Device& d, const std::vector<int64_t>& batches, int64_t tokens,
           double load_s) {
  c10::InferenceMode inference;
  const auto& cfg = model.config();
  const double bytes = step_bytes(model), bw = copy_bandwidth(d);
  const double bound = bw / bytes;
  nlohmann::json head = {{"device", d.str()}, {"dtype", dtype_name(model.dtype())}, {"layers", cfg.num_hidden_layers},
                         {"hidden", cfg.hidden_size}, {"step_weight_bytes", bytes}, {"copy_bytes_per_s", bw},
                         {"bound_tokens_per_s", bound}, {"load_s", load_s}};
  std::printf("%s\n", head.dump().c_str());
  for (int64_t b : batches) {
    auto opts = torch::TensorOptions().dtype(model.cache_dtype()).device(d);
    auto run = [&](int64_t steps) {
      auto cache = KVCache::create(cfg, b, steps + 2, opts);
      auto tok = torch::ones({b, 1}, torch::TensorOptions().dtype(torch::kInt64).device(d));
      tok = model.forward(tok, &cache).argmax(-1);  // the prompt's step
      sync(d);
      auto t0 = Clock::now();
      for (int64_t i = 0; i < steps; ++i) tok = model.forward(tok, &cache).argmax(-1);
      sync(d);
      return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    run(2);  // allocator, kernels' first launches
    const double s = run(tokens);
    const double tps = static_cast<double>(b * tokens) / s;
    // bound_fraction: the time a step's weights take to stream over the step's time (at batch 1,
    // tokens/s over the bound).
    nlohmann::json row = {{"batch", b}, {"steps", tokens}, {"tokens_per_s", tps}, {"step_ms", 1e3 * s / tokens},
                          {"bound_fraction", (tps / static_cast<double>(b)) / bound}};
    std::printf("%s\n", row.dump().c_str());
    std::fflush(stdout);
  }
  return 0;
}

int logits(const LlamaModel& model, const torch::Device& d, std::vector<std::vector<int64_t>> ids, int64_t greedy,
           const std::string& out) {
  c10::InferenceMode inference;
  const int64_t V = model.config().vocab_size;
  const std::size_t T = ids.at(0).size();
  for (std::size_t r = 0; r < ids.size(); ++r) {
    if (ids[r].size() != T || T == 0) throw Usage("--ids: every row must have the same, non-zero length");
    for (int64_t v : ids[r])
      if (v < 0 || v >= V) throw Usage("--ids: token " + std::to_string(v) + " is outside the vocabulary of " + std::to_string(V));
  }
  std::vector<int64_t> flat;
  for (const auto& r : ids) flat.insert(flat.end(), r.begin(), r.end());
  auto tokens = torch::tensor(flat, torch::kInt64).view({static_cast<int64_t>(ids.size()), static_cast<int64_t>(T)}).to(d);
  auto l = model.forward(tokens).to(torch::kFloat32).cpu().contiguous();
  nlohmann::json rows = nlohmann::json::array();
  const float* p = l.data_ptr<float>();
  for (int64_t b = 0; b < l.size(0); ++b) {
    nlohmann::json seq = nlohmann::json::array();
    for (int64_t t = 0; t < l.size(1); ++t, p += l.size(2)) seq.push_back(std::vector<float>(p, p + l.size(2)));
    rows.push_back(seq);
  }
  std::vector<int64_t> cont;
  if (greedy > 0) {  // row 0, one token a step through the KV cache
    auto cache = KVCache::create(model.config(), 1, static_cast<int64_t>(T) + greedy + 1,
                                 torch::TensorOptions().dtype(model.cache_dtype()).device(d));
    auto tok = model.forward(tokens.slice(0, 0, 1), &cache, torch::Tensor(), true).select(1, -1).argmax(-1).view({1, 1});
    std::vector<torch::Tensor> steps{tok};
    for (int64_t i = 1; i < greedy; ++i) steps.push_back(tok = model.forward(tok, &cache).argmax(-1));
    auto all = torch::cat(steps, 1).cpu();
    cont.assign(all.data_ptr<int64_t>(), all.data_ptr<int64_t>() + all.numel());
  }
  nlohmann::json j = {{"ids", ids}, {"logits", rows}, {"device", d.str()}, {"dtype", dtype_name(model.dtype())}};
  if (greedy > 0) j["greedy"] = cont;
  std::ofstream f(out);
  f << j.dump();
  f.close();
  if (!f) throw std::runtime_error(out + ": write failed");
  std::printf("bench_device logits: %zu x %zu positions on %s in %s%s -> %s\n", ids.size(), T, d.str().c_str(),
              dtype_name(model.dtype()).c_str(), greedy > 0 ? (", " + std::to_string(greedy) + " greedy tokens").c_str() : "",
              out.c_str());
  return 0;
}

int run(int argc, char** argv) {
  if (argc < 3 || (std::strcmp(argv[1], "decode") && std::strcmp(argv[1], "logits")))
    throw Usage("usage: bench_device decode|logits CHECKPOINT_DIR [--device D] [--dtype T] ... (see bench/device.cpp)");
  const std::string mode = argv[1], ckpt = argv[2];
  std::string device = "cuda:0", dtype = mode == "logits" ? "float32" : "bfloat16", batch = "1,16,64", out, ids_json;
  int64_t tokens = 64, greedy = 0;
  for (int i = 3; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) throw Usage(a + ": needs a value");
    const std::string v = argv[++i];
    if (a == "--device") device = v;
    else if (a == "--dtype") dtype = v;
    else if (a == "--batch" && mode == "decode") batch = v;
    else if (a == "--tokens" && mode == "decode") tokens = parse_count(a, v, 1, 100000);
    else if (a == "--out" && mode == "logits") out = v;
    else if (a == "--ids" && mode == "logits") ids_json = v;
    else if (a == "--greedy" && mode == "logits") greedy = parse_count(a, v, 0, 100000);
    else throw Usage(a + ": not a flag of bench_device " + mode);
  }
  const torch::Device d = parse_device(device);
  const torch::ScalarType dt = parse_dtype(dtype);
  const auto batches = parse_batches(batch);
  if (mode == "logits" && out.empty()) throw Usage("bench_device logits: --out FILE is required");
  std::vector<std::vector<int64_t>> ids = {{1, 17, 200, 3, 99, 42, 7, 311}, {1, 5, 5, 5, 480, 2, 64, 128}};
  if (!ids_json.empty()) {
    try {
      ids = nlohmann::json::parse(ids_json).get<std::vector<std::vector<int64_t>>>();
    } catch (const std::exception& e) {
      throw Usage("--ids: not a JSON array of rows of token ids (" + std::string(e.what()) + ")");
    }
    if (ids.empty()) throw Usage("--ids: no rows");
  }
  auto t0 = Clock::now();
  LlamaModel model = [&] {
    try {
      return LlamaModel::load(ckpt, d, dt);
    } catch (const std::exception& e) {
      throw Usage(ckpt + ": " + std::string(e.what()).substr(0, 400));
    }
  }();
  sync(d);
  const double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
  return mode == "decode" ? decode(model, d, batches, tokens, load_s) : logits(model, d, ids, greedy, out);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Usage& e) {
    std::fprintf(stderr, "bench_device: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_device: %s\n", e.what());
    return 1;
  }
}
