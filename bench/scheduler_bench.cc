// The scheduler's CPU time per step, without workers: a sink keeps each serialized step and the benchmark
// answers it at once (a token for every sampled sequence), so a step's cost is the scheduler's own:
// applying the result (tokens, events, block commits), delivering the observer events, forming the next step
// (budgets, block growth, prefix-cache lookups) and serializing it. Printed for 256 running sequences that
// decode with 1,000 requests waiting, with and without prefix caching, next to the cost of serializing and
// parsing the same step alone (the floor any scheduler that speaks this protocol pays).
//
//   build/bench/scheduler_bench [--running 256] [--waiting 1000] [--steps 2000]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/scheduler.h"
#include "core/str_cat.h"
#include "tessera/control/v1/control.pb.h"

namespace tessera {
namespace {

using Clock = std::chrono::steady_clock;

class KeepLastSink : public StepSink {
 public:
  absl::Status SendStep(const std::string& serialized) override {
    last = serialized;
    ++count;
    return absl::OkStatus();
  }
  std::string last;
  int64_t count = 0;
};

class NullObserver : public GenerationObserver {
 public:
  bool OnToken(int, int32_t) override { return false; }
  void OnChoiceEnd(int, FinishReason) override {}
  void OnDone(const absl::Status&) override {}
};

struct Figures {
  double step_us = 0;      // OnStepResult: apply, deliver, form, serialize, send
  double schedule_us = 0;  // of it, forming the step
  double floor_us = 0;     // serializing the step and parsing its result alone
  int64_t seqs_per_step = 0;
};

Figures Run(int running, int waiting, int steps, bool caching) {
  KeepLastSink sink;
  SchedulerOptions options;
  options.num_kv_blocks = 1 << 17;
  options.max_num_seqs = running;
  options.max_num_batched_tokens = 1 << 16;
  options.max_queued_requests = running + waiting;
  options.enable_prefix_caching = caching;
  Scheduler scheduler(options, sink);
  scheduler.Activate(options.num_kv_blocks);
  std::vector<GenerationRequest> requests;
  std::vector<std::shared_ptr<GenerationObserver>> observers;
  for (int i = 0; i < running + waiting; ++i) {
    GenerationRequest r;
    r.id = Cat("r", i);
    for (int t = 0; t < 64; ++t) r.prompt.push_back(1000 + (i * 64 + t) % 100000);  // no shared prefixes
    r.max_tokens = 1 << 20;
    r.max_tokens_is_default = true;  // the scheduler lowers it to its max_model_len
    r.stop_token_ids = {2};
    requests.push_back(std::move(r));
    observers.push_back(std::make_shared<NullObserver>());
  }
  if (!scheduler.SubmitBatch(std::move(requests), std::move(observers)).ok()) std::abort();
  control::v1::Step step;
  control::v1::StepResult result;
  auto answer = [&] {
    if (!step.ParseFromString(sink.last)) std::abort();
    result.Clear();
    result.set_step_id(step.step_id());
    for (const auto& s : step.scheduled()) {
      if (s.sample()) result.add_tokens(7);
    }
    scheduler.OnStepResult(result);
  };
  for (int i = 0; i < 50; ++i) answer();  // prefill done, every running sequence decodes
  const Scheduler::Stats before = scheduler.stats();
  double total = 0, floor = 0;
  int64_t seqs = 0;
  for (int i = 0; i < steps; ++i) {
    if (!step.ParseFromString(sink.last)) std::abort();
    seqs += step.scheduled_size();
    result.Clear();
    result.set_step_id(step.step_id());
    for (const auto& s : step.scheduled()) {
      if (s.sample()) result.add_tokens(7);
    }
    const auto t0 = Clock::now();
    scheduler.OnStepResult(result);
    const auto t1 = Clock::now();
    // The floor: the same step serialized once and its result parsed once.
    std::string bytes = step.SerializeAsString();
    control::v1::StepResult parsed;
    if (!parsed.ParseFromString(result.SerializeAsString()) || bytes.empty()) std::abort();
    const auto t2 = Clock::now();
    total += std::chrono::duration<double>(t1 - t0).count();
    floor += std::chrono::duration<double>(t2 - t1).count();
  }
  const Scheduler::Stats after = scheduler.stats();
  Figures f;
  f.step_us = 1e6 * total / steps;
  f.schedule_us = 1e6 * (after.schedule_seconds - before.schedule_seconds) / std::max<int64_t>(1, after.steps - before.steps);
  f.floor_us = 1e6 * floor / steps;
  f.seqs_per_step = seqs / steps;
  return f;
}

int Main(int argc, char** argv) {
  int running = 256, waiting = 1000, steps = 2000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--running")) running = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--waiting")) waiting = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
  }
  std::printf("scheduler CPU time per decode step: %d running sequences, %d requests waiting, %d steps\n", running,
              waiting, steps);
  std::printf("%-22s %12s %14s %14s %12s\n", "", "seqs/step", "step (us)", "form (us)", "floor (us)");
  for (bool caching : {true, false}) {
    const Figures f = Run(running, waiting, steps, caching);
    std::printf("%-22s %12lld %14.1f %14.1f %12.1f\n", caching ? "prefix caching on" : "prefix caching off",
                static_cast<long long>(f.seqs_per_step), f.step_us, f.schedule_us, f.floor_us);
  }
  std::printf("step: OnStepResult (apply the result, deliver events, form, serialize and send the next step);\n"
              "form: of it, forming the step; floor: serializing that step and parsing its result once.\n");
  return 0;
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) { return tessera::Main(argc, argv); }
