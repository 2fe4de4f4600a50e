// CpuLinear implementation and the measured GEMV / oneDNN crossover.
#include "kernels/cpu/linear.h"

#include <cstdio>
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

}  // namespace

absl::StatusOr<std::unique_ptr<CpuLinear>> CpuLinear::Create(ThreadPool* pool, const LinearOptions& options) {
  TESSERA_CHECK(pool != nullptr);
  TESSERA_CHECK(GemvIsaSupported(options.gemv_isa));
  auto onednn = OneDnnMatmul::Create(pool->num_threads());
  if (!onednn.ok()) return onednn.status();
  return std::unique_ptr<CpuLinear>(new CpuLinear(pool, options, std::move(onednn).value()));
}

CpuLinear::CpuLinear(ThreadPool* pool, const LinearOptions& options, std::unique_ptr<OneDnnMatmul> onednn)
    : pool_(pool),
      gemv_max_m_(options.gemv_max_m < 0 ? DefaultGemvMaxM(options.prefill_precision) : options.gemv_max_m),
      precision_(options.prefill_precision),
      isa_(options.gemv_isa),
      gemv_(GemvForIsa(options.gemv_isa)),
      split_(SplitBf16ForIsa(GemvIsaSupported(GemvIsa::kAvx512) ? GemvIsa::kAvx512 : GemvIsa::kScalar)),
      onednn_(std::move(onednn)) {}

void CpuLinear::Forward(const float* x, const uint16_t* w, float* y, int64_t m, int64_t n, int64_t k) {
  if (m <= gemv_max_m_) {
    ForwardGemv(x, w, y, m, n, k);
    return;
  }
  const absl::Status status = ForwardOneDnn(x, w, y, m, n, k);
  if (!status.ok()) {
    if (!warned_fallback_) {
      std::fprintf(stderr, "tessera: %s; using the GEMV kernels instead\n", status.ToString().c_str());
      warned_fallback_ = true;
    }
    ForwardGemv(x, w, y, m, n, k);
  }
}

void CpuLinear::ForwardGemv(const float* x, const uint16_t* w, float* y, int64_t m, int64_t n, int64_t k) {
  const GemvArgs args{x, w, y, m, n, k};
  const GemvFn fn = gemv_;
  // Contiguous row ranges per thread: each thread streams its own part of the weights once.
  pool_->ParallelForStatic(n, kGemvRowBlock, [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

absl::Status CpuLinear::ForwardOneDnn(const float* x, const uint16_t* w, float* y, int64_t m, int64_t n,
                                      int64_t k) {
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
  const absl::Status status = onednn_->Run(hi, w, y, m, n, k, /*accumulate=*/false);
  if (!status.ok() || !split) return status;
  return onednn_->Run(lo, w, y, m, n, k, /*accumulate=*/true);
}

}  // namespace tessera
