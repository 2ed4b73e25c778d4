// GGUF (llama.cpp's format, v2/v3) LLaMA checkpoints: header parsing with every offset checked,
// F32/F16/BF16 tensors and Q8_0 dequantised on load, Q/K rows moved from Meta's interleaved
// rotary order to HF's rotate-half order, and the embedded SentencePiece-style vocabulary
// turned into a SentencePiece model the real library loads.
#pragma once

#include "config.hpp"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <string>
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
  std::string bytes;  // the file's contents

  // Throws vhost::Error naming the file and the field at fault.
  static GgufFile read(const std::filesystem::path& file);
  // The same, over bytes already in memory; `name` stands for the file in messages.
  static GgufFile parse(std::string bytes, const std::filesystem::path& name);
  torch::Tensor tensor(const GgufTensorInfo& t) const;  // float32, dequantised
};

bool is_gguf(const std::filesystem::path& file);

struct GgufLlama {
  LlamaConfig config;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;  // HF names and conventions
  std::string tokenizer_model;                                  // a serialized SentencePiece ModelProto
};

GgufLlama load_gguf_llama(const std::filesystem::path& file);
// Only the embedded vocabulary, as a serialized SentencePiece ModelProto (no tensor is read).
std::string load_gguf_tokenizer(const std::filesystem::path& file);

class LlamaModel;
// Writes a GGUF v3 file llama.cpp reads: metadata, the vocabulary of a SentencePiece model
// (serialized ModelProto), tensors in the model's dtype with Q/K rows in Meta's order.
void save_gguf_llama(const LlamaModel& model, const std::string& tokenizer_model, const std::filesystem::path& file);

}  // namespace vhost::llama
