// Reading and writing HF safetensors files: an 8-byte little-endian header length, a JSON header
// ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}), then the
// data. Reading maps the file and hands out tensors that view the mapping (no copy).
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
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
  std::filesystem::path path_;
  std::shared_ptr<char> map_;  // the mapped file (map_file)
  std::size_t data_start_ = 0;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Streams tensors into a safetensors file whose header is known up front (names, dtypes,
// shapes), so that a writer never holds more than the tensor it is writing: a sharded trainer
// saves unit by unit. Writes to FILE.tmp, which finish() makes durable and renames into place;
// an unfinished writer removes it. Errors name the file.
class SafetensorsWriter {
 public:
  struct Spec {
    std::string name;
    c10::ScalarType dtype;
    std::vector<int64_t> shape;
  };
  SafetensorsWriter(std::filesystem::path file, const std::vector<Spec>& specs,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  // The next tensor in the order of `specs` (converted to the spec's dtype, moved to CPU).
  void write(const torch::Tensor& t);
  void finish();

 private:
  std::filesystem::path file_, tmp_;
  std::vector<Spec> specs_;
  std::size_t next_ = 0;
  std::unique_ptr<std::ofstream> out_;
};

// Writes tensors (made contiguous, moved to CPU) atomically: to a temporary file that is renamed
// into place, so a crash never leaves a torn file under the final name.
void save_safetensors(const std::filesystem::path& file,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

std::string safetensors_dtype(c10::ScalarType t);

// The whole of `file` mapped private and writable (tensors viewing it may be changed in place,
// by training, without touching the file), unmapped when the last owner lets go; `size` gets
// its length. An empty file gives nullptr (nothing to map). Errors name the file. Safetensors and
// GGUF files are read through it.
std::shared_ptr<char> map_file(const std::filesystem::path& file, std::size_t& size);

}  // namespace vhost::llama
