// The one-shot all-reduce kernel (custom_all_reduce_kernel.cu) and its parameters: every rank copies its
// message into its own peer-readable buffer, signals every peer, waits for every peer's signal, then reads
// all ranks' buffers and sums them (fp32, in rank order, so every rank gets the same bits). Internal to the
// NCCL plugin (parallel/custom_all_reduce.cc).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "parallel/all_reduce_choice.h"

namespace tessera {

// A fixed grid: every launch runs every block, so each block's epoch counter counts the calls and stays equal
// across blocks and ranks (the double buffer's parity and the signals depend on it).
inline constexpr int kOneShotBlocks = 32;
inline constexpr int kOneShotThreads = 512;

// Each rank's peer-readable region: the signals, then two message buffers of `buffer_bytes` (the parity of
// the epoch picks one, so a call never overwrites what a slower peer may still read from the previous one).
inline constexpr int64_t kOneShotSignalBytes = 4096;  // >= kOneShotBlocks * kOneShotMaxWorld * 4, aligned
static_assert(kOneShotSignalBytes >= kOneShotBlocks * kOneShotMaxWorld * 4);

struct OneShotParams {
  char* regions[kOneShotMaxWorld] = {};  // every rank's region, as mapped in this process
  uint32_t* counters = nullptr;          // this rank's [kOneShotBlocks] epochs, device memory
  const volatile int* abort = nullptr;   // host-mapped; nonzero: waiting blocks give up
  int rank = 0;
  int world = 1;
  int64_t buffer_bytes = 0;  // capacity of each message buffer
  const void* in = nullptr;  // [bytes] device memory; may equal out
  void* out = nullptr;
  int64_t bytes = 0;  // multiple of 16, <= buffer_bytes
  bool bf16 = false;  // else f32
};

// Enqueues one all-reduce on `stream` (capturable into a CUDA graph); returns the launch error.
cudaError_t LaunchOneShotAllReduce(const OneShotParams& params, cudaStream_t stream);

}  // namespace tessera
