// GGML tensor types as GGUF files store them (F32, F16, BF16 and the block-quantized Q8_0, Q4_0, Q4_1, Q4_K,
// Q5_K, Q6_K), their block geometry, and dequantization to float exactly as ggml / gguf-py define it.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "core/dtype.h"

namespace tessera {

// The ggml_type codes import-gguf reads (the numbering of ggml.h).
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};

// Block geometry: `block_size` weights are stored in `type_size` bytes (1 and 4 for F32).
struct GgmlBlockLayout {
  int64_t block_size = 0;
  int64_t type_size = 0;
};

// The type for ggml_type code `code` when it is one of GgmlType's; nullopt otherwise.
std::optional<GgmlType> GgmlTypeFromCode(uint32_t code);

// The Tessera block dtype (kQ8_0, kQ4_0, kQ4_1) that keeps a tensor of `type` as it is; nullopt for the
// other types. And back: the GGML type of a block dtype (IsQuantized(dtype) is CHECKed).
std::optional<DType> BlockDTypeOfGgml(GgmlType type);
GgmlType GgmlTypeOfBlockDType(DType dtype);

// Block geometry of a supported type.
GgmlBlockLayout BlockLayout(GgmlType type);

// ggml's name of any ggml_type code ("Q4_K", "IQ2_XXS", ...); "unknown" for codes ggml does not define.
std::string_view GgmlTypeName(uint32_t code);

// The comma-separated names of the supported types, for error messages.
std::string_view SupportedGgmlTypeNames();

// Writes the `n` values stored in `data` (n / block_size blocks, so n must be a multiple of the block size
// and data must hold n / block_size * type_size bytes) to out[0, n), as gguf-py's quants.dequantize computes
// them: every product is rounded to float before any addition (no fused multiply-add), so results match it
// bit for bit. Unaligned `data` is fine. Thread-safe.
void DequantizeRow(GgmlType type, const char* data, int64_t n, float* out);

}  // namespace tessera
