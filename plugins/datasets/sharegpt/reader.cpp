#include "reader.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <memory>
#include <vector>

namespace vhost::sharegpt {

namespace {

// The file's bytes with invalid UTF-8 replaced, one at a time, counting lines and columns of
// the original bytes for error messages.
class Source {
 public:
  explicit Source(const std::filesystem::path& file) : name_(file.string()) {
    f_ = std::fopen(file.c_str(), "rb");
    if (!f_) throw std::runtime_error(name_ + ": cannot open: " + std::strerror(errno));
    in_.resize(1 << 20);
  }
  ~Source() {
    if (f_) std::fclose(f_);
  }
  Source(const Source&) = delete;
  Source& operator=(const Source&) = delete;

  // The next byte of the repaired stream without taking it, or -1 at the end.
  int peek() {
    if (out_pos_ == out_.size() && !refill()) return -1;
    return static_cast<unsigned char>(out_[out_pos_]);
  }
  // Takes the byte peek() showed; positions count taken bytes, so an error points at the byte
  // the parser stopped on.
  void advance() {
    if (out_pos_ == out_.size()) return;
    if (next_repair_ < repairs_.size() && repairs_[next_repair_] == out_pos_) {
      flag_ = true;
      ++next_repair_;
    }
    char c = out_[out_pos_++];
    ++consumed_;
    if (c == '\n') {
      ++line_;
      col_ = 1;
    } else {
      ++col_;
    }
  }
  std::uint64_t line() const { return line_; }
  std::uint64_t column() const { return col_; }
  std::uint64_t offset() const { return consumed_; }
  std::uint64_t repaired() const { return repaired_; }
  bool take_repaired_flag() {
    bool r = flag_;
    flag_ = false;
    return r;
  }
  const std::string& name() const { return name_; }

 private:
  // Decodes the next chunk of the file into out_, repairing as it goes and noting where, so
  // that get() flags the record the repaired byte belongs to.
  bool refill() {
    out_.clear();
    out_pos_ = 0;
    repairs_.clear();
    next_repair_ = 0;
    while (out_.empty()) {
      std::size_t keep = in_len_ - in_pos_;
      std::memmove(in_.data(), in_.data() + in_pos_, keep);
      in_pos_ = 0;
      in_len_ = keep;
      std::size_t got = eof_ ? 0 : std::fread(in_.data() + in_len_, 1, in_.size() - in_len_, f_);
      if (got == 0) {
        if (std::ferror(f_)) throw std::runtime_error(name_ + ": read error: " + std::strerror(errno));
        eof_ = true;
      }
      in_len_ += got;
      if (in_len_ == 0) return false;
      decode(eof_);
      if (out_.empty() && eof_ && in_pos_ == in_len_) return false;
    }
    return true;
  }

  void emit_original(std::size_t n) {
    out_.append(in_.data() + in_pos_, n);
    in_pos_ += n;
  }
  void emit_replacement() {
    repairs_.push_back(out_.size());
    out_ += "\xEF\xBF\xBD";
    ++in_pos_;
    ++repaired_;
  }

  // UTF-8 validation per RFC 3629 (no overlongs, no surrogates, nothing above U+10FFFF).
  void decode(bool at_eof) {
    const auto* s = reinterpret_cast<const unsigned char*>(in_.data());
    while (in_pos_ < in_len_) {
      // Fast path: a run of ASCII.
      std::size_t run = in_pos_;
      while (run < in_len_ && s[run] < 0x80) ++run;
      if (run > in_pos_) {
        emit_original(run - in_pos_);
        continue;
      }
      unsigned char c = s[in_pos_];
      std::size_t need = 0;
      unsigned char lo = 0x80, hi = 0xBF;
      if (c >= 0xC2 && c <= 0xDF) need = 1;
      else if (c == 0xE0) need = 2, lo = 0xA0;
      else if (c >= 0xE1 && c <= 0xEC) need = 2;
      else if (c == 0xED) need = 2, hi = 0x9F;
      else if (c >= 0xEE && c <= 0xEF) need = 2;
      else if (c == 0xF0) need = 3, lo = 0x90;
      else if (c >= 0xF1 && c <= 0xF3) need = 3;
      else if (c == 0xF4) need = 3, hi = 0x8F;
      else {
        emit_replacement();
        continue;
      }
      if (in_pos_ + need >= in_len_ && !at_eof) {
        // Possibly complete in the next chunk: keep it.
        if (in_len_ - in_pos_ <= need) return;
      }
      bool ok = true;
      for (std::size_t k = 1; k <= need; ++k) {
        if (in_pos_ + k >= in_len_) {
          ok = false;
          break;
        }
        unsigned char b = s[in_pos_ + k];
        unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (b < l || b > h) {
          ok = false;
          break;
        }
      }
      if (ok) emit_original(need + 1);
      else emit_replacement();
    }
  }

