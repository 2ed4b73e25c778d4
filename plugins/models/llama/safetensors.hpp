// Reading and writing HF safetensors files: an 8-byte little-endian header length, a JSON header
// ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}), then the
// data. Reading maps the file and hands out tensors that view the mapping (no copy).
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace vhost::llama {

class SafetensorsFile {
 public:
  struct Entry {
    std::string dtype;  // "F32", "F16", "BF16", ...
    std::vector<int64_t> shape;
    std::size_t begin = 0, end = 0;  // offsets into the data section
  };

  // Maps and validates the file; throws vhost::Error naming the file (and tensor) on any defect:
  // truncation, a header that is not JSON or lies about offsets, overlapping tensors, dtypes
  // vhost cannot read.
  explicit SafetensorsFile(const std::filesystem::path& file);

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, Entry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }
  // A CPU tensor viewing the mapping (copy-on-write: writing to it never touches the file).
  torch::Tensor get(const std::string& name) const;

 private:
  struct Mapping;
  std::filesystem::path path_;
  std::shared_ptr<Mapping> map_;
  std::size_t data_start_ = 0;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors (made contiguous, moved to CPU) atomically: to a temporary file that is renamed
// into place, so a crash never leaves a torn file under the final name.
void save_safetensors(const std::filesystem::path& file,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

std::string safetensors_dtype(c10::ScalarType t);

}  // namespace vhost::llama
