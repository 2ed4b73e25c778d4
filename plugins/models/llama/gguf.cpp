#include "gguf.hpp"

#include "decode_kernels.hpp"
#include "model.hpp"
#include "page_advice.hpp"
#include "quants.hpp"
#include "safetensors.hpp"

#include <vhost/plugin.hpp>

#include <ATen/Parallel.h>

#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

namespace vhost::llama {

namespace fs = std::filesystem;

namespace {

enum : uint32_t { kF32 = 0, kF16 = 1, kBF16 = 30 };

[[noreturn]] void fail(const fs::path& file, const std::string& what) {
  throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, file.string() + ": " + what);
}

// A bounds-checked reader over the file's bytes.
struct Reader {
  std::string_view b;
  const fs::path& file;
  uint64_t o = 0;
  void need(uint64_t n, const std::string& what) {
    if (n > b.size() || o > b.size() - n)
      fail(file, "truncated while reading " + what + " at byte " + std::to_string(o) + " (file has " +
                     std::to_string(b.size()) + " bytes)");
  }
  template <class T>
  T get(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, b.data() + o, sizeof(T));
    o += sizeof(T);
    return v;
  }
  std::string str(const std::string& what) {
    uint64_t n = get<uint64_t>(what + " length");
    need(n, what);
    std::string s(b.substr(o, n));
    o += n;
    return s;
  }
  nlohmann::json value(uint32_t type, const std::string& what, int depth = 0) {
    switch (type) {
      case 0: return get<uint8_t>(what);
      case 1: return get<int8_t>(what);
      case 2: return get<uint16_t>(what);
      case 3: return get<int16_t>(what);
      case 4: return get<uint32_t>(what);
      case 5: return get<int32_t>(what);
      case 6: return get<float>(what);
      case 7: return get<uint8_t>(what) != 0;
      case 8: return str(what);
      case 9: {
        if (depth > 2) fail(file, what + ": arrays nested too deeply");
        uint32_t et = get<uint32_t>(what + " element type");
        uint64_t n = get<uint64_t>(what + " element count");
        if (n > b.size()) fail(file, what + ": array claims " + std::to_string(n) + " elements, more than the file has bytes");
        nlohmann::json arr = nlohmann::json::array();
        for (uint64_t i = 0; i < n; ++i) arr.push_back(value(et, what + "[" + std::to_string(i) + "]", depth + 1));
        return arr;
      }
      case 10: return get<uint64_t>(what);
      case 11: return get<int64_t>(what);
      case 12: return get<double>(what);
      default: fail(file, what + ": unknown metadata value type " + std::to_string(type));
    }
  }
};

std::string upper(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  return s;
}

uint64_t type_bytes(uint32_t type, uint64_t numel, const fs::path& file, const std::string& name) {
  switch (type) {
    case kF32: return numel * 4;
    case kF16:
    case kBF16: return numel * 2;
    default: {
      const QuantFormat* f = quant_format_ggml(type);
      if (!f)
        fail(file, "tensor '" + name + "': unsupported tensor type " + std::to_string(type) +
                       " (vhost reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K)");
      if (numel % static_cast<uint64_t>(f->block_elems) != 0)
        fail(file, "tensor '" + name + "': " + upper(f->name) + " needs a multiple of " +
                       std::to_string(f->block_elems) + " elements, it has " + std::to_string(numel));
      return numel / f->block_elems * f->block_bytes;
    }
  }
}

}  // namespace

