// OneDnnMatmul: bf16 x bf16 -> f32 matmuls through oneDNN 2.6 (Debian's libdnnl, OpenMP runtime), with one
// primitive per shape created on first use and cached. Keeps dnnl.hpp out of every other header.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera {

class OneDnnMatmul {
 public:
  // Creates the CPU engine and stream; oneDNN's OpenMP team is sized to num_threads (>= 1) on every call.
  // Errors: INTERNAL when oneDNN fails.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<OneDnnMatmul>> Create(int num_threads);
  ~OneDnnMatmul();

  // y[m, n] (+)= src[m, k] @ w[n, k]^T with src and w bf16 bits, y f32. accumulate: y += instead of y =.
  // w is only read and may be in a read-only mapping, at any alignment. Errors: INTERNAL when oneDNN fails
  // (e.g. it cannot create a primitive for the shape); y is then unspecified. Not thread-safe.
  [[nodiscard]] absl::Status Run(const uint16_t* src, const uint16_t* w, float* y, int64_t m, int64_t n,
                                 int64_t k, bool accumulate);

  // Number of cached primitives (for tests).
  int cached_primitives() const;

 private:
  struct Impl;
  explicit OneDnnMatmul(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
