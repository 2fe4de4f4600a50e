// Element-wise and data-movement kernels of CpuBackend against double references. Tolerances (fp32 results):
// exact for copies and bf16 widening; 1e-6 relative for Add; 2e-6 relative (+1e-6 absolute) for SiluMulFused and
// the RMSNorm family (a few fp32 roundings per element).
#include <cmath>
#include <cstring>
#include <string>

#include "tests/kernels/kernel_test_util.h"

namespace tessera {
namespace {

using ::tessera::testing::FreshSeed;
using ::tessera::testing::MakeBackend;
using ::tessera::testing::Poisoned;
using ::tessera::testing::RandomBf16;
using ::tessera::testing::RandomFloats;
using ::tessera::testing::StatusIs;
using ::tessera::testing::View;

class ElementwiseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = FreshSeed();
    rng_.seed(seed_);
    backend_ = MakeBackend();
    ASSERT_NE(backend_, nullptr);
  }
  uint32_t seed_ = 0;
  std::mt19937 rng_;
  std::unique_ptr<CpuBackend> backend_;
};

TEST_F(ElementwiseTest, AllocateIsAlignedAndReportsExhaustion) {
  for (int64_t bytes : {1, 63, 1000, 1 << 20}) {
    ASSERT_OK_AND_ASSIGN(DeviceBuffer buf, backend_->Allocate(bytes));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buf.data()) % 64, 0u);
    EXPECT_EQ(buf.bytes(), bytes);
    std::memset(buf.data(), 1, bytes);
  }
  EXPECT_THAT(backend_->Allocate(int64_t{1} << 62),
              StatusIs(absl::StatusCode::kResourceExhausted, ::testing::HasSubstr("bytes")));
}

TEST_F(ElementwiseTest, CopiesAreExact) {
  std::vector<float> src = RandomFloats(rng_, 100003);
  std::vector<float> dst = Poisoned(100003);
  Tensor s = View(src, {100003});
  Tensor d = View(dst, {100003});
  backend_->Copy(s, d);
  EXPECT_EQ(src, dst);
  std::vector<float> host = Poisoned(17), dev = Poisoned(17);
  backend_->CopyToDevice(dev.data(), src.data(), 17 * 4);
  EXPECT_OK(backend_->CopyToHost(host.data(), dev.data(), 17 * 4));
  EXPECT_EQ(std::vector<float>(src.begin(), src.begin() + 17), host);
}

TEST_F(ElementwiseTest, EmbeddingWidensTableRows) {
  const int64_t vocab = 1001, hidden = 37, tokens = 130;
  std::vector<uint16_t> table = RandomBf16(rng_, vocab * hidden);
  std::vector<int32_t> ids(tokens);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng_() % vocab);
  ids[0] = vocab - 1;
  std::vector<float> out = Poisoned(tokens * hidden);
  Tensor id_t = View(ids, {tokens});
  Tensor tab_t = View(table, {vocab, hidden});
  Tensor out_t = View(out, {tokens, hidden});
  backend_->Embedding(id_t, tab_t, out_t);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = 0; i < hidden; ++i) {
      ASSERT_EQ(out[t * hidden + i], Bf16ToF32(table[ids[t] * hidden + i])) << "token " << t << " i " << i;
    }
  }
}

TEST_F(ElementwiseTest, GatherRowsCopiesSelectedRows) {
  std::vector<float> src = RandomFloats(rng_, 17 * 37);
  std::vector<int32_t> rows = {16, 0, 3, 3, 9};
  std::vector<float> out = Poisoned(5 * 37);
  Tensor s = View(src, {17, 37});
  Tensor r = View(rows, {5});
  Tensor o = View(out, {5, 37});
  backend_->GatherRows(s, r, o);
  for (int i = 0; i < 5; ++i) {
    for (int j = 0; j < 37; ++j) ASSERT_EQ(out[i * 37 + j], src[rows[i] * 37 + j]);
  }
}

// Double reference of HF RMSNorm: x / sqrt(mean(x^2) + eps) * w.
std::vector<double> RmsNormRef(const std::vector<float>& x, const std::vector<uint16_t>& w, int64_t rows,
                               int64_t h, float eps) {
  std::vector<double> out(rows * h);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < h; ++i) ss += static_cast<double>(x[r * h + i]) * x[r * h + i];
    const double inv = 1.0 / std::sqrt(ss / h + eps);
    for (int64_t i = 0; i < h; ++i) out[r * h + i] = x[r * h + i] * inv * Bf16ToF32(w[i]);
  }
  return out;
}

