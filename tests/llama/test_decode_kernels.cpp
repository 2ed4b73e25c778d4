// The decode kernels (small_gemm, decode_attention) against libtorch's own ops on odd shapes:
// sizes that are not multiples of the tile or vector width, grouped-query heads, left padding.
#include "decode_kernels.hpp"
#include "quant_fixtures.hpp"

#include <torch/torch.h>

#undef CHECK  // glog's, from Debian's libtorch; Catch's below
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <cmath>
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

TEST_CASE("small_gemm accumulates, small_gemm_many and gate_up_silu equal their libtorch formulas", "[kernels]") {
  for (const auto& isa : runnable_kernels()) {
    select_kernels(isa.c_str());
    INFO("kernels: " << small_gemm_isa());
    torch::manual_seed(5);
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {3, 37, 19}, {16, 768, 288}, {5, 6, 33}}) {
      INFO("M=" << M << " N=" << N << " K=" << K);
      auto A = torch::randn({M, K}), W = torch::randn({N, K}), W2 = torch::randn({N + 3, K}), W3 = torch::randn({1, K});
      auto C0 = torch::randn({M, N});
      auto C = C0.clone();
      REQUIRE(small_gemm(A.data_ptr<float>(), M, W.data_ptr<float>(), N, K, C.data_ptr<float>(), /*accumulate=*/true));
      CHECK(torch::allclose(C, C0 + torch::linear(A, W), 1e-4, 1e-4));

      const float nan = std::numeric_limits<float>::quiet_NaN();
      auto c1 = torch::full({M, N}, nan), c2 = torch::full({M, N + 3}, nan), c3 = torch::full({M, 1}, nan);
      const GemmOutput outs[3] = {{W.data_ptr<float>(), N, c1.data_ptr<float>()},
                                  {W2.data_ptr<float>(), N + 3, c2.data_ptr<float>()},
                                  {W3.data_ptr<float>(), 1, c3.data_ptr<float>()}};
      REQUIRE(small_gemm_many(A.data_ptr<float>(), M, K, outs, 3));
      CHECK(torch::allclose(c1, torch::linear(A, W), 1e-4, 1e-4));
      CHECK(torch::allclose(c2, torch::linear(A, W2), 1e-4, 1e-4));
      CHECK(torch::allclose(c3, torch::linear(A, W3), 1e-4, 1e-4));

      // Gate values over a wide range: silu's both tails.
      auto Ag = A * 4;
      auto act = torch::full({M, N}, nan);
      REQUIRE(gate_up_silu(Ag.data_ptr<float>(), M, K, W.data_ptr<float>(), W2.data_ptr<float>(), N, act.data_ptr<float>()));
      auto want = torch::silu(torch::linear(Ag, W)) * torch::linear(Ag, W2.narrow(0, 0, N));
      // Both products round in a different order than libtorch's: error relative to their scale.
      CHECK(torch::allclose(act, want, 1e-4, 1e-5 * want.abs().max().item<double>()));
    }
  }
  select_kernels(nullptr);
}

// A half-precision tensor's memory as the kernels take it.
static WeightsRef half_ref(const torch::Tensor& t) {
  return {t.data_ptr(), t.scalar_type() == torch::kBFloat16 ? WeightType::bf16 : WeightType::f16};
}

TEST_CASE("small_gemm, small_gemm_many and gate_up_silu read bfloat16 and float16 weights in place", "[kernels][half]") {
  for (const auto& isa : runnable_kernels()) {
    select_kernels(isa.c_str());
    for (auto dt : {torch::kBFloat16, torch::kFloat16}) {
      const WeightType wt = dt == torch::kBFloat16 ? WeightType::bf16 : WeightType::f16;
      INFO("kernels: " << small_gemm_isa() << ", weights " << c10::toString(dt));
      if (!small_gemm_supports(wt)) {
        WARN("SKIP: the " << small_gemm_isa() << " kernels here cannot read " << c10::toString(dt) << " weights");
        continue;
      }
      torch::manual_seed(7);
      // Off the tile grid and off the vector width (K % 16, K % 8), up to an output layer.
      for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {2, 7, 19}, {5, 37, 16}, {3, 1001, 300},
                             {33, 33, 768}, {7, 5, 17}, {1, 32000, 288}, {16, 288, 288}}) {
        INFO("M=" << M << " N=" << N << " K=" << K);
        auto A = torch::randn({M, K}), W = torch::randn({N, K}).to(dt), W2 = torch::randn({N + 3, K}).to(dt);
        // The reference: the float32 product of the stored (rounded) weights.
        auto w32 = W.to(torch::kFloat32), w2_32 = W2.to(torch::kFloat32);
        const float nan = std::numeric_limits<float>::quiet_NaN();
        auto C = torch::full({M, N}, nan);
        REQUIRE(small_gemm(A.data_ptr<float>(), M, half_ref(W), N, K, C.data_ptr<float>()));
        CHECK(torch::allclose(C, torch::linear(A, w32), 1e-4, 1e-4));  // every element written, none NaN
        auto C0 = torch::randn({M, N});
        auto Cacc = C0.clone();
        REQUIRE(small_gemm(A.data_ptr<float>(), M, half_ref(W), N, K, Cacc.data_ptr<float>(), /*accumulate=*/true));
        CHECK(torch::allclose(Cacc, C0 + torch::linear(A, w32), 1e-4, 1e-4));
        // Mixed in one call: a float32 output beside a half one.
        auto c1 = torch::full({M, N + 3}, nan), c2 = torch::full({M, N}, nan);
        auto Wf = torch::randn({N, K});
        const GemmOutput outs[2] = {{half_ref(W2), N + 3, c1.data_ptr<float>()}, {Wf.data_ptr<float>(), N, c2.data_ptr<float>()}};
        REQUIRE(small_gemm_many(A.data_ptr<float>(), M, K, outs, 2));
        CHECK(torch::allclose(c1, torch::linear(A, w2_32), 1e-4, 1e-4));
        CHECK(torch::allclose(c2, torch::linear(A, Wf), 1e-4, 1e-4));
        auto Ag = A * 4;
        auto act = torch::full({M, N}, nan);
        REQUIRE(gate_up_silu(Ag.data_ptr<float>(), M, K, half_ref(W), half_ref(W2), N, act.data_ptr<float>()));
        auto want = torch::silu(torch::linear(Ag, w32)) * torch::linear(Ag, w2_32.narrow(0, 0, N));
        CHECK(torch::allclose(act, want, 1e-4, 1e-5 * want.abs().max().item<double>()));
      }
      // Weights of two types in one fused product are refused, not misread.
      auto W = torch::randn({4, 8}).to(dt), Wf = torch::randn({4, 8});
      auto A = torch::randn({1, 8}), out = torch::empty({1, 4});
      CHECK_FALSE(gate_up_silu(A.data_ptr<float>(), 1, 8, half_ref(W), Wf.data_ptr<float>(), 4, out.data_ptr<float>()));
    }
  }
  select_kernels(nullptr);
}

