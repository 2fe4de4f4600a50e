// Linear: each GEMV kernel (scalar, AVX2, AVX-512, called directly) and both CpuBackend paths (GEMV and
// oneDNN, in both precisions) against a double reference. Tolerances are relative to sum_k |x_k w_k| (the
// scale of the rounding error of a dot product):
//   fp32 GEMV kernels: 1e-5;  oneDNN with bf16 activations: 2^-8 (each activation rounds by <= 2^-9);
//   oneDNN with split (hi + lo) bf16 activations: 2e-5.
#include "kernels/cpu/linear.h"

#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>

#include "kernels/cpu/gemv.h"
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

struct Problem {
  int64_t m, n, k;
  std::vector<float> x_storage;     // x starts at element 1 (misaligned by 4 bytes)
  std::vector<uint16_t> w_storage;  // w starts at element 1 (misaligned by 2 bytes)
  std::vector<double> ref;          // [m, n]
  std::vector<double> scale;        // [m, n]: sum_k |x w|
  const float* x() const { return x_storage.data() + 1; }
  const uint16_t* w() const { return w_storage.data() + 1; }
};

Problem MakeProblem(uint32_t seed, int64_t m, int64_t n, int64_t k, float w_std = 1.0f) {
  std::mt19937 rng(seed);
  Problem p{m, n, k, RandomFloats(rng, m * k + 1), RandomBf16(rng, n * k + 1, w_std), {}, {}};
  p.ref.assign(m * n, 0.0);
  p.scale.assign(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0, a = 0;
      for (int64_t q = 0; q < k; ++q) {
        const double prod = static_cast<double>(p.x()[i * k + q]) * Bf16ToF32(p.w()[j * k + q]);
        s += prod;
        a += std::fabs(prod);
      }
      p.ref[i * n + j] = s;
      p.scale[i * n + j] = a;
    }
  }
  return p;
}

// Checks y against the reference; returns the number of mismatches (and reports the first few).
int ExpectNear(const Problem& p, const std::vector<float>& y, double rel_tol, const std::string& what) {
  int bad = 0;
  for (int64_t i = 0; i < p.m * p.n; ++i) {
    const double err = std::fabs(y[i] - p.ref[i]);
    if (!(err <= rel_tol * p.scale[i] + 1e-30)) {
      if (++bad <= 3) {
        ADD_FAILURE() << what << ": y[" << i / p.n << ", " << i % p.n << "] = " << y[i] << ", want "
                      << p.ref[i];
      }
    }
  }
  return bad;
}

class GemvIsaTest : public ::testing::TestWithParam<std::tuple<GemvIsa, int64_t>> {};

TEST_P(GemvIsaTest, MatchesDoubleReferenceOnAwkwardShapes) {
  const auto [isa, m] = GetParam();
  if (!GemvIsaSupported(isa)) GTEST_SKIP() << "this CPU lacks " << GemvIsaName(isa);
  const uint32_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{1001, 37}, {7, 300}, {13, 16}, {5, 1}}) {
    const Problem p = MakeProblem(seed, m, n, k);
    std::vector<float> y = Poisoned(m * n);
    const GemvArgs args{p.x(), p.w(), y.data(), m, n, k};
    // Two uneven column ranges, as threads would split them.
    const int64_t split = n / 3;
    GemvForIsa(isa)(args, 0, split);
    GemvForIsa(isa)(args, split, n);
    EXPECT_EQ(
        ExpectNear(p, y, 1e-5,
                   std::string(GemvIsaName(isa)) + " n=" + std::to_string(n) + " k=" + std::to_string(k)),
        0);
  }
}

