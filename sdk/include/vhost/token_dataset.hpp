// The prepared-dataset layout that dataset plugins write and training reads: a folder of
//   tokens.bin  int32 little-endian token ids, every sequence back to back
//   labels.bin  uint8, one per token: 1 where the loss is taken (the assistant's tokens)
//   index.bin   uint64 little-endian, sequences + 1 offsets into tokens.bin (in tokens)
//   meta.json   {"format": "vhost-tokens", "version": 1, "sequences", "tokens", "trained_tokens",
//                "vocab_size", "bos_id", "eos_id", "template", "max_length", ...}
// meta.json is written last and the folder renamed into place, so a folder with meta.json is
// complete; the reader checks every size against it. Header-only, no libtorch.
#pragma once

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace vhost::tokens {

namespace fs = std::filesystem;
using json = nlohmann::json;

inline constexpr const char* kFormat = "vhost-tokens";
inline constexpr int kVersion = 1;

class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A file that could not be written: a std::system_error (errno's reason appended), which the
// SDK reports as an I/O error, not as a bug.
[[noreturn]] inline void io_error(const fs::path& file, const std::string& what) {
  const int e = errno;
  throw std::system_error(e ? e : EIO, std::generic_category(), file.string() + ": " + what);
}

// Streams sequences into `dir`.tmp and renames it to `dir` on finish(); a run that dies leaves
// only the .tmp folder, which the next writer replaces.
class Writer {
 public:
  explicit Writer(fs::path dir) : dir_(std::move(dir)), tmp_(dir_.string() + ".tmp") {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
    fs::create_directories(tmp_);
    open(tokens_, "tokens.bin");
    open(labels_, "labels.bin");
    open(index_, "index.bin");
    put(index_, std::uint64_t{0});
  }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  void add(const std::vector<std::int32_t>& ids, const std::vector<std::uint8_t>& labels) {
    if (ids.size() != labels.size()) throw FormatError("a sequence's ids and labels differ in length");
    tokens_.write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(ids.size() * 4));
    labels_.write(reinterpret_cast<const char*>(labels.data()), static_cast<std::streamsize>(labels.size()));
    total_ += ids.size();
    for (auto l : labels) trained_ += l ? 1 : 0;
    put(index_, static_cast<std::uint64_t>(total_));
    ++sequences_;
  }
  std::uint64_t sequences() const { return sequences_; }
  std::uint64_t tokens() const { return total_; }
  std::uint64_t trained_tokens() const { return trained_; }

  // Writes meta.json (with `meta`'s fields added) and moves the folder into place.
  void finish(json meta) {
    for (auto* f : {&tokens_, &labels_, &index_}) {
      f->flush();
      if (!*f) io_error(tmp_, "write failed (disk full?)");
      f->close();
    }
    meta["format"] = kFormat;
    meta["version"] = kVersion;
    meta["sequences"] = sequences_;
    meta["tokens"] = total_;
    meta["trained_tokens"] = trained_;
    {
      std::ofstream m(tmp_ / "meta.json");
      m << meta.dump(2) << "\n";
      if (!m) io_error(tmp_ / "meta.json", "write failed");
    }
    std::error_code ec;
    fs::remove_all(dir_, ec);
    fs::rename(tmp_, dir_);
  }

 private:
  void open(std::ofstream& f, const char* name) {
    f.open(tmp_ / name, std::ios::binary | std::ios::trunc);
    if (!f) io_error(tmp_ / name, "cannot create");
  }
  template <class T>
  static void put(std::ofstream& f, T v) {
    f.write(reinterpret_cast<const char*>(&v), sizeof v);
  }
  fs::path dir_, tmp_;
  std::ofstream tokens_, labels_, index_;
  std::uint64_t sequences_ = 0, total_ = 0, trained_ = 0;
};

// A read-only memory map of one file.
class Mapping {
 public:
  explicit Mapping(const fs::path& file) {
    int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw FormatError(file.string() + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      throw FormatError(file.string() + ": cannot stat");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        throw FormatError(file.string() + ": cannot map: " + std::strerror(errno));
      }
      data_ = p;
    }
    ::close(fd);
  }
  ~Mapping() {
    if (data_) ::munmap(data_, size_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  const void* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

// Reads a prepared dataset without copying it: sequence i is ids(i)/labels(i).
class Reader {
 public:
  explicit Reader(const fs::path& dir) : dir_(dir) {
    fs::path mf = dir / "meta.json";
    std::ifstream m(mf);
    if (!m) {
      std::string hint = fs::exists(dir.string() + ".tmp") ? " (only an unfinished " + dir.string() + ".tmp exists: the "
                                                              "preparation was interrupted; run it again)"
                                                            : "";
      throw FormatError(mf.string() + ": missing: not a prepared dataset" + hint);
    }
    try {
      meta_ = json::parse(m);
    } catch (const json::exception& e) {
      throw FormatError(mf.string() + ": " + e.what());
    }
    if (meta_.value("format", "") != kFormat)
      throw FormatError(mf.string() + ": format: expected \"" + std::string(kFormat) + "\"");
    if (meta_.value("version", 0) != kVersion)
      throw FormatError(mf.string() + ": version " + meta_.value("version", json(nullptr)).dump() + " is not " +
                        std::to_string(kVersion));
    for (const char* k : {"sequences", "tokens"})
      if (!meta_.contains(k) || !meta_[k].is_number_unsigned())
        throw FormatError(mf.string() + ": " + k + ": missing or not a count");
    n_ = meta_["sequences"].get<std::uint64_t>();
    t_ = meta_["tokens"].get<std::uint64_t>();
    tokens_ = std::make_unique<Mapping>(dir / "tokens.bin");
    labels_ = std::make_unique<Mapping>(dir / "labels.bin");
    index_ = std::make_unique<Mapping>(dir / "index.bin");
    expect(*tokens_, t_ * 4, "tokens.bin");
    expect(*labels_, t_, "labels.bin");
    expect(*index_, (n_ + 1) * 8, "index.bin");
    const auto* idx = offsets();
    if (idx[0] != 0 || idx[n_] != t_) throw FormatError((dir / "index.bin").string() + ": offsets do not span tokens.bin");
    for (std::uint64_t i = 0; i < n_; ++i)
      if (idx[i + 1] < idx[i])
        throw FormatError((dir / "index.bin").string() + ": offset " + std::to_string(i + 1) + " goes backwards");
  }
  std::uint64_t size() const { return n_; }
  std::uint64_t total_tokens() const { return t_; }
  const json& meta() const { return meta_; }
  std::size_t length(std::uint64_t i) const { return static_cast<std::size_t>(offsets()[i + 1] - offsets()[i]); }
  const std::int32_t* ids(std::uint64_t i) const {
    return static_cast<const std::int32_t*>(tokens_->data()) + offsets()[i];
  }
  const std::uint8_t* labels(std::uint64_t i) const {
    return static_cast<const std::uint8_t*>(labels_->data()) + offsets()[i];
  }

 private:
  const std::uint64_t* offsets() const { return static_cast<const std::uint64_t*>(index_->data()); }
  void expect(const Mapping& m, std::uint64_t bytes, const char* name) const {
    if (m.size() != bytes)
      throw FormatError((dir_ / name).string() + ": " + std::to_string(m.size()) + " bytes, meta.json implies " +
                        std::to_string(bytes) + " (truncated or from another run)");
  }
  fs::path dir_;
  json meta_;
  std::uint64_t n_ = 0, t_ = 0;
  std::unique_ptr<Mapping> tokens_, labels_, index_;
};

}  // namespace vhost::tokens