// A batch's rows get the same bits as each row alone: the bfloat16 tiles split k into spans that
// depend on the number of rows (tile_pairs) and carry their sums between them, and rows fall in
// tiles of different heights; a decoding step of 16 sequences must not change any one's numbers.
TEST_CASE("small_gemm and gate_up_silu: each row of a batch bit for bit as that row alone", "[kernels][half]") {
  for (const auto& isa : runnable_kernels()) {
    select_kernels(isa.c_str());
    for (auto dt : {torch::kBFloat16, torch::kFloat16, torch::kFloat32}) {
      INFO("kernels: " << small_gemm_isa() << ", weights " << c10::toString(dt));
      const WeightType wt = dt == torch::kBFloat16 ? WeightType::bf16 : dt == torch::kFloat16 ? WeightType::f16 : WeightType::f32;
      if (!small_gemm_supports(wt)) continue;
      torch::manual_seed(11);
      // K: several spans at 16 and 33 rows, and a tail past the last pair block; N off 2, 3 and 4.
      for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{16, 101, 1000}, {33, 7, 4100}, {6, 10, 512}, {80, 5, 300}}) {
        INFO("M=" << M << " N=" << N << " K=" << K);
        auto A = torch::randn({M, K}), W = torch::randn({N, K}).to(dt), W2 = torch::randn({N, K}).to(dt);
        const WeightsRef w(W.data_ptr(), wt), w2(W2.data_ptr(), wt);
        auto C = torch::empty({M, N}), act = torch::empty({M, N});
        REQUIRE(small_gemm(A.data_ptr<float>(), M, w, N, K, C.data_ptr<float>()));
        REQUIRE(gate_up_silu(A.data_ptr<float>(), M, K, w, w2, N, act.data_ptr<float>()));
        int differ = 0;
        for (int64_t m = 0; m < M; ++m) {
          auto row = A[m].unsqueeze(0).contiguous();
          auto c = torch::empty({1, N}), g = torch::empty({1, N});
          REQUIRE(small_gemm(row.data_ptr<float>(), 1, w, N, K, c.data_ptr<float>()));
          REQUIRE(gate_up_silu(row.data_ptr<float>(), 1, K, w, w2, N, g.data_ptr<float>()));
          differ += !torch::equal(c[0], C[m]) + !torch::equal(g[0], act[m]);
        }
        CHECK(differ == 0);
        CHECK(torch::allclose(C, torch::linear(A, W.to(torch::kFloat32)), 1e-4, 1e-4));
      }
    }
  }
  select_kernels(nullptr);
}

TEST_CASE("bfloat16 weights with bfloat16 activations: the product of the rounded operands, by vdpbf16ps and widened",
          "[kernels][half][bf16]") {
  auto bf = [](const torch::Tensor& t) { return WeightsRef(t.data_ptr(), WeightType::bf16, true, /*bf16_act=*/true); };
  for (const auto& isa : runnable_kernels()) {
    select_kernels(isa.c_str());
    INFO("kernels: " << small_gemm_isa() << ", vdpbf16ps: " << (*bf16_dot_isa() ? bf16_dot_isa() : "none"));
    torch::manual_seed(11);
    // One row (vdpbf16ps, row_bf16: K in steps of 128, then 32, then a masked tail), and more
    // (vdpbf16ps tiles of up to 4 rows, so each partial tile: 3, 7, 15, 17, 18 rows; widened where
    // the kernels picked lack vdpbf16ps), off the tile (4 rows of W) and vector (32) grids, K past
    // one pass of 1024 (QuantRows::h's chunks) with a tail.
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 5, 17}, {1, 37, 300}, {1, 9, 1056}, {1, 3, 128}, {7, 37, 300}, {15, 37, 300}, {16, 37, 300},
                           {17, 1001, 1100}, {16, 6, 768}, {33, 13, 1056}, {18, 1, 1}, {3, 1, 1}}) {
      INFO("M=" << M << " N=" << N << " K=" << K);
      auto A = torch::randn({M, K}), W = torch::randn({N, K}).to(torch::kBFloat16);
      auto W2 = torch::randn({N, K}).to(torch::kBFloat16);
      auto a16 = A.to(torch::kBFloat16).to(torch::kFloat32);  // the activations as the kernels round them
      auto w32 = W.to(torch::kFloat32), w2_32 = W2.to(torch::kFloat32);
      const float nan = std::numeric_limits<float>::quiet_NaN();
      auto C = torch::full({M, N}, nan);
      REQUIRE(small_gemm(A.data_ptr<float>(), M, bf(W), N, K, C.data_ptr<float>()));
      // Rounding A moves these sums by ~1e-2 (K = 300: sqrt(K) * 2^-9), far outside the tolerance:
      // a kernel on the exact A fails here.
      const auto want = torch::linear(a16, w32);
      CHECK(torch::allclose(C, want, 1e-4, 1e-3));
      if (K >= 300) CHECK_FALSE(torch::allclose(C, torch::linear(A, w32), 1e-4, 1e-3));
      auto C0 = torch::randn({M, N});
      auto Cacc = C0.clone();
      REQUIRE(small_gemm(A.data_ptr<float>(), M, bf(W), N, K, Cacc.data_ptr<float>(), /*accumulate=*/true));
      CHECK(torch::allclose(Cacc, C0 + want, 1e-4, 1e-3));
      // Two outputs asking for bf16 activations, then a mix with a float32 one (separate products).
      auto c1 = torch::full({M, N}, nan), c2 = torch::full({M, N}, nan);
      const GemmOutput both[2] = {{bf(W), N, c1.data_ptr<float>()}, {bf(W2), N, c2.data_ptr<float>()}};
      REQUIRE(small_gemm_many(A.data_ptr<float>(), M, K, both, 2));
      CHECK(torch::allclose(c1, want, 1e-4, 1e-3));
      CHECK(torch::allclose(c2, torch::linear(a16, w2_32), 1e-4, 1e-3));
      auto Wf = torch::randn({N, K});
      auto c3 = torch::full({M, N}, nan);
      c1.fill_(nan);
      const GemmOutput mix[2] = {{bf(W), N, c1.data_ptr<float>()}, {Wf.data_ptr<float>(), N, c3.data_ptr<float>()}};
      REQUIRE(small_gemm_many(A.data_ptr<float>(), M, K, mix, 2));
      CHECK(torch::allclose(c1, want, 1e-4, 1e-3));
      CHECK(torch::allclose(c3, torch::linear(A, Wf), 1e-4, 1e-4));  // the exact A for the float32 one
      auto act = torch::full({M, N}, nan);
      REQUIRE(gate_up_silu(A.data_ptr<float>(), M, K, bf(W), bf(W2), N, act.data_ptr<float>()));
      auto gu = torch::silu(want) * torch::linear(a16, w2_32);
      CHECK(torch::allclose(act, gu, 1e-4, 1e-3 * std::max(1.0, gu.abs().max().item<double>())));
    }
  }
  select_kernels(nullptr);
}

