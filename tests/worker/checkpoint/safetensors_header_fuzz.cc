// libFuzzer target for ParseSafetensorsHeader: any bytes, taken as a whole file, must give a tensor list or
// an error status, never a crash, an out-of-bounds read or undefined behaviour. Accepted tensors must also be
// self-consistent (ranges inside the data area, sizes matching shapes and dtypes, block types included).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "worker/checkpoint/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::vector<tessera::TensorInfo>> tensors =
      tessera::ParseSafetensorsHeader(bytes, size, "fuzz.safetensors");
  if (!tensors.ok()) return 0;
  uint64_t header_end = 8;
  for (int i = 0; i < 8; ++i) header_end += static_cast<uint64_t>(data[i]) << (8 * i);
  for (const tessera::TensorInfo& t : *tensors) {
    // Block-quantized tensors (named in __metadata__) have their logical shape: whole blocks per row.
    const int64_t expected = tessera::DTypeBytes(t.dtype, t.numel());
    if (t.data_begin > t.data_end || header_end + t.data_end > size || expected < 0 ||
        t.nbytes() != static_cast<uint64_t>(expected)) {
      std::abort();
    }
  }
  return 0;
}
