// LocalWorkers with a stand-in worker: a shell script that ignores its arguments (`--rank R` included) and
// sleeps, or exits with a status, as a rank fails. Respawn (keeping or replacing a process, from a thread
// that then ends), Reap's failed ranks, and Stop leaving no child behind.
#include "coordinator/launcher.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/util/status_matchers.h"
#include "tests/util/test_env.h"

namespace tessera {
namespace {

using namespace std::chrono_literals;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Writes an executable script to a fresh directory; returns its path. Rank `failing` (when >= 0) exits with
// status 3 after 50 ms; the others sleep 30 s.
std::string WorkerScript(int failing = -1) {
  const std::string dir = ::tessera::testing::FreshTempDir("launcher_test");
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/worker.sh";
  std::ofstream(path) << "#!/bin/sh\n"
                      << "case \"$*\" in *\"--rank " << failing << "\") sleep 0.05; exit 3;; esac\n"
                      << "exec sleep 30\n";
  chmod(path.c_str(), 0755);
  return path;
}

// True while `pid` runs (a child of this process not yet reaped, and not a zombie).
bool Running(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const size_t close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

TEST(LocalWorkersTest, RespawnKeepsARunningProcessUnlessToldToKillIt) {
  std::ostringstream log;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<LocalWorkers> workers,
                       LocalWorkers::Start(WorkerScript(), {"x"}, 2, log, 4));
  const std::vector<pid_t> before = workers->pids();
  ASSERT_EQ(before.size(), 2u);
  ASSERT_OK(workers->Respawn(5, /*kill=*/false));  // it may yet join: kept
  EXPECT_EQ(workers->pids(), before);
  ASSERT_OK(workers->Respawn(5, /*kill=*/true));  // stuck: replaced
  const std::vector<pid_t> after = workers->pids();
  EXPECT_EQ(after[0], before[0]);
  EXPECT_NE(after[1], before[1]);
  EXPECT_NE(after[1], 0);
  EXPECT_TRUE(Running(after[1]));
  EXPECT_FALSE(Running(before[1]));  // killed and reaped
  bool failed = true;
  std::vector<int> failed_ranks;
  EXPECT_EQ(workers->Reap(&failed, &failed_ranks), 2);
  EXPECT_FALSE(failed);  // a process replaced on purpose is no failure
  EXPECT_THAT(failed_ranks, IsEmpty());
  EXPECT_THAT(log.str(), HasSubstr("restarted worker rank 5"));
  workers->Stop(0ms);
  EXPECT_FALSE(Running(after[0]));
  EXPECT_FALSE(Running(after[1]));
}

TEST(LocalWorkersTest, RespawnOfARankThatIsNotLocalIsNotFoundAndAfterStopFailedPrecondition) {
  std::ostringstream log;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<LocalWorkers> workers,
                       LocalWorkers::Start(WorkerScript(), {}, 2, log, 2));
  EXPECT_THAT(workers->Respawn(1), StatusIs(absl::StatusCode::kNotFound, HasSubstr("rank 1")));
  EXPECT_THAT(workers->Respawn(4), StatusIs(absl::StatusCode::kNotFound, HasSubstr("rank 4")));
  workers->Stop(0ms);
  EXPECT_THAT(workers->Respawn(2), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(LocalWorkersTest, AProcessRespawnedFromAThreadThatEndsOutlivesTheThread) {
  std::ostringstream log;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<LocalWorkers> workers,
                       LocalWorkers::Start(WorkerScript(), {}, 1, log));
  std::thread recovery([&] {
    EXPECT_OK(workers->Respawn(0, /*kill=*/true));
    std::this_thread::sleep_for(
        100ms);  // the child has set its PR_SET_PDEATHSIG by the time this thread ends
  });
  recovery.join();  // had this thread forked the child, PR_SET_PDEATHSIG would now stop it
  const pid_t pid = workers->pids()[0];
  std::this_thread::sleep_for(500ms);
  EXPECT_TRUE(Running(pid));
  bool failed = true;
  EXPECT_EQ(workers->Reap(&failed), 1);
  EXPECT_FALSE(failed);
  workers->Stop(0ms);
}

TEST(LocalWorkersTest, ReapReportsEachFailedRankOnceAndRespawnBringsItBack) {
  std::ostringstream log;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<LocalWorkers> workers,
                       LocalWorkers::Start(WorkerScript(/*failing=*/1), {}, 3, log));
  bool failed = false;
  std::vector<int> failed_ranks;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (workers->Reap(&failed, &failed_ranks) == 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(failed);
  EXPECT_THAT(failed_ranks, ElementsAre(1));
  EXPECT_EQ(workers->pids()[1], 0);
  EXPECT_THAT(log.str(), HasSubstr("worker rank 1 (pid"));
  EXPECT_THAT(log.str(), HasSubstr("exited with status 3"));
  failed_ranks.clear();
  EXPECT_EQ(workers->Reap(&failed, &failed_ranks), 2);
  EXPECT_TRUE(failed);                             // ever
  EXPECT_THAT(failed_ranks, IsEmpty());            // but not again since the last call
  ASSERT_OK(workers->Respawn(1, /*kill=*/false));  // nothing runs as rank 1: started
  EXPECT_NE(workers->pids()[1], 0);
  workers->Stop(0ms);
}

}  // namespace
}  // namespace tessera