// Q8_0 blocks of W [N, K] (K a multiple of 32) as llama.cpp lays them out, and their float32
// values (d * q, d rounded to f16).
static std::pair<std::vector<uint8_t>, torch::Tensor> q8_blocks(const torch::Tensor& W) {
  const int64_t N = W.size(0), K = W.size(1);
  std::vector<uint8_t> out(static_cast<std::size_t>(N * K / 32 * 34));
  auto deq = torch::empty({N, K});
  auto w = W.contiguous();
  for (int64_t b = 0; b < N * K / 32; ++b) {
    const float* x = w.data_ptr<float>() + b * 32;
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const c10::Half d(amax / 127);
    std::memcpy(out.data() + b * 34, &d.x, 2);
    for (int j = 0; j < 32; ++j) {
      const int q = static_cast<float>(d) == 0 ? 0 : static_cast<int>(std::lround(x[j] / static_cast<float>(d)));
      const int8_t qc = static_cast<int8_t>(std::max(-127, std::min(127, q)));
      out[b * 34 + 2 + j] = static_cast<uint8_t>(qc);
      deq.data_ptr<float>()[b * 32 + j] = static_cast<float>(d) * qc;
    }
  }
  return {std::move(out), deq};
}

TEST_CASE("small_gemm, small_gemm_many and gate_up_silu read Q8_0 blocks, dequantised in registers", "[kernels][q8]") {
  set_int8_activations(false);  // the float32 path; the integer one is tested with the other formats below
  for (const auto& isa : runnable_kernels()) {
    select_kernels(isa.c_str());
    INFO("kernels: " << small_gemm_isa());
    if (!small_gemm_supports(WeightType::q8_0)) {
      WARN("SKIP: the " << small_gemm_isa() << " kernels here cannot read Q8_0 (no F16C)");
      continue;
    }
    torch::manual_seed(9);
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 32}, {2, 7, 64}, {5, 37, 96}, {3, 1001, 288},
                           {33, 33, 768}, {1, 32000, 64}, {16, 288, 288}}) {
      INFO("M=" << M << " N=" << N << " K=" << K);
      auto A = torch::randn({M, K});
      auto [b1, w1] = q8_blocks(torch::randn({N, K}));
      auto [b2, w2] = q8_blocks(torch::randn({N + 3, K}));
      const float nan = std::numeric_limits<float>::quiet_NaN();
      auto C = torch::full({M, N}, nan);
      REQUIRE(small_gemm(A.data_ptr<float>(), M, WeightsRef(b1.data(), WeightType::q8_0), N, K, C.data_ptr<float>()));
      CHECK(torch::allclose(C, torch::linear(A, w1), 1e-4, 1e-4));  // every element written
      auto C0 = torch::randn({M, N});
      auto Cacc = C0.clone();
      REQUIRE(small_gemm(A.data_ptr<float>(), M, WeightsRef(b1.data(), WeightType::q8_0), N, K, Cacc.data_ptr<float>(), true));
      CHECK(torch::allclose(Cacc, C0 + torch::linear(A, w1), 1e-4, 1e-4));
      auto c1 = torch::full({M, N + 3}, nan), c2 = torch::full({M, N}, nan);
      const GemmOutput outs[2] = {{WeightsRef(b2.data(), WeightType::q8_0), N + 3, c1.data_ptr<float>()},
                                  {WeightsRef(b1.data(), WeightType::q8_0), N, c2.data_ptr<float>()}};
      REQUIRE(small_gemm_many(A.data_ptr<float>(), M, K, outs, 2));
      CHECK(torch::allclose(c1, torch::linear(A, w2), 1e-4, 1e-4));
      CHECK(torch::allclose(c2, torch::linear(A, w1), 1e-4, 1e-4));
      auto Ag = A * 4;
      auto act = torch::full({M, N}, nan);
      REQUIRE(gate_up_silu(Ag.data_ptr<float>(), M, K, WeightsRef(b1.data(), WeightType::q8_0),
                           WeightsRef(b2.data(), WeightType::q8_0), N, act.data_ptr<float>()));
      auto want = torch::silu(torch::linear(Ag, w1)) * torch::linear(Ag, w2.narrow(0, 0, N));
      CHECK(torch::allclose(act, want, 1e-4, 1e-5 * want.abs().max().item<double>()));
    }
    // A row that is not whole blocks is declined, not misread.
    std::vector<uint8_t> junk(34 * 4);
    auto A = torch::randn({1, 40}), out = torch::empty({1, 2});
    CHECK_FALSE(small_gemm(A.data_ptr<float>(), 1, WeightsRef(junk.data(), WeightType::q8_0), 2, 40, out.data_ptr<float>()));
  }
  set_int8_activations(true);
  select_kernels(nullptr);
}

