// CapturedStep and SegmentingGroup over the CPU backend's step graphs: a capture records instead of running,
// a replay reruns the calls on the buffers' current contents, collectives cut the capture into segments and
// run (after the backend is synchronized) between them, and a failed capture leaves nothing capturing.
#include "worker/model/captured_step.h"

#include <gtest/gtest.h>

#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

// A stand-in for a TP group of two identical ranks (a fake for this unit test of the group wrapper only):
// AllReduceSum doubles the data and counts its calls.
class DoublingGroup final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  absl::Status AllReduceSum(Tensor& data) override {
    ++calls;
    for (int64_t i = 0; i < data.numel(); ++i) data.data_as<float>()[i] *= 2.0f;
    return absl::OkStatus();
  }
  absl::Status AllGather(const Tensor&, Tensor&) override { return absl::UnimplementedError("AllGather"); }
  absl::Status Gather(const Tensor&, Tensor&, int) override { return absl::UnimplementedError("Gather"); }
  absl::Status Broadcast(Tensor&, int) override { return absl::UnimplementedError("Broadcast"); }
  absl::Status Send(const Tensor&, int) override { return absl::OkStatus(); }
  absl::Status Recv(Tensor&, int) override { return absl::OkStatus(); }
  absl::Status Barrier() override { return absl::OkStatus(); }
  int calls = 0;
};

// A stream-ordered group, as NCCL on the CUDA backend's stream: its all-reduce is one more operation on the
// backend's queue (here: the doubling, as a backend Add), so a capture records it with everything else.
class StreamOrderedGroup final : public Communicator {
 public:
  explicit StreamOrderedGroup(Backend& backend) : backend_(backend) {}
  int rank() const override { return 0; }
  int size() const override { return 2; }
  absl::Status AllReduceSum(Tensor& data) override {
    ++calls;
    backend_.Add(data, data, data);
    return absl::OkStatus();
  }
  absl::Status AllGather(const Tensor&, Tensor&) override { return absl::UnimplementedError("AllGather"); }
  absl::Status Gather(const Tensor&, Tensor&, int) override { return absl::UnimplementedError("Gather"); }
  absl::Status Broadcast(Tensor&, int) override { return absl::UnimplementedError("Broadcast"); }
  absl::Status Send(const Tensor&, int) override { return absl::OkStatus(); }
  absl::Status Recv(Tensor&, int) override { return absl::OkStatus(); }
  absl::Status Barrier() override { return absl::OkStatus(); }
  bool stream_ordered() const override { return true; }
  void WatchStep() override { ++watched; }
  absl::Status StepStatus() override { return step_status; }
  int calls = 0;
  int watched = 0;
  absl::Status step_status;

 private:
  Backend& backend_;
};

class CapturedStepTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(backend_, CpuBackend::Create({.num_threads = 2, .linear = {}}));
  }
  Tensor View(std::vector<float>& v) {
    return Tensor(v.data(), DType::kF32, {static_cast<int64_t>(v.size())});
  }
  std::unique_ptr<CpuBackend> backend_;
};

TEST_F(CapturedStepTest, ReplayRerunsTheCapturedCallsOnTheCurrentInputs) {
  std::vector<float> a = {1, 2, 3}, b = {10, 20, 30}, out(3, 0);
  Tensor ta = View(a), tb = View(b), tout = View(out);
  ASSERT_OK_AND_ASSIGN(CapturedStep step,
                       SegmentingGroup::CaptureWithoutGroup(*backend_, [&]() -> absl::StatusOr<Tensor> {
                         backend_->Add(ta, tb, tout);
                         backend_->Add(tout, tout, tout);
                         return tout;
                       }));
  EXPECT_EQ(out, std::vector<float>(3, 0));  // recorded, not run
  EXPECT_EQ(step.num_segments(), 1);
  EXPECT_EQ(step.output().data(), out.data());
  ASSERT_OK(step.Replay(*backend_));
  EXPECT_EQ(out, (std::vector<float>{22, 44, 66}));
  a = {0, 0, 1};
  ASSERT_OK(step.Replay(*backend_));
  EXPECT_EQ(out, (std::vector<float>{20, 40, 62}));
}

