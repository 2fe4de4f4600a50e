#include "coordinator/launcher.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "core/log.h"
#include "core/str_cat.h"

namespace tessera {
namespace {

constexpr LogContext kContext{.component = "launcher", .rank = -1, .request_id = ""};

// Runs in the forked child before exec: only async-signal-safe calls.
[[noreturn]] void ExecWorker(pid_t parent, const std::vector<char*>& argv) {
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(1);  // the parent died before prctl
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  signal(SIGPIPE, SIG_DFL);
  execv(argv[0], argv.data());
  _exit(127);
}

// Forks `executable args... --rank rank`; the child's pid, or -1.
pid_t Spawn(const std::string& executable, const std::vector<std::string>& args, int rank) {
  std::vector<std::string> strings = {executable};
  strings.insert(strings.end(), args.begin(), args.end());
  strings.push_back("--rank");
  strings.push_back(std::to_string(rank));
  std::vector<char*> argv;
  for (std::string& s : strings) argv.push_back(s.data());
  argv.push_back(nullptr);
  const pid_t self = getpid();
  const pid_t pid = fork();
  if (pid == 0) ExecWorker(self, argv);
  return pid;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LocalWorkers>> LocalWorkers::Start(const std::string& executable,
                                                                  const std::vector<std::string>& args,
                                                                  int count, std::ostream& log,
                                                                  int first_rank) {
  std::vector<pid_t> pids;
  for (int rank = first_rank; rank < first_rank + count; ++rank) {
    const pid_t pid = Spawn(executable, args, rank);
    if (pid < 0) {
      std::unique_ptr<LocalWorkers> started(new LocalWorkers(executable, args, std::move(pids), log, first_rank));
      started->Stop(std::chrono::milliseconds(0));
      return absl::InternalError(Cat("cannot start worker rank ", rank, " (", executable, ")"));
    }
    pids.push_back(pid);
  }
  return std::unique_ptr<LocalWorkers>(new LocalWorkers(executable, args, std::move(pids), log, first_rank));
}

absl::Status LocalWorkers::Respawn(int rank, bool kill) {
  absl::MutexLock lock(&mu_);
  const int i = rank - first_rank_;
  if (i < 0 || i >= static_cast<int>(pids_.size())) {
    return absl::NotFoundError(Cat("rank ", rank, " is not a local worker"));
  }
  if (stopped_) return absl::FailedPreconditionError("the local workers are stopping");
  const pid_t old = pids_[i];
  if (old != 0) {
    int status = 0;
    if (waitpid(old, &status, WNOHANG) == 0) {  // still running
      if (!kill) return absl::OkStatus();           // it may yet join
      ::kill(old, SIGKILL);                         // stopped, or stuck in a collective
      waitpid(old, &status, 0);
    }
    pids_[i] = 0;
  }
  const pid_t pid = SpawnOnSpawner(rank);
  if (pid < 0) return absl::InternalError(Cat("cannot restart worker rank ", rank, " (", executable_, ")"));
  pids_[i] = pid;
  WriteLog(log_, LogLevel::kInfo, kContext,
           Cat("restarted worker rank ", rank, old != 0 ? Cat(" (pid ", old, " killed)") : std::string(),
               " as pid ", pid));
  return absl::OkStatus();
}

LocalWorkers::~LocalWorkers() {
  Stop(std::chrono::milliseconds(2000));
  {
    absl::MutexLock lock(&mu_);
    spawner_exit_ = true;
  }
  if (spawner_.joinable()) spawner_.join();
}

pid_t LocalWorkers::SpawnOnSpawner(int rank) {
  if (!spawner_.joinable()) spawner_ = std::thread([this] { SpawnerLoop(); });
  spawn_rank_ = rank;
  spawned_pid_ = 0;
  mu_.Await(absl::Condition(+[](pid_t* pid) { return *pid != 0; }, &spawned_pid_));
  return spawned_pid_;
}

void LocalWorkers::SpawnerLoop() {
  absl::MutexLock lock(&mu_);
  while (true) {
    auto work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return spawn_rank_ >= 0 || spawner_exit_; };
    mu_.Await(absl::Condition(&work));
    if (spawner_exit_) return;
    const pid_t pid = Spawn(executable_, args_, spawn_rank_);
    spawn_rank_ = -1;
    spawned_pid_ = pid < 0 ? -1 : pid;
  }
}

std::vector<pid_t> LocalWorkers::pids() const {
  absl::MutexLock lock(&mu_);
  return pids_;
}

int LocalWorkers::Reap(bool* failed, std::vector<int>* failed_ranks) {
  absl::MutexLock lock(&mu_);
  ReapLocked();
  *failed = failed_;
  if (failed_ranks != nullptr) failed_ranks->insert(failed_ranks->end(), newly_failed_.begin(), newly_failed_.end());
  newly_failed_.clear();
  return static_cast<int>(std::count_if(pids_.begin(), pids_.end(), [](pid_t pid) { return pid != 0; }));
}

bool LocalWorkers::ReapLocked() {
  bool all_done = true;
  for (size_t i = 0; i < pids_.size(); ++i) {
    if (pids_[i] == 0) continue;
    const int rank = first_rank_ + static_cast<int>(i);
    int status = 0;
    const pid_t r = waitpid(pids_[i], &status, WNOHANG);
    if (r == 0) {
      all_done = false;
      continue;
    }
    if (r == pids_[i]) {
      if (WIFSIGNALED(status)) {
        failed_ = true;
        newly_failed_.push_back(rank);
        WriteLog(log_, LogLevel::kWarning, kContext,
                 Cat("worker rank ", rank, " (pid ", pids_[i], ") was killed by signal ", WTERMSIG(status)));
      } else if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
        failed_ = true;
        newly_failed_.push_back(rank);
        WriteLog(log_, LogLevel::kWarning, kContext,
                 Cat("worker rank ", rank, " (pid ", pids_[i], ") exited with status ", WEXITSTATUS(status)));
      }
    }
    pids_[i] = 0;
  }
  return all_done;
}

void LocalWorkers::Stop(std::chrono::milliseconds grace) {
  absl::MutexLock lock(&mu_);
  stopped_ = true;
  auto wait_for = [&](std::chrono::milliseconds limit) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!ReapLocked()) {
      if (std::chrono::steady_clock::now() >= end) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
  };
  if (wait_for(grace)) return;
  for (pid_t pid : pids_) {
    if (pid != 0) kill(pid, SIGTERM);
  }
  if (wait_for(std::chrono::milliseconds(2000))) return;
  for (pid_t pid : pids_) {
    if (pid != 0) {
      WriteLog(log_, LogLevel::kWarning, kContext, Cat("worker pid ", pid, " ignored SIGTERM; killing it"));
      kill(pid, SIGKILL);
    }
  }
  wait_for(std::chrono::milliseconds(5000));
}

}  // namespace tessera
