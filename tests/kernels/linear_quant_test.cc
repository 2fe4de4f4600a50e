// CpuBackend::Linear and Embedding with block-quantized weights (Q8_0, Q4_0, Q4_1), through a CpuBackend, on
// both paths (quantized GEMV; weight tiles dequantized to bf16 for oneDNN) in both prefill precisions. The
// reference dequantizes every weight row with the GGUF reader's DequantizeRow (bit-exact to gguf-py, tested
// in tests/worker) and takes the dot product in double. Tolerances are relative to the error scale of
// gemv_quant_test: sum_k |x_k w_k| (Q4_1: sum_k |x_k| (|d q_k| + |m|)):
//   GEMV path: 1e-5 against the reference; bit-exact against GemvQuantFn called directly.
//   oneDNN path, against a reference on the weights rounded to bf16 (what oneDNN multiplies): 2e-5 with split
//   (hi + lo) activations, 2^-8 with bf16 activations (each activation rounds by <= 2^-9).
//   oneDNN path, against the fp32 reference: plus 2^-9, the extra rounding of each weight to bf16. The test
//   prints the error this rounding actually causes (max and rms, relative to max |y|).
// Embedding: bit-exact against DequantizeRow.
// int8 activations (--quant-activations int8): the quantizer against llama.cpp's rules, both kernels against
// the integer arithmetic in double (1e-6 of the sum of |terms|), and through a CpuBackend against the fp32
// reference within the bound the activations' rounding sets; prefill-sized Linear is unchanged by the option.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/gemv_quant.h"
#include "kernels/cpu/gemv_quant_int8.h"
#include "kernels/cpu/linear.h"
#include "tests/kernels/kernel_test_util.h"
#include "worker/checkpoint/gguf_dequant.h"

