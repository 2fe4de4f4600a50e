#include "tools/bench/runner.h"

#include <algorithm>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/check.h"

namespace tessera::tools::bench {
namespace {

// What the worker threads share. Lock order: only mu_.
class Progress {
 public:
  // Returns the index of the next request to send, or -1 when every one is taken.
  int Take(int total) {
    absl::MutexLock lock(&mu_);
    return next_ < total ? next_++ : -1;
  }
  void Finish(Clock::time_point at) {
    absl::MutexLock lock(&mu_);
    ++done_;
    last_answer_ = std::max(last_answer_, at);
  }
  // Waits up to `timeout` for `total` requests to finish; returns how many have.
  int WaitDone(int total, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto all_done = [this, total]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ >= total; };
    mu_.AwaitWithTimeout(absl::Condition(&all_done), timeout);
    return done_;
  }
  Clock::time_point LastAnswer() {
    absl::MutexLock lock(&mu_);
    return last_answer_;
  }

 private:
  absl::Mutex mu_;
  int next_ ABSL_GUARDED_BY(mu_) = 0;
  int done_ ABSL_GUARDED_BY(mu_) = 0;
  Clock::time_point last_answer_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

RunResult RunRequests(BenchClient& client, const std::vector<BenchRequest>& requests,
                      const std::vector<double>& arrivals_s, int max_concurrency,
                      const std::function<void(int done, int total)>& progress,
                      std::chrono::milliseconds progress_interval) {
  TESSERA_CHECK(arrivals_s.size() == requests.size());
  TESSERA_CHECK(max_concurrency >= 1);
  const int total = static_cast<int>(requests.size());
  RunResult run;
  run.results.resize(total);
  if (total == 0) return run;
  Progress shared;
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> threads;
  const int num_threads = std::min(max_concurrency, total);
  threads.reserve(num_threads);
  for (int t = 0; t < num_threads; ++t) {
    threads.emplace_back([&] {
      for (int i = shared.Take(total); i >= 0; i = shared.Take(total)) {
        std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(arrivals_s[i])));
        run.results[i] = client.Send(requests[i], start);  // each slot written by one thread, read after join
        shared.Finish(Clock::now());
      }
    });
  }
  for (int done = 0; done < total;) {
    done = shared.WaitDone(total, absl::FromChrono(progress_interval));
    progress(done, total);
  }
  for (std::thread& thread : threads) thread.join();
  run.duration_s = std::chrono::duration<double>(shared.LastAnswer() - start).count();
  return run;
}

}  // namespace tessera::tools::bench