// A [M, K] as the integer kernels see it: each block of 32 as d * int8, int8 = a * 127 / max|a|
// rounded to nearest even, d = max|a| / 127 rounded to float16 (ggml's quantize_row_q8_0).
static torch::Tensor q8_rounded(const torch::Tensor& A) {
  auto b = A.reshape({-1, 32});
  auto amax = b.abs().amax(1, true);
  auto id = torch::where(amax == 0, torch::zeros_like(amax), 127 / amax);
  auto d = (amax / 127).to(torch::kHalf).to(torch::kFloat32);
  return (torch::round(b * id) * d).reshape(A.sizes());
}

// The same for the K-quants' activations (ggml's quantize_row_q8_K): per 256, the value of largest
// magnitude maps to -127, d = 1 / (-127 / that value), no float16 rounding.
static torch::Tensor q8k_rounded(const torch::Tensor& A) {
  auto b = A.reshape({-1, 256});
  auto idx = b.abs().argmax(1, true);
  auto mx = b.gather(1, idx);
  auto is = torch::where(mx == 0, torch::zeros_like(mx), -127 / mx);
  auto d = torch::where(mx == 0, torch::zeros_like(mx), 1 / is);
  return (torch::clamp_max(torch::round(b * is), 127) * d).reshape(A.sizes());
}

// W [N, K] of Q4_1 / Q5_1 blocks (values w) times A as the integer kernels take it: the 8-bit-
// rounded A times each block's d * q, plus the block's min m times the activation block's sum
// as ggml's Q8_1 keeps it, (max|a| / 127) * (sum of its 8-bit values) in float16.
static torch::Tensor q8_1_product(const torch::Tensor& A, const std::vector<uint8_t>& blocks, const torch::Tensor& w,
                                  const QuantFormat& f) {
  const int64_t N = w.size(0), K = w.size(1), nb = K / 32;
  auto m = torch::empty({N, nb});
  for (int64_t i = 0; i < N * nb; ++i) {
    uint16_t h;
    std::memcpy(&h, blocks.data() + i * f.block_bytes + 2, 2);
    m.data_ptr<float>()[i] = fp16_to_float(h);
  }
  auto b = A.reshape({-1, 32});
  auto amax = b.abs().amax(1, true);
  auto id = torch::where(amax == 0, torch::zeros_like(amax), 127 / amax);
  auto s = ((amax / 127) * torch::round(b * id).sum(1, true)).to(torch::kHalf).to(torch::kFloat32).reshape({A.size(0), nb});
  return torch::linear(q8_rounded(A), w - m.repeat_interleave(32, 1)) + torch::matmul(s, m.t());
}

TEST_CASE("small_gemm, small_gemm_many and gate_up_silu read every quantized format, dequantised in registers",
          "[kernels][quant]") {
  const WeightType types[] = {WeightType::q4_0, WeightType::q4_1, WeightType::q5_0, WeightType::q5_1,
                              WeightType::q8_0, WeightType::q4_k, WeightType::q5_k, WeightType::q6_k};
  for (const auto& [isa, int8] : {std::pair<std::string, bool>{"avx2", false}, {"avx2", true}, {"avx512", false},
                                  {"avx512", true}}) {
    if (!select_kernels(isa.c_str())) continue;
    set_int8_activations(int8);
    for (WeightType t : types) {
      const QuantFormat& f = *quant_format(t);
      // Every format goes through the integer kernels where they are on: the reference then
      // multiplies the 8-bit-rounded A (Q4_1, Q5_1: q8_1_product).
      const bool rounded = int8 && *int8_dot_isa();
      const bool q8_1 = rounded && (t == WeightType::q4_1 || t == WeightType::q5_1);
      INFO("kernels: " << small_gemm_isa() << ", format " << f.name << ", integer: " << int8_dot_isa());
      if (!small_gemm_supports(t)) {
        WARN("SKIP: the " << small_gemm_isa() << " kernels here cannot read " << f.name << " (no F16C)");
        continue;
      }
      const int64_t E = f.block_elems;
      for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, E}, {2, 7, 2 * E}, {5, 37, 3 * E},
                             {3, 1001, E}, {33, 33, 3 * E}, {16, 288, 2 * E}}) {
        INFO("M=" << M << " N=" << N << " K=" << K);
        torch::manual_seed(9);
        auto A = torch::randn({M, K});
        auto Aref = !rounded                                                                        ? A
                    : t == WeightType::q4_k || t == WeightType::q5_k || t == WeightType::q6_k ? q8k_rounded(A)
                                                                                               : q8_rounded(A);
        auto [b1, w1] = random_blocks(f, N, K, 1);
        auto [b2, w2] = random_blocks(f, N + 3, K, 2);
        auto lin = [&](const std::vector<uint8_t>& blocks, const torch::Tensor& w) {
          return q8_1 ? q8_1_product(A, blocks, w, f) : torch::linear(Aref, w);
        };
        const double tol = 1e-4 * std::max(1.0, w1.abs().max().item<double>() * std::sqrt(double(K)));
        const float nan = std::numeric_limits<float>::quiet_NaN();
        auto C = torch::full({M, N}, nan);
        REQUIRE(small_gemm(A.data_ptr<float>(), M, WeightsRef(b1.data(), t), N, K, C.data_ptr<float>()));
        CHECK(torch::allclose(C, lin(b1, w1), 1e-4, tol));  // every element written
        auto C0 = torch::randn({M, N});
        auto Cacc = C0.clone();
        REQUIRE(small_gemm(A.data_ptr<float>(), M, WeightsRef(b1.data(), t), N, K, Cacc.data_ptr<float>(), true));
        CHECK(torch::allclose(Cacc, C0 + lin(b1, w1), 1e-4, tol));
        auto c1 = torch::full({M, N + 3}, nan), c2 = torch::full({M, N}, nan);
        const GemmOutput outs[2] = {{WeightsRef(b2.data(), t), N + 3, c1.data_ptr<float>()},
                                    {WeightsRef(b1.data(), t), N, c2.data_ptr<float>()}};
        REQUIRE(small_gemm_many(A.data_ptr<float>(), M, K, outs, 2));
        CHECK(torch::allclose(c1, lin(b2, w2), 1e-4, tol));
        CHECK(torch::allclose(c2, lin(b1, w1), 1e-4, tol));
        auto act = torch::full({M, N}, nan);
        REQUIRE(gate_up_silu(A.data_ptr<float>(), M, K, WeightsRef(b1.data(), t), WeightsRef(b2.data(), t), N,
                             act.data_ptr<float>()));
        auto want = torch::silu(lin(b1, w1)) * lin(b2, w2).narrow(1, 0, N);
        CHECK(torch::allclose(act, want, 1e-4, tol * (1 + want.abs().max().item<double>())));
      }
      // A row that is not whole blocks is declined, not misread.
      std::vector<uint8_t> junk(static_cast<std::size_t>(f.block_bytes * 4));
      auto A = torch::randn({1, E + 8}), out = torch::empty({1, 2});
      CHECK_FALSE(small_gemm(A.data_ptr<float>(), 1, WeightsRef(junk.data(), t), 2, E + 8, out.data_ptr<float>()));
    }
  }
  set_int8_activations(true);
  select_kernels(nullptr);
}