bool is_gguf(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

GgufFile GgufFile::read(const fs::path& file) {
  std::size_t size = 0;
  std::shared_ptr<const char> data = map_file(file, size);  // private and writable (safetensors.hpp)
  if (size < 4) fail(file, "truncated while reading magic at byte 0 (file has " + std::to_string(size) + " bytes)");
  return parse(std::move(data), size, file);
}

GgufFile GgufFile::parse(std::string bytes, const fs::path& file) {
  auto owner = std::make_shared<std::string>(std::move(bytes));
  const uint64_t size = owner->size();
  return parse(std::shared_ptr<const char>(owner, owner->data()), size, file);
}

GgufFile GgufFile::parse(std::shared_ptr<const char> data, uint64_t size, const fs::path& file) {
  GgufFile g;
  g.path = file;
  g.data = std::move(data);
  g.size = size;
  Reader r{g.bytes(), file};
  r.need(4, "magic");
  if (std::memcmp(g.data.get(), "GGUF", 4) != 0) fail(file, "bad magic: not a GGUF file");
  r.o = 4;
  g.version = r.get<uint32_t>("version");
  if (g.version < 2 || g.version > 3) fail(file, "GGUF version " + std::to_string(g.version) + " is not supported (2 or 3)");
  uint64_t n_tensors = r.get<uint64_t>("tensor count");
  uint64_t n_kv = r.get<uint64_t>("metadata count");
  // Each entry takes at least 8 bytes: a count beyond that is a lie, not a reason to allocate.
  if (n_tensors > g.size / 8) fail(file, "tensor count " + std::to_string(n_tensors) + " exceeds what the file can hold");
  if (n_kv > g.size / 8) fail(file, "metadata count " + std::to_string(n_kv) + " exceeds what the file can hold");
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.str("metadata key " + std::to_string(i));
    uint32_t type = r.get<uint32_t>("type of " + key);
    g.metadata[key] = r.value(type, key);
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = r.str("tensor name " + std::to_string(i));
    uint32_t nd = r.get<uint32_t>("dimensions of " + t.name);
    if (nd == 0 || nd > 4) fail(file, "tensor '" + t.name + "': " + std::to_string(nd) + " dimensions");
    uint64_t numel = 1;
    std::vector<int64_t> dims;
    for (uint32_t d = 0; d < nd; ++d) {
      uint64_t v = r.get<uint64_t>("shape of " + t.name);
      if (v == 0 || v > (uint64_t(1) << 40) || numel > (uint64_t(1) << 40) / v)
        fail(file, "tensor '" + t.name + "': implausible dimension " + std::to_string(v));
      numel *= v;
      dims.push_back(static_cast<int64_t>(v));
    }
    t.shape.assign(dims.rbegin(), dims.rend());
    t.type = r.get<uint32_t>("type of " + t.name);
    t.offset = r.get<uint64_t>("offset of " + t.name);
    t.bytes = type_bytes(t.type, numel, file, t.name);
    g.tensors.push_back(std::move(t));
  }
  uint64_t align = 32;
  if (g.metadata.count("general.alignment")) {
    const auto& a = g.metadata["general.alignment"];
    if (!a.is_number_unsigned() || a.get<uint64_t>() == 0 || (a.get<uint64_t>() & (a.get<uint64_t>() - 1)))
      fail(file, "general.alignment must be a power of two");
    align = a.get<uint64_t>();
  }
  g.data_start = (r.o + align - 1) / align * align;
  for (const auto& t : g.tensors) {
    if (t.offset > g.size || g.data_start > g.size - t.offset ||
        t.bytes > g.size - g.data_start - t.offset)
      fail(file, "tensor '" + t.name + "': offset " + std::to_string(t.offset) + " + " + std::to_string(t.bytes) +
                     " bytes runs past the end of the file (truncated or lying header)");
  }
  return g;
}

torch::Tensor GgufFile::tensor(const GgufTensorInfo& t) const {
  const char* p = data.get() + data_start + t.offset;
  int64_t numel = 1;
  for (auto d : t.shape) numel *= d;
  auto view = [&](torch::ScalarType type) {  // keeps the mapping alive as long as the tensor
    std::shared_ptr<const char> keep = data;
    return torch::from_blob(const_cast<char*>(p), t.shape, [keep](void*) {}, torch::TensorOptions().dtype(type));
  };
  switch (t.type) {
    case kF32: return view(torch::kFloat32);
    case kF16: return view(torch::kFloat16);
    case kBF16: return view(torch::kBFloat16);
    default: {
      const QuantFormat* f = quant_format_ggml(t.type);
      if (!f) fail(path, "tensor '" + t.name + "': unsupported type");
      // Rows of a matrix never share a block, so they dequantise in parallel.
      auto out = torch::empty(t.shape, torch::kFloat32);
      const int64_t blocks = numel / f->block_elems;
      at::parallel_for(0, blocks, 4096, [&](int64_t b0, int64_t b1) {
        dequantize(f->type, p + b0 * f->block_bytes, (b1 - b0) * f->block_elems,
                   out.data_ptr<float>() + b0 * f->block_elems);
      });
      return out;
    }
  }
}

torch::Tensor GgufFile::blocks(const GgufTensorInfo& t) const {
  const QuantFormat* f = quant_format_ggml(t.type);
  if (!f || t.shape.size() != 2 || t.shape[1] % f->block_elems)
    fail(path, "tensor '" + t.name + "': not a matrix of quantized blocks");
  std::shared_ptr<const char> keep = data;
  return torch::from_blob(const_cast<char*>(data.get() + data_start + t.offset),
                          {t.shape[0], t.shape[1] / f->block_elems, f->block_bytes}, [keep](void*) {},
                          torch::TensorOptions().dtype(torch::kUInt8));
}

