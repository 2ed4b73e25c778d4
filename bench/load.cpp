// bench/load: how long a checkpoint takes to load, against reading its files from disk in the
// same run. Loading should be bounded by the reads: safetensors are memory-mapped and the model
// uses the mapped bytes as they are when the stored dtype is the compute dtype.
//
//   bench_load --dir DIR [--preset 7b] [--dtype bfloat16]
// Writes a random checkpoint of the preset into DIR first if DIR has none. Before each timed
// pass the files are dropped from the page cache (posix_fadvise DONTNEED), so both read the disk.
#include "model.hpp"
#include "safetensors.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

using namespace vhost::llama;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

static std::vector<fs::path> weight_files(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") out.push_back(e.path());
  return out;
}

static void drop_cache(const std::vector<fs::path>& files) {
  for (const auto& f : files) {
    int fd = ::open(f.c_str(), O_RDONLY);
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

int main(int argc, char** argv) {
  fs::path dir;
  std::string preset = "7b", dtype_name_s = "bfloat16";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--dir")) dir = argv[i + 1];
    if (!std::strcmp(argv[i], "--preset")) preset = argv[i + 1];
    if (!std::strcmp(argv[i], "--dtype")) dtype_name_s = argv[i + 1];
  }
  if (dir.empty()) {
    std::fprintf(stderr, "usage: bench_load --dir DIR [--preset 7b] [--dtype bfloat16]\n");
    return 2;
  }
  torch::set_num_threads(2);
  auto dtype = dtype_from_name(dtype_name_s);
  if (!fs::exists(dir / "config.json")) {
    // Tensor by tensor, straight into the storage dtype: a 7B model never exists in float32.
    auto cfg = LlamaConfig::preset(preset);
    cfg.torch_dtype = dtype_name(dtype);
    std::vector<std::pair<std::string, torch::Tensor>> shard;
    int64_t bytes = 0, n = 0;
    auto gen = at::detail::createCPUGenerator(0);
    fs::create_directories(dir);
    nlohmann::json index = {{"weight_map", nlohmann::json::object()}};
    auto flush = [&] {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05lld.safetensors", (long long)++n);
      save_safetensors(dir / name, shard, {{"format", "pt"}});
      for (const auto& [k, t] : shard) index["weight_map"][k] = name;
      shard.clear();
      bytes = 0;
    };
    auto t0 = Clock::now();
    for (const auto& [name, shape] : LlamaModel::expected_tensors(cfg)) {
      auto t = (shape.size() == 1 ? torch::ones(shape) : torch::empty(shape).uniform_(-0.03, 0.03, gen)).to(dtype);
      bytes += t.numel() * t.element_size();
      shard.emplace_back(name, t);
      if (bytes > (int64_t(2) << 30)) flush();
    }
    if (!shard.empty()) flush();
    std::ofstream(dir / "model.safetensors.index.json") << index.dump() << "\n";
    std::ofstream(dir / "config.json") << cfg.to_json().dump(2) << "\n";
    std::printf("wrote %s (%s, %s) in %.1f s\n", dir.c_str(), preset.c_str(), dtype_name(dtype).c_str(),
                std::chrono::duration<double>(Clock::now() - t0).count());
  }
  auto files = weight_files(dir);
  double total = 0;
  for (const auto& f : files) total += static_cast<double>(fs::file_size(f));

  // Baseline: read every byte of the files with read(2), 8 MiB at a time.
  drop_cache(files);
  std::vector<char> buf(8 << 20);
  auto t0 = Clock::now();
  for (const auto& f : files) {
    int fd = ::open(f.c_str(), O_RDONLY);
    while (::read(fd, buf.data(), buf.size()) > 0) {
    }
    ::close(fd);
  }
  double read_s = std::chrono::duration<double>(Clock::now() - t0).count();

  // vhost: load, then touch every weight (a mapped file is read when first used).
  drop_cache(files);
  t0 = Clock::now();
  auto model = LlamaModel::load(dir, torch::kCPU, dtype);
  double open_s = std::chrono::duration<double>(Clock::now() - t0).count();
  // One byte of every page: forces each mapped page in, without timing arithmetic.
  unsigned long checksum = 0;
  for (const auto& [name, t] : model.named_tensors()) {
    const volatile unsigned char* p = static_cast<const unsigned char*>(t.data_ptr());
    const std::size_t n = t.numel() * t.element_size();
    for (std::size_t i = 0; i < n; i += 4096) checksum += p[i];
  }
  double load_s = std::chrono::duration<double>(Clock::now() - t0).count();

  std::printf("bench/load: %s, %.2f GB in %zu files\n", dir.c_str(), total / 1e9, files.size());
  std::printf("read(2) every byte (baseline):      %6.2f s  %5.2f GB/s\n", read_s, total / 1e9 / read_s);
  std::printf("vhost load (%.2f s) + touch weights:  %6.2f s  %5.2f GB/s  (%.2fx baseline time)  [checksum %lu]\n",
              open_s, load_s, total / 1e9 / load_s, load_s / read_s, checksum);
  return 0;
}