TEST_CASE("Q4_0, Q4_1, Q8_0, Q4_K, Q5_K and Q6_K with eight rows interleaved: the same products, by every kernel and the float32 path",
          "[kernels][quant][x8]") {
  for (WeightType t : {WeightType::q4_0, WeightType::q4_1, WeightType::q8_0, WeightType::q4_k, WeightType::q5_k, WeightType::q6_k}) {
    const QuantFormat& f = *quant_format(t);
    const int64_t E = f.block_elems;
    const WeightType pt = packed_x8(t);
    REQUIRE(plain_of_x8(pt) == t);
    // The packing moves bytes only (Q4_K's scales re-encoded, every bit kept): unpacked again,
    // the blocks are the same.
    auto [b0, w0] = random_blocks(f, 24, 3 * E, 5);
    std::vector<uint8_t> p0(b0.size()), u0(b0.size());
    pack_x8(t, b0.data(), 24, 3 * E, p0.data());
    CHECK(p0 != b0);
    unpack_x8(pt, p0.data(), 24, 3 * E, u0.data());
    CHECK(u0 == b0);
    CHECK_THROWS(pack_x8(t, b0.data(), 12, 2 * E, p0.data()));  // not groups of eight rows
    CHECK_THROWS(pack_x8(WeightType::q5_0, b0.data(), 8, 256, p0.data()));  // no interleaved Q5_0
    for (const auto& [isa, int8] : {std::pair<std::string, bool>{"avx2", false}, {"avx2", true}, {"avx512", false},
                                    {"avx512", true}}) {
      if (!select_kernels(isa.c_str())) continue;
      set_int8_activations(int8);
      INFO("kernels: " << small_gemm_isa() << ", format " << f.name << ", integer: " << int8_dot_isa());
      if (!packs_x8(t)) {
        WARN("SKIP: the " << small_gemm_isa() << " kernels here have no interleaved " << f.name);
        continue;
      }
      const bool rounded = int8 && *int8_dot_isa();
      const bool q8_1 = rounded && t == WeightType::q4_1;  // its mins: q8_1_product
      for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 8, E}, {2, 16, 2 * E}, {5, 40, 3 * E}, {3, 1000, E},
                             {33, 32, 3 * E}, {16, 288, 2 * E}, {7, 8, 8 * E}}) {
        INFO("M=" << M << " N=" << N << " K=" << K);
        torch::manual_seed(9);
        auto A = torch::randn({M, K});
        auto Aref = !rounded                                                                        ? A
                    : t == WeightType::q4_k || t == WeightType::q5_k || t == WeightType::q6_k ? q8k_rounded(A)
                                                                                               : q8_rounded(A);
        auto [b1, w1] = random_blocks(f, N, K, 1);
        auto [b2, w2] = random_blocks(f, N + 8, K, 2);
        std::vector<uint8_t> p1(b1.size()), p2(b2.size());
        pack_x8(t, b1.data(), N, K, p1.data());
        pack_x8(t, b2.data(), N + 8, K, p2.data());
        auto lin = [&](const std::vector<uint8_t>& blocks, const torch::Tensor& w) {
          return q8_1 ? q8_1_product(A, blocks, w, f) : torch::linear(Aref, w);
        };
        const double tol = 1e-4 * std::max(1.0, w1.abs().max().item<double>() * std::sqrt(double(K)));
        const float nan = std::numeric_limits<float>::quiet_NaN();
        auto C = torch::full({M, N}, nan);
        REQUIRE(small_gemm(A.data_ptr<float>(), M, WeightsRef(p1.data(), pt), N, K, C.data_ptr<float>()));
        CHECK(torch::allclose(C, lin(b1, w1), 1e-4, tol));  // every element written
        auto C0 = torch::randn({M, N});
        auto Cacc = C0.clone();
        REQUIRE(small_gemm(A.data_ptr<float>(), M, WeightsRef(p1.data(), pt), N, K, Cacc.data_ptr<float>(), true));
        CHECK(torch::allclose(Cacc, C0 + lin(b1, w1), 1e-4, tol));
        // A product may say "float32 activations" for itself (WeightsRef::int8 false).
        auto Cf = torch::full({M, N}, nan);
        REQUIRE(small_gemm(A.data_ptr<float>(), M, WeightsRef(p1.data(), pt, false), N, K, Cf.data_ptr<float>()));
        CHECK(torch::allclose(Cf, torch::linear(A, w1), 1e-4, tol));
        auto c1 = torch::full({M, N + 8}, nan), c2 = torch::full({M, N}, nan);
        const GemmOutput outs[2] = {{WeightsRef(p2.data(), pt), N + 8, c1.data_ptr<float>()},
                                    {WeightsRef(b1.data(), t), N, c2.data_ptr<float>()}};  // one of each layout
        REQUIRE(small_gemm_many(A.data_ptr<float>(), M, K, outs, 2));
        CHECK(torch::allclose(c1, lin(b2, w2), 1e-4, tol));
        CHECK(torch::allclose(c2, lin(b1, w1), 1e-4, tol));
        auto act = torch::full({M, N}, nan);
        REQUIRE(gate_up_silu(A.data_ptr<float>(), M, K, WeightsRef(p1.data(), pt), WeightsRef(p2.data(), pt), N,
                             act.data_ptr<float>()));
        auto want = torch::silu(lin(b1, w1)) * lin(b2, w2).narrow(1, 0, N);
        CHECK(torch::allclose(act, want, 1e-4, tol * (1 + want.abs().max().item<double>())));
      }
    }
  }
  set_int8_activations(true);
  select_kernels(nullptr);
}