namespace {

// ---- a SentencePiece ModelProto, written in protobuf's wire format -------------------------
// Field numbers from sentencepiece_model.proto (checked against a real LLaMA tokenizer.model).
void varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void key(std::string& out, int field, int wire) { varint(out, (uint64_t(field) << 3) | wire); }
void bytes_field(std::string& out, int field, const std::string& s) {
  key(out, field, 2);
  varint(out, s.size());
  out += s;
}
void int_field(std::string& out, int field, int64_t v) {
  key(out, field, 0);
  varint(out, static_cast<uint64_t>(v));
}
void float_field(std::string& out, int field, float f) {
  key(out, field, 5);
  char b[4];
  std::memcpy(b, &f, 4);
  out.append(b, 4);
}

std::string sentencepiece_proto(const fs::path& file, const std::map<std::string, nlohmann::json>& md) {
  auto arr = [&](const char* k) -> const nlohmann::json& {
    auto it = md.find(k);
    if (it == md.end() || !it->second.is_array()) fail(file, std::string("metadata '") + k + "' is missing or not an array");
    return it->second;
  };
  auto model = md.count("tokenizer.ggml.model") ? md.at("tokenizer.ggml.model") : nlohmann::json();
  if (model != "llama")
    fail(file, "tokenizer.ggml.model is " + model.dump() + "; only SentencePiece (\"llama\") vocabularies are supported");
  const auto& tokens = arr("tokenizer.ggml.tokens");
  const auto& scores = arr("tokenizer.ggml.scores");
  const auto& types = arr("tokenizer.ggml.token_type");
  if (scores.size() != tokens.size() || types.size() != tokens.size())
    fail(file, "tokenizer.ggml.tokens, scores and token_type differ in length");
  auto id = [&](const char* k, int64_t def) {
    auto it = md.find(k);
    if (it == md.end() || !it->second.is_number_integer()) return def;
    int64_t v = it->second.get<int64_t>();
    return v >= static_cast<int64_t>(tokens.size()) || v == 4294967295LL ? int64_t(-1) : v;
  };
  std::string out;
  bool has_bytes = false;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (!tokens[i].is_string() || !scores[i].is_number() || !types[i].is_number_integer())
      fail(file, "tokenizer entry " + std::to_string(i) + " is malformed");
    int64_t type = types[i].get<int64_t>();
    if (type < 1 || type > 6) fail(file, "tokenizer.ggml.token_type[" + std::to_string(i) + "] = " + std::to_string(type));
    has_bytes = has_bytes || type == 6;
    std::string piece;
    bytes_field(piece, 1, tokens[i].get<std::string>());
    float_field(piece, 2, scores[i].get<float>());
    if (type != 1) int_field(piece, 3, type);
    bytes_field(out, 1, piece);
  }
  std::string trainer;
  int_field(trainer, 3, 2);  // model_type: BPE
  int_field(trainer, 4, static_cast<int64_t>(tokens.size()));
  if (has_bytes) int_field(trainer, 35, 1);  // byte_fallback
  int_field(trainer, 40, id("tokenizer.ggml.unknown_token_id", 0));
  int_field(trainer, 41, id("tokenizer.ggml.bos_token_id", 1));
  int_field(trainer, 42, id("tokenizer.ggml.eos_token_id", 2));
  int_field(trainer, 43, id("tokenizer.ggml.padding_token_id", -1));
  bytes_field(out, 2, trainer);
  std::string normalizer;
  bytes_field(normalizer, 1, "identity");
  int_field(normalizer, 3, 1);  // add_dummy_prefix
  int_field(normalizer, 4, 0);  // remove_extra_whitespaces
  bytes_field(out, 3, normalizer);
  return out;
}

// w's rows (contiguous) in HF's rotate-half order, as a view [heads, 2, rows / heads / 2, cols] of
// Meta's interleaved rows: what meta_to_hf and reordered_copy copy out.
static torch::Tensor hf_order_view(const torch::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0), cols = w.numel() / std::max<int64_t>(rows, 1);  // a row may be [blocks, bytes]
  return w.view({heads, rows / heads / 2, 2, cols}).transpose(1, 2);
}

// Meta's interleaved rotary rows -> HF's rotate-half rows (what HF's conversion script does).
torch::Tensor meta_to_hf(const torch::Tensor& w, int64_t heads) { return hf_order_view(w, heads).reshape(w.sizes()); }

// Q4_0 / Q4_1 / Q8_0 / Q4_K / Q5_K / Q6_K blocks [N, nb, bytes] (N a multiple of 8) packed by pack_rows_x8, rows reordered by
// meta_to_hf for `heads` heads (0: none). The source's pages are handed back as soon as it is
// packed (MADV_PAGEOUT: a mapped file's clean pages, reread if ever touched again; memory of the
// process's own is never lost, it goes to swap or stays), so the process holds the weights' bytes
// once, not twice.
torch::Tensor packed_matrix(const torch::Tensor& blocks, int64_t heads) {
  // meta_to_hf's own row order, of the row numbers: no second copy of its index arithmetic.
  const torch::Tensor order =
      heads ? meta_to_hf(torch::arange(blocks.size(0), torch::kInt64).view({-1, 1}), heads).contiguous() : torch::Tensor();
  auto out = pack_rows_x8(blocks, heads ? order.data_ptr<int64_t>() : nullptr);
#ifdef MADV_PAGEOUT
  advise_whole_pages(blocks.data_ptr(), blocks.nbytes(), static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE)), MADV_PAGEOUT);