INSTANTIATE_TEST_SUITE_P(AllIsas, GemvIsaTest,
                         ::testing::Combine(::testing::Values(GemvIsa::kScalar, GemvIsa::kAvx2,
                                                              GemvIsa::kAvx512),
                                            ::testing::Values(1, 3, 7, 17, 64, 130)),
                         [](const auto& info) {
                           return std::string(GemvIsaName(std::get<0>(info.param))) + "_m" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(GemvIsaTest, BestIsaIsSupported) { EXPECT_TRUE(GemvIsaSupported(BestGemvIsa())); }

TEST(SplitBf16Test, HiPlusLoRecoversSixteenBits) {
  std::mt19937 rng(FreshSeed());
  for (GemvIsa isa : {GemvIsa::kScalar, GemvIsa::kAvx512}) {
    if (!GemvIsaSupported(isa)) continue;
    std::vector<float> x = RandomFloats(rng, 1000);
    x[3] = std::numeric_limits<float>::quiet_NaN();
    std::vector<uint16_t> hi(1000, 0xffff), lo(1000, 0xffff);
    SplitBf16ForIsa(isa)(x.data(), 999, hi.data(), lo.data());  // 999: a partial last vector
    EXPECT_EQ(hi[999], 0xffff) << "wrote past the end";
    for (int i = 0; i < 999; ++i) {
      if (i == 3) {
        EXPECT_TRUE(std::isnan(Bf16ToF32(hi[i])));
        continue;
      }
      EXPECT_EQ(hi[i], F32ToBf16(x[i])) << GemvIsaName(isa) << " at " << i;
      const double sum = static_cast<double>(Bf16ToF32(hi[i])) + Bf16ToF32(lo[i]);
      EXPECT_NEAR(sum, x[i], std::fabs(x[i]) * 0x1p-16) << GemvIsaName(isa) << " at " << i;
    }
  }
}

struct PathCase {
  int64_t gemv_max_m;  // 1 << 20: always GEMV; 0: always oneDNN
  PrefillPrecision precision;
  double tol;
  const char* name;
};

TEST(CpuLinearTest, BothPathsMatchDoubleReference) {
  const uint32_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (const PathCase& c : {PathCase{1 << 20, PrefillPrecision::kBf16, 1e-5, "gemv"},
                            PathCase{0, PrefillPrecision::kBf16, 0x1p-8, "onednn-bf16"},
                            PathCase{0, PrefillPrecision::kSplitBf16, 2e-5, "onednn-split"}}) {
    CpuBackendOptions options;
    options.num_threads = 2;
    options.linear.gemv_max_m = c.gemv_max_m;
    options.linear.prefill_precision = c.precision;
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<CpuBackend> backend, CpuBackend::Create(options));
    for (int64_t m : {1, 3, 7, 17, 64, 130}) {
      const Problem p = MakeProblem(seed + m, m, 1001, 37);
      std::vector<float> y = Poisoned(m * 1001);
      Tensor x(const_cast<float*>(p.x()), DType::kF32, {m, 37});
      Tensor w(const_cast<uint16_t*>(p.w()), DType::kBF16, {1001, 37});
      Tensor yt = View(y, {m, 1001});
      backend->Linear(x, w, yt);
      EXPECT_EQ(ExpectNear(p, y, c.tol, std::string(c.name) + " m=" + std::to_string(m)), 0);
    }
  }
}

TEST(CpuLinearTest, DefaultPicksGemvForSmallBatches) {
  auto backend = MakeBackend();
  ASSERT_NE(backend, nullptr);
  EXPECT_GE(backend->linear().gemv_max_m(), 1);
  EXPECT_EQ(backend->linear().gemv_isa(), BestGemvIsa());
}

TEST(CpuLinearTest, RejectsNegativeThreadCount) {
  CpuBackendOptions options;
  options.num_threads = -1;
  EXPECT_THAT(CpuBackend::Create(options),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("num_threads")));
}

// Not a correctness bound but the figures the precision decision needs: error of each path relative to
// max |reference| on K = 2048, weights ~ N(0, 0.02), activations ~ N(0, 1). Printed; asserted loosely.
TEST(CpuLinearTest, ReportsPrecisionOfEachPath) {
  const int64_t m = 32, n = 256, k = 2048;
  const Problem p = MakeProblem(FreshSeed(), m, n, k, 0.02f);
  double max_ref = 0;
  for (double r : p.ref) max_ref = std::max(max_ref, std::fabs(r));
  double errs[3] = {};
  double rms[3] = {};
  int i = 0;
  for (const PathCase& c : {PathCase{1 << 20, PrefillPrecision::kBf16, 0, "gemv-fp32"},
                            PathCase{0, PrefillPrecision::kBf16, 0, "onednn-bf16"},
                            PathCase{0, PrefillPrecision::kSplitBf16, 0, "onednn-split-bf16"}}) {
    CpuBackendOptions options;
    options.linear.gemv_max_m = c.gemv_max_m;
    options.linear.prefill_precision = c.precision;
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<CpuBackend> backend, CpuBackend::Create(options));
    std::vector<float> y = Poisoned(m * n);
    Tensor x(const_cast<float*>(p.x()), DType::kF32, {m, k});
    Tensor w(const_cast<uint16_t*>(p.w()), DType::kBF16, {n, k});
    Tensor yt = View(y, {m, n});
    backend->Linear(x, w, yt);
    for (int64_t j = 0; j < m * n; ++j) {
      const double e = std::fabs(y[j] - p.ref[j]);
      errs[i] = std::max(errs[i], e);
      rms[i] += e * e;
    }
    rms[i] = std::sqrt(rms[i] / (m * n));
    std::printf("[precision] %-18s max|err|/max|ref| = %.3e   rms err/max|ref| = %.3e\n", c.name,
                errs[i] / max_ref, rms[i] / max_ref);
    ++i;
  }
  EXPECT_LT(errs[0] / max_ref, 1e-5);
  EXPECT_LT(errs[1] / max_ref, 1e-2);
  EXPECT_LT(errs[2] / max_ref, 1e-4);
}

}  // namespace
}  // namespace tessera