namespace tessera {
namespace {

using ::tessera::testing::FreshSeed;
using ::tessera::testing::Poisoned;
using ::tessera::testing::RandomFloats;
using ::tessera::testing::View;

constexpr DType kTypes[] = {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1};

const char* PrecisionName(PrefillPrecision precision) {
  return precision == PrefillPrecision::kSplitBf16 ? "exact" : "bf16";
}

// fp16 bits of a realistic block scale: magnitude log-uniform in [1e-3, 1e-1], either sign (always a finite,
// normal half).
uint16_t RandomScale(std::mt19937& rng) {
  const float magnitude = std::pow(10.0f, std::uniform_real_distribution<float>(-3.0f, -1.0f)(rng));
  return F32ToF16(rng() % 2 == 0 ? magnitude : -magnitude);
}

// Random blocks of `type` for a [rows, k] matrix, starting at byte 1 of the storage (misaligned).
struct QuantMatrix {
  DType type;
  int64_t rows, k;
  std::vector<uint8_t> storage;
  const uint8_t* data() const { return storage.data() + 1; }
  uint8_t* data() { return storage.data() + 1; }
  Tensor AsTensor() { return Tensor(data(), type, {rows, k}); }
  // Row r dequantized by the GGUF reader.
  std::vector<float> Row(int64_t r) const {
    std::vector<float> out(k);
    DequantizeRow(GgmlTypeOfBlockDType(type),
                  reinterpret_cast<const char*>(data() + r * QuantRowBytes(type, k)), k, out.data());
    return out;
  }
};

QuantMatrix RandomQuantMatrix(std::mt19937& rng, DType type, int64_t rows, int64_t k) {
  QuantMatrix w{type, rows, k, std::vector<uint8_t>(rows * QuantRowBytes(type, k) + 1)};
  const int64_t block_bytes = QuantBlockBytes(type);
  for (int64_t b = 0; b < rows * k / kQuantBlockSize; ++b) {
    uint8_t* block = w.data() + b * block_bytes;
    for (int64_t i = 0; i < block_bytes; ++i) block[i] = static_cast<uint8_t>(rng());
    const uint16_t d = RandomScale(rng);
    std::memcpy(block, &d, 2);
    if (type == DType::kQ4_1) {
      const uint16_t min = RandomScale(rng);
      std::memcpy(block + 2, &min, 2);
    }
  }
  return w;
}

struct Problem {
  int64_t m, n, k;
  std::vector<float> x;
  QuantMatrix w;
  std::vector<double> ref;       // [m, n]: x @ dequant(w)^T
  std::vector<double> ref_bf16;  // [m, n]: x @ bf16(dequant(w))^T, what the oneDNN path multiplies
  std::vector<double> scale;     // [m, n]: the error scale of the header comment
};

Problem MakeProblem(std::mt19937& rng, DType type, int64_t m, int64_t n, int64_t k) {
  Problem p{m, n, k, RandomFloats(rng, m * k), RandomQuantMatrix(rng, type, n, k), {}, {}, {}};
  p.ref.assign(m * n, 0.0);
  p.ref_bf16.assign(m * n, 0.0);
  p.scale.assign(m * n, 0.0);
  const int64_t row_bytes = QuantRowBytes(type, k), block_bytes = QuantBlockBytes(type);
  std::vector<double> w_bf16(k);
  for (int64_t j = 0; j < n; ++j) {
    const std::vector<float> w = p.w.Row(j);
    for (int64_t q = 0; q < k; ++q) w_bf16[q] = Bf16ToF32(F32ToBf16(w[q]));
    for (int64_t i = 0; i < m; ++i) {
      double s = 0, s_bf16 = 0, a = 0;
      for (int64_t q = 0; q < k; ++q) {
        const double xq = p.x[i * k + q];
        s += xq * w[q];
        s_bf16 += xq * w_bf16[q];
        if (type == DType::kQ4_1) {
          uint16_t h;
          std::memcpy(&h, p.w.data() + j * row_bytes + q / kQuantBlockSize * block_bytes + 2, 2);
          const double min = F16ToF32(h);
          a += std::fabs(xq) * (std::fabs(w[q] - min) + std::fabs(min));
        } else {
          a += std::fabs(xq * w[q]);
        }
      }
      p.ref[i * n + j] = s;
      p.ref_bf16[i * n + j] = s_bf16;
      p.scale[i * n + j] = a;
    }
  }
  return p;
}

// Checks y against `want`; returns the number of mismatches and reports the first few.
int ExpectNear(const Problem& p, const std::vector<float>& y, const std::vector<double>& want, double rel_tol,
               const std::string& what) {
  int bad = 0;
  for (int64_t i = 0; i < p.m * p.n; ++i) {
    const double err = std::fabs(y[i] - want[i]);
    if (!(err <= rel_tol * p.scale[i] + 1e-30)) {
      if (++bad <= 3) {
        ADD_FAILURE() << what << ": y[" << i / p.n << ", " << i % p.n << "] = " << y[i] << ", want "
                      << want[i] << " (error scale " << p.scale[i] << ")";
      }
    }
  }
  return bad;
}

std::unique_ptr<CpuBackend> MakeQuantBackend(PrefillPrecision precision, int64_t tile_rows = 0) {
  CpuBackendOptions options;
  options.num_threads = 2;
  options.linear.prefill_precision = precision;
  options.linear.quant_tile_rows = tile_rows;
  auto backend = CpuBackend::Create(options);
  if (!backend.ok()) return nullptr;
  return std::move(backend).value();
}

std::string Describe(DType type, PrefillPrecision precision, int64_t m, int64_t n, int64_t k) {
  return std::string(QuantTypeName(type)) + "/" + PrecisionName(precision) + " m=" + std::to_string(m) +
         " n=" + std::to_string(n) + " k=" + std::to_string(k);
}

// y of the oneDNN path checked against both references (see the header comment).
// kSplitBf16 splits weights and activations into bf16 hi + lo: as exact as BF16 weights in that mode,
// against the fp32 dequantized weights. kBf16 rounds both: within 2^-8 of the bf16-weight reference.
int ExpectOneDnnNear(const Problem& p, PrefillPrecision precision, const std::vector<float>& y,
                     const std::string& what) {
  if (precision == PrefillPrecision::kSplitBf16)
    return ExpectNear(p, y, p.ref, 2e-5, what + " vs fp32 reference");
  return ExpectNear(p, y, p.ref_bf16, 1.0 / 256, what + " vs bf16-weight reference") +
         ExpectNear(p, y, p.ref, 1.0 / 256 + 1.0 / 512, what + " vs fp32 reference");
}

class LinearQuantTest : public ::testing::TestWithParam<std::tuple<DType, PrefillPrecision>> {};

TEST_P(LinearQuantTest, BothPathsMatchDoubleReference) {
  const auto [type, precision] = GetParam();
  auto backend = MakeQuantBackend(precision);
  ASSERT_NE(backend, nullptr);
  CpuLinear& linear = backend->linear();
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  // n = 261: two weight tiles of the default 256 rows on the oneDNN path, the second of 5 rows.
  for (const auto& [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 37, 32},
                                {3, 261, 96},
                                {17, 45, 2080},
                                {300, 261, 96},
                                {300, 13, 2080},
                                {1, 261, 2080}}) {
    Problem p = MakeProblem(rng, type, m, n, k);
    const std::string what = Describe(type, precision, m, n, k) + " seed=" + std::to_string(seed);
    Tensor x(p.x.data(), DType::kF32, {m, k});
    std::vector<float> y = Poisoned(m * n);
    Tensor y_view = View(y, {m, n});
    backend->Linear(x, p.w.AsTensor(), y_view);
    const bool gemv = m <= linear.quant_gemv_max_m();
    if (gemv) {
      EXPECT_EQ(ExpectNear(p, y, p.ref, 1e-5, what + " Linear (GEMV)"), 0);
    } else {
      EXPECT_EQ(ExpectOneDnnNear(p, precision, y, what + " Linear (oneDNN)"), 0);
    }
    // Each path forced, whatever the crossover.
    std::vector<float> y_gemv = Poisoned(m * n);
    linear.ForwardGemvQuant(p.x.data(), p.w.data(), type, y_gemv.data(), m, n, k);
    EXPECT_EQ(ExpectNear(p, y_gemv, p.ref, 1e-5, what + " ForwardGemvQuant"), 0);
    std::vector<float> y_onednn = Poisoned(m * n);
    ASSERT_OK(linear.ForwardOneDnnQuant(p.x.data(), p.w.data(), type, y_onednn.data(), m, n, k));
    EXPECT_EQ(ExpectOneDnnNear(p, precision, y_onednn, what + " ForwardOneDnnQuant"), 0);
    // For the log, relative to max |y|: the error of the oneDNN path against the fp32 reference (mostly the
    // weights' rounding to bf16, max and rms) and against the bf16-weight reference (the activations' part).
    double max_ref = 0, max_err = 0, sum_sq = 0, max_err_bf16 = 0;
    for (int64_t i = 0; i < m * n; ++i) {
      max_ref = std::max(max_ref, std::fabs(p.ref[i]));
      const double err = y_onednn[i] - p.ref[i];
      max_err = std::max(max_err, std::fabs(err));
      sum_sq += err * err;
      max_err_bf16 = std::max(max_err_bf16, std::fabs(y_onednn[i] - p.ref_bf16[i]));
    }
    std::printf(
        "%s: oneDNN path vs fp32 dequant: max %.1e, rms %.1e; vs bf16 weights: max %.1e (of max |y|)\n",
        what.c_str(), max_err / max_ref, std::sqrt(sum_sq / static_cast<double>(m * n)) / max_ref,
        max_err_bf16 / max_ref);
  }
}

TEST_P(LinearQuantTest, DecodePathEqualsGemvQuantBitForBit) {
  const auto [type, precision] = GetParam();
  auto backend = MakeQuantBackend(precision);
  ASSERT_NE(backend, nullptr);
  const int64_t max_m = backend->linear().quant_gemv_max_m();
  ASSERT_GE(max_m, 1);
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  const int64_t n = 203, k = 2080;
  QuantMatrix w = RandomQuantMatrix(rng, type, n, k);
  for (int64_t m : {int64_t{1}, std::min<int64_t>(3, max_m), max_m}) {
    std::vector<float> x = RandomFloats(rng, m * k);
    std::vector<float> y = Poisoned(m * n), want = Poisoned(m * n);
    Tensor y_view = View(y, {m, n});
    backend->Linear(View(x, {m, k}), w.AsTensor(), y_view);
    GemvQuantForIsa(backend->linear().gemv_isa())(
        GemvQuantArgs{x.data(), w.data(), want.data(), m, n, k, type}, 0, n);
    EXPECT_EQ(std::memcmp(y.data(), want.data(), y.size() * sizeof(float)), 0)
        << Describe(type, precision, m, n, k) << " seed=" << seed;
  }
}

TEST_P(LinearQuantTest, TiledPrefillCoversEveryColumn) {
  const auto [type, precision] = GetParam();
  // Tiles of 48 rows: n = 130 is 48 + 48 + 34; and one tile larger than n.
  for (int64_t tile_rows : {48, 1000}) {
    auto backend = MakeQuantBackend(precision, tile_rows);
    ASSERT_NE(backend, nullptr);
    ASSERT_EQ(backend->linear().quant_tile_rows(), tile_rows);
    const uint32_t seed = FreshSeed();
    std::mt19937 rng(seed);
    const int64_t m = 70, n = 130, k = 160;
    Problem p = MakeProblem(rng, type, m, n, k);
    std::vector<float> y = Poisoned(m * n);
    ASSERT_OK(backend->linear().ForwardOneDnnQuant(p.x.data(), p.w.data(), type, y.data(), m, n, k));
    EXPECT_EQ(ExpectOneDnnNear(p, precision, y,
                               Describe(type, precision, m, n, k) + " tile=" + std::to_string(tile_rows) +
                                   " seed=" + std::to_string(seed)),
              0);
  }
}

INSTANTIATE_TEST_SUITE_P(TypesAndPrecisions, LinearQuantTest,
                         ::testing::Combine(::testing::ValuesIn(kTypes),
                                            ::testing::Values(PrefillPrecision::kSplitBf16,
                                                              PrefillPrecision::kBf16)),
                         [](const ::testing::TestParamInfo<LinearQuantTest::ParamType>& info) {
                           return std::string(QuantTypeName(std::get<0>(info.param))) + "_" +
                                  PrecisionName(std::get<1>(info.param));
                         });

TEST(CpuBackendQuantEmbeddingTest, QuantizedTableRowsAreDequantizedExactly) {
  auto backend = MakeQuantBackend(PrefillPrecision::kSplitBf16);
  ASSERT_NE(backend, nullptr);
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  for (DType type : kTypes) {
    for (int64_t h : {32, 2080}) {
      const int64_t vocab = 57;
      QuantMatrix table = RandomQuantMatrix(rng, type, vocab, h);
      std::vector<int32_t> ids = {0,  static_cast<int32_t>(vocab - 1), 5, 0,
                                  33, static_cast<int32_t>(vocab - 1)};
      std::vector<float> out = Poisoned(static_cast<int64_t>(ids.size()) * h);
      Tensor out_view = View(out, {static_cast<int64_t>(ids.size()), h});
      backend->Embedding(View(ids, {static_cast<int64_t>(ids.size())}), table.AsTensor(), out_view);
      for (size_t t = 0; t < ids.size(); ++t) {
        const std::vector<float> want = table.Row(ids[t]);
        EXPECT_EQ(std::memcmp(out.data() + t * h, want.data(), h * sizeof(float)), 0)
            << QuantTypeName(type) << " h=" << h << " token " << t << " (id " << ids[t] << ") seed=" << seed;
      }
    }
  }
}

TEST(DequantizeQuantRowTest, MatchesGgufReaderBitForBit) {
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  for (DType type : kTypes) {
    QuantMatrix w = RandomQuantMatrix(rng, type, 3, 2080);
    // Also every fp16 bit pattern of the scale (subnormals, infinities and NaNs included) in block 0.
    for (uint32_t h = 0; h < 65536; h += 7) {
      const uint16_t bits = static_cast<uint16_t>(h);
      std::memcpy(w.data(), &bits, 2);
      if (type == DType::kQ4_1) std::memcpy(w.data() + 2, &bits, 2);
      std::vector<float> got(32);
      DequantizeQuantRow(type, w.data(), 32, got.data());
      const std::vector<float> want = w.Row(0);
      ASSERT_EQ(std::memcmp(got.data(), want.data(), 32 * sizeof(float)), 0)
          << QuantTypeName(type) << " scale bits " << h;
    }
    for (int64_t r = 0; r < 3; ++r) {
      std::vector<float> got(2080);
      DequantizeQuantRow(type, w.data() + r * QuantRowBytes(type, 2080), 2080, got.data());
      EXPECT_EQ(std::memcmp(got.data(), w.Row(r).data(), got.size() * sizeof(float)), 0)
          << QuantTypeName(type) << " row " << r << " seed=" << seed;
    }
  }
}

// The residual of a hi + lo split: bf16(v - hi), bit for bit (NaN: any NaN; infinities leave a NaN).
void ExpectResidual(float v, uint16_t hi, uint16_t lo, const std::string& what) {
  const float want = v - Bf16ToF32(hi);
  if (std::isnan(want)) {
    ASSERT_TRUE(std::isnan(Bf16ToF32(lo))) << what << " value " << v;
    return;
  }
  ASSERT_EQ(lo, F32ToBf16(want)) << what << " value " << v;
}

TEST(DequantizeQuantRowTest, Bf16VersionsAreTheRoundedGgufRowAndItsResidual) {
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  for (GemvIsa isa : {GemvIsa::kScalar, GemvIsa::kAvx512}) {
    if (!GemvIsaSupported(isa)) {
      std::printf("skipping %s: this CPU lacks it\n", GemvIsaName(isa));
      continue;
    }
    const DequantRowBf16Fn dequant = DequantizeQuantRowBf16ForIsa(isa);
    for (DType type : kTypes) {
      const int64_t k = 2080;
      QuantMatrix w = RandomQuantMatrix(rng, type, 2, k);
      // Every 5th fp16 bit pattern as the scale (and Q4_1 min) of block 1 (subnormals, infinities, NaNs).
      for (uint32_t h = 0; h < 65536; h += 5) {
        const uint16_t bits = static_cast<uint16_t>(h);
        uint8_t* block = w.data() + QuantBlockBytes(type);
        std::memcpy(block, &bits, 2);
        if (type == DType::kQ4_1) std::memcpy(block + 2, &bits, 2);
        if (h % 1000 != 0 && h != 0x7c00 && h != 0x7e00) {
          // Only block 1 changes: check the first two blocks.
          std::vector<uint16_t> got(64), rest(64);
          dequant(type, w.data(), 64, got.data(), rest.data());
          const std::vector<float> row = w.Row(0);
          for (int64_t j = 0; j < 64; ++j) {
            ASSERT_EQ(got[j], F32ToBf16(row[j])) << GemvIsaName(isa) << " " << QuantTypeName(type)
                                                 << " scale " << h << " weight " << j << " seed=" << seed;
            ExpectResidual(
                row[j], got[j], rest[j],
                std::string(GemvIsaName(isa)) + " " + QuantTypeName(type) + " scale " + std::to_string(h));
          }
          continue;
        }
        for (int64_t r = 0; r < 2; ++r) {
          std::vector<uint16_t> got(k), rest(k), alone(k);
          dequant(type, w.data() + r * QuantRowBytes(type, k), k, got.data(), rest.data());
          dequant(type, w.data() + r * QuantRowBytes(type, k), k, alone.data(), nullptr);
          EXPECT_EQ(got, alone);
          const std::vector<float> row = w.Row(r);
          for (int64_t j = 0; j < k; ++j) {
            ASSERT_EQ(got[j], F32ToBf16(row[j])) << GemvIsaName(isa) << " " << QuantTypeName(type) << " row "
                                                 << r << " weight " << j << " seed=" << seed;
            ExpectResidual(row[j], got[j], rest[j],
                           std::string(GemvIsaName(isa)) + " " + QuantTypeName(type));
          }
        }
      }
    }
  }
}

// --- int8 activations (--quant-activations int8: gemv_quant_int8.h) ---

namespace int8 {

struct Quantized {
  std::vector<int8_t> q;
  std::vector<float> d;
  std::vector<int32_t> sum;
};

Quantized Quantize(const std::vector<float>& x, int64_t m, int64_t k) {
  Quantized a{std::vector<int8_t>(m * k), std::vector<float>(m * k / kQuantBlockSize),
              std::vector<int32_t>(m * k / kQuantBlockSize)};
  QuantizeActivationsInt8(x.data(), m, k, a.q.data(), a.d.data(), a.sum.data());
  return a;
}

// The integer weight quants of block b of row r, read from the bytes as ggml lays them out (Q8_0: int8;
// Q4_0: nibble - 8; Q4_1: nibble; low nibbles are weights 0..15), with the block's d and (Q4_1) m.
struct IntBlock {
  int32_t q[kQuantBlockSize];
  double d, min;
};

IntBlock ReadBlock(const QuantMatrix& w, int64_t r, int64_t b) {
  const uint8_t* p = w.data() + r * QuantRowBytes(w.type, w.k) + b * QuantBlockBytes(w.type);
  IntBlock out{};
  uint16_t h;
  std::memcpy(&h, p, 2);
  out.d = F16ToF32(h);
  if (w.type == DType::kQ8_0) {
    for (int j = 0; j < 32; ++j) out.q[j] = static_cast<int8_t>(p[2 + j]);
    return out;
  }
  const int qs = w.type == DType::kQ4_0 ? 2 : 4, offset = w.type == DType::kQ4_0 ? 8 : 0;
  if (w.type == DType::kQ4_1) {
    std::memcpy(&h, p + 2, 2);
    out.min = F16ToF32(h);
  }
  for (int j = 0; j < 16; ++j) {
    out.q[j] = (p[qs + j] & 0x0F) - offset;
    out.q[j + 16] = (p[qs + j] >> 4) - offset;
  }
  return out;
}

// y[m, n] of the int8 arithmetic in double (the integer dots exact), and its error scale: the sum of the
// products' magnitudes, |dw dx| sum_j |qw_j qx_j| (+ |mw dx sum|), which bounds every partial sum.
void IntegerReference(const QuantMatrix& w, const Quantized& a, int64_t m, std::vector<double>& ref,
                      std::vector<double>& scale) {
  const int64_t n = w.rows, k = w.k, blocks = k / kQuantBlockSize;
  ref.assign(m * n, 0.0);
  scale.assign(m * n, 0.0);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      const IntBlock block = ReadBlock(w, r, b);
      for (int64_t i = 0; i < m; ++i) {
        int64_t s = 0, s_abs = 0;
        for (int j = 0; j < 32; ++j) {
          const int64_t product = int64_t{block.q[j]} * a.q[i * k + b * 32 + j];
          s += product;
          s_abs += product < 0 ? -product : product;
        }
        const double dx = a.d[i * blocks + b];
        const double min_term = block.min * dx * a.sum[i * blocks + b];
        ref[i * n + r] += static_cast<double>(s) * block.d * dx + min_term;
        scale[i * n + r] += static_cast<double>(s_abs) * std::fabs(block.d * dx) + std::fabs(min_term);
      }
    }
  }
}

}  // namespace int8