#endif
  return out;
}

// meta_to_hf of a view of the mapped file (rows [N, ...], contiguous) into memory of the process's
// own, on 2 MiB pages where the kernel gives them, and the view's pages dropped from the process
// (MADV_DONTNEED: clean pages of a private file mapping, reread if ever touched again): the model
// holds these matrices once. They were reordered in place in the private mapping before: each
// 4 KiB page written was a copy-on-write fault with a TLB shootdown to the other threads, ~0.5 M
// of them for a 7B model's 2.1 GB of query and key weights, most of its load time.
torch::Tensor reordered_copy(const torch::Tensor& w, int64_t heads) {
  auto out = torch::empty(w.sizes(), w.options());
#ifdef MADV_HUGEPAGE
  advise_whole_pages(out.data_ptr(), out.nbytes(), std::uintptr_t(2) << 20, MADV_HUGEPAGE);
#endif
  const auto hf = hf_order_view(w, heads);
  out.view(hf.sizes()).copy_(hf);
  advise_whole_pages(w.data_ptr(), w.nbytes(), static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE)), MADV_DONTNEED);
  return out;
}

// HF's rotate-half rows -> Meta's interleaved rows (llama.cpp's conversion does the same).
torch::Tensor hf_to_meta(const torch::Tensor& w, int64_t heads) {
  int64_t rows = w.size(0), cols = w.size(1);
  return w.reshape({heads, 2, rows / heads / 2, cols}).transpose(1, 2).reshape({rows, cols});
}

// Pieces of a serialized ModelProto: (piece, score, type).
struct Piece {
  std::string text;
  float score = 0;
  int32_t type = 1;
};

uint64_t read_varint(const std::string& b, std::size_t& o) {
  uint64_t r = 0;
  for (int shift = 0; o < b.size() && shift < 64; shift += 7) {
    auto c = static_cast<unsigned char>(b[o++]);
    r |= uint64_t(c & 0x7f) << shift;
    if (c < 0x80) return r;
  }
  throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "tokenizer model: malformed varint");
}

// Calls f(field, wire_type, varint value, bytes) for each field of a message.
template <class F>
void each_field(const std::string& b, F f) {
  std::size_t o = 0;
  while (o < b.size()) {
    uint64_t k = read_varint(b, o);
    int field = static_cast<int>(k >> 3), wire = static_cast<int>(k & 7);
    if (wire == 0) {
      f(field, wire, read_varint(b, o), std::string());
    } else if (wire == 2) {
      uint64_t n = read_varint(b, o);
      if (n > b.size() - o) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "tokenizer model: truncated field");
      f(field, wire, 0, b.substr(o, n));
      o += n;
    } else if (wire == 5) {
      if (b.size() - o < 4) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "tokenizer model: truncated field");
      f(field, wire, 0, b.substr(o, 4));
      o += 4;
    } else if (wire == 1) {
      if (b.size() - o < 8) throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "tokenizer model: truncated field");
      o += 8;
    } else {
      throw vhost::Error(VHOST_ERR_INVALID_ARGUMENT, "tokenizer model: unsupported wire type " + std::to_string(wire));
    }
  }
}

std::vector<Piece> proto_pieces(const std::string& proto) {
  std::vector<Piece> out;
  each_field(proto, [&](int field, int wire, uint64_t, const std::string& bytes) {
    if (field != 1 || wire != 2) return;
    Piece p;
    each_field(bytes, [&](int f, int w, uint64_t v, const std::string& b) {
      if (f == 1 && w == 2) p.text = b;
      if (f == 2 && w == 5) std::memcpy(&p.score, b.data(), 4);
      if (f == 3 && w == 0) p.type = static_cast<int32_t>(v);
    });
    out.push_back(std::move(p));
  });
  return out;
}

