// CpuLinear implementation and the measured GEMV / oneDNN crossover.
#include "kernels/cpu/linear.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <utility>

#include "core/check.h"
#include "core/str_cat.h"

namespace tessera {

absl::Status ParsePrefillPrecision(const std::string& text, PrefillPrecision& precision) {
  if (text == "exact") {
    precision = PrefillPrecision::kSplitBf16;
  } else if (text == "bf16") {
    precision = PrefillPrecision::kBf16;
  } else {
    return absl::InvalidArgumentError(Cat("--prefill-precision '", text, "' is not exact or bf16"));
  }
  return absl::OkStatus();
}

absl::Status ParseQuantActivations(const std::string& text, QuantActivations& activations) {
  if (text == "fp32") {
    activations = QuantActivations::kFp32;
  } else if (text == "int8") {
    activations = QuantActivations::kInt8;
  } else {
    return absl::InvalidArgumentError(Cat("--quant-activations '", text, "' is not fp32 or int8"));
  }
  return absl::OkStatus();
}

namespace {

// Crossover between the GEMV kernels and oneDNN, measured with `kernels_bench --crossover` on the Llama 3.2
// 1B shapes (2 threads, AMD EPYC Zen 4 VM, AVX-512 + AVX512_BF16, no AMX). GFLOP/s, fp32 GEMV / oneDNN with
// split (hi + lo) bf16 activations / oneDNN with plain bf16 activations:
//   M      q_o 2048x2048     gate_up 8192x2048   down 2048x8192
//   8      107 /  56 /  89   137 /  68 / 131     152 /  55 / 107
//   16     144 /  69 / 161   171 / 105 / 204     184 /  87 / 164
//   32     163 / 126 / 242   188 / 130 / 277     196 / 113 / 239
//   128    199 / 168 / 331   201 / 169 / 355     211 / 179 / 353
//   256    199 / 187 / 361   205 / 195 / 394     201 / 179 / 371
//   512    208 / 206 / 408   191 / 203 / 420     158 / 204 / 394
// The fp32 GEMV runs at the fp32 FMA peak (~200 GFLOP/s) from M ~ 64 on, so with split activations (twice
// the bf16 arithmetic) oneDNN only catches up around M = 512; with plain bf16 activations it wins from M
// ~ 16.
constexpr int64_t kDefaultGemvMaxMSplit = 256;
constexpr int64_t kDefaultGemvMaxMBf16 = 16;

int64_t DefaultGemvMaxM(PrefillPrecision precision) {
  return precision == PrefillPrecision::kBf16 ? kDefaultGemvMaxMBf16 : kDefaultGemvMaxMSplit;
}

// The same crossover for quantized weights (ForwardQuant), measured with `kernels_bench --quant-crossover`
// on another machine: 2 threads of an "Intel(R) Xeon(R) Processor" VM (lscpu; Sapphire Rapids: AVX-512,
// AVX512_BF16, AMX-BF16, which oneDNN 2.6 uses), read bandwidth 26 GB/s, oneDNN bf16 peak ~1000 GFLOP/s.
// GFLOP/s, quantized fp32 GEMV / oneDNN on bf16-dequantized weight tiles with split activations / with plain
// bf16 activations (M = 8..32 re-run at --benchmark_min_time=0.4):
//          q_o 2048x2048              gate_up 8192x2048          down 2048x8192
//   M      Q8_0         Q4_0          Q8_0         Q4_0          Q8_0         Q4_0
//   1       23/  8/ 10   59/  9/ 12    39/  9/ 10   60/  9/ 15    43/  8/ 12   57/  8/ 14
//   8       86/ 61/ 84   96/ 59/ 88    93/ 59/ 77  103/ 67/ 98   116/ 43/ 69  129/ 48/ 80
//   16     106/104/161  125/112/158   112/104/161  128/124/204   124/ 83/131  135/ 86/150
//   32     121/148/243  136/162/267   123/168/292  136/189/336   122/138/227  131/150/250
//   64     122/225/432  119/282/488   127/259/468  143/298/564   122/236/373  138/266/445
//   128    114/350/533  125/379/674   127/374/649  107/389/657   107/343/558  120/372/651
//   256    118/415/702  125/360/759   114/407/738  111/435/747   112/395/706  125/457/679
//   512    100/417/677   88/465/753    95/416/643   94/459/780   105/437/716  126/450/597
// The quantized GEMV stays near 120 GFLOP/s from M ~ 16 on (it dequantizes every block once per four
// activation rows), while dequantizing a whole matrix for oneDNN (~2 ms for 8192x2048) costs what the GEMV
// takes at M ~ 5. The table's split column multiplied bf16-rounded weights (two matmuls); exact mode now
// also splits the weights (three matmuls, so that it stays exact), re-measured on gate_up, GEMV / oneDNN:
//   M      16        32        64        128       512
//   Q8_0   101/ 71   108/122   127/176   132/236   105/280
//   Q4_0   116/ 82   142/135   140/189   141/266   107/320
// So oneDNN wins from M ~ 32 in exact mode and from M = 16 with bf16 activations. On a CPU without AMX
// oneDNN is about half as fast (see the BF16 table above): the crossover there is higher; re-measure.
constexpr int64_t kDefaultQuantGemvMaxMSplit = 32;
constexpr int64_t kDefaultQuantGemvMaxMBf16 = 8;
// Tiles of 128 to 1024 rows ran within the noise (~10%) of each other at M = 64 and 512 on the same machine.
constexpr int64_t kDefaultQuantTileRows = 256;

int64_t DefaultQuantGemvMaxM(PrefillPrecision precision) {
  return precision == PrefillPrecision::kBf16 ? kDefaultQuantGemvMaxMBf16 : kDefaultQuantGemvMaxMSplit;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CpuLinear>> CpuLinear::Create(ThreadPool* pool, const LinearOptions& options) {
  TESSERA_CHECK(pool != nullptr);
  TESSERA_CHECK(GemvIsaSupported(options.gemv_isa));
  if (options.quant_activations == QuantActivations::kInt8 && options.gemv_isa != GemvIsa::kScalar &&
      !Int8VnniSupported()) {
    return absl::InvalidArgumentError(
        "--quant-activations int8 needs AVX-512 VNNI, which this CPU lacks (use fp32)");
  }
  auto onednn = OneDnnMatmul::Create(pool->num_threads());
  if (!onednn.ok()) return onednn.status();
  return std::unique_ptr<CpuLinear>(new CpuLinear(pool, options, std::move(onednn).value()));
}

CpuLinear::CpuLinear(ThreadPool* pool, const LinearOptions& options, std::unique_ptr<OneDnnMatmul> onednn)
    : pool_(pool),
      gemv_max_m_(options.gemv_max_m < 0 ? DefaultGemvMaxM(options.prefill_precision) : options.gemv_max_m),
      quant_gemv_max_m_(options.quant_gemv_max_m < 0 ? DefaultQuantGemvMaxM(options.prefill_precision)
                                                     : options.quant_gemv_max_m),
      quant_tile_rows_(options.quant_tile_rows < 1 ? kDefaultQuantTileRows : options.quant_tile_rows),
      precision_(options.prefill_precision),
      quant_activations_(options.quant_activations),
      isa_(options.gemv_isa),
      gemv_(GemvForIsa(options.gemv_isa)),
      gemv_quant_(GemvQuantForIsa(options.gemv_isa)),
      gemv_quant_int8_(options.gemv_isa != GemvIsa::kScalar && Int8VnniSupported() ? &GemvQuantInt8Avx512Vnni
                                                                                   : &GemvQuantInt8Scalar),
      dequant_bf16_(DequantizeQuantRowBf16ForIsa(GemvIsaSupported(GemvIsa::kAvx512) ? GemvIsa::kAvx512
                                                                                    : GemvIsa::kScalar)),
      split_(SplitBf16ForIsa(GemvIsaSupported(GemvIsa::kAvx512) ? GemvIsa::kAvx512 : GemvIsa::kScalar)),
      onednn_(std::move(onednn)) {}

void CpuLinear::Forward(const float* x, const uint16_t* w, float* y, int64_t m, int64_t n, int64_t k) {
  if (m <= gemv_max_m_) {
    ForwardGemv(x, w, y, m, n, k);
    return;
  }
  const absl::Status status = ForwardOneDnn(x, w, y, m, n, k);
  if (!status.ok()) {
    WarnFallback(status);
    ForwardGemv(x, w, y, m, n, k);
  }
}

void CpuLinear::WarnFallback(const absl::Status& status) {
  if (warned_fallback_) return;
  std::fprintf(stderr, "tessera: %s; using the GEMV kernels instead\n", status.ToString().c_str());
  warned_fallback_ = true;
}

void CpuLinear::ForwardGemv(const float* x, const uint16_t* w, float* y, int64_t m, int64_t n, int64_t k) {
  const GemvArgs args{x, w, y, m, n, k};
  const GemvFn fn = gemv_;
  // Contiguous row ranges per thread: each thread streams its own part of the weights once.
  pool_->ParallelForStatic(n, kGemvRowBlock, [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

bool CpuLinear::ConvertActivations(const float* x, int64_t m, int64_t k) {
  const bool split = precision_ == PrefillPrecision::kSplitBf16;
  const size_t count = static_cast<size_t>(m * k);
  if (src_hi_.size() < count) src_hi_.resize(count);
  if (split && src_lo_.size() < count) src_lo_.resize(count);
  uint16_t* hi = src_hi_.data();
  uint16_t* lo = split ? src_lo_.data() : nullptr;
  const SplitBf16Fn convert = split_;
  pool_->ParallelForStatic(m * k, 64, [&](int64_t begin, int64_t end) {
    convert(x + begin, end - begin, hi + begin, lo == nullptr ? nullptr : lo + begin);
  });
  return split;
}

absl::Status CpuLinear::ForwardOneDnn(const float* x, const uint16_t* w, float* y, int64_t m, int64_t n,
                                      int64_t k) {
  const bool split = ConvertActivations(x, m, k);
  const absl::Status status = onednn_->Run(src_hi_.data(), w, y, m, n, k, /*accumulate=*/false);
  if (!status.ok() || !split) return status;
  return onednn_->Run(src_lo_.data(), w, y, m, n, k, /*accumulate=*/true);
}

void CpuLinear::ForwardQuant(const float* x, const uint8_t* w, DType type, float* y, int64_t m, int64_t n,
                             int64_t k) {
  if (m <= quant_gemv_max_m_) {
    ForwardGemvQuant(x, w, type, y, m, n, k);
    return;
  }
  const absl::Status status = ForwardOneDnnQuant(x, w, type, y, m, n, k);
  if (!status.ok()) {
    WarnFallback(status);
    ForwardGemvQuant(x, w, type, y, m, n, k);
  }
}

void CpuLinear::ForwardGemvQuant(const float* x, const uint8_t* w, DType type, float* y, int64_t m, int64_t n,
                                 int64_t k) {
  TESSERA_CHECK(IsQuantized(type) && k % kQuantBlockSize == 0);
  if (quant_activations_ == QuantActivations::kInt8) {
    const int64_t blocks = k / kQuantBlockSize;
    if (act_q_.size() < static_cast<size_t>(m * k)) act_q_.resize(static_cast<size_t>(m * k));
    if (act_d_.size() < static_cast<size_t>(m * blocks)) {
      act_d_.resize(static_cast<size_t>(m * blocks));
      act_sum_.resize(static_cast<size_t>(m * blocks));
    }
    // Serial: m * k values are a few microseconds of work next to streaming n * k weights.
    QuantizeActivationsInt8(x, m, k, act_q_.data(), act_d_.data(), act_sum_.data());
    const GemvQuantInt8Args args{act_q_.data(), act_d_.data(), act_sum_.data(), w, y, m, n, k, type};
    const GemvQuantInt8Fn fn = gemv_quant_int8_;
    pool_->ParallelForStatic(n, kGemvRowBlock, [&](int64_t begin, int64_t end) { fn(args, begin, end); });
    return;
  }
  const GemvQuantArgs args{x, w, y, m, n, k, type};
  const GemvQuantFn fn = gemv_quant_;
  // As ForwardGemv: contiguous row ranges, on the kernels' four-row groups.
  pool_->ParallelForStatic(n, kGemvRowBlock, [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

absl::Status CpuLinear::ForwardOneDnnQuant(const float* x, const uint8_t* w, DType type, float* y, int64_t m,
                                           int64_t n, int64_t k) {
  TESSERA_CHECK(IsQuantized(type) && k % kQuantBlockSize == 0);
  const bool split = ConvertActivations(x, m, k);
  const int64_t tile = std::min(quant_tile_rows_, n);
  const int64_t row_bytes = QuantRowBytes(type, k);
  const size_t tile_values = static_cast<size_t>(tile * k);
  if (quant_tile_.size() < tile_values) quant_tile_.resize(tile_values);
  if (split && quant_tile_lo_.size() < tile_values) quant_tile_lo_.resize(tile_values);
  if (tile < n && quant_y_.size() < static_cast<size_t>(m * tile)) {
    quant_y_.resize(static_cast<size_t>(m * tile));
  }
  uint16_t* w_hi = quant_tile_.data();
  uint16_t* w_lo = split ? quant_tile_lo_.data() : nullptr;
  float* y_tile = quant_y_.data();
  const DequantRowBf16Fn dequant = dequant_bf16_;
  const int threads = pool_->num_threads();
  // Between the oneDNN calls, the dequantization and the copy run on oneDNN's OpenMP team, not on pool_: its
  // workers keep spinning for a while after each matmul, and on a machine with as many threads as cores the
  // pool's workers would then wait for a time slice on every tile.
  for (int64_t n0 = 0; n0 < n; n0 += tile) {
    const int64_t rows = std::min(tile, n - n0);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      dequant(type, w + (n0 + r) * row_bytes, k, w_hi + r * k, w_lo == nullptr ? nullptr : w_lo + r * k);
    }
    // One tile covering all of n writes y directly; otherwise the tile's [m, rows] goes through quant_y_.
    float* out = rows == n ? y : y_tile;
    // kSplitBf16: x_hi w_hi + x_lo w_hi + x_hi w_lo (x_lo w_lo is below 2^-16 of the product).
    absl::Status status = onednn_->Run(src_hi_.data(), w_hi, out, m, rows, k, /*accumulate=*/false);
    if (status.ok() && split) {
      status = onednn_->Run(src_lo_.data(), w_hi, out, m, rows, k, /*accumulate=*/true);
    }
    if (status.ok() && split) {
      status = onednn_->Run(src_hi_.data(), w_lo, out, m, rows, k, /*accumulate=*/true);
    }
    if (!status.ok()) return status;
    if (out == y) continue;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(y + i * n + n0, y_tile + i * rows, static_cast<size_t>(rows) * sizeof(float));
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera
