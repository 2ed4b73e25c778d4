// The decode kernels (small_gemm, decode_attention) against libtorch's own ops on odd shapes:
// sizes that are not multiples of the tile or vector width, grouped-query heads, left padding.
#include "decode_kernels.hpp"

#include <torch/torch.h>

#undef CHECK  // glog's, from Debian's libtorch; Catch's below
#include <catch2/catch.hpp>

#include <limits>
#include <string>
#include <vector>

using namespace vhost::llama;

// Each kernel set this CPU can run, the best last (it stays selected for the other tests).
static std::vector<std::string> runnable_kernels() {
  std::vector<std::string> out;
  for (const char* name : {"avx2", "avx512"})
    if (select_kernels(name)) out.push_back(name);
  select_kernels(nullptr);
  return out;
}

TEST_CASE("small_gemm equals torch::linear on shapes off the tile grid", "[kernels]") {
  for (const auto& isa : runnable_kernels()) {
    select_kernels(isa.c_str());
    INFO("kernels: " << small_gemm_isa());
    torch::manual_seed(3);
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {2, 7, 19}, {5, 37, 16}, {16, 288, 288},
                           {3, 1001, 300}, {32, 33, 768}, {7, 4, 17}, {1, 32000, 288}}) {
      auto A = torch::randn({M, K}), W = torch::randn({N, K});
      auto C = torch::full({M, N}, std::numeric_limits<float>::quiet_NaN());
      bool ran = small_gemm(A.data_ptr<float>(), M, W.data_ptr<float>(), N, K, C.data_ptr<float>());
      CHECK(ran == (std::string(small_gemm_isa()) != ""));
      if (!ran) continue;  // no kernel for this CPU: the model uses BLAS
      INFO("M=" << M << " N=" << N << " K=" << K);
      CHECK(torch::allclose(C, torch::linear(A, W), 1e-4, 1e-4));  // every element written, none NaN
    }
  }
  select_kernels(nullptr);
}

// The reference: softmax(q k^T * scale, masked to slots >= pad) v, per row and head.
static torch::Tensor reference_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         const std::vector<int64_t>& pad, int64_t S, double scale) {
  const int64_t B = q.size(0), H = q.size(1), KV = k.size(1);
  auto out = torch::empty_like(q);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      int64_t first = pad.empty() ? 0 : std::min(pad[b], S - 1);  // its own slot always counts
      auto keys = k[b][h / (H / KV)].narrow(0, first, S - first);
      auto vals = v[b][h / (H / KV)].narrow(0, first, S - first);
      out[b][h] = torch::softmax(torch::mv(keys, q[b][h]) * scale, 0).matmul(vals);
    }
  return out;
}

TEST_CASE("decode_attention equals softmax attention: grouped-query heads, left padding", "[kernels]") {
  if (std::string(small_gemm_isa()).empty()) {
    WARN("no decode kernel for this CPU: the model keeps libtorch's attention");
    return;
  }
  // Head size 20: the scalar loop. 16, 48, 64: the vector kernel (whole vectors of 8 or 16);
  // 23 and 71 keys leave a remainder after the blocks of 16 keys, 64 and 1 do not.
  const int64_t B = 3, H = 6, KV = 2, cap = 72;
  for (const auto& isa : runnable_kernels())
    for (int64_t hd : {20, 16, 48, 64})
      for (int64_t S : {23, 64, 71, 1}) {
        select_kernels(isa.c_str());
        torch::manual_seed(4);
        auto q = torch::randn({B, H, hd}) * 3;  // spread scores: the exp is tested over a wide range
        auto k = torch::randn({B, KV, cap, hd}), v = torch::randn({B, KV, cap, hd});
        const double scale = 1.0 / std::sqrt(double(hd));
        for (std::vector<int64_t> pad : {std::vector<int64_t>{}, std::vector<int64_t>{0, 5, 22}}) {
          INFO("kernels " << small_gemm_isa() << ", head size " << hd << ", " << S << " keys, "
                          << (pad.empty() ? "no padding" : "padding 0, 5, 22"));
          auto padt = torch::tensor(pad.empty() ? std::vector<int64_t>{0} : pad);
          auto out = torch::full({B, H, hd}, std::numeric_limits<float>::quiet_NaN());
          DecodeAttention a{q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                            pad.empty() ? nullptr : padt.data_ptr<int64_t>(), out.data_ptr<float>(), B, H, KV, hd, cap, S,
                            static_cast<float>(scale)};
          REQUIRE(decode_attention(a));
          CHECK(torch::allclose(out, reference_attention(q, k, v, pad, S, scale), 1e-5, 1e-5));
        }
      }
  select_kernels(nullptr);
}
