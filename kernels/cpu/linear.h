// CpuLinear: y[M, N] = x[M, K] @ w[N, K]^T with fp32 activations and BF16 or block-quantized (Q8_0, Q4_0,
// Q4_1) weights, on the CPU backend's thread pool. Small M (decode) runs the hand-written GEMV kernels
// (gemv.h, gemv_quant.h), which stream each weight row once and keep activations in fp32; larger M (prefill)
// runs a oneDNN bf16 matmul on activations converted to bf16 (quantized weights dequantized to bf16 tile by
// tile).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "kernels/cpu/gemv.h"
#include "kernels/cpu/gemv_quant.h"
#include "kernels/cpu/gemv_quant_int8.h"
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

// How the quantized GEMV (decode: M up to quant_gemv_max_m) meets block-quantized weights.
enum class QuantActivations {
  // fp32 activations against the dequantized weights (gemv_quant.h): the dequantized weights' result up to
  // fp32 rounding.
  kFp32,
  // llama.cpp's arithmetic: activations quantized to int8 per 32-value block, exact integer block dots (VNNI;
  // gemv_quant_int8.h). Faster on 4-bit weights; errors of the activations' rounding (~1e-3 of max |y|).
  // Needs AVX-512 VNNI unless gemv_isa is kScalar.
  kInt8,
};

// Parses "fp32" or "int8", the spelling of --quant-activations and of AssignShard. Errors: INVALID_ARGUMENT
// naming the value.
[[nodiscard]] absl::Status ParseQuantActivations(const std::string& text, QuantActivations& activations);

struct LinearOptions {
  // Largest M that takes the GEMV path; larger M goes to oneDNN. < 0: the measured default for the precision
  // (linear.cc).
  int64_t gemv_max_m = -1;
  // The same for block-quantized weights (ForwardQuant): M up to this runs the quantized GEMV kernels, larger
  // M dequantizes weight tiles for oneDNN. < 0: the measured default for the precision (linear.cc).
  int64_t quant_gemv_max_m = -1;
  // Weight rows per dequantized tile on ForwardQuant's oneDNN path; < 1: the default (256). The tile scratch
  // holds quant_tile_rows * k bf16 values.
  int64_t quant_tile_rows = 0;
  PrefillPrecision prefill_precision = PrefillPrecision::kSplitBf16;
  QuantActivations quant_activations = QuantActivations::kFp32;
  // Kernel for the GEMV path (must be supported by this CPU: CHECKed).
  GemvIsa gemv_isa = BestGemvIsa();
};

class CpuLinear {
 public:
  // pool must outlive the CpuLinear. Errors: INTERNAL when oneDNN cannot start; INVALID_ARGUMENT for int8
  // quant activations on a CPU without AVX-512 VNNI (unless gemv_isa is kScalar).
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

  // y[m, n] = x[m, k] @ dequant(w)[n, k]^T for w in llama.cpp blocks of `type` (kQ8_0, kQ4_0 or kQ4_1;
  // CHECKed): n rows of k / 32 blocks, row stride QuantRowBytes(type, k), any alignment, only read; k a
  // multiple of 32 (CHECKed). Picks the path by m like Forward (quant_gemv_max_m), with the same fallback;
  // not thread-safe either.
  //   GEMV path: the fp32 dequantize-then-dot of GemvQuantFn (gemv_quant.h), or with kInt8 quant activations
  //   llama.cpp's int8 activations and integer block dots (gemv_quant_int8.h).
  //   oneDNN path, in tiles of quant_tile_rows weight rows (the whole matrix is never dequantized at once):
  //   kSplitBf16 ("exact") splits the weights as it splits the activations, w = w_hi + w_lo in bf16 (16
  //   significant bits), and sums three matmuls, x_hi w_hi + x_lo w_hi + x_hi w_lo: errors of a few 1e-6 of
  //   max |y|, as for BF16 weights, at 1.5x the arithmetic. kBf16 rounds each weight to bf16 (relative error
  //   <= 2^-9, as a bf16 checkpoint has) and the activations too: one matmul, errors up to ~2e-3 of max |y|.
  void ForwardQuant(const float* x, const uint8_t* w, DType type, float* y, int64_t m, int64_t n, int64_t k);
  // The two quantized paths, for tests and benchmarks.
  void ForwardGemvQuant(const float* x, const uint8_t* w, DType type, float* y, int64_t m, int64_t n,
                        int64_t k);
  [[nodiscard]] absl::Status ForwardOneDnnQuant(const float* x, const uint8_t* w, DType type, float* y,
                                                int64_t m, int64_t n, int64_t k);

  int64_t gemv_max_m() const { return gemv_max_m_; }
  int64_t quant_gemv_max_m() const { return quant_gemv_max_m_; }
  int64_t quant_tile_rows() const { return quant_tile_rows_; }
  GemvIsa gemv_isa() const { return isa_; }
  QuantActivations quant_activations() const { return quant_activations_; }

 private:
  CpuLinear(ThreadPool* pool, const LinearOptions& options, std::unique_ptr<OneDnnMatmul> onednn);
  // Converts x[m, k] into src_hi_ (and src_lo_ for kSplitBf16); returns whether lo is used.
  bool ConvertActivations(const float* x, int64_t m, int64_t k);
  void WarnFallback(const absl::Status& status);

  ThreadPool* pool_;
  int64_t gemv_max_m_;
  int64_t quant_gemv_max_m_;
  int64_t quant_tile_rows_;
  PrefillPrecision precision_;
  QuantActivations quant_activations_;
  GemvIsa isa_;
  GemvFn gemv_;
  GemvQuantFn gemv_quant_;
  GemvQuantInt8Fn gemv_quant_int8_;
  DequantRowBf16Fn dequant_bf16_;
  SplitBf16Fn split_;
  std::unique_ptr<OneDnnMatmul> onednn_;
  bool warned_fallback_ = false;
  std::vector<uint16_t> src_hi_;  // [m, k] bf16 activations; grows to the largest m * k seen, never shrinks
  std::vector<uint16_t> src_lo_;  // [m, k] residuals (kSplitBf16 only)
  // ForwardQuant's oneDNN path; both grow to the largest size seen, never shrink.
  std::vector<uint16_t> quant_tile_;     // [quant_tile_rows, k] dequantized weights, bf16
  std::vector<uint16_t> quant_tile_lo_;  // [quant_tile_rows, k] their bf16 residuals (kSplitBf16 only)
  std::vector<float> quant_y_;           // [m, quant_tile_rows] one tile's output columns (when n > tile)
  // kInt8 quant activations: x[m, k] quantized (QuantizeActivationsInt8); grow, never shrink.
  std::vector<int8_t> act_q_;
  std::vector<float> act_d_;
  std::vector<int32_t> act_sum_;
};

}  // namespace tessera
