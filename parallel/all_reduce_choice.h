// Which all-reduce a stream-ordered NCCL group runs for one message: NCCL's ring, or the one-shot custom
// kernel (parallel/custom_all_reduce.h) where it is faster: small messages inside one node over NVLink, where
// the cost is latency, not bandwidth. Pure rank-independent logic, so every rank takes the same choice.
#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.h"

namespace tessera {

enum class AllReduceAlgorithm { kNccl, kOneShot };

// What a group found when it was set up; every rank sees the same values.
struct AllReduceTopology {
  int world = 1;
  bool same_host = false;        // every rank runs on one host
  bool all_peer_access = false;  // every device can read every other's memory (NVLink or PCIe P2P)
  bool enabled = true;           // not turned off (TESSERA_CUSTOM_ALL_REDUCE=off)
};

// The custom all-reduce supports groups of 2 to kOneShotMaxWorld ranks.
inline constexpr int kOneShotMaxWorld = 8;

// The largest message the one-shot kernel takes by default: every rank reads (world - 1) peers' whole
// message, so its traffic grows with the world size while NCCL's ring stays near 2x the message; past these
// sizes the ring's bandwidth wins (the crossover TensorRT-LLM and vLLM measure on NVLink machines).
int64_t DefaultOneShotMaxBytes(int world);

struct OneShotEligibility {
  bool ok = false;
  std::string reason;  // why not, when !ok ("" when ok)
};
// Whether the group can use the one-shot kernel at all.
OneShotEligibility OneShotEligible(const AllReduceTopology& topology);

// The algorithm for one all-reduce of `bytes` bytes of `dtype`: one-shot when the group is eligible, the
// dtype is F32 or BF16, 0 < bytes <= max_bytes and bytes is a multiple of 16 (the kernel moves 16-byte
// vectors); NCCL otherwise.
AllReduceAlgorithm ChooseAllReduce(const AllReduceTopology& topology, int64_t bytes, DType dtype,
                                   int64_t max_bytes);

}  // namespace tessera