TEST_CASE("Quantized kernels at their largest quants and activations: no 16-bit or 32-bit sum overflows",
          "[kernels][quant][x8]") {
  // Every quant at its largest against activation rows of one value (each rounds to +-127 in
  // every block): the largest products, all of one sign, that the integer kernels' 16-bit pair sums
  // (vpmaddubsw, added in 16 bits over runs of blocks on AVX2) and 32-bit sums must hold.
  set_int8_activations(true);
  for (const auto& isa : std::vector<std::string>{"avx2", "avx512"}) {
    if (!select_kernels(isa.c_str()) || !*int8_dot_isa()) continue;
    for (WeightType t : {WeightType::q4_0, WeightType::q4_1, WeightType::q5_0, WeightType::q5_1, WeightType::q8_0,
                         WeightType::q4_k, WeightType::q5_k, WeightType::q6_k}) {
      const QuantFormat& f = *quant_format(t);
      if (!small_gemm_supports(t)) continue;
      const bool kq = t == WeightType::q4_k || t == WeightType::q5_k || t == WeightType::q6_k;
      const int64_t E = f.block_elems, K = kq ? 2 * E : 16 * E;
      const int64_t N = 16, M = 6;
      auto A = torch::ones({M, K});
      A[1].fill_(-1.0f);
      A[2].fill_(100.0f);
      A[3].fill_(-0.001f);
      A[4] = torch::randn({K});
      A[5].narrow(0, 0, K / 2).fill_(1.0f);  // half of each row positive, half negative
      A[5].narrow(0, K / 2, K / 2).fill_(-1.0f);
      auto Aref = kq ? q8k_rounded(A) : q8_rounded(A);
      for (uint8_t fill : {uint8_t(0xFF), uint8_t(0x81)}) {  // 0x81: Q8_0's -127
        auto [b, w] = extreme_blocks(f, N, K, fill);
        INFO("kernels: " << small_gemm_isa() << ", format " << f.name << ", fill " << int(fill));
        auto want = t == WeightType::q4_1 || t == WeightType::q5_1 ? q8_1_product(A, b, w, f) : torch::linear(Aref, w);
        const double tol = 1e-4 * std::max(1.0, want.abs().max().item<double>());
        for (int rows : {1, 4, 6}) {
          INFO("rows of A: " << rows);
          auto C = torch::full({rows, N}, std::numeric_limits<float>::quiet_NaN());
          REQUIRE(small_gemm(A.data_ptr<float>(), rows, WeightsRef(b.data(), t), N, K, C.data_ptr<float>()));
          CHECK(torch::allclose(C, want.narrow(0, 0, rows), 1e-4, tol));
          if (packs_x8(t)) {
            std::vector<uint8_t> p(b.size());
            pack_x8(t, b.data(), N, K, p.data());
            auto Cp = torch::full({rows, N}, std::numeric_limits<float>::quiet_NaN());
            REQUIRE(small_gemm(A.data_ptr<float>(), rows, WeightsRef(p.data(), packed_x8(t)), N, K, Cp.data_ptr<float>()));
            CHECK(torch::allclose(Cp, want.narrow(0, 0, rows), 1e-4, tol));
          }
        }
      }
    }
  }
  select_kernels(nullptr);
}

