#include "parallel/all_reduce_choice.h"

#include "absl/strings/str_cat.h"

namespace tessera {

int64_t DefaultOneShotMaxBytes(int world) {
  constexpr int64_t kKiB = 1024;
  if (world <= 2) return 4096 * kKiB;
  if (world <= 4) return 1024 * kKiB;
  return 512 * kKiB;
}

OneShotEligibility OneShotEligible(const AllReduceTopology& topology) {
  if (!topology.enabled) return {false, "turned off (TESSERA_CUSTOM_ALL_REDUCE=off)"};
  if (topology.world < 2) return {false, absl::StrCat("world size ", topology.world)};
  if (topology.world > kOneShotMaxWorld) {
    return {false, absl::StrCat("world size ", topology.world, " is over ", kOneShotMaxWorld)};
  }
  if (!topology.same_host) return {false, "the ranks are on more than one host"};
  if (!topology.all_peer_access) return {false, "not every pair of devices has peer access"};
  return {true, ""};
}

AllReduceAlgorithm ChooseAllReduce(const AllReduceTopology& topology, int64_t bytes, DType dtype,
                                   int64_t max_bytes) {
  const bool eligible = topology.enabled && topology.world >= 2 && topology.world <= kOneShotMaxWorld &&
                        topology.same_host && topology.all_peer_access;
  const bool dtype_ok = dtype == DType::kF32 || dtype == DType::kBF16;
  const bool size_ok = bytes > 0 && bytes <= max_bytes && bytes % 16 == 0;
  return eligible && dtype_ok && size_ok ? AllReduceAlgorithm::kOneShot : AllReduceAlgorithm::kNccl;
}

}  // namespace tessera
