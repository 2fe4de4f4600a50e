// CommunicatorSlot: forwards every operation to the communicator it holds, fails with UNAVAILABLE while
// empty, and Reset replaces (destroying) the one it held; Abort reaches the one held now.
#include "parallel/communicator_slot.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A communicator that records the operations it is asked for (prefixed with its name) and answers each with
// `status`.
class RecordingCommunicator final : public Communicator {
 public:
  RecordingCommunicator(std::string name, std::vector<std::string>& log,
                        absl::Status status = absl::OkStatus())
      : name_(std::move(name)), log_(log), status_(std::move(status)) {}
  ~RecordingCommunicator() override { log_.push_back(name_ + " destroyed"); }

  int rank() const override { return 99; }  // the slot answers with its own
  int size() const override { return 99; }
  absl::Status AllReduceSum(Tensor&) override { return Record("all-reduce"); }
  absl::Status AllGather(const Tensor&, Tensor&) override { return Record("all-gather"); }
  absl::Status Gather(const Tensor&, Tensor&, int root) override { return Record("gather " + std::to_string(root)); }
  absl::Status Broadcast(Tensor&, int root) override { return Record("broadcast " + std::to_string(root)); }
  absl::Status Send(const Tensor&, int dst) override { return Record("send " + std::to_string(dst)); }
  absl::Status Recv(Tensor&, int src) override { return Record("recv " + std::to_string(src)); }
  absl::Status Barrier() override { return Record("barrier"); }
  void Abort() override { log_.push_back(name_ + " abort"); }

 private:
  absl::Status Record(const std::string& op) {
    log_.push_back(name_ + " " + op);
    return status_;
  }
  const std::string name_;
  std::vector<std::string>& log_;
  const absl::Status status_;
};

// Runs every operation once on `comm`; returns their statuses.
std::vector<absl::Status> RunEveryOperation(Communicator& comm) {
  std::vector<float> a(4, 1.0f), b(8, 0.0f);
  Tensor ta(a.data(), DType::kF32, {4}), tb(b.data(), DType::kF32, {8});
  return {comm.AllReduceSum(ta), comm.AllGather(ta, tb), comm.Broadcast(ta, 1),
          comm.Send(ta, 1),      comm.Recv(ta, 1),       comm.Barrier()};
}

TEST(CommunicatorSlotTest, AnEmptySlotFailsEveryOperationWithUnavailable) {
  CommunicatorSlot slot(/*rank=*/0, /*size=*/2);
  EXPECT_TRUE(slot.empty());
  EXPECT_EQ(slot.rank(), 0);
  EXPECT_EQ(slot.size(), 2);
  slot.Abort();  // nothing to abort: no effect
  for (const absl::Status& status : RunEveryOperation(slot)) {
    EXPECT_THAT(status, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("re-formed")));
  }
}

TEST(CommunicatorSlotTest, ForwardsEveryOperationAndItsErrorsToTheCommunicatorItHolds) {
  std::vector<std::string> log;
  CommunicatorSlot slot(1, 2);
  slot.Reset(std::make_unique<RecordingCommunicator>("a", log));
  EXPECT_FALSE(slot.empty());
  EXPECT_EQ(slot.rank(), 1);
  EXPECT_EQ(slot.size(), 2);
  for (const absl::Status& status : RunEveryOperation(slot)) EXPECT_OK(status);
  EXPECT_THAT(
      log, ElementsAre("a all-reduce", "a all-gather", "a broadcast 1", "a send 1", "a recv 1", "a barrier"));
  log.clear();
  slot.Reset(std::make_unique<RecordingCommunicator>("b", log, absl::DeadlineExceededError("peer 0 silent")));
  for (const absl::Status& status : RunEveryOperation(slot)) {
    EXPECT_THAT(status, StatusIs(absl::StatusCode::kDeadlineExceeded, "peer 0 silent"));
  }
  EXPECT_EQ(log.front(), "a destroyed");  // replaced: the old one is gone before the new one is used
  EXPECT_EQ(log[1], "b all-reduce");
}

TEST(CommunicatorSlotTest, AbortReachesTheCommunicatorHeldNowAndResetToNullEmptiesTheSlot) {
  std::vector<std::string> log;
  CommunicatorSlot slot(0, 2);
  slot.Reset(std::make_unique<RecordingCommunicator>("a", log));
  slot.Abort();
  slot.Reset(std::make_unique<RecordingCommunicator>("b", log));
  slot.Abort();
  slot.Reset(nullptr);
  EXPECT_TRUE(slot.empty());
  slot.Abort();
  EXPECT_THAT(log, ElementsAre("a abort", "a destroyed", "b abort", "b destroyed"));
  std::vector<float> a(4);
  Tensor t(a.data(), DType::kF32, {4});
  EXPECT_THAT(slot.Recv(t, 1), StatusIs(absl::StatusCode::kUnavailable));
}

}  // namespace
}  // namespace tessera
