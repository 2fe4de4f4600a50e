// Quantized GEMV: each kernel (scalar, AVX2, AVX-512) and each block type (Q8_0, Q4_0, Q4_1) against a
// reference that dequantizes every weight row with DequantizeRow (gguf-py's semantics, tested bit-exact in
// tests/worker) and takes the dot product in double. Tolerances are relative to the scale of the rounding
// error of the kernels' fp32 arithmetic:
//   Q8_0, Q4_0: sum_k |x_k w_k|; the kernels' dot with the integer quants times d rounds like a plain dot.
//   Q4_1: sum_k |x_k| (|d q_k| + |m|), since the kernels compute d * sum(x q) + m * sum(x), as llama.cpp
//   does, and those two terms may cancel where w is near zero.
// Kernel vs reference: 1e-5; kernel vs kernel (different ISAs): 2e-6; column ranges vs one call: bit-exact.
#include "kernels/cpu/gemv_quant.h"

#include <cmath>
#include <cstring>
#include <string>
#include <tuple>

#include "tests/kernels/kernel_test_util.h"
#include "worker/checkpoint/gguf_dequant.h"

namespace tessera {
namespace {

using ::tessera::testing::FreshSeed;
using ::tessera::testing::Poisoned;
using ::tessera::testing::RandomFloats;

constexpr QuantType kTypes[] = {QuantType::kQ8_0, QuantType::kQ4_0, QuantType::kQ4_1};
constexpr GemvIsa kIsas[] = {GemvIsa::kScalar, GemvIsa::kAvx2, GemvIsa::kAvx512};

float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToF32(h);
}

// fp16 bits of a random scale: mostly normal(0, stddev) (both signs), one block in eight a random subnormal.
uint16_t RandomHalf(std::mt19937& rng, float stddev) {
  if (rng() % 8 == 0) return static_cast<uint16_t>(rng() & 0x83ff);
  return F32ToF16(std::normal_distribution<float>(0.0f, stddev)(rng));
}

struct Problem {
  QuantType type;
  int64_t m, n, k;
  std::vector<float> x_storage;    // x starts at element 1 (misaligned by 4 bytes)
  std::vector<uint8_t> w_storage;  // w starts at byte 1 (misaligned)
  std::vector<double> ref;         // [m, n]
  std::vector<double> scale;       // [m, n]: the error scale of the header comment
  const float* x() const { return x_storage.data() + 1; }
  const uint8_t* w() const { return w_storage.data() + 1; }
  GemvQuantArgs Args(float* y) const { return GemvQuantArgs{x(), w(), y, m, n, k, type}; }
};

Problem MakeProblem(std::mt19937& rng, QuantType type, int64_t m, int64_t n, int64_t k) {
  const int64_t row_bytes = QuantRowBytes(type, k);
  const int64_t block_bytes = QuantBlockBytes(type);
  Problem p{type, m, n, k, RandomFloats(rng, m * k + 1), std::vector<uint8_t>(n * row_bytes + 1), {}, {}};
  for (int64_t b = 0; b < n * k / kQuantBlockSize; ++b) {
    uint8_t* block = p.w_storage.data() + 1 + b * block_bytes;
    for (int64_t i = 0; i < block_bytes; ++i) block[i] = static_cast<uint8_t>(rng());
    const uint16_t d = RandomHalf(rng, 0.05f);
    std::memcpy(block, &d, 2);
    if (type == QuantType::kQ4_1) {
      const uint16_t min = RandomHalf(rng, 0.1f);
      std::memcpy(block + 2, &min, 2);
    }
  }
  p.ref.assign(m * n, 0.0);
  p.scale.assign(m * n, 0.0);
  std::vector<float> w(k);
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* row = p.w() + j * row_bytes;
    DequantizeRow(GgmlTypeOfBlockDType(type), reinterpret_cast<const char*>(row), k, w.data());
    for (int64_t i = 0; i < m; ++i) {
      double s = 0, a = 0;
      for (int64_t q = 0; q < k; ++q) {
        const double xq = p.x()[i * k + q];
        s += xq * w[q];
        if (type == QuantType::kQ4_1) {
          const uint8_t* block = row + q / kQuantBlockSize * block_bytes;
          const double min = HalfAt(block + 2);
          a += std::fabs(xq) * (std::fabs(w[q] - min) + std::fabs(min));
        } else {
          a += std::fabs(xq * w[q]);
        }
      }
      p.ref[i * n + j] = s;
      p.scale[i * n + j] = a;
    }
  }
  return p;
}

std::vector<float> RunKernel(GemvIsa isa, const Problem& p) {
  std::vector<float> y = Poisoned(p.m * p.n);
  GemvQuantForIsa(isa)(p.Args(y.data()), 0, p.n);
  return y;
}

// Checks y against `want` (the reference, or another kernel's output); returns the number of mismatches and
// reports the first few.
template <typename T>
int ExpectNear(const Problem& p, const std::vector<float>& y, const std::vector<T>& want, double rel_tol,
               const std::string& what) {
  int bad = 0;
  for (int64_t i = 0; i < p.m * p.n; ++i) {
    const double err = std::fabs(y[i] - static_cast<double>(want[i]));
    if (!(err <= rel_tol * p.scale[i] + 1e-30)) {
      if (++bad <= 3) {
        ADD_FAILURE() << what << ": y[" << i / p.n << ", " << i % p.n << "] = " << y[i] << ", want "
                      << want[i] << " (error scale " << p.scale[i] << ")";
      }
    }
  }
  return bad;
}

std::string Describe(QuantType type, GemvIsa isa, int64_t m, int64_t n, int64_t k) {
  return std::string(QuantTypeName(type)) + "/" + GemvIsaName(isa) + " m=" + std::to_string(m) +
         " n=" + std::to_string(n) + " k=" + std::to_string(k);
}

class GemvQuantTest : public ::testing::TestWithParam<std::tuple<QuantType, GemvIsa>> {};

TEST_P(GemvQuantTest, MatchesDequantizedDoubleReference) {
  const auto [type, isa] = GetParam();
  if (!GemvIsaSupported(isa)) GTEST_SKIP() << "this CPU lacks " << GemvIsaName(isa);
  const uint32_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  for (int64_t m : {1, 2, 3, 4, 5, 8}) {
    for (int64_t n : {1, 3, 4, 7, 64}) {
      for (int64_t k : {32, 64, 2048, 2080}) {
        const Problem p = MakeProblem(rng, type, m, n, k);
        EXPECT_EQ(ExpectNear(p, RunKernel(isa, p), p.ref, 1e-5, Describe(type, isa, m, n, k)), 0);
      }
    }
  }
}

TEST_P(GemvQuantTest, ColumnRangesComputedSeparatelyEqualOneCall) {
  const auto [type, isa] = GetParam();
  if (!GemvIsaSupported(isa)) GTEST_SKIP() << "this CPU lacks " << GemvIsaName(isa);
  const uint32_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  for (int64_t m : {1, 3, 5}) {
    const Problem p = MakeProblem(rng, type, m, 37, 96);
    const std::vector<float> whole = RunKernel(isa, p);
    // Uneven ranges, as threads would split them (not all on multiples of kGemvRowBlock), one at a time on a
    // poisoned output: each writes its own columns and nothing else.
    std::vector<float> pieces = Poisoned(m * p.n);
    const GemvQuantFn fn = GemvQuantForIsa(isa);
    int64_t begin = 0;
    for (int64_t end : {5, 6, 6, 16, 30, 37}) {
      fn(p.Args(pieces.data()), begin, end);
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < p.n; ++j) {
          const float v = pieces[i * p.n + j];
          if (j < end) {
            ASSERT_EQ(std::memcmp(&v, &whole[i * p.n + j], 4), 0)
                << Describe(type, isa, m, p.n, p.k) << " y[" << i << ", " << j << "] after [" << begin << ", "
                << end << "): " << v << " vs " << whole[i * p.n + j];
          } else {
            ASSERT_TRUE(std::isnan(v)) << "range [" << begin << ", " << end << ") wrote column " << j;
          }
        }
      }
      begin = end;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypesAndIsas, GemvQuantTest,
                         ::testing::Combine(::testing::ValuesIn(kTypes), ::testing::ValuesIn(kIsas)),
                         [](const auto& info) {
                           return std::string(QuantTypeName(std::get<0>(info.param))) + "_" +
                                  GemvIsaName(std::get<1>(info.param));
                         });

TEST(GemvQuantTest, IsasAgreeWithEachOther) {
  const uint32_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  for (QuantType type : kTypes) {
    for (const auto& [m, n, k] :
         {std::tuple<int64_t, int64_t, int64_t>{1, 67, 2080}, {5, 13, 4096}, {8, 9, 32}}) {
      const Problem p = MakeProblem(rng, type, m, n, k);
      const std::vector<float> scalar = RunKernel(GemvIsa::kScalar, p);
      for (GemvIsa isa : {GemvIsa::kAvx2, GemvIsa::kAvx512}) {
        if (!GemvIsaSupported(isa)) continue;
        EXPECT_EQ(ExpectNear(p, RunKernel(isa, p), scalar, 2e-6, Describe(type, isa, m, n, k) + " vs scalar"),
                  0);
      }
    }
  }
}

TEST(GemvQuantTest, BlockGeometryMatchesGgml) {
  for (QuantType type : kTypes) {
    const GgmlBlockLayout layout = BlockLayout(GgmlTypeOfBlockDType(type));
    EXPECT_EQ(layout.block_size, kQuantBlockSize) << QuantTypeName(type);
    EXPECT_EQ(QuantBlockBytes(type), layout.type_size) << QuantTypeName(type);
    EXPECT_EQ(QuantRowBytes(type, 2048), 64 * layout.type_size) << QuantTypeName(type);
  }
}

// A hand-made block per type, so a layout misunderstanding shared by kernel and reference would show.
TEST(GemvQuantTest, ReadsBlocksInGgmlOrder) {
  std::vector<float> x(32, 0.0f);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j == 3) + 100.0f * static_cast<float>(j == 19);
  // Element 3 is the low nibble of qs[3] (Q8_0: qs[3]); element 19 the high nibble of qs[3] (Q8_0: qs[19]).
  const uint16_t d = F32ToF16(0.5f), min = F32ToF16(-2.0f);
  uint8_t q8[34] = {}, q40[18] = {}, q41[20] = {};
  std::memcpy(q8, &d, 2);
  q8[2 + 3] = static_cast<uint8_t>(-6);  // w3 = -3
  q8[2 + 19] = 10;                       // w19 = 5
  std::memcpy(q40, &d, 2);
  q40[2 + 3] = 0xC2;  // w3 = (2 - 8) * 0.5 = -3, w19 = (12 - 8) * 0.5 = 2
  std::memcpy(q41, &d, 2);
  std::memcpy(q41 + 2, &min, 2);
  q41[4 + 3] = 0xC2;  // w3 = 2 * 0.5 - 2 = -1, w19 = 12 * 0.5 - 2 = 4; all others -2
  const struct {
    QuantType type;
    const uint8_t* w;
    float want;
  } cases[] = {{QuantType::kQ8_0, q8, -3.0f + 500.0f},
               {QuantType::kQ4_0, q40, -3.0f + 200.0f},
               {QuantType::kQ4_1, q41, -1.0f + 400.0f}};
  for (const auto& c : cases) {
    for (GemvIsa isa : kIsas) {
      if (!GemvIsaSupported(isa)) continue;
      float y = std::nanf("");
      GemvQuantForIsa(isa)(GemvQuantArgs{x.data(), c.w, &y, 1, 1, 32, c.type}, 0, 1);
      EXPECT_EQ(y, c.want) << QuantTypeName(c.type) << "/" << GemvIsaName(isa);
    }
  }
}

// k must be a multiple of the block size: there is no partial block, so the kernels refuse other k.
TEST(GemvQuantDeathTest, RejectsKNotAMultipleOfTheBlockSize) {
  std::vector<float> x(48, 1.0f), y(1);
  std::vector<uint8_t> w(64, 0);
  for (GemvIsa isa : kIsas) {
    if (!GemvIsaSupported(isa)) continue;
    EXPECT_DEATH(
        GemvQuantForIsa(isa)(GemvQuantArgs{x.data(), w.data(), y.data(), 1, 1, 48, QuantType::kQ8_0}, 0, 1),
        "CHECK failed: .*kQuantBlockSize")
        << GemvIsaName(isa);
  }
  EXPECT_DEATH(QuantRowBytes(QuantType::kQ4_0, 33), "CHECK failed: .*kQuantBlockSize");
}

}  // namespace
}  // namespace tessera