TEST(Int8ActivationsTest, QuantizerIsLlamaCppsQ8_0RoundingHalfAwayFromZero) {
  // Block 0: max |x| = 127, so d = 1 and the quants are the values rounded half away from zero; block 1 is
  // all zeros (d = 0, q = 0); block 2 is random.
  std::vector<float> x(96, 0.0f);
  const float first[] = {127.0f, -63.5f, 0.5f, -0.5f, 2.49f, -126.6f};
  const int8_t want[] = {127, -64, 1, -1, 2, -127};
  std::copy(std::begin(first), std::end(first), x.begin());
  std::mt19937 rng(FreshSeed());
  const std::vector<float> random = RandomFloats(rng, 32);
  std::copy(random.begin(), random.end(), x.begin() + 64);
  const int8::Quantized a = int8::Quantize(x, 1, 96);
  EXPECT_EQ(a.d[0], 1.0f);
  for (int j = 0; j < 6; ++j) EXPECT_EQ(a.q[j], want[j]) << "x = " << first[j];
  EXPECT_EQ(a.sum[0], 127 - 64 + 1 - 1 + 2 - 127);
  EXPECT_EQ(a.d[1], 0.0f);
  EXPECT_EQ(a.sum[1], 0);
  for (int j = 32; j < 64; ++j) EXPECT_EQ(a.q[j], 0);
  float amax = 0;
  for (float v : random) amax = std::max(amax, std::fabs(v));
  EXPECT_EQ(a.d[2], amax / 127.0f);
  int32_t sum = 0;
  for (int j = 0; j < 32; ++j) {
    const int8_t q = a.q[64 + j];
    EXPECT_LE(std::abs(q), 127);
    EXPECT_LE(std::fabs(random[j] - q * a.d[2]), 0.5f * a.d[2] * (1 + 1e-6f)) << "j = " << j;
    sum += q;
  }
  EXPECT_EQ(a.sum[2], sum);
}

