// ThreadPool implementation: a generation counter wakes workers; they spin ~50 us before sleeping on a futex,
// and the caller spins on a pending counter until the region ends.
#include "kernels/cpu/thread_pool.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>

#include "core/check.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TESSERA_CPU_RELAX() _mm_pause()
#else
#define TESSERA_CPU_RELAX() ((void)0)
#endif

namespace tessera {
namespace {

// How long an idle worker spins before it sleeps. Long enough to bridge the serial gaps between the parallel
// regions of a decode step, short enough not to steal a core from oneDNN's OpenMP threads for long.
constexpr auto kSpinTime = std::chrono::microseconds(50);

// Direct futex calls: libstdc++ 12's std::atomic<T>::wait/notify_all lost a wake-up here (a worker slept
// through the destructor's notify), so the pool does not rely on them.
void FutexWait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void FutexWakeAll(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) : num_threads_(num_threads) {
  TESSERA_CHECK(num_threads >= 1);
  threads_.reserve(num_threads - 1);
  for (int i = 1; i < num_threads; ++i) threads_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  generation_.fetch_add(1);
  FutexWakeAll(&generation_);
  for (std::thread& t : threads_) t.join();
}

void ThreadPool::WorkerLoop(int index) {
  // The generation at construction, not a fresh load: a region (or the destructor) may bump it before this
  // thread first runs, and the worker must still see that bump.
  uint32_t seen = 0;
  while (true) {
    uint32_t now = generation_.load(std::memory_order_acquire);
    if (now == seen) {
      const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
      int spins = 0;
      while ((now = generation_.load(std::memory_order_acquire)) == seen) {
        TESSERA_CPU_RELAX();
        if (++spins % 64 == 0 && std::chrono::steady_clock::now() > deadline) break;
      }
      if (now == seen) {
        sleepers_.fetch_add(1);  // seq_cst: pairs with the caller's generation_ bump then sleepers_ read
        FutexWait(&generation_, seen);  // returns at once if generation_ != seen already
        sleepers_.fetch_sub(1);
        continue;
      }
    }
    seen = now;
    if (stop_.load()) return;
    (*job_)(index);
    pending_.fetch_sub(1, std::memory_order_release);
  }
}

void ThreadPool::RunOnAll(absl::FunctionRef<void(int)> fn) {
  if (num_threads_ == 1 || busy_.exchange(true)) {
    // Single thread, or a nested region: run every index here.
    const bool nested = num_threads_ > 1;
    for (int i = 0; i < num_threads_; ++i) fn(i);
    if (!nested) busy_.store(false);
    return;
  }
  job_ = &fn;
  pending_.store(num_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1);  // seq_cst, publishes job_ and pending_
  if (sleepers_.load() > 0) FutexWakeAll(&generation_);
  fn(0);
  int spins = 0;
  while (pending_.load(std::memory_order_acquire) != 0) {
    TESSERA_CPU_RELAX();
    if (++spins > 4096) std::this_thread::yield();  // a worker may be descheduled; let it run
  }
  job_ = nullptr;
  busy_.store(false);
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain, absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  if (num_threads_ == 1 || n <= grain) {
    fn(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
  RunOnAll([&](int) {
    while (true) {
      const int64_t begin = next.fetch_add(grain, std::memory_order_relaxed);
      if (begin >= n) return;
      fn(begin, std::min(n, begin + grain));
    }
  });
}

void ThreadPool::ParallelForStatic(int64_t n, int64_t align, absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  align = std::max<int64_t>(align, 1);
  const int64_t units = (n + align - 1) / align;
  const int parts = static_cast<int>(std::min<int64_t>(num_threads_, units));
  if (parts <= 1) {
    fn(0, n);
    return;
  }
  RunOnAll([&](int t) {
    if (t >= parts) return;
    const int64_t begin = std::min(n, units * t / parts * align);
    const int64_t end = std::min(n, units * (t + 1) / parts * align);
    if (begin < end) fn(begin, end);
  });
}

}  // namespace tessera
