// Test fixtures for quantized weights (quants.hpp): random blocks of any format and their values.
#pragma once

#include "quants.hpp"

#include <torch/torch.h>

#include <cstring>
#include <utility>
#include <vector>

namespace vhost::llama {

// Byte offsets of the float16 fields (d, and m or dmin) in a block of format f.
inline std::vector<int> half_fields(const QuantFormat& f) {
  if (f.type == WeightType::q6_k) return {208};
  if (f.type == WeightType::q4_1 || f.type == WeightType::q5_1 || f.type == WeightType::q4_k || f.type == WeightType::q5_k)
    return {0, 2};
  return {0};
}

// N rows of random blocks of format f for rows of K weights: random bytes, with each float16 field
// (d, and m or dmin) set to a finite value of either sign, so every quant and scale bit pattern
// occurs. Returns the blocks and their values by the scalar dequantiser (quants.cpp).
inline std::pair<std::vector<uint8_t>, torch::Tensor> random_blocks(const QuantFormat& f, int64_t N, int64_t K,
                                                                    uint32_t seed) {
  std::vector<uint8_t> b(static_cast<std::size_t>(N * K / f.block_elems * f.block_bytes));
  uint32_t x = seed * 2654435761u + 1;
  auto next = [&] { return x = x * 1664525u + 1013904223u, x >> 8; };
  for (auto& v : b) v = static_cast<uint8_t>(next());
  for (int64_t i = 0; i < N * K / f.block_elems; ++i)
    for (int off : half_fields(f)) {
      const float v = (static_cast<float>(next() % 2000) / 1000.0f - 1.0f) * 0.05f;
      const uint16_t h = fp16_from_float(v);
      std::memcpy(b.data() + i * f.block_bytes + off, &h, 2);
    }
  auto w = torch::empty({N, K});
  dequantize(f.type, b.data(), N * K, w.data_ptr<float>());
  return {std::move(b), w};
}

// N rows of blocks of format f whose every quant byte is `fill` (0xFF: each nibble, fifth and
// sixth bit set, so every unsigned quant at its largest; Q4_K / Q5_K scales and mins 63), with each
// float16 field (d, m / dmin) 0.01: the largest integer sums a kernel can meet. And their values.
inline std::pair<std::vector<uint8_t>, torch::Tensor> extreme_blocks(const QuantFormat& f, int64_t N, int64_t K,
                                                                     uint8_t fill = 0xFF) {
  std::vector<uint8_t> b(static_cast<std::size_t>(N * K / f.block_elems * f.block_bytes), fill);
  const uint16_t h = fp16_from_float(0.01f);
  for (int64_t i = 0; i < N * K / f.block_elems; ++i)
    for (int off : half_fields(f)) std::memcpy(b.data() + i * f.block_bytes + off, &h, 2);
  auto w = torch::empty({N, K});
  dequantize(f.type, b.data(), N * K, w.data_ptr<float>());
  return {std::move(b), w};
}

}  // namespace vhost::llama
