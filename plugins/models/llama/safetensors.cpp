#include "safetensors.hpp"

#include <vhost/plugin.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

namespace vhost::llama {

namespace {

struct DType {
  const char* name;
  c10::ScalarType type;
  std::size_t size;
};
const DType kDTypes[] = {{"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2}, {"BF16", torch::kBFloat16, 2},
                         {"F64", torch::kFloat64, 8}, {"I64", torch::kInt64, 8},   {"I32", torch::kInt32, 4},
                         {"I16", torch::kInt16, 2},   {"I8", torch::kInt8, 1},     {"U8", torch::kUInt8, 1},
                         {"BOOL", torch::kBool, 1}};

const DType* find_dtype(const std::string& name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

[[noreturn]] void fail(const std::filesystem::path& file, const std::string& what) {
  throw vhost::Error(VHOST_ERR_IO, file.string() + ": " + what);
}

}  // namespace

std::string safetensors_dtype(c10::ScalarType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d.name;
  throw vhost::Error(VHOST_ERR_UNSUPPORTED, std::string("safetensors cannot store dtype ") + c10::toString(t));
}

std::shared_ptr<char> map_file(const std::filesystem::path& file, std::size_t& size) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(file, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    fail(file, std::string("cannot stat: ") + std::strerror(errno));
  }
  size = static_cast<std::size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return nullptr;
  }
  void* addr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (addr == MAP_FAILED) fail(file, std::string("cannot map: ") + std::strerror(errno));
  const std::size_t n = size;
  return std::shared_ptr<char>(static_cast<char*>(addr), [n](char* p) { munmap(p, n); });
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& file) : path_(file) {
  std::size_t size = 0;
  map_ = map_file(file, size);
  if (size < 8) fail(file, "truncated: " + std::to_string(size) + " bytes, too short for the 8-byte header length");
  const auto* bytes = reinterpret_cast<const unsigned char*>(map_.get());

  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > size - 8)
    fail(file, "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                   std::to_string(size) + " bytes): truncated or not a safetensors file");
  data_start_ = 8 + header_len;
  std::size_t data_size = size - data_start_;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(bytes + 8),
                                   reinterpret_cast<const char*>(bytes + 8 + header_len));
  } catch (const nlohmann::json::exception& e) {
    fail(file, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail(file, "header is not a JSON object");

  std::vector<std::pair<std::size_t, std::string>> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      if (!it->is_object()) fail(file, "__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m)
        if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
      continue;
    }
    const auto& t = *it;
    auto bad = [&](const std::string& why) { fail(file, "tensor '" + name + "': " + why); };
    if (!t.is_object() || !t.contains("dtype") || !t.contains("shape") || !t.contains("data_offsets"))
      bad("needs dtype, shape and data_offsets");
    Entry e;
    if (!t["dtype"].is_string()) bad("dtype is not a string");
    e.dtype = t["dtype"].get<std::string>();
    const DType* dt = find_dtype(e.dtype);
    if (!dt) bad("unsupported dtype '" + e.dtype + "'");
    if (!t["shape"].is_array()) bad("shape is not an array");
    std::uint64_t numel = 1;
    for (const auto& d : t["shape"]) {
      if (!d.is_number_unsigned()) bad("shape has a value that is not a non-negative integer");
      auto v = d.get<std::uint64_t>();
      if (v != 0 && numel > (std::uint64_t(1) << 62) / v) bad("shape is absurdly large");
      numel *= v;
      e.shape.push_back(static_cast<int64_t>(v));
    }
    const auto& off = t["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      bad("data_offsets must be [begin, end]");
    e.begin = off[0].get<std::size_t>();
    e.end = off[1].get<std::size_t>();
    if (e.begin > e.end) bad("data_offsets begin " + std::to_string(e.begin) + " > end " + std::to_string(e.end));
    if (e.end > data_size)
      bad("data_offsets end " + std::to_string(e.end) + " is past the end of the data (" + std::to_string(data_size) +
          " bytes): truncated file or lying header");
    if (e.end - e.begin != numel * dt->size)
      bad("holds " + std::to_string(e.end - e.begin) + " bytes but shape and dtype need " +
          std::to_string(numel * dt->size));
    spans.emplace_back(e.begin, name);
    entries_.emplace(name, std::move(e));
  }
  std::sort(spans.begin(), spans.end());
  for (std::size_t i = 1; i < spans.size(); ++i) {
    const Entry& prev = entries_[spans[i - 1].second];
    if (spans[i].first < prev.end && entries_[spans[i].second].end > spans[i].first)
      fail(file, "tensors '" + spans[i - 1].second + "' and '" + spans[i].second + "' overlap");
  }
}

torch::Tensor SafetensorsFile::get(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) fail(path_, "has no tensor '" + name + "'");
  const Entry& e = it->second;
  const DType* dt = find_dtype(e.dtype);
  auto* ptr = map_.get() + data_start_ + e.begin;
  auto opts = torch::TensorOptions().dtype(dt->type);
  if (reinterpret_cast<std::uintptr_t>(ptr) % dt->size != 0) {
    // Misaligned for its dtype (the format does not promise alignment): copy.
    auto out = torch::empty(e.shape, opts);
    std::memcpy(out.data_ptr(), ptr, e.end - e.begin);
    return out;
  }
  auto keep = map_;  // the tensor keeps the mapping alive
  return torch::from_blob(ptr, e.shape, [keep](void*) {}, opts);
}

