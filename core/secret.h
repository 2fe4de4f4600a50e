// Secrets the control plane and the API check: compared in constant time (a comparison's duration does not
// tell how much of a guess was right), made from the kernel's random source, never logged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>

namespace tessera {

// gRPC metadata keys of the control plane's secrets: the operator's join token (a worker's Register and
// Session) and the current epoch's store token (the rendezvous store's calls).
inline constexpr char kJoinTokenMetadata[] = "x-tessera-join-token";
inline constexpr char kStoreTokenMetadata[] = "x-tessera-store-token";

// Whether a == b, taking the same time whatever their contents for a given length of `b` (the expected secret).
inline bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  volatile uint8_t diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) {
    const uint8_t x = i < a.size() ? static_cast<uint8_t>(a[i]) : 0;
    diff = static_cast<uint8_t>(diff | (x ^ static_cast<uint8_t>(b[i])));
  }
  return diff == 0;
}

// 128 random bits as 32 hex digits (std::random_device reads the kernel's random source on Linux).
inline std::string RandomToken() {
  std::random_device random;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string token;
  for (int i = 0; i < 4; ++i) {
    const uint32_t word = random();
    for (int nibble = 0; nibble < 8; ++nibble) token += kHex[(word >> (4 * nibble)) & 0xf];
  }
  return token;
}

}  // namespace tessera