TEST(Int8ActivationsTest, KernelsMatchTheIntegerArithmeticInDouble) {
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  for (DType type : kTypes) {
    for (const auto& [m, n, k] :
         {std::tuple<int64_t, int64_t, int64_t>{1, 203, 2080}, {2, 37, 64}, {3, 13, 4096}, {5, 9, 32}}) {
      const QuantMatrix w = RandomQuantMatrix(rng, type, n, k);
      const std::vector<float> x = RandomFloats(rng, m * k);
      const int8::Quantized a = int8::Quantize(x, m, k);
      std::vector<double> ref, scale;
      int8::IntegerReference(w, a, m, ref, scale);
      std::vector<std::pair<const char*, GemvQuantInt8Fn>> kernels = {{"scalar", &GemvQuantInt8Scalar}};
      if (Int8VnniSupported()) kernels.push_back({"avx512_vnni", &GemvQuantInt8Avx512Vnni});
      for (const auto& [name, fn] : kernels) {
        std::vector<float> y = Poisoned(m * n);
        const GemvQuantInt8Args args{a.q.data(), a.d.data(), a.sum.data(), w.data(), y.data(), m, n, k, type};
        // Two uneven column ranges, as threads split them.
        fn(args, 0, n / 3);
        fn(args, n / 3, n);
        int bad = 0;
        for (int64_t i = 0; i < m * n; ++i) {
          if (!(std::fabs(y[i] - ref[i]) <= 1e-6 * scale[i] + 1e-30) && ++bad <= 3) {
            ADD_FAILURE() << name << " " << QuantTypeName(type) << " m=" << m << " n=" << n << " k=" << k
                          << " seed=" << seed << ": y[" << i / n << ", " << i % n << "] = " << y[i]
                          << ", want " << ref[i];
          }
        }
        EXPECT_EQ(bad, 0);
      }
    }
  }
}