SafetensorsWriter::SafetensorsWriter(std::filesystem::path file, const std::vector<Spec>& specs,
                                     const std::map<std::string, std::string>& metadata)
    : file_(std::move(file)), specs_(specs) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::size_t offset = 0;
  for (const auto& sp : specs_) {
    std::size_t bytes = static_cast<std::size_t>(c10::multiply_integers(sp.shape)) * c10::elementSize(sp.dtype);
    header[sp.name] = {{"dtype", safetensors_dtype(sp.dtype)}, {"shape", sp.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as HF's writer does
  tmp_ = file_;
  tmp_ += ".tmp";
  out_ = std::make_unique<std::ofstream>(tmp_, std::ios::binary | std::ios::trunc);
  if (!*out_) fail(tmp_, std::string("cannot write: ") + std::strerror(errno));
  std::uint64_t n = h.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  out_->write(reinterpret_cast<const char*>(len), 8);
  out_->write(h.data(), static_cast<std::streamsize>(h.size()));
}

SafetensorsWriter::~SafetensorsWriter() {
  if (!out_) return;
  out_.reset();
  std::error_code ec;
  std::filesystem::remove(tmp_, ec);
}

void SafetensorsWriter::write(const torch::Tensor& t0) {
  if (!out_ || next_ >= specs_.size()) fail(tmp_, "more tensors written than its header lists");
  const Spec& sp = specs_[next_++];
  if (t0.sizes().vec() != sp.shape) fail(tmp_, "tensor '" + sp.name + "' has another shape than its header says");
  auto t = t0.detach().to(torch::kCPU, sp.dtype).contiguous();
  out_->write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.numel() * t.element_size()));
  if (!*out_) fail(tmp_, "write failed (disk full?)");
}

void SafetensorsWriter::finish() {
  if (!out_) fail(tmp_, "finished twice");
  if (next_ != specs_.size()) fail(tmp_, "only " + std::to_string(next_) + " of its " + std::to_string(specs_.size()) + " tensors were written");
  out_->flush();
  if (!*out_) fail(tmp_, "write failed (disk full?)");
  out_.reset();
  // Durable before it gets the final name: a crash leaves either the old file or the new one.
  std::error_code ec;
  int fd = ::open(tmp_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) != 0) {
    if (fd >= 0) ::close(fd);
    std::filesystem::remove(tmp_, ec);
    fail(tmp_, std::string("cannot sync: ") + std::strerror(errno));
  }
  ::close(fd);
  std::filesystem::rename(tmp_, file_, ec);
  if (ec) {
    std::filesystem::remove(tmp_, ec);
    fail(file_, "cannot move the finished file into place: " + ec.message());
  }
}

void save_safetensors(const std::filesystem::path& file,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsWriter::Spec> specs;
  for (const auto& [name, t] : tensors) specs.push_back({name, t.scalar_type(), t.sizes().vec()});
  SafetensorsWriter w(file, specs, metadata);
  for (const auto& [name, t] : tensors) w.write(t);
  w.finish();
}

}  // namespace vhost::llama
