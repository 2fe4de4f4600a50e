// ThreadPool: a fixed set of worker threads for the CPU backend's parallel regions. The calling thread is
// worker 0, so a pool of N threads starts N - 1 others. Dispatch is low-latency: idle workers spin briefly
// before they sleep, because a decode step runs ~150 short parallel regions back to back.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace tessera {

class ThreadPool {
 public:
  // num_threads >= 1 (CHECKed): the caller plus num_threads - 1 started threads.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Runs fn(thread_index) once on each thread, index 0 on the caller; returns when every call has returned.
  // Not reentrant and not for concurrent callers: one thread drives the pool (CHECKed). A nested call from
  // inside fn runs fn serially on the calling thread.
  void RunOnAll(absl::FunctionRef<void(int)> fn);

  // Calls fn(begin, end) on disjoint chunks covering [0, n), chunks of at least `grain` items handed out
  // dynamically (an atomic counter), so uneven items balance. Returns when all chunks are done.
  void ParallelFor(int64_t n, int64_t grain, absl::FunctionRef<void(int64_t, int64_t)> fn);

  // Splits [0, n) into num_threads() contiguous ranges whose bounds are multiples of `align` (except n), and
  // calls fn(begin, end) for each non-empty one. Static: the same split every call (good for streaming).
  void ParallelForStatic(int64_t n, int64_t align, absl::FunctionRef<void(int64_t, int64_t)> fn);

 private:
  void WorkerLoop(int index);

  const int num_threads_;
  std::vector<std::thread> threads_;
  // The job of the current region; written by the caller before it bumps generation_.
  const absl::FunctionRef<void(int)>* job_ = nullptr;
  std::atomic<uint32_t> generation_{0};  // bumped once per region; workers wait for it to change
  std::atomic<int> pending_{0};          // workers still running the current region
  std::atomic<int> sleepers_{0};         // workers blocked on the generation_ futex
  std::atomic<bool> busy_{false};        // a region is in progress (nested calls run serially)
  std::atomic<bool> stop_{false};
};

}  // namespace tessera
