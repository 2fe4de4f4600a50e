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

}  // namespace

absl::StatusOr<std::unique_ptr<LocalWorkers>> LocalWorkers::Start(const std::string& executable,
                                                                  const std::vector<std::string>& args,
                                                                  int count, std::ostream& log,
                                                                  int first_rank) {
  std::vector<pid_t> pids;
  const pid_t self = getpid();
  for (int rank = first_rank; rank < first_rank + count; ++rank) {
    std::vector<std::string> strings = {executable};
    strings.insert(strings.end(), args.begin(), args.end());
    strings.push_back("--rank");
    strings.push_back(std::to_string(rank));
    std::vector<char*> argv;
    for (std::string& s : strings) argv.push_back(s.data());
    argv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid == 0) ExecWorker(self, argv);
    if (pid < 0) {
      std::unique_ptr<LocalWorkers> started(new LocalWorkers(std::move(pids), log, first_rank));
      started->Stop(std::chrono::milliseconds(0));
      return absl::InternalError(Cat("cannot start worker rank ", rank, " (", executable, ")"));
    }
    pids.push_back(pid);
  }
  return std::unique_ptr<LocalWorkers>(new LocalWorkers(std::move(pids), log, first_rank));
}

LocalWorkers::~LocalWorkers() { Stop(std::chrono::milliseconds(2000)); }

std::vector<pid_t> LocalWorkers::pids() const {
  absl::MutexLock lock(&mu_);
  return pids_;
}

int LocalWorkers::Reap(bool* failed) {
  absl::MutexLock lock(&mu_);
  ReapLocked();
  *failed = failed_;
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
        WriteLog(log_, LogLevel::kWarning, kContext,
                 Cat("worker rank ", rank, " (pid ", pids_[i], ") was killed by signal ", WTERMSIG(status)));
      } else if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
        failed_ = true;
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
