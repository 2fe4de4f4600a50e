// RecordingSink: a StepSink for the Scheduler's unit tests. It parses and keeps every step the scheduler
// sends, answers with a status the test sets, and lets the test wait for the n-th step.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/scheduler.h"
#include "tessera/control/v1/control.pb.h"

namespace tessera::testing {

class RecordingSink : public StepSink {
 public:
  absl::Status SendStep(const std::string& serialized) override {
    control::v1::Step step;
    EXPECT_TRUE(step.ParseFromString(serialized));
    absl::MutexLock lock(&mu_);
    steps_.push_back(step);
    return status_;
  }
  // Waits up to `wait` for the step with this index (0-based) and returns it.
  control::v1::Step WaitStep(size_t index, absl::Duration wait = absl::Seconds(5)) {
    absl::MutexLock lock(&mu_);
    auto arrived = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return steps_.size() > index; };
    EXPECT_TRUE(mu_.AwaitWithTimeout(absl::Condition(&arrived), wait)) << "step " << index << " never came";
    return steps_.size() > index ? steps_[index] : control::v1::Step();
  }
  // The latest step sent (an empty one, and a test failure, when none was).
  control::v1::Step last() {
    absl::MutexLock lock(&mu_);
    EXPECT_FALSE(steps_.empty());
    return steps_.empty() ? control::v1::Step() : steps_.back();
  }
  size_t count() {
    absl::MutexLock lock(&mu_);
    return steps_.size();
  }
  // What later SendStep calls return.
  void set_status(absl::Status status) {
    absl::MutexLock lock(&mu_);
    status_ = std::move(status);
  }

 private:
  absl::Mutex mu_;
  std::vector<control::v1::Step> steps_ ABSL_GUARDED_BY(mu_);
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera::testing