TEST_CASE("argmax_rows: the first largest of each row, as torch::argmax", "[kernels][sampling]") {
  for (const auto& isa : std::vector<std::string>{"", "avx2", "avx512"}) {
    if (!select_kernels(isa.c_str())) continue;
    INFO("kernels: '" << small_gemm_isa() << "'");
    torch::manual_seed(6);
    for (int64_t n : {1, 7, 16, 33, 32000}) {
      auto x = torch::randn({5, n});
      // Ties: row 1's largest twice (the first must win), row 2 all equal, row 3 -inf but one
      // entry, row 4 the largest in the tail after the whole vectors.
      x[1][n / 2] = 9;
      x[1][n - 1] = 9;
      x[2].fill_(1.5);
      x[3].fill_(-std::numeric_limits<float>::infinity());
      x[3][n - 1] = -1e30f;
      x[4][n - 1] = 50;
      std::vector<int64_t> got(5, -1);
      argmax_rows(x.data_ptr<float>(), 5, n, got.data());
      auto want = x.argmax(-1);
      for (int64_t r = 0; r < 5; ++r) {
        INFO("n=" << n << " row " << r);
        CHECK(got[r] == want[r].item<int64_t>());
      }
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

TEST_CASE("decode_attention equals softmax attention: grouped-query heads, left padding, a bfloat16 cache",
          "[kernels][bf16]") {
  if (std::string(small_gemm_isa()).empty()) {
    WARN("SKIP: no decode kernel for this CPU: the model keeps libtorch's attention");
    return;
  }
  // Head size 20: the scalar loop. 16, 48, 64: the vector kernel (whole vectors of 8 or 16);
  // 23 and 71 keys leave a remainder after the blocks of 16 keys, 64 and 1 do not. A bfloat16
  // cache is read as its values widened to float32.
  const int64_t B = 3, H = 6, KV = 2, cap = 72;
  for (const auto& isa : runnable_kernels())
    for (int64_t hd : {20, 16, 48, 64})
      for (int64_t S : {23, 64, 71, 1})
        for (bool bf16 : {false, true}) {
          select_kernels(isa.c_str());
          torch::manual_seed(4);
          auto q = torch::randn({B, H, hd}) * 3;  // spread scores: the exp is tested over a wide range
          auto k = torch::randn({B, KV, cap, hd}), v = torch::randn({B, KV, cap, hd});
          auto k16 = k.to(torch::kBFloat16), v16 = v.to(torch::kBFloat16);
          if (bf16) k = k16.to(torch::kFloat32), v = v16.to(torch::kFloat32);  // what the kernel should see
          const double scale = 1.0 / std::sqrt(double(hd));
          for (std::vector<int64_t> pad : {std::vector<int64_t>{}, std::vector<int64_t>{0, 5, 22}}) {
            INFO("kernels " << small_gemm_isa() << ", head size " << hd << ", " << S << " keys, "
                            << (pad.empty() ? "no padding" : "padding 0, 5, 22") << (bf16 ? ", bfloat16 cache" : ""));
            auto padt = torch::tensor(pad.empty() ? std::vector<int64_t>{0} : pad);
            auto out = torch::full({B, H, hd}, std::numeric_limits<float>::quiet_NaN());
            DecodeAttention a{q.data_ptr<float>(), bf16 ? nullptr : k.data_ptr<float>(), bf16 ? nullptr : v.data_ptr<float>(),
                              pad.empty() ? nullptr : padt.data_ptr<int64_t>(), out.data_ptr<float>(), B, H, KV, hd, cap, S,
                              static_cast<float>(scale),
                              bf16 ? reinterpret_cast<const uint16_t*>(k16.data_ptr()) : nullptr,
                              bf16 ? reinterpret_cast<const uint16_t*>(v16.data_ptr()) : nullptr};
            REQUIRE(decode_attention(a));
            CHECK(torch::allclose(out, reference_attention(q, k, v, pad, S, scale), 1e-5, 1e-5));
          }
        }
  select_kernels(nullptr);
}

TEST_CASE("to_bf16_rows rounds as libtorch's float -> bfloat16 and pads with zeros", "[kernels][bf16]") {
  const float inf = std::numeric_limits<float>::infinity();
  // Ties (1 + 2^-8 rounds down to even, 1 + 3 * 2^-8 up), the largest finite float (rounds to
  // inf), denormals, signed zero, infinities, NaN, and ordinary values.
  std::vector<float> x = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256, 3.3895314e38f, 1e-40f, -1e-40f, -0.0f, inf, -inf,
                          std::numeric_limits<float>::quiet_NaN(), 0.1f, -7.75f, 65504.0f, 1.0f / 3};
  auto t = torch::randn({2, 50}) * 1000;
  for (std::size_t i = 0; i < x.size(); ++i) t[0][static_cast<int64_t>(i)] = x[i];
  const int64_t Kp = 64;
  std::vector<uint16_t> got(2 * Kp, 0xffff);
  to_bf16_rows(t.data_ptr<float>(), 2, 50, got.data(), Kp);
  auto want = t.to(torch::kBFloat16).contiguous();
  const auto* w = reinterpret_cast<const uint16_t*>(want.data_ptr());
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t k = 0; k < Kp; ++k) {
      INFO("row " << r << " column " << k);
      if (k >= 50)
        CHECK(got[r * Kp + k] == 0);
      else if (std::isnan(t[r][k].item<float>()))
        CHECK(((got[r * Kp + k] & 0x7f80) == 0x7f80 && (got[r * Kp + k] & 0x7f) != 0));
      else
        CHECK(got[r * Kp + k] == w[r * 50 + k]);
    }
}

TEST_CASE("bf16_gemm equals the product of bfloat16-rounded operands on shapes off the tile grid", "[kernels][bf16]") {
  std::vector<std::string> kernels;
  for (const char* name : {"amx", "avx512bf16", "avx512", "avx2"})
    if (select_bf16_gemm(name)) kernels.push_back(name);
  if (kernels.empty()) {
    WARN("SKIP: no bfloat16 kernel for this CPU: decode_dtype bfloat16 falls back to float32 here, "
         "and bf16_gemm is untested");
    CHECK(std::string(bf16_gemm_isa()).empty());
  }
  CHECK_FALSE(select_bf16_gemm("sse"));  // unknown: declined, and none picked
  CHECK(std::string(bf16_gemm_isa()).empty());
  auto r16 = [](const torch::Tensor& t) { return t.to(torch::kBFloat16).to(torch::kFloat32); };
  auto run = [&](const torch::Tensor& A, const std::vector<Bf16Output>& outs) {
    const int64_t M = A.size(0), K = A.size(1), Kp = outs[0].W->Kp;
    std::vector<uint16_t> a(static_cast<std::size_t>(M * Kp));
    to_bf16_rows(A.data_ptr<float>(), M, K, a.data(), Kp);
    return bf16_gemm(a.data(), M, outs.data(), static_cast<int>(outs.size()));
  };
  for (const auto& isa : kernels) {
    REQUIRE(select_bf16_gemm(isa.c_str()));
    INFO("kernel " << bf16_gemm_isa());
    torch::manual_seed(6);
    // Row counts for each way the kernels split a pass (AVX512-BF16: up to 6, 12 and 16 rows;
    // widened: up to 2 rows, two sets of sums up to 4, AVX2 in chunks of up to 10) and past one
    // pass of 16.
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {3, 70, 40}, {16, 64, 32}, {17, 200, 288},
                           {40, 130, 100}, {5, 32000, 288}, {7, 130, 64}, {12, 64, 96}, {14, 65, 33}, {2, 96, 64}}) {
      INFO("M=" << M << " N=" << N << " K=" << K);
      auto A = torch::randn({M, K}), W = torch::randn({N, K}), W2 = torch::randn({N / 2 + 1, K});
      auto P = pack_bf16(W.data_ptr<float>(), N, K), P2 = pack_bf16(W2.data_ptr<float>(), W2.size(0), K);
      // Two outputs in one call (as the query, key and value projections), each with a guard row
      // after it that must stay untouched; the second accumulates.
      auto C = torch::full({M + 1, N}, std::numeric_limits<float>::quiet_NaN());
      auto start = torch::randn({M + 1, W2.size(0)});
      auto C2 = start.clone();
      REQUIRE(run(A, {{&P, C.data_ptr<float>(), false}, {&P2, C2.data_ptr<float>(), true}}));
      auto want = torch::linear(r16(A), r16(W));
      CHECK(torch::allclose(C.narrow(0, 0, M), want, 1e-4, 1e-3));
      CHECK(torch::isnan(C[M]).all().item<bool>());
      CHECK(torch::allclose(C2.narrow(0, 0, M), start.narrow(0, 0, M) + torch::linear(r16(A), r16(W2)), 1e-4, 1e-3));
      CHECK(torch::equal(C2[M], start[M]));
    }
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 40, 288}, {16, 96, 50}, {19, 768, 288}, {9, 70, 64}}) {
      INFO("gate/up: M=" << M << " N=" << N << " K=" << K);
      auto A = torch::randn({M, K}), Wg = torch::randn({N, K}), Wu = torch::randn({N, K});
      auto P = pack_bf16_gate_up(Wg.data_ptr<float>(), Wu.data_ptr<float>(), N, K);
      auto C = torch::full({M, N}, std::numeric_limits<float>::quiet_NaN());
      REQUIRE(run(A, {{&P, C.data_ptr<float>(), false}}));
      auto want = torch::silu(torch::linear(r16(A), r16(Wg))) * torch::linear(r16(A), r16(Wu));
      CHECK(torch::allclose(C, want, 1e-4, 1e-3));
    }
  }
  // With none picked, it declines and touches nothing.
  REQUIRE(select_bf16_gemm(""));
  auto W = torch::randn({8, 8});
  auto P = pack_bf16(W.data_ptr<float>(), 8, 8);
  auto C = torch::zeros({1, 8});
  CHECK_FALSE(run(torch::randn({1, 8}), {{&P, C.data_ptr<float>(), false}}));
  CHECK(torch::equal(C, torch::zeros({1, 8})));
  CHECK(select_bf16_gemm(nullptr) == !kernels.empty());
  if (!kernels.empty()) CHECK(bf16_gemm_isa() == kernels.front());  // the best: AMX where both run
}