TEST_F(ElementwiseTest, RmsNormMatchesReference) {
  for (int64_t rows : {1, 3, 130}) {
    for (int64_t h : {37, 2048}) {
      std::vector<float> x = RandomFloats(rng_, rows * h, 3.0f);
      std::vector<uint16_t> w = RandomBf16(rng_, h);
      std::vector<float> out = Poisoned(rows * h);
      Tensor xt = View(x, {rows, h});
      Tensor wt = View(w, {h});
      Tensor ot = View(out, {rows, h});
      backend_->RmsNorm(xt, wt, 1e-5f, ot);
      const std::vector<double> ref = RmsNormRef(x, w, rows, h, 1e-5f);
      for (int64_t i = 0; i < rows * h; ++i) {
        ASSERT_NEAR(out[i], ref[i], 2e-6 * std::fabs(ref[i]) + 1e-6) << "seed " << seed_ << " at " << i;
      }
    }
  }
}

TEST_F(ElementwiseTest, RmsNormWorksInPlace) {
  const int64_t rows = 7, h = 1001;
  std::vector<float> x = RandomFloats(rng_, rows * h);
  std::vector<uint16_t> w = RandomBf16(rng_, h);
  const std::vector<double> ref = RmsNormRef(x, w, rows, h, 1e-5f);
  Tensor xt = View(x, {rows, h});
  Tensor wt = View(w, {h});
  backend_->RmsNorm(xt, wt, 1e-5f, xt);
  for (int64_t i = 0; i < rows * h; ++i)
    ASSERT_NEAR(x[i], ref[i], 2e-6 * std::fabs(ref[i]) + 1e-6) << "at " << i;
}

TEST_F(ElementwiseTest, AddRmsNormUpdatesResidualAndNormalises) {
  const int64_t rows = 17, h = 1001;
  std::vector<float> hidden = RandomFloats(rng_, rows * h);
  std::vector<float> residual = RandomFloats(rng_, rows * h);
  std::vector<uint16_t> w = RandomBf16(rng_, h);
  std::vector<float> sum(rows * h);
  for (int64_t i = 0; i < rows * h; ++i) sum[i] = hidden[i] + residual[i];
  Tensor ht = View(hidden, {rows, h});
  Tensor rt = View(residual, {rows, h});
  Tensor wt = View(w, {h});
  backend_->AddRmsNorm(ht, rt, wt, 1e-6f);
  const std::vector<double> ref = RmsNormRef(sum, w, rows, h, 1e-6f);
  for (int64_t i = 0; i < rows * h; ++i) {
    ASSERT_EQ(residual[i], sum[i]) << "at " << i;
    ASSERT_NEAR(hidden[i], ref[i], 2e-6 * std::fabs(ref[i]) + 1e-6) << "seed " << seed_ << " at " << i;
  }
}

TEST_F(ElementwiseTest, SiluMulFusedMatchesReference) {
  const int64_t rows = 7, width = 8191;  // gate_up [7, 2 * 8191]: each row's gate, then its up
  std::vector<float> gate_up = RandomFloats(rng_, rows * 2 * width, 4.0f);
  gate_up[0] = -100.0f;  // silu saturates to -0
  gate_up[1] = 100.0f;
  std::vector<float> out = Poisoned(rows * width);
  Tensor gu = View(gate_up, {rows, 2 * width});
  Tensor o = View(out, {rows, width});
  backend_->SiluMulFused(gu, o);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < width; ++c) {
      const double g = gate_up[r * 2 * width + c], u = gate_up[r * 2 * width + width + c];
      const double ref = g / (1.0 + std::exp(-g)) * u;
      ASSERT_NEAR(out[r * width + c], ref, 2e-6 * std::fabs(ref) + 1e-6) << "row " << r << " col " << c;
    }
  }
}

TEST_F(ElementwiseTest, Copy2DCopiesStridedRows) {
  std::vector<float> src = RandomFloats(rng_, 5 * 11);
  std::vector<float> dst = Poisoned(5 * 13);
  const std::vector<float> before = dst;
  // Rows of 7 floats: from a pitch of 11 floats to a pitch of 13, starting at column 2 of dst.
  backend_->Copy2D(src.data(), 11 * 4, dst.data() + 2, 13 * 4, 7 * 4, 5);
  for (int64_t r = 0; r < 5; ++r) {
    for (int64_t c = 0; c < 13; ++c) {
      const bool copied = c >= 2 && c < 9;
      const float want = copied ? src[r * 11 + c - 2] : before[r * 13 + c];
      ASSERT_EQ(std::memcmp(&dst[r * 13 + c], &want, 4), 0) << "row " << r << " col " << c;
    }
  }
}

TEST_F(ElementwiseTest, AddWorksInPlace) {
  const int64_t n = 100003;
  std::vector<float> a = RandomFloats(rng_, n);
  std::vector<float> b = RandomFloats(rng_, n);
  std::vector<float> out = Poisoned(n);
  Tensor at = View(a, {n});
  Tensor bt = View(b, {n});
  Tensor ot = View(out, {n});
  backend_->Add(at, bt, ot);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(out[i], a[i] + b[i]);
  backend_->Add(at, bt, at);  // out aliases a
  EXPECT_EQ(a, out);
}

}  // namespace
}  // namespace tessera