struct Writer {
  std::string out;
  uint64_t kvs = 0;  // metadata entries written
  template <class T>
  void raw(T v) {
    out.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void str(const std::string& s) {
    raw<uint64_t>(s.size());
    out += s;
  }
  template <class T>
  void kv_array(const std::string& k, uint32_t type, const std::vector<T>& values, void (Writer::*put)(T)) {
    ++kvs;
    str(k);
    raw<uint32_t>(9);
    raw<uint32_t>(type);
    raw<uint64_t>(values.size());
    for (const auto& v : values) (this->*put)(v);
  }
  void put_str(std::string s) { str(s); }
  void kv_str(const std::string& k, const std::string& v) {
    ++kvs;
    str(k);
    raw<uint32_t>(8);
    str(v);
  }
  void kv_u32(const std::string& k, uint32_t v) {
    ++kvs;
    str(k);
    raw<uint32_t>(4);
    raw<uint32_t>(v);
  }
  void kv_f32(const std::string& k, float v) {
    ++kvs;
    str(k);
    raw<uint32_t>(6);
    raw<float>(v);
  }
};

}  // namespace

namespace {

// HF names -> GGUF names, Q/K rows back to Meta's order. Only names, shapes and types here:
// each tensor is made (reordered, converted) when it is written, one at a time.
struct OutTensor {
  std::string name;
  torch::Tensor src;
  int64_t heads = 0;  // Q/K: rows to reorder for this many heads
  torch::ScalarType type;
  const QuantFormat* q = nullptr;  // written as these blocks
};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return s;
}

// llama.cpp's K-quant presets for a LLaMA model, each with its base format (the rest: Q6_K).
struct KPreset {
  const char* name;
  WeightType base;
};
constexpr KPreset kKPresets[] = {{"q4_k_m", WeightType::q4_k}, {"q5_k_m", WeightType::q5_k}};
const KPreset* k_preset(const std::string& lowered) {
  for (const auto& p : kKPresets)
    if (lowered == p.name) return &p;
  return nullptr;
}

// llama.cpp's rule for which layers of a Q4_K_M / Q5_K_M file get more bits: the first and last
// eighth, and every third one between (its use_more_bits, integer arithmetic).
bool more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// The block format --quantize Q writes the matrix `name` (GGUF name, of layer `layer` of
// `layers`) in, before the fallback for rows not of whole blocks: Q's format; for the preset
// "q4_k_m" / "q5_k_m", llama.cpp's Q4_K_M / Q5_K_M mix for a LLaMA model (llama_tensor_get_type):
// Q4_K / Q5_K, except Q6_K for the output (the embedding when it is tied to it), and for attn_v
// and ffn_down of the more_bits layers.
const QuantFormat* preset_format(const std::string& quantize, const std::string& name, int64_t layer, int64_t layers,
                                 bool has_output) {
  const std::string q = lower(quantize);
  const KPreset* preset = k_preset(q);
  if (!preset) return quant_format_writable(q);
  const bool wide = name == "output.weight" || (!has_output && name == "token_embd.weight") ||
                    ((name.find(".attn_v.") != std::string::npos || name.find(".ffn_down.") != std::string::npos) &&
                     more_bits(layer, layers));
  return quant_format(wide ? WeightType::q6_k : preset->base);
}

// The model's tensors under their GGUF names, with the type each is written in.
std::vector<OutTensor> gguf_tensors(const LlamaModel& model, const std::string& quantize) {
  const LlamaConfig& c = model.config();
  std::vector<OutTensor> tensors;
  bool has_output = false;
  for (const auto& [name, t0] : model.named_tensors()) has_output |= name == "lm_head.weight";
  for (const auto& [name, t0] : model.named_tensors()) {
    int64_t layer = -1;
    OutTensor o{name, t0, 0, t0.scalar_type()};
    std::string& n = o.name;
    if (n == "model.embed_tokens.weight") n = "token_embd.weight";
    else if (n == "model.norm.weight") n = "output_norm.weight";
    else if (n == "lm_head.weight") n = "output.weight";
    else {
      auto rest = n.substr(std::string("model.layers.").size());
      auto dot = rest.find('.');
      layer = std::stoll(rest.substr(0, dot));
      std::string blk = "blk." + rest.substr(0, dot) + ".", leaf = rest.substr(dot + 1);
      static const std::map<std::string, std::string> names = {
          {"self_attn.q_proj.weight", "attn_q.weight"},      {"self_attn.k_proj.weight", "attn_k.weight"},
          {"self_attn.v_proj.weight", "attn_v.weight"},      {"self_attn.o_proj.weight", "attn_output.weight"},
          {"mlp.gate_proj.weight", "ffn_gate.weight"},       {"mlp.up_proj.weight", "ffn_up.weight"},
          {"mlp.down_proj.weight", "ffn_down.weight"},       {"input_layernorm.weight", "attn_norm.weight"},
          {"post_attention_layernorm.weight", "ffn_norm.weight"}};
      n = blk + names.at(leaf);
      if (leaf == "self_attn.q_proj.weight") o.heads = c.num_attention_heads;
      if (leaf == "self_attn.k_proj.weight") o.heads = c.num_key_value_heads;
    }
    // 1-D tensors (the norms) stay float32 whatever the matrices' dtype, as llama.cpp's own
    // converter writes them: llama.cpp's CPU norm kernels assert F32 weights.
    if (t0.dim() == 1 || (o.type != torch::kFloat16 && o.type != torch::kBFloat16)) o.type = torch::kFloat32;
    if (!quantize.empty() && t0.dim() == 2) {  // rows not whole blocks: llama.cpp's fallback, else F32
      const QuantFormat* qf = preset_format(quantize, n, layer, c.num_hidden_layers, has_output);
      const QuantFormat* f = t0.size(1) % qf->block_elems == 0 ? qf : quant_fallback(qf);
      if (t0.size(1) % f->block_elems == 0) o.q = f;
    }
    tensors.push_back(std::move(o));
  }
  return tensors;
}