TEST_F(CapturedStepTest, CollectivesCutTheCaptureAndRunBetweenSegments) {
  DoublingGroup inner;
  SegmentingGroup group(*backend_, inner);
  std::vector<float> a = {1, 2}, b = {5, 5}, out(2, 0);
  Tensor ta = View(a), tb = View(b), tout = View(out);
  auto forward = [&]() -> absl::StatusOr<Tensor> {
    backend_->Add(ta, tb, tout);
    RETURN_IF_ERROR(group.AllReduceSum(tout));
    backend_->Add(tout, tb, tout);
    RETURN_IF_ERROR(group.AllReduceSum(tout));
    return tout;
  };
  ASSERT_OK(forward().status());  // eager: the group runs at once
  EXPECT_EQ(inner.calls, 2);
  EXPECT_EQ(out, (std::vector<float>{34, 38}));
  ASSERT_OK_AND_ASSIGN(CapturedStep step, group.Capture(forward));
  EXPECT_EQ(inner.calls, 2);  // recorded only
  EXPECT_EQ(step.num_segments(), 3);
  a = {0, 1};
  ASSERT_OK(step.Replay(*backend_));
  EXPECT_EQ(inner.calls, 4);
  EXPECT_EQ(out, (std::vector<float>{30, 34}));
}

TEST_F(CapturedStepTest, AStreamOrderedGroupIsCapturedInsideOneSegment) {
  StreamOrderedGroup inner(*backend_);
  SegmentingGroup group(*backend_, inner);
  EXPECT_TRUE(group.stream_ordered());
  std::vector<float> a = {1, 2}, b = {5, 5}, out(2, 0);
  Tensor ta = View(a), tb = View(b), tout = View(out);
  auto forward = [&]() -> absl::StatusOr<Tensor> {
    backend_->Add(ta, tb, tout);
    RETURN_IF_ERROR(group.AllReduceSum(tout));
    backend_->Add(tout, tb, tout);
    RETURN_IF_ERROR(group.AllReduceSum(tout));
    return tout;
  };
  ASSERT_OK(forward().status());
  EXPECT_EQ(out, (std::vector<float>{34, 38}));
  ASSERT_OK_AND_ASSIGN(CapturedStep step, group.Capture(forward));
  EXPECT_EQ(inner.calls, 4);  // enqueued (here: recorded into the graph) at capture time
  EXPECT_EQ(step.num_segments(), 1);
  a = {0, 1};
  ASSERT_OK(step.Replay(*backend_));
  EXPECT_EQ(inner.calls, 4);  // the replay runs them as part of the one graph, not through the group
  EXPECT_EQ(out, (std::vector<float>{30, 34}));
  group.WatchStep();
  EXPECT_EQ(inner.watched, 1);
  inner.step_status = absl::DeadlineExceededError("a peer did not take part");
  EXPECT_THAT(group.StepStatus(), StatusIs(absl::StatusCode::kDeadlineExceeded));
}

TEST_F(CapturedStepTest, PointToPointCannotBeCapturedAndAFailedCaptureLeavesNothingOpen) {
  DoublingGroup inner;
  SegmentingGroup group(*backend_, inner);
  std::vector<float> a = {1};
  Tensor ta = View(a);
  absl::StatusOr<CapturedStep> step = group.Capture([&]() -> absl::StatusOr<Tensor> {
    backend_->Add(ta, ta, ta);
    RETURN_IF_ERROR(group.Send(ta, 1));
    return ta;
  });
  EXPECT_THAT(step.status(), StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("Send")));
  EXPECT_EQ(a[0], 1.0f);
  ASSERT_OK(group.Send(ta, 1));         // outside a capture it runs
  ASSERT_OK(backend_->BeginCapture());  // nothing was left capturing
  ASSERT_OK(backend_->EndCapture().status());
}

TEST_F(CapturedStepTest, TheCpuBackendChecksCaptureOrderAndGraphOwnership) {
  EXPECT_THAT(backend_->EndCapture().status(), StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_OK(backend_->BeginCapture());
  EXPECT_THAT(backend_->BeginCapture(), StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<StepGraph> graph, backend_->EndCapture());
  ASSERT_OK(backend_->Replay(*graph));  // an empty graph
  struct Foreign : StepGraph {};
  EXPECT_THAT(backend_->Replay(Foreign()), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(CapturedStepTest, CallsThatCannotBeCapturedAbort) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // the backend's pool threads exist
  ASSERT_OK(backend_->BeginCapture());
  std::vector<float> logits = {0, 1};
  SamplingRow row;
  int32_t id = 0;
  EXPECT_DEATH(static_cast<void>(backend_->Sample(Tensor(logits.data(), DType::kF32, {1, 2}), &row, &id)), "capture_");
  EXPECT_DEATH(static_cast<void>(backend_->Synchronize()), "capture_");
  ASSERT_OK(backend_->EndCapture().status());
}

}  // namespace
}  // namespace tessera
