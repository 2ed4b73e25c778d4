// GGUF (llama.cpp's format, v2/v3) LLaMA checkpoints: header parsing with every offset checked,
// F32/F16/BF16 tensors memory-mapped as stored, quantized ones (quants.hpp) kept as blocks or dequantised, Q/K rows moved from Meta's interleaved
// rotary order to HF's rotate-half order, and the embedded SentencePiece-style vocabulary
// turned into a SentencePiece model the real library loads.
#pragma once

#include "config.hpp"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace vhost::llama {

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // torch order (GGUF lists the fastest dimension first)
  uint32_t type = 0;
  uint64_t offset = 0;  // into the data section
  uint64_t bytes = 0;
};

struct GgufFile {
  std::filesystem::path path;
  uint32_t version = 0;
  std::map<std::string, nlohmann::json> metadata;
  std::vector<GgufTensorInfo> tensors;
  uint64_t data_start = 0;
  std::shared_ptr<const char> data;  // the file's bytes: a private memory mapping of it (or parse's string)
  uint64_t size = 0;
  std::string_view bytes() const { return {data.get(), size}; }

  // Maps the file (nothing is read into memory until used). Throws vhost::Error naming the file
  // and the field at fault.
  static GgufFile read(const std::filesystem::path& file);
  // The same, over bytes already in memory; `name` stands for the file in messages.
  static GgufFile parse(std::string bytes, const std::filesystem::path& name);
  static GgufFile parse(std::shared_ptr<const char> data, uint64_t size, const std::filesystem::path& name);
  // F32, F16 and BF16 tensors as stored, viewing the mapping (copy-on-write: writes never reach
  // the file; the tensor keeps the mapping alive); quantized ones dequantised to float32.
  torch::Tensor tensor(const GgufTensorInfo& t) const;
  // A quantized matrix [N, K] as its blocks: uint8 [N, K / block_elems, block_bytes], viewing the
  // mapping (the block size names the format, quants.hpp).
  torch::Tensor blocks(const GgufTensorInfo& t) const;
};

bool is_gguf(const std::filesystem::path& file);

struct GgufLlama {
  LlamaConfig config;  // torch_dtype: the matrices' stored type (float32 for quantized ones)
  std::vector<std::pair<std::string, torch::Tensor>> tensors;  // HF names and conventions, as tensor() gives them
  std::string tokenizer_model;                                  // a serialized SentencePiece ModelProto
};

// `keep_blocks`: quantized matrices (not the embedding) stay blocks, GgufFile::blocks views of the
// mapping, which LlamaModel decodes from on the CPU; otherwise they are dequantised to float32.
GgufLlama load_gguf_llama(const std::filesystem::path& file, bool keep_blocks = false);
// Only the embedded vocabulary, as a serialized SentencePiece ModelProto (no tensor is read).
std::string load_gguf_tokenizer(const std::filesystem::path& file);

class LlamaModel;
// Writes a GGUF v3 file llama.cpp reads: metadata, the vocabulary of a SentencePiece model
// (serialized ModelProto), matrices in the model's dtype with Q/K rows in Meta's order, 1-D
// tensors in F32. Streams: the header, then one tensor at a time (no copy of the model).
// quantize "q8_0", "q4_0", "q4_1", "q5_0", "q5_1": matrices whose rows are whole blocks of 32 in
// that format (all of them, the embedding and output too: llama-quantize --pure), block for block
// what the gguf package's quantizer (and llama.cpp's reference one) makes of their float32 values.
// "q4_k", "q5_k", "q6_k": rows of whole 256-blocks in that format as llama.cpp's reference
// quantizer makes them, the other matrices in its fallback (Q5_0, Q5_1, Q8_0; F32 when not whole
// 32-blocks either). "q4_k_m" / "q5_k_m": llama.cpp's Q4_K_M / Q5_K_M preset for a LLaMA model:
// Q4_K / Q5_K, and Q6_K for the output and for attn_v / ffn_down of the first and last eighth of
// the layers and every third between.
// Whether save_gguf_llama writes `quantize` ("q4_0", "Q4_K_M", ...); kGgufQuantizeNames lists them.
bool gguf_quantize_supported(const std::string& quantize);
extern const char* const kGgufQuantizeNames;
void save_gguf_llama(const LlamaModel& model, const std::string& tokenizer_model, const std::filesystem::path& file,
                     const std::string& quantize = "");


}  // namespace vhost::llama