// The architecture's hyperparameters and the tokenizer's pieces, as llama.cpp's converter writes them.
void write_llama_metadata(Writer& w, const LlamaConfig& c, const std::vector<Piece>& pieces) {
  w.kv_str("general.architecture", "llama");
  w.kv_str("general.name", "vhost");
  w.kv_u32("llama.context_length", static_cast<uint32_t>(c.max_position_embeddings));
  w.kv_u32("llama.embedding_length", static_cast<uint32_t>(c.hidden_size));
  w.kv_u32("llama.block_count", static_cast<uint32_t>(c.num_hidden_layers));
  w.kv_u32("llama.feed_forward_length", static_cast<uint32_t>(c.intermediate_size));
  w.kv_u32("llama.rope.dimension_count", static_cast<uint32_t>(c.head_dim()));
  w.kv_u32("llama.attention.head_count", static_cast<uint32_t>(c.num_attention_heads));
  w.kv_u32("llama.attention.head_count_kv", static_cast<uint32_t>(c.num_key_value_heads));
  w.kv_f32("llama.attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  w.kv_f32("llama.rope.freq_base", static_cast<float>(c.rope_theta));
  w.kv_str("tokenizer.ggml.model", "llama");
  std::vector<std::string> texts;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (const auto& p : pieces) {
    texts.push_back(p.text);
    scores.push_back(p.score);
    types.push_back(p.type);
  }
  w.kv_array<std::string>("tokenizer.ggml.tokens", 8, texts, &Writer::put_str);
  w.kv_array<float>("tokenizer.ggml.scores", 6, scores, &Writer::raw<float>);
  w.kv_array<int32_t>("tokenizer.ggml.token_type", 5, types, &Writer::raw<int32_t>);
  w.kv_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(c.bos_token_id));
  w.kv_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(c.eos_token_id));
  w.kv_u32("tokenizer.ggml.unknown_token_id", 0);

}

// f over [0, n) in chunks of `chunk`, on one thread per core this process may use, as
// llama-quantize does by default. Its own threads, not at::parallel_for: `model convert` runs
// without a backend to set libtorch's threads, and libtorch's default there was one thread on
// this 2-core VM (OMP_NUM_THREADS unset: a 7B Q4_K conversion ran on one core).
template <typename F>
void on_every_core(int64_t n, int64_t chunk, const F& f) {
  cpu_set_t set;
  CPU_ZERO(&set);
  int64_t cores = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
  cores = std::max<int64_t>(1, std::min(cores, (n + chunk - 1) / chunk));
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex mu;
  auto work = [&] {
    try {
      for (int64_t b0; (b0 = next.fetch_add(chunk)) < n;) f(b0, std::min(n, b0 + chunk));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!error) error = std::current_exception();
      next = n;
    }
  };
  std::vector<std::thread> threads;
  for (int64_t i = 1; i < cores; ++i) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

const char* const kGgufQuantizeNames = "q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, q4_k_m, q5_k_m";

bool gguf_quantize_supported(const std::string& quantize) {
  const std::string q = lower(quantize);
  return k_preset(q) || quant_format_writable(q) != nullptr;
}

