// LocalWorkers: the worker processes `tessera serve` starts on its own node, one per rank, each a
// `tessera worker` child in its own process group (so that a terminal's Ctrl-C reaches only the server, which
// then stops them in order) that dies with its parent (PR_SET_PDEATHSIG). Stop() leaves no orphans.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace tessera {

class LocalWorkers {
 public:
  // Starts `count` processes running `executable args... --rank r` (r = first_rank .. first_rank+count-1),
  // with every signal unblocked. Errors: INTERNAL naming the executable when a process cannot be started
  // (those already started are stopped).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<LocalWorkers>> Start(
      const std::string& executable, const std::vector<std::string>& args, int count, std::ostream& log,
      int first_rank = 0);
  ~LocalWorkers();  // Stop(2 s)

  // Waits up to `grace` for the processes to exit by themselves, then sends SIGTERM, waits 2 s more, then
  // SIGKILL; reaps every one. Idempotent.
  void Stop(std::chrono::milliseconds grace) ABSL_LOCKS_EXCLUDED(mu_);
  // The pids, in rank order (0 once reaped).
  std::vector<pid_t> pids() const ABSL_LOCKS_EXCLUDED(mu_);
  // Reaps the processes that have exited (logging how). Returns how many are still running; sets `*failed`
  // when any of them has ever exited with a non-zero status or by a signal.
  int Reap(bool* failed) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  LocalWorkers(std::vector<pid_t> pids, std::ostream& log, int first_rank)
      : first_rank_(first_rank), pids_(std::move(pids)), log_(log) {}
  // Reaps the children that have exited, logging how; true when none is left.
  bool ReapLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int first_rank_;
  mutable absl::Mutex mu_;  // held across Stop's waits: a second Stop waits for the first
  std::vector<pid_t> pids_ ABSL_GUARDED_BY(mu_);
  bool failed_ ABSL_GUARDED_BY(mu_) = false;  // a process exited with a non-zero status or by a signal
  std::ostream& log_;
};

}  // namespace tessera
