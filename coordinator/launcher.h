// LocalWorkers: the worker processes `tessera serve` starts on its own node, one per rank, each a
// `tessera worker` child in its own process group (so that a terminal's Ctrl-C reaches only the server, which
// then stops them in order) that dies with its parent (PR_SET_PDEATHSIG). Stop() leaves no orphans.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
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
  // Replaces rank `rank`'s process with a new one with the same arguments. With `kill`, the old one gets SIGKILL
  // if it still runs (stopped, stuck); without, a running one is kept and nothing happens. Errors: NOT_FOUND
  // when the rank is not one of these; INTERNAL when the new process cannot be started; FAILED_PRECONDITION
  // after Stop.
  [[nodiscard]] absl::Status Respawn(int rank, bool kill = true) ABSL_LOCKS_EXCLUDED(mu_);
  // Reaps the processes that have exited (logging how). Returns how many are still running; sets `*failed`
  // when any of them has ever exited with a non-zero status or by a signal, and appends to `failed_ranks` (when
  // not null) the ranks that failed since the last call.
  int Reap(bool* failed, std::vector<int>* failed_ranks = nullptr) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  LocalWorkers(std::string executable, std::vector<std::string> args, std::vector<pid_t> pids,
               std::ostream& log, int first_rank)
      : executable_(std::move(executable)),
        args_(std::move(args)),
        first_rank_(first_rank),
        pids_(std::move(pids)),
        log_(log) {}
  // Reaps the children that have exited, logging how; true when none is left.
  bool ReapLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Forks `rank`'s process on the spawner thread: PR_SET_PDEATHSIG fires when the thread that forked a child
  // ends, so children are forked by a thread that lives as long as this object (Respawn's caller, a recovery
  // thread, does not). The new pid, or -1.
  pid_t SpawnOnSpawner(int rank) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SpawnerLoop() ABSL_LOCKS_EXCLUDED(mu_);

  const std::string executable_;
  const std::vector<std::string> args_;
  const int first_rank_;
  mutable absl::Mutex mu_;  // held across Stop's waits: a second Stop waits for the first
  std::vector<pid_t> pids_ ABSL_GUARDED_BY(mu_);
  bool failed_ ABSL_GUARDED_BY(mu_) = false;  // a process exited with a non-zero status or by a signal
  std::vector<int> newly_failed_ ABSL_GUARDED_BY(mu_);  // ranks that failed since the last Reap
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;  // Stop ran: no respawn
  // The spawner thread's work: the rank to fork (-1: none), and its answer.
  int spawn_rank_ ABSL_GUARDED_BY(mu_) = -1;
  pid_t spawned_pid_ ABSL_GUARDED_BY(mu_) = 0;
  bool spawner_exit_ ABSL_GUARDED_BY(mu_) = false;
  std::thread spawner_;  // started by the first Respawn, joined by the destructor
  std::ostream& log_;
};

}  // namespace tessera