void save_gguf_llama(const LlamaModel& model, const std::string& tokenizer_model, const fs::path& file,
                     const std::string& quantize) {
  if (model.quantized_matrices())
    fail(file, "the model holds quantized blocks (loaded to decode from them); load it dequantised to write it");
  if (!quantize.empty() && !gguf_quantize_supported(quantize))
    fail(file, "quantize '" + quantize + "' is not supported (" + kGgufQuantizeNames + ")");
  const LlamaConfig& c = model.config();
  auto pieces = proto_pieces(tokenizer_model);
  if (pieces.empty()) fail(file, "the tokenizer model has no pieces");
  if (static_cast<int64_t>(pieces.size()) > c.vocab_size)
    fail(file, "the tokenizer has " + std::to_string(pieces.size()) + " pieces, the model only " + std::to_string(c.vocab_size));

  auto tensors = gguf_tensors(model, quantize);
  Writer w;  // metadata first; the header that counts it is prepended below
  write_llama_metadata(w, c, pieces);

  Writer head;
  head.out = "GGUF";
  head.raw<uint32_t>(3);
  head.raw<uint64_t>(tensors.size());
  head.raw<uint64_t>(w.kvs);
  w.out = head.out + w.out;
  uint64_t offset = 0;
  for (const auto& o : tensors) {
    w.str(o.name);
    w.raw<uint32_t>(static_cast<uint32_t>(o.src.dim()));
    for (int64_t d = o.src.dim() - 1; d >= 0; --d) w.raw<uint64_t>(static_cast<uint64_t>(o.src.size(d)));
    w.raw<uint32_t>(o.q ? o.q->ggml_type : o.type == torch::kFloat16 ? kF16 : o.type == torch::kBFloat16 ? kBF16 : kF32);
    w.raw<uint64_t>(offset);
    const int64_t bytes = o.q ? o.src.numel() / o.q->block_elems * o.q->block_bytes
                              : o.src.numel() * static_cast<int64_t>(c10::elementSize(o.type));
    offset += (bytes + 31) / 32 * 32;
  }
  while (w.out.size() % 32) w.out += '\0';
  auto tmp = file;
  tmp += ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) fail(tmp, "cannot create");
    f.write(w.out.data(), static_cast<std::streamsize>(w.out.size()));
    static const char zeros[32] = {};
    for (const auto& o : tensors) {
      torch::Tensor t = o.src.to(torch::kCPU, o.q ? torch::kFloat32 : o.type);
      if (o.heads) t = hf_to_meta(t, o.heads);
      t = t.contiguous();
      if (o.q) {  // one tensor's blocks at a time, rows in parallel
        const int64_t nb = t.numel() / o.q->block_elems;
        auto blocks = torch::empty({nb * o.q->block_bytes}, torch::TensorOptions().dtype(torch::kUInt8));
        on_every_core(nb, 64, [&](int64_t b0, int64_t b1) {
          vhost::llama::quantize(o.q->type, t.data_ptr<float>() + b0 * o.q->block_elems, (b1 - b0) * o.q->block_elems,
                   blocks.data_ptr<uint8_t>() + b0 * o.q->block_bytes);
        });
        t = blocks;
      }
      const auto n = static_cast<std::streamsize>(t.numel() * t.element_size());
      f.write(static_cast<const char*>(t.data_ptr()), n);
      f.write(zeros, (32 - n % 32) % 32);
    }
    f.flush();
    if (!f) {
      f.close();
      std::error_code ec;
      fs::remove(tmp, ec);
      fail(tmp, "write failed (disk full?)");
    }
  }
  fs::rename(tmp, file);
}

std::string load_gguf_tokenizer(const fs::path& file) { return sentencepiece_proto(file, GgufFile::read(file).metadata); }

