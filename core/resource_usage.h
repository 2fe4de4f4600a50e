// What this process has used so far, for logs and acks.
#pragma once

#include <sys/resource.h>

#include <cstdint>

namespace tessera {

// The peak resident set of this process (getrusage's ru_maxrss), in bytes.
inline int64_t PeakRssBytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;
}

}  // namespace tessera