// Through a CpuBackend made with int8 quant activations: decode-sized Linear differs from the fp32 result on
// the dequantized weights by no more than the activations' rounding allows (sum_k |w_k| d_x / 2, plus fp32
// noise), and prefill-sized Linear (oneDNN) is the fp32-activation backend's result bit for bit.
TEST(Int8ActivationsTest, BackendErrorIsTheActivationsRoundingAndPrefillIsUnchanged) {
  CpuBackendOptions options;
  options.num_threads = 2;
  options.linear.quant_activations = QuantActivations::kInt8;
  if (!Int8VnniSupported()) options.linear.gemv_isa = GemvIsa::kScalar;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<CpuBackend> backend, CpuBackend::Create(options));
  EXPECT_EQ(backend->linear().quant_activations(), QuantActivations::kInt8);
  auto exact = MakeQuantBackend(PrefillPrecision::kSplitBf16);
  ASSERT_NE(exact, nullptr);
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  for (DType type : kTypes) {
    const int64_t m = 2, n = 301, k = 2048;
    Problem p = MakeProblem(rng, type, m, n, k);
    std::vector<float> y = Poisoned(m * n);
    Tensor y_view = View(y, {m, n});
    backend->Linear(Tensor(p.x.data(), DType::kF32, {m, k}), p.w.AsTensor(), y_view);
    const int8::Quantized a = int8::Quantize(p.x, m, k);
    double max_ref = 0, max_err = 0;
    int bad = 0;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t r = 0; r < n; ++r) {
        const std::vector<float> w = p.w.Row(r);
        double bound = 0;
        for (int64_t q = 0; q < k; ++q) bound += std::fabs(w[q]) * a.d[i * k / 32 + q / 32] / 2;
        const double err = std::fabs(y[i * n + r] - p.ref[i * n + r]);
        max_ref = std::max(max_ref, std::fabs(p.ref[i * n + r]));
        max_err = std::max(max_err, err);
        if (!(err <= bound * (1 + 1e-5) + 1e-5 * p.scale[i * n + r]) && ++bad <= 3) {
          ADD_FAILURE() << QuantTypeName(type) << " seed=" << seed << ": y[" << i << ", " << r << "] error "
                        << err << " over the rounding bound " << bound;
        }
      }
    }
    EXPECT_EQ(bad, 0);
    std::printf("%s: int8 activations vs fp32 dequant: max error %.1e of max |y|\n", QuantTypeName(type),
                max_err / max_ref);

    const int64_t big = backend->linear().quant_gemv_max_m() + 5;
    const std::vector<float> xs = RandomFloats(rng, big * k);
    std::vector<float> y_int8 = Poisoned(big * n), y_fp32 = Poisoned(big * n);
    Tensor a_view = View(y_int8, {big, n}), b_view = View(y_fp32, {big, n});
    const QuantMatrix w = RandomQuantMatrix(rng, type, n, k);
    QuantMatrix w_copy = w;
    backend->Linear(Tensor(const_cast<float*>(xs.data()), DType::kF32, {big, k}), w_copy.AsTensor(), a_view);
    exact->Linear(Tensor(const_cast<float*>(xs.data()), DType::kF32, {big, k}), w_copy.AsTensor(), b_view);
    EXPECT_EQ(std::memcmp(y_int8.data(), y_fp32.data(), y_int8.size() * sizeof(float)), 0)
        << QuantTypeName(type) << ": prefill changed with int8 quant activations";
  }
}

TEST(Int8ActivationsTest, ParsesItsSpellingsAndNamesABadOne) {
  QuantActivations activations = QuantActivations::kInt8;
  ASSERT_OK(ParseQuantActivations("fp32", activations));
  EXPECT_EQ(activations, QuantActivations::kFp32);
  ASSERT_OK(ParseQuantActivations("int8", activations));
  EXPECT_EQ(activations, QuantActivations::kInt8);
  const absl::Status bad = ParseQuantActivations("int4", activations);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("'int4'"), std::string::npos) << bad;
}

}  // namespace
}  // namespace tessera