GgufLlama load_gguf_llama(const fs::path& file, bool keep_blocks) {
  GgufFile g = GgufFile::read(file);
  const auto& md = g.metadata;
  auto arch = md.count("general.architecture") ? md.at("general.architecture") : nlohmann::json();
  if (arch != "llama") fail(file, "general.architecture is " + arch.dump() + "; this plugin loads \"llama\"");
  auto num = [&](const std::string& k, bool required) -> nlohmann::json {
    auto it = md.find("llama." + k);
    if (it == md.end() || !it->second.is_number()) {
      if (required) fail(file, "metadata 'llama." + k + "' is missing or not a number");
      return nlohmann::json();
    }
    return it->second;
  };
  GgufLlama out;
  LlamaConfig& c = out.config;
  c.hidden_size = num("embedding_length", true).get<int64_t>();
  c.num_hidden_layers = num("block_count", true).get<int64_t>();
  c.intermediate_size = num("feed_forward_length", true).get<int64_t>();
  c.num_attention_heads = num("attention.head_count", true).get<int64_t>();
  c.num_key_value_heads = num("attention.head_count_kv", false).is_null() ? c.num_attention_heads
                                                                          : num("attention.head_count_kv", false).get<int64_t>();
  c.rms_norm_eps = num("attention.layer_norm_rms_epsilon", true).get<double>();
  c.rope_theta = num("rope.freq_base", false).is_null() ? 10000.0 : num("rope.freq_base", false).get<double>();
  c.max_position_embeddings = num("context_length", false).is_null() ? 2048 : num("context_length", false).get<int64_t>();
  c.torch_dtype = "float32";
  out.tokenizer_model = sentencepiece_proto(file, md);

  std::map<std::string, const GgufTensorInfo*> by;
  for (const auto& t : g.tensors) by[t.name] = &t;
  auto get = [&](const std::string& name) {
    auto it = by.find(name);
    if (it == by.end()) fail(file, "missing tensor '" + name + "'");
    return g.tensor(*it->second);
  };
  // A matrix, its rows reordered from Meta's rotary order to HF's for `heads` query/key heads
  // (reordered_copy: one copy of these matrices, the mapped file's pages of them dropped, not
  // both: 2.1 GB of a 7B model). Quantized blocks are kept as
  // they are when asked; Q4_0 / Q4_1 / Q8_0 / Q4_K / Q5_K / Q6_K ones with rows in eights come interleaved as the decode
  // kernels read them (packed_matrix), reordered on the way.
  auto matrix = [&](const std::string& name, int64_t heads = 0) {
    auto it = by.find(name);
    if (it == by.end()) fail(file, "missing tensor '" + name + "'");
    const QuantFormat* f = quant_format_ggml(it->second->type);
    if (heads && it->second->shape.size() == 2 && it->second->shape[0] % (2 * heads))
      fail(file, "tensor '" + name + "' has " + std::to_string(it->second->shape[0]) + " rows, not a whole number of " +
                     std::to_string(heads) + " rotary heads");
    if (keep_blocks && f && it->second->shape.size() == 2) {
      auto b = g.blocks(*it->second);
      if (packs_x8(f->type) && b.size(0) % 8 == 0) return packed_matrix(b, heads);
      return heads ? reordered_copy(b, heads) : b;
    }
    auto t = g.tensor(*it->second);
    return heads ? reordered_copy(t, heads) : t;
  };
  // The embedding: rows looked up by token, never multiplied (unless the output is tied to it).
  // Quantized, it is kept as its blocks when asked, a row dequantised as each token comes in (a
  // float32 copy was 0.52 GB of a 7B Q4_0 model's 4.8 GB), and never interleaved.
  auto embed = [&] {
    auto it = by.find("token_embd.weight");
    if (it == by.end()) fail(file, "missing tensor 'token_embd.weight'");
    if (keep_blocks && quant_format_ggml(it->second->type) && it->second->shape.size() == 2) return g.blocks(*it->second);
    return g.tensor(*it->second);
  }();
  c.vocab_size = embed.size(0);
  // The model's dtype: its matrices' (the first layer's query weights stand for them all).
  const auto& probe = by.count("blk.0.attn_q.weight") ? *by.at("blk.0.attn_q.weight") : *by.at("token_embd.weight");
  c.torch_dtype = probe.type == kBF16 ? "bfloat16" : probe.type == kF16 ? "float16" : "float32";
  if (md.count("tokenizer.ggml.bos_token_id")) c.bos_token_id = md.at("tokenizer.ggml.bos_token_id").get<int64_t>();
  if (md.count("tokenizer.ggml.eos_token_id")) c.eos_token_id = md.at("tokenizer.ggml.eos_token_id").get<int64_t>();
  out.tensors.emplace_back("model.embed_tokens.weight", embed);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    std::string b = "blk." + std::to_string(i) + ".", h = "model.layers." + std::to_string(i) + ".";
    // (Rows are reordered whole: blocks never cross a row.)
    out.tensors.emplace_back(h + "self_attn.q_proj.weight", matrix(b + "attn_q.weight", c.num_attention_heads));
    out.tensors.emplace_back(h + "self_attn.k_proj.weight", matrix(b + "attn_k.weight", c.num_key_value_heads));
    out.tensors.emplace_back(h + "self_attn.v_proj.weight", matrix(b + "attn_v.weight"));
    out.tensors.emplace_back(h + "self_attn.o_proj.weight", matrix(b + "attn_output.weight"));
    out.tensors.emplace_back(h + "mlp.gate_proj.weight", matrix(b + "ffn_gate.weight"));
    out.tensors.emplace_back(h + "mlp.up_proj.weight", matrix(b + "ffn_up.weight"));
    out.tensors.emplace_back(h + "mlp.down_proj.weight", matrix(b + "ffn_down.weight"));
    out.tensors.emplace_back(h + "input_layernorm.weight", get(b + "attn_norm.weight"));
    out.tensors.emplace_back(h + "post_attention_layernorm.weight", get(b + "ffn_norm.weight"));
  }
  out.tensors.emplace_back("model.norm.weight", get("output_norm.weight"));
  if (by.count("output.weight")) {
    auto head = matrix("output.weight");
    c.tie_word_embeddings = head.scalar_type() == embed.scalar_type() && torch::equal(head, embed);
    if (!c.tie_word_embeddings) out.tensors.emplace_back("lm_head.weight", head);
  } else {
    c.tie_word_embeddings = true;
  }
  return out;
}

}  // namespace vhost::llama
