// FakeEngine: a scripted Engine for the API layer's tests. Each submitted request plays its script on its own
// thread, calling the observer as the real engine does (OnCachedTokens, OnPromptLogprobs when asked, then
// tokens step by step over every choice, each after its OnLogprobs when asked; a choice ends at a stop id, a
// "stop now" answer, max_tokens or the end of its script, then OnDone), and honours Cancel. Its logprobs are
// FakeLogprob's.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/engine.h"
#include "core/str_cat.h"

namespace tessera::testing {

struct ScriptedChoice {
  std::vector<int32_t> tokens;
  FinishReason end = FinishReason::kLength;  // when the script runs out
};

struct EngineScript {
  std::vector<ScriptedChoice> choices = {{}};  // choice i plays choices[i % size]
  absl::Status submit_status;                  // not OK: Submit fails with it
  int fail_after_steps = -1;                   // >= 0: OnDone(fail_status) after that many steps
  absl::Status fail_status = absl::UnavailableError("worker 1 failed");
  bool hang = false;  // after the scripted tokens, wait for Cancel instead of ending the choices
  std::chrono::milliseconds step_delay{1};
  int cached_tokens = 0;  // OnCachedTokens' count
};

// The logprob FakeEngine reports for `token` at position `position` (of the prompt, or of a choice's output):
// logprob -(position + 1) / 8, rank 1, and `top` alternatives: the token itself, then token + 1, + 2, ...
// each an eighth less likely.
inline TokenLogprob FakeLogprob(int32_t token, int position, int top) {
  TokenLogprob lp;
  lp.token = token;
  lp.logprob = -static_cast<float>(position + 1) / 8;
  lp.rank = 1;
  for (int k = 0; k < top; ++k) lp.top.emplace_back(token + k, lp.logprob - static_cast<float>(k) / 8);
  return lp;
}

// A script that plays `choices` to the end.
inline EngineScript ScriptOf(std::vector<ScriptedChoice> choices) {
  EngineScript script;
  script.choices = std::move(choices);
  return script;
}

class FakeEngine final : public Engine {
 public:
  ~FakeEngine() override {
    std::vector<std::thread> threads;
    {
      absl::MutexLock lock(&mu_);
      shutting_down_ = true;
      threads.swap(threads_);
    }
    for (std::thread& t : threads) t.join();
  }

  void SetScript(EngineScript script) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    script_ = std::move(script);
  }
  void set_ready(bool ready) { ready_ = ready; }

  absl::Status Submit(GenerationRequest request, std::shared_ptr<GenerationObserver> observer) override
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    requests_.push_back(request);
    if (!script_.submit_status.ok()) return script_.submit_status;
    if (running_.contains(request.id))
      return absl::AlreadyExistsError(Cat("request ", request.id, " is running"));
    running_[request.id] = false;
    threads_.emplace_back([this, request = std::move(request), observer, script = script_] {
      Play(request, *observer, script);
    });
    return absl::OkStatus();
  }

  absl::Status Cancel(const std::string& request_id) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    cancels_.push_back(request_id);
    auto it = running_.find(request_id);
    if (it == running_.end()) return absl::NotFoundError(Cat("no request ", request_id));
    it->second = true;
    return absl::OkStatus();
  }

  bool ready() const override { return ready_; }

  std::vector<GenerationRequest> requests() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  // Whether Cancel(request_id) was called within `timeout`.
  bool WaitForCancel(const std::string& request_id, std::chrono::milliseconds timeout)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto cancelled = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return std::find(cancels_.begin(), cancels_.end(), request_id) != cancels_.end();
    };
    return mu_.AwaitWithTimeout(absl::Condition(&cancelled), absl::FromChrono(timeout));
  }
  // Whether the request has stopped running (OnDone sent) within `timeout`.
  bool WaitForDone(const std::string& request_id, std::chrono::milliseconds timeout)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !running_.contains(request_id); };
    return mu_.AwaitWithTimeout(absl::Condition(&done), absl::FromChrono(timeout));
  }
  // Whether `request_id` is queued or running.
  bool Running(const std::string& request_id) const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return running_.contains(request_id);
  }

 private:
  // Observers are called without mu_ held, as the real engine does.
  // As the real scheduler, the id is free again before OnDone wakes the caller (who may reuse it at once).
  void Finish(const std::string& id, GenerationObserver& observer, const absl::Status& status)
      ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      running_.erase(id);
    }
    observer.OnDone(status);
  }

  bool Cancelled(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return running_[id] || shutting_down_;
  }

  void Play(const GenerationRequest& request, GenerationObserver& observer, const EngineScript& script)
      ABSL_LOCKS_EXCLUDED(mu_) {
    std::vector<bool> ended(request.n, false);
    observer.OnCachedTokens(script.cached_tokens);
    if (request.sampling.prompt_logprobs) {
      std::vector<TokenLogprob> entries;
      for (size_t k = 1; k < request.prompt.size(); ++k) {
        entries.push_back(FakeLogprob(request.prompt[k], static_cast<int>(k), request.sampling.top_logprobs));
      }
      observer.OnPromptLogprobs(entries);
    }
    for (int step = 0;; ++step) {
      if (Cancelled(request.id)) return Finish(request.id, observer, absl::CancelledError("cancelled"));
      if (step == script.fail_after_steps) return Finish(request.id, observer, script.fail_status);
      bool emitted = false;
      for (int i = 0; i < request.n; ++i) {
        if (ended[i]) continue;
        const ScriptedChoice& choice = script.choices[i % script.choices.size()];
        if (step >= static_cast<int>(choice.tokens.size())) {
          if (script.hang) continue;
          observer.OnChoiceEnd(i, choice.end);
          ended[i] = true;
          continue;
        }
        emitted = true;
        const int32_t token = choice.tokens[step];
        const bool stop_id = std::find(request.stop_token_ids.begin(), request.stop_token_ids.end(), token) !=
                             request.stop_token_ids.end();
        if (request.sampling.logprobs) {
          observer.OnLogprobs(i, FakeLogprob(token, step, request.sampling.top_logprobs));
        }
        const bool stop_now = observer.OnToken(i, token);
        if (stop_id || stop_now || step + 1 == request.max_tokens) {
          observer.OnChoiceEnd(i, stop_id || stop_now ? FinishReason::kStop : FinishReason::kLength);
          ended[i] = true;
        }
      }
      if (std::all_of(ended.begin(), ended.end(), [](bool e) { return e; })) {
        return Finish(request.id, observer, absl::OkStatus());
      }
      if (!emitted) {  // hanging: nothing more until Cancel
        absl::MutexLock lock(&mu_);
        auto cancelled = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          auto it = running_.find(request.id);
          return (it != running_.end() && it->second) || shutting_down_;
        };
        mu_.Await(absl::Condition(&cancelled));
        continue;
      }
      std::this_thread::sleep_for(script.step_delay);
    }
  }

  mutable absl::Mutex mu_;
  EngineScript script_ ABSL_GUARDED_BY(mu_);
  std::vector<GenerationRequest> requests_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> cancels_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, bool> running_ ABSL_GUARDED_BY(mu_);  // id -> cancelled
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> ready_{true};
};

}  // namespace tessera::testing