  std::string name_;
  std::FILE* f_ = nullptr;
  std::vector<char> in_;
  std::size_t in_pos_ = 0, in_len_ = 0;
  bool eof_ = false;
  std::string out_;
  std::size_t out_pos_ = 0;
  std::vector<std::size_t> repairs_;
  std::size_t next_repair_ = 0;
  std::uint64_t line_ = 1, col_ = 1, consumed_ = 0, repaired_ = 0;
  bool flag_ = false;
};

// A single-pass input iterator over Source, for nlohmann's iterator input adapter.
class SourceIterator {
 public:
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;

  SourceIterator() = default;
  explicit SourceIterator(Source* s) : s_(s) {}
  reference operator*() const {
    ch_ = static_cast<char>(s_->peek());
    return ch_;
  }
  SourceIterator& operator++() {
    s_->advance();
    return *this;
  }
  void operator++(int) { ++*this; }
  bool operator==(const SourceIterator& o) const { return at_end() == o.at_end(); }
  bool operator!=(const SourceIterator& o) const { return !(*this == o); }

 private:
  bool at_end() const { return !s_ || s_->peek() < 0; }
  Source* s_ = nullptr;
  mutable char ch_ = 0;
};

// Builds each element of the top-level list as a json value and hands it on.
class Handler : public nlohmann::json_sax<json> {
 public:
  Handler(Source& src, const std::function<void(Record&&)>& fn) : src_(src), fn_(fn) {}

  bool null() override { return scalar(json(nullptr)); }
  bool boolean(bool v) override { return scalar(json(v)); }
  bool number_integer(number_integer_t v) override { return scalar(json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return scalar(json(v)); }
  bool number_float(number_float_t v, const string_t&) override { return scalar(json(v)); }
  bool string(string_t& v) override { return scalar(json(std::move(v))); }
  bool binary(binary_t&) override { return scalar(json(nullptr)); }
  bool start_object(std::size_t) override { return open(json::object()); }
  bool key(string_t& k) override {
    keys_.back() = std::move(k);
    return true;
  }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override {
    if (depth_ == 0) {
      depth_ = 1;
      top_is_list_ = true;
      return true;
    }
    return open(json::array());
  }
  bool end_array() override {
    if (stack_.empty()) {
      depth_ = 0;
      return true;
    }
    return close();
  }
  bool parse_error(std::size_t position, const std::string& last_token, const nlohmann::detail::exception& ex) override {
    std::string what = ex.what();
    // nlohmann's message: "[json.exception.parse_error.101] parse error at line 3, column 5: ..."
    auto colon = what.find(": ", what.find("parse error"));
    std::string detail = colon == std::string::npos ? what : what.substr(colon + 2);
    throw SyntaxError(src_.name() + ":" + std::to_string(src_.line()) + ":" + std::to_string(src_.column()) +
                      ": malformed JSON (byte " + std::to_string(position) + "): " + detail +
                      (last_token.empty() ? "" : " (last read: '" + last_token.substr(0, 40) + "')"));
  }

  std::uint64_t records() const { return index_; }
  bool top_is_list() const { return top_is_list_; }

 private:
  bool scalar(json v) {
    if (depth_ == 0) return not_a_list(v);
    if (stack_.empty()) {
      emit(std::move(v), src_.line());
      return true;
    }
    add(std::move(v));
    return true;
  }
  bool open(json container) {
    if (depth_ == 0) return not_a_list(container);
    if (stack_.empty()) start_line_ = src_.line();
    stack_.push_back(std::move(container));
    keys_.emplace_back();
    return true;
  }
  bool close() {
    json v = std::move(stack_.back());
    stack_.pop_back();
    keys_.pop_back();
    if (stack_.empty()) emit(std::move(v), start_line_);
    else add(std::move(v));
    return true;
  }
  void add(json v) {
    json& top = stack_.back();
    if (top.is_object()) top[keys_.back()] = std::move(v);
    else top.push_back(std::move(v));
  }
  void emit(json v, std::uint64_t line) {
    Record r;
    r.index = index_++;
    r.line = line;
    r.value = std::move(v);
    r.utf8_repaired = src_.take_repaired_flag();
    fn_(std::move(r));
  }
  bool not_a_list(const json& v) {
    throw SyntaxError(src_.name() + ":" + std::to_string(src_.line()) + ":" + std::to_string(src_.column()) +
                      ": expected a JSON list of conversations ([{\"id\": ..., \"conversations\": [...]}, ...]), "
                      "found " + std::string(v.type_name()));
  }

  Source& src_;
  const std::function<void(Record&&)>& fn_;
  int depth_ = 0;
  bool top_is_list_ = false;
  std::vector<json> stack_;
  std::vector<std::string> keys_;
  std::uint64_t index_ = 0, start_line_ = 0;
};

}  // namespace

ReadTotals read_sharegpt(const std::filesystem::path& file, const std::function<void(Record&&)>& on_record) {
  Source src(file);
  Handler h(src, on_record);
  SourceIterator first(&src), last;
  if (first == last) throw SyntaxError(file.string() + ":1:1: empty file (expected a JSON list of conversations)");
  json::sax_parse(first, last, &h);
  ReadTotals t;
  t.bytes = src.offset();
  t.records = h.records();
  t.repaired_bytes = src.repaired();
  return t;
}

}  // namespace vhost::sharegpt
