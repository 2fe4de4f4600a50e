// CpuLinear: y[M, N] = x[M, K] @ w[N, K]^T with fp32 activations and BF16 weights, on the CPU backend's
// thread pool. Small M (decode) runs the hand-written GEMV kernels (gemv.h), which stream each weight row
// once and keep activations in fp32; larger M (prefill) runs a oneDNN bf16 matmul on activations converted to
// bf16.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/gemv.h"
#include "kernels/cpu/onednn_matmul.h"
#include "kernels/cpu/thread_pool.h"

namespace tessera {

// How the oneDNN (large-M) path feeds fp32 activations to the bf16 matmul.
enum class PrefillPrecision {
  // Round activations to bf16 (one matmul): ~2x faster, but errors up to ~1.6e-3 of max |y| on one K = 2048
  // layer (rms 4e-4), against 2e-7 for the fp32 GEMV. GEMV up to M = 16 by default.
  kBf16,
  // Split each activation into bf16 hi + lo and run two matmuls (hi, then lo accumulated): errors ~3e-6 of
  // max |y|, at twice the arithmetic. GEMV up to M = 256 by default (it is as fast up to there).
  kSplitBf16,
};

// Parses "exact" (kSplitBf16) or "bf16" (kBf16), the spelling of --prefill-precision and of AssignShard.
// Errors: INVALID_ARGUMENT naming the value.
[[nodiscard]] absl::Status ParsePrefillPrecision(const std::string& text, PrefillPrecision& precision);

struct LinearOptions {
  // Largest M that takes the GEMV path; larger M goes to oneDNN. < 0: the measured default for the precision
  // (linear.cc).
  int64_t gemv_max_m = -1;
  PrefillPrecision prefill_precision = PrefillPrecision::kSplitBf16;
  // Kernel for the GEMV path (must be supported by this CPU: CHECKed).
  GemvIsa gemv_isa = BestGemvIsa();
};

class CpuLinear {
 public:
  // pool must outlive the CpuLinear. Errors: INTERNAL when oneDNN cannot start.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<CpuLinear>> Create(ThreadPool* pool,
                                                                         const LinearOptions& options);

  // y[m, n] = x[m, k] @ w[n, k]^T; w bf16 bits (read only, any alignment). Picks the path by m. Not
  // thread-safe (one caller at a time, like the pool). If oneDNN fails for a shape, falls back to the GEMV
  // path for it (and says so once on stderr).
  void Forward(const float* x, const uint16_t* w, float* y, int64_t m, int64_t n, int64_t k);
  // The two paths, for tests and benchmarks.
  void ForwardGemv(const float* x, const uint16_t* w, float* y, int64_t m, int64_t n, int64_t k);
  [[nodiscard]] absl::Status ForwardOneDnn(const float* x, const uint16_t* w, float* y, int64_t m, int64_t n,
                                           int64_t k);

  int64_t gemv_max_m() const { return gemv_max_m_; }
  GemvIsa gemv_isa() const { return isa_; }

 private:
  CpuLinear(ThreadPool* pool, const LinearOptions& options, std::unique_ptr<OneDnnMatmul> onednn);

  ThreadPool* pool_;
  int64_t gemv_max_m_;
  PrefillPrecision precision_;
  GemvIsa isa_;
  GemvFn gemv_;
  SplitBf16Fn split_;
  std::unique_ptr<OneDnnMatmul> onednn_;
  bool warned_fallback_ = false;
  std::vector<uint16_t> src_hi_;  // [m, k] bf16 activations; grows to the largest m * k seen, never shrinks
  std::vector<uint16_t> src_lo_;  // [m, k] residuals (kSplitBf16 only)
};

}  // namespace tessera