TEST_CASE("softmax_draw: draws in proportion to the softmax at the temperature", "[kernels][sampling]") {
  // Weights 1, 2, 3, 4 (logits log w) at temperature 1; 0, 1, 0, 0 with a -inf and a -1000.
  std::vector<float> x = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  for (const auto& isa : runnable_kernels()) {
    INFO("kernels " << isa);
    select_kernels(isa.c_str());
    // u at the quantiles (i + 0.5) / N: the counts are the weights' shares of N, to rounding.
    const int N = 10000;
    for (float t : {1.0f, 0.5f, 3.0f}) {
      std::vector<double> w;
      double total = 0;
      for (float v : x) total += w.emplace_back(std::exp(static_cast<double>(v) / t));
      std::vector<int> count(x.size(), 0);
      for (int i = 0; i < N; ++i) ++count[softmax_draw(x.data(), 4, 1.0f / t, (i + 0.5) / N)];
      for (std::size_t j = 0; j < x.size(); ++j) {
        INFO("temperature " << t << " index " << j);
        CHECK(std::abs(count[j] - N * w[j] / total) <= 2);
      }
    }
    // Zero weights are never drawn, not even at u = 0 or just below 1.
    const float inf = std::numeric_limits<float>::infinity();
    std::vector<float> y = {-inf, 5.0f, -1000.0f, -inf};
    for (double u : {0.0, 0.3, 0.999999999}) CHECK(softmax_draw(y.data(), 4, 1.0f, u) == 1);
    // Long rows go through the vector exp and its tail: the draw at u lands where the
    // cumulative weights say.
    std::vector<float> z(1000);
    for (std::size_t i = 0; i < z.size(); ++i) z[i] = static_cast<float>((i * 37) % 101) / 10.0f;
    std::vector<double> cum;
    double acc = 0;
    for (float v : z) cum.push_back(acc += std::exp(static_cast<double>(v) - 10.0));
    for (double u : {0.01, 0.25, 0.5, 0.75, 0.99}) {
      int64_t want = std::lower_bound(cum.begin(), cum.end(), u * acc) - cum.begin();
      int64_t got = softmax_draw(z.data(), 1000, 1.0f, u);
      INFO("u " << u);
      CHECK(std::abs(got - want) <= 1);  // float exp against double: at most a neighbour at a boundary
      CHECK(z[got] >= 0);
    }
  }
  select_kernels(nullptr);
  // NaN logits give index 0 rather than garbage.
  std::vector<float> bad = {1.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f};
  int64_t i = softmax_draw(bad.data(), 3, 1.0f, 0.5);
  CHECK(i >= 0);
  CHECK(i < 3);
}
