#include "coordinator/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>

#include "coordinator/metrics.h"
#include "core/check.h"
#include "core/str_cat.h"
#include "tessera/control/v1/control.pb.h"

namespace tessera {
namespace {

KvBlockPoolConfig PoolConfig(const SchedulerOptions& options) {
  KvBlockPoolConfig config;
  config.num_blocks = options.num_kv_blocks;
  config.block_size = options.block_size;
  config.prefix_caching = options.enable_prefix_caching ? PrefixCaching::kEnabled : PrefixCaching::kDisabled;
  return config;
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Scheduler::Scheduler(const SchedulerOptions& options, StepSink& sink, EngineMetrics* metrics)
    : options_(options),
      sink_(sink),
      metrics_(metrics),
      blocks_(PoolConfig(options)),
      step_(std::make_unique<control::v1::Step>()) {}

Scheduler::~Scheduler() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    FailLocked(absl::UnavailableError("the server is shutting down"));
  }
  while (true) {
    Pump();  // delivers what is queued, unless another thread is pumping
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &Scheduler::NotPumping));
    if (events_.empty()) return;
  }
}

bool Scheduler::ready() const {
  absl::MutexLock lock(&mu_);
  return ready_ && failure_.ok() && !stopping_ && !draining_ && !suspended_;
}

void Scheduler::Suspend() {
  absl::MutexLock lock(&mu_);
  SuspendLocked();
}

void Scheduler::SuspendLocked() {
  if (!failure_.ok() || stopping_) return;
  suspended_ = true;
  first_live_step_ = next_step_id_;
  for (auto& [id, flight] : in_flight_) {
    for (Seq* seq : flight.scheduled) seq->in_flight = false;
  }
  in_flight_.clear();
  forget_.clear();  // the workers forget everything
  fork_copies_.clear();
  blocks_ = KvBlockPool(PoolConfig(options_));  // every block free, nothing cached
  for (auto& request : running_) {
    for (auto& seq : request->seqs) {
      seq->blocks = BlockTable();  // their blocks went with the old pool
      seq->on_workers = false;
      seq->num_sent = 0;
      seq->num_computed = 0;
      seq->preempted_at_step = 0;  // free to start again in the next step
      if (seq->done) RetireSeqLocked(*seq);  // its last step's result will not come
    }
  }
}

std::pair<uint64_t, double> Scheduler::OldestStepInFlight() const {
  absl::MutexLock lock(&mu_);
  if (in_flight_.empty()) return {0, 0.0};
  const auto& [id, flight] = *in_flight_.begin();  // ids grow: the first is the oldest
  return {id, Now() - flight.sent_at};
}

void Scheduler::Resume() {
  {
    absl::MutexLock lock(&mu_);
    suspended_ = false;
    failure_ = absl::OkStatus();
    ready_ = options_.num_kv_blocks > 0;
  }
  Pump();
}

void Scheduler::StartDraining() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

int Scheduler::NumUnfinishedLocked() const {
  return static_cast<int>(waiting_.size()) +
         static_cast<int>(std::count_if(running_.begin(), running_.end(),
                                        [](const std::shared_ptr<Request>& r) { return !r->finished; }));
}

bool Scheduler::IdleLocked() const { return NumUnfinishedLocked() == 0 && events_.empty() && !pumping_; }

int Scheduler::WaitIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(this, &Scheduler::IdleLocked), timeout);
  return NumUnfinishedLocked();
}

int Scheduler::Activate(int num_kv_blocks) {
  int max_model_len = 0;
  {
    absl::MutexLock lock(&mu_);
    options_.num_kv_blocks = num_kv_blocks;
    blocks_ = KvBlockPool(PoolConfig(options_));
    const int64_t capacity = int64_t{num_kv_blocks} * options_.block_size;
    if (options_.max_model_len <= 0 || options_.max_model_len > capacity) {
      options_.max_model_len = static_cast<int>(std::min<int64_t>(capacity, std::numeric_limits<int>::max()));
    }
    max_model_len = options_.max_model_len;
    ready_ = failure_.ok();
  }
  Pump();
  return max_model_len;
}

Scheduler::Stats Scheduler::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

int Scheduler::num_free_blocks() const {
  absl::MutexLock lock(&mu_);
  return blocks_.num_free();
}

int Scheduler::num_blocks() const {
  absl::MutexLock lock(&mu_);
  return blocks_.num_blocks();
}

int Scheduler::max_model_len() const {
  absl::MutexLock lock(&mu_);
  return options_.max_model_len;
}

bool Scheduler::RanksBefore(const Seq& a, const Seq& b) {
  const Request& ra = *a.request;
  const Request& rb = *b.request;
  if (ra.params.priority != rb.params.priority) return ra.params.priority < rb.params.priority;
  if (ra.order != rb.order) return ra.order < rb.order;
  return a.index < b.index;
}

absl::Status Scheduler::Submit(GenerationRequest request, std::shared_ptr<GenerationObserver> observer) {
  std::vector<GenerationRequest> requests;
  requests.push_back(std::move(request));
  std::vector<std::shared_ptr<GenerationObserver>> observers;
  observers.push_back(std::move(observer));
  return SubmitBatch(std::move(requests), std::move(observers));
}

absl::Status Scheduler::SubmitBatch(std::vector<GenerationRequest> requests,
                                    std::vector<std::shared_ptr<GenerationObserver>> observers) {
  TESSERA_CHECK(requests.size() == observers.size());
  {
    absl::MutexLock lock(&mu_);
    if (!failure_.ok()) return absl::UnavailableError(failure_.message());
    if (stopping_) return absl::UnavailableError("the server is shutting down");
    if (draining_) {
      return absl::UnavailableError(
          "the server is draining before it stops: send the request to another replica");
    }
    if (!ready_) return absl::UnavailableError("not serving yet: the workers are still loading the model");
    for (size_t i = 0; i < requests.size(); ++i) {
      GenerationRequest& request = requests[i];
      const bool repeated = std::any_of(requests.begin(), requests.begin() + static_cast<std::ptrdiff_t>(i),
                                        [&](const GenerationRequest& r) { return r.id == request.id; });
      if (by_id_.count(request.id) > 0 || repeated) {
        return absl::AlreadyExistsError(Cat("request_id \"", request.id, "\" is already running"));
      }
      const int64_t prompt = static_cast<int64_t>(request.prompt.size());
      const int limit = options_.max_model_len;
      if (prompt + request.max_tokens > limit) {
        if (request.max_tokens_is_default && prompt < limit) {
          request.max_tokens = static_cast<int>(limit - prompt);  // the rest of what the cache holds
        } else {
          return absl::InvalidArgumentError(Cat("the prompt (", prompt, " tokens) + max_tokens (",
                                                request.max_tokens, ") = ", prompt + request.max_tokens,
                                                " tokens exceeds max_model_len=", limit,
                                                prompt >= limit ? " (the prompt alone is too long)" : ""));
        }
      }
      if (request.n > options_.max_num_seqs) {
        return absl::InvalidArgumentError(
            Cat("n=", request.n, " exceeds the batch size max_num_seqs=", options_.max_num_seqs));
      }
    }
    if (waiting_.size() + requests.size() > static_cast<size_t>(options_.max_queued_requests)) {
      return absl::ResourceExhaustedError(
          Cat("the queue is full: ", waiting_.size(), " requests are waiting",
              requests.size() > 1 ? Cat(" and ", requests.size(), " more came together") : "",
              " (max_queued_requests=", options_.max_queued_requests, ")"));
    }
    const double arrival = Now();
    for (size_t i = 0; i < requests.size(); ++i) {
      auto owned = std::make_shared<Request>();
      owned->params = std::move(requests[i]);
      owned->observer = std::move(observers[i]);
      owned->arrival = arrival;
      owned->order = next_order_++;
      num_waiting_seqs_ += owned->params.n;
      by_id_[owned->params.id] = owned.get();
      const WaitingKey key{owned->params.priority, owned->order};
      waiting_arrivals_.emplace_back(arrival, key);
      waiting_.emplace(key, std::move(owned));
    }
  }
  Pump();
  return absl::OkStatus();
}

absl::Status Scheduler::Cancel(const std::string& request_id) {
  std::shared_ptr<Request> dropped;  // released after the lock
  {
    absl::MutexLock lock(&mu_);
    auto it = by_id_.find(request_id);
    if (it == by_id_.end()) return absl::NotFoundError(Cat("no request \"", request_id, "\" is running"));
    Request& request = *it->second;
    const bool waiting = request.admitted == 0;
    FinishRequestLocked(request, absl::CancelledError(Cat("request \"", request_id, "\" was cancelled")));
    if (waiting) {
      auto entry = waiting_.find({request.params.priority, request.order});
      dropped = std::move(entry->second);
      waiting_.erase(entry);
      num_waiting_seqs_ -= request.params.n;
    } else {
      for (auto& seq : request.seqs) {
        if (!seq->done) {
          seq->done = true;
          --request.choices_left;
          if (!seq->in_flight) RetireSeqLocked(*seq);
        }
      }
    }
  }
  Pump();
  return absl::OkStatus();
}

void Scheduler::OnStepResult(const control::v1::StepResult& result) {
  {
    absl::MutexLock lock(&mu_);
    ApplyStepResultLocked(result);
  }
  Pump();
}

namespace {

TokenLogprob FromProto(const control::v1::TokenLogprobs& p) {
  TokenLogprob t;
  t.token = p.token();
  t.logprob = p.logprob();
  t.rank = p.rank();
  const int n = std::min(p.top_ids_size(), p.top_logprobs_size());
  t.top.reserve(n);
  for (int i = 0; i < n; ++i) t.top.emplace_back(p.top_ids(i), p.top_logprobs(i));
  return t;
}

}  // namespace

void Scheduler::ApplyStepResultLocked(const control::v1::StepResult& result) {
  const uint64_t step_id = result.step_id();
  if (step_id < first_live_step_ || suspended_) return;  // a step of a group that has since been lost
  auto it = in_flight_.find(step_id);
  if (it == in_flight_.end()) {
    if (failure_.ok())
      FailLocked(absl::InternalError(Cat("the output rank answered unknown step ", step_id)));
    return;
  }
  InFlight step = std::move(it->second);
  in_flight_.erase(it);
  if (static_cast<size_t>(result.tokens_size()) != step.sampled.size()) {
    FailLocked(
        absl::InternalError(Cat("the output rank answered step ", step_id, " with ", result.tokens_size(),
                                " tokens for ", step.sampled.size(), " sampled sequences")));
    return;
  }
  // The index in step.sampled of a sequence id. The worker answers rows and logprobs in step order, so each
  // search starts after the previous match (linear over a step), wrapping around for any other order.
  size_t cursor = 0;
  auto sampled_index = [&](uint64_t seq_id) {
    const size_t n = step.sampled.size();
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (cursor + k) % n;
      if (step.sampled[i]->id == seq_id) {
        cursor = i + 1;
        return static_cast<int>(i);
      }
    }
    return -1;
  };
  // The logits rows and logprobs by sampled sequence (left empty when the result has none: the common case).
  std::vector<const control::v1::LogitsRow*> rows;
  if (result.logits_size() > 0) rows.assign(step.sampled.size(), nullptr);
  for (const control::v1::LogitsRow& row : result.logits()) {
    const int i = sampled_index(row.seq_id());
    if (i < 0 || row.values().size() % sizeof(float) != 0) {
      FailLocked(absl::InternalError(
          Cat("the output rank answered step ", step_id, " with a logits row for sequence ", row.seq_id(),
              i < 0 ? " that it did not sample" : Cat(" of ", row.values().size(), " bytes (not float32 values)"))));
      return;
    }
    rows[i] = &row;
  }
  std::vector<const control::v1::TokenLogprobs*> logprobs;
  if (result.logprobs_size() > 0) logprobs.assign(step.sampled.size(), nullptr);
  cursor = 0;
  for (const control::v1::TokenLogprobs& entry : result.logprobs()) {
    const int i = sampled_index(entry.seq_id());
    if (i < 0 || entry.token() != result.tokens(i)) {
      FailLocked(absl::InternalError(Cat("the output rank answered step ", step_id,
                                         " with logprobs for sequence ", entry.seq_id(),
                                         i < 0 ? " that it did not sample" : " that do not match its token")));
      return;
    }
    logprobs[i] = &entry;
  }
  const double now = Now();
  ++stats_.steps;
  if (result.graph()) ++stats_.graph_steps;
  stats_.step_seconds += now - step.sent_at;
  stats_.worker_seconds += result.worker_seconds();
  stats_.result_bytes += static_cast<int64_t>(result.ByteSizeLong());
  if (metrics_ != nullptr) {
    metrics_->worker_step_seconds.Observe(result.worker_seconds());
    metrics_->control_plane_seconds.Observe(std::max(0.0, now - step.sent_at - result.worker_seconds()));
    metrics_->iteration_tokens_total.Observe(step.num_tokens);
    if (step.num_prompt_tokens > 0) metrics_->prompt_tokens_total.Add(step.num_prompt_tokens);
  }
  // Prompt logprobs: collected per request until its prompt is computed, then delivered once.
  for (const control::v1::PromptLogprobs& entry : result.prompt_logprobs()) {
    auto found = std::find_if(step.scheduled.begin(), step.scheduled.end(),
                              [&](const Seq* seq) { return seq->id == entry.seq_id(); });
    if (found == step.scheduled.end()) continue;
    Request& request = *(*found)->request;
    if (request.prompt_logprobs_sent || (*found)->index != 0) continue;
    // In position order from 1; a prefill repeated after a preemption sends positions already held.
    for (int k = 0; k < entry.entries_size(); ++k) {
      if (entry.first_position() + k == static_cast<int>(request.prompt_logprobs.size()) + 1) {
        request.prompt_logprobs.push_back(FromProto(entry.entries(k)));
      }
    }
  }
  std::vector<Request*> forks;
  for (size_t i = 0; i < step.scheduled.size(); ++i) {
    Seq& seq = *step.scheduled[i];
    seq.in_flight = false;
    if (seq.retired) continue;
    seq.num_computed += step.chunk[i];
    blocks_.Commit(seq.blocks, seq.tokens.data(), seq.num_computed);
    if (seq.holds_last && !seq.done && seq.num_computed == seq.num_prompt - 1) forks.push_back(seq.request);
  }
  int num_generated = 0;
  for (size_t i = 0; i < step.sampled.size(); ++i) {
    Seq& seq = *step.sampled[i];
    if (seq.done) continue;
    Request& request = *seq.request;
    const int32_t token = result.tokens(static_cast<int>(i));
    seq.tokens.push_back(token);
    ++num_generated;
    if (!request.prompt_logprobs_sent && request.params.sampling.prompt_logprobs) {
      request.prompt_logprobs_sent = true;
      Event event{.kind = Event::Kind::kPromptLogprobs, .request = request.shared_from_this()};
      event.logprobs = std::move(request.prompt_logprobs);
      events_.push_back(std::move(event));
    }
    if (seq.first_token_at == 0) {
      seq.first_token_at = now;
      if (metrics_ != nullptr) {
        metrics_->time_to_first_token_seconds.Observe(now - request.arrival);
        metrics_->request_prefill_time_seconds.Observe(now - request.admitted);
      }
    } else if (metrics_ != nullptr) {
      metrics_->inter_token_latency_seconds.Observe(now - seq.last_token_at);
    }
    seq.last_token_at = now;
    if (!rows.empty() && rows[i] != nullptr) {
      Event event{.kind = Event::Kind::kLogits, .request = request.shared_from_this(), .index = seq.index};
      const std::string& bytes = rows[i]->values();
      event.logits.resize(bytes.size() / sizeof(float));
      std::memcpy(event.logits.data(), bytes.data(), bytes.size());
      events_.push_back(std::move(event));
    }
    if (!logprobs.empty() && logprobs[i] != nullptr) {
      Event event{.kind = Event::Kind::kLogprobs, .request = request.shared_from_this(), .index = seq.index};
      event.logprobs.push_back(FromProto(*logprobs[i]));
      events_.push_back(std::move(event));
    }
    events_.push_back({.kind = Event::Kind::kToken,
                       .request = request.shared_from_this(),
                       .index = seq.index,
                       .token = token});
    // A stop string is the observer's answer to this token: DeliverEventsLocked applies it (and turns a
    // kLength end queued here into kStop).
    const std::vector<int32_t>& stop_ids = request.params.stop_token_ids;
    const int generated = static_cast<int>(seq.tokens.size()) - seq.num_prompt;
    const bool stop_id = generated > request.params.sampling.min_tokens &&
                         std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end();
    if (stop_id) {
      EndChoiceLocked(seq, FinishReason::kStop);
    } else if (generated >= request.params.max_tokens) {
      EndChoiceLocked(seq, FinishReason::kLength);
    }
  }
  if (metrics_ != nullptr && num_generated > 0) metrics_->generation_tokens_total.Add(num_generated);
  for (Request* request : forks) {
    if (!request->finished) ForkLocked(*request);
  }
  for (Seq* seq : step.scheduled) {
    if (seq->done && !seq->retired) RetireSeqLocked(*seq);
  }
}

void Scheduler::ForkLocked(Request& request) {
  Seq& parent = *request.seqs[0];
  parent.holds_last = false;
  const int n = request.params.n;
  for (int i = 1; i < n; ++i) {
    auto seq = std::make_unique<Seq>();
    seq->request = &request;
    seq->index = i;
    seq->tokens = parent.tokens;
    seq->num_prompt = parent.num_prompt;
    // Shares the parent's blocks; the partial last block, which both will write, is copied for the child now
    // (the copy goes out with the next step, before any sequence of it runs), so the parent's table, which
    // the workers hold, never changes under it. Without a free block the child starts on its own later (the
    // prefix cache then serves its full blocks).
    blocks_.Fork(parent.blocks, seq->blocks);
    new_ids_.clear();
    if (blocks_.Grow(seq->blocks, seq->num_prompt, new_ids_, fork_copies_)) {
      seq->num_sent = seq->num_computed = parent.num_computed;
    } else {
      blocks_.Free(seq->blocks);
    }
    request.seqs.push_back(std::move(seq));
  }
}

void Scheduler::Fail(const absl::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    FailLocked(status);
  }
  Pump();  // delivers the OnDone events
}

void Scheduler::FailLocked(const absl::Status& status) {
  if (failure_.ok()) failure_ = status;
  ready_ = false;
  first_live_step_ = next_step_id_;  // a late result of the failed group's steps is ignored, also after Resume
  const absl::Status unavailable = absl::UnavailableError(status.message());
  for (auto& [key, request] : waiting_) FinishRequestLocked(*request, unavailable);
  for (auto& request : running_) FinishRequestLocked(*request, unavailable);
  waiting_.clear();  // the queued OnDone events hold the requests until they are delivered
  waiting_arrivals_.clear();
  running_.clear();
  by_id_.clear();
  in_flight_.clear();
  forget_.clear();
  fork_copies_.clear();
  num_running_seqs_ = 0;
  num_waiting_seqs_ = 0;
  blocks_ = KvBlockPool(PoolConfig(options_));
}

void Scheduler::EndChoiceLocked(Seq& seq, FinishReason reason) {
  seq.done = true;
  Request& request = *seq.request;
  if (metrics_ != nullptr && seq.first_token_at > 0) {  // the choice ended at its last token
    metrics_->e2e_request_latency_seconds.Observe(seq.last_token_at - request.arrival);
    metrics_->request_decode_time_seconds.Observe(seq.last_token_at - seq.first_token_at);
  }
  if (!request.finished) {
    events_.push_back({.kind = Event::Kind::kChoiceEnd,
                       .request = request.shared_from_this(),
                       .index = seq.index,
                       .reason = reason});
  }
  if (--request.choices_left == 0) FinishRequestLocked(request, absl::OkStatus());
  if (!seq.in_flight) RetireSeqLocked(seq);
}

void Scheduler::FinishRequestLocked(Request& request, const absl::Status& status) {
  if (request.finished) return;
  request.finished = true;
  // The choices still going end here (those that ended are counted when their end is delivered).
  const int unforked = request.admitted > 0 ? request.params.n - static_cast<int>(request.seqs.size()) : 0;
  if (metrics_ != nullptr && !status.ok()) {
    int open = request.admitted > 0 ? unforked : request.params.n;
    open += static_cast<int>(std::count_if(request.seqs.begin(), request.seqs.end(),
                                           [](const std::unique_ptr<Seq>& seq) { return !seq->done; }));
    const FinishLabel label = absl::IsCancelled(status) ? FinishLabel::kAbort : FinishLabel::kError;
    if (open > 0) metrics_->request_success(label).Add(open);
  }
  num_running_seqs_ -= unforked;  // choices that never became sequences (n > 1 before the fork)
  events_.push_back({.kind = Event::Kind::kDone, .request = request.shared_from_this(), .status = status});
  auto it = by_id_.find(request.params.id);
  if (it != by_id_.end() && it->second == &request) by_id_.erase(it);  // the id may be used again
}

void Scheduler::ReleaseSeqLocked(Seq& seq) {
  if (seq.on_workers) forget_.push_back(seq.id);
  seq.on_workers = false;
  blocks_.Free(seq.blocks);
  seq.num_sent = 0;
  seq.num_computed = 0;
}

void Scheduler::RetireSeqLocked(Seq& seq) {
  if (seq.retired) return;
  ReleaseSeqLocked(seq);
  seq.retired = true;
  --num_running_seqs_;
}

bool Scheduler::PreemptOneLocked(const Seq& keep) {
  for (auto r = running_.rbegin(); r != running_.rend(); ++r) {
    Request& request = **r;
    for (auto s = request.seqs.rbegin(); s != request.seqs.rend(); ++s) {
      Seq& seq = **s;
      if (seq.done || seq.retired || seq.in_flight || seq.blocks.block_ids.empty()) continue;
      if (&seq == &keep || !RanksBefore(keep, seq)) return false;  // everything further ranks before `keep`
      ReleaseSeqLocked(seq);
      seq.preempted_at_step = next_step_id_;
      ++stats_.preemptions;
      if (metrics_ != nullptr) metrics_->num_preemptions_total.Add();
      return true;
    }
  }
  return false;
}

Scheduler::Request* Scheduler::AdmitOneLocked(int budget) {
  if (waiting_.empty()) return nullptr;
  auto best = waiting_.begin();
  Request& request = *best->second;
  const int n = request.params.n;
  if (num_running_seqs_ + n > options_.max_num_seqs) return nullptr;
  // Room for its first chunk (a cached prefix only lowers what it takes).
  const int64_t first = std::min<int64_t>(static_cast<int64_t>(request.params.prompt.size()), budget);
  if (blocks_.BlocksFor(first) > blocks_.num_free()) return nullptr;
  request.admitted = Now();
  for (int i = 0; metrics_ != nullptr && i < n; ++i) {
    metrics_->request_queue_time_seconds.Observe(request.admitted - request.arrival);
  }
  // n > 1: one sequence prefills the prompt but its last token, then forks (ForkLocked).
  const bool fork = n > 1 && request.params.prompt.size() > 1;
  for (int i = 0; i < (fork ? 1 : n); ++i) {
    auto seq = std::make_unique<Seq>();
    seq->request = &request;
    seq->index = i;
    seq->tokens = request.params.prompt;
    seq->num_prompt = static_cast<int>(request.params.prompt.size());
    seq->holds_last = fork;
    request.seqs.push_back(std::move(seq));
  }
  request.choices_left = n;
  num_running_seqs_ += n;
  num_waiting_seqs_ -= n;
  // running_ stays ordered by priority, then admission.
  auto at = std::upper_bound(running_.begin(), running_.end(), request.params.priority,
                             [](int priority, const std::shared_ptr<Request>& r) {
                               return priority < r->params.priority;
                             });
  running_.insert(at, std::move(best->second));
  waiting_.erase(best);
  return &request;
}

void Scheduler::ExpireLocked() {
  if (options_.max_queue_time_seconds <= 0) return;
  const double now = Now();
  while (!waiting_arrivals_.empty()) {
    const auto [arrival, key] = waiting_arrivals_.front();
    auto it = waiting_.find(key);
    if (it == waiting_.end()) {  // admitted or cancelled
      waiting_arrivals_.pop_front();
      continue;
    }
    if (now - arrival <= options_.max_queue_time_seconds) return;
    waiting_arrivals_.pop_front();
    Request& request = *it->second;
    FinishRequestLocked(request, absl::ResourceExhaustedError(Cat(
                                     "request \"", request.params.id, "\" waited ", now - arrival,
                                     " s in the queue without being scheduled (max_queue_time=",
                                     options_.max_queue_time_seconds, " s)")));
    num_waiting_seqs_ -= request.params.n;
    waiting_.erase(it);  // its queued OnDone holds it
  }
}

int Scheduler::PendingLocked(const Seq& seq) const {
  const int target = seq.holds_last ? seq.num_prompt - 1 : static_cast<int>(seq.tokens.size());
  return target - seq.num_sent;
}

int Scheduler::ScheduleSeqLocked(Seq& seq, int budget, bool may_preempt, control::v1::Step& step,
                                 InFlight& flight) {
  Request& request = *seq.request;
  const bool start = !seq.on_workers;
  new_ids_.clear();
  int chunk = 0;
  if (start && seq.num_sent == 0) {
    // The longest cached prefix (never the last token: its logits are needed); a prompt whose logprobs are
    // asked for is computed whole.
    const int target = seq.holds_last ? seq.num_prompt - 1 : static_cast<int>(seq.tokens.size());
    match_.block_ids.clear();
    match_.keys.clear();
    match_.num_tokens = match_.num_queried = 0;
    if (!request.params.sampling.prompt_logprobs) blocks_.Lookup(seq.tokens.data(), target, match_);
    const int cached = static_cast<int>(match_.num_tokens);
    chunk = std::min(target - cached, budget);
    if (request.params.sampling.prompt_logprobs && seq.index == 0) chunk = std::min(chunk, 1);  // see below
    if (chunk <= 0 || !blocks_.Allocate(seq.blocks, match_, cached + chunk, new_ids_)) return 0;
    seq.num_sent = seq.num_computed = cached;
    stats_.prefix_queries += match_.num_queried;
    stats_.prefix_hits += cached;
    if (metrics_ != nullptr) {
      metrics_->prefix_cache_queries_total.Add(static_cast<double>(match_.num_queried));
      metrics_->prefix_cache_hits_total.Add(cached);
    }
    if (!request.reported_cached && seq.index == 0) {
      request.reported_cached = true;
      events_.push_back({.kind = Event::Kind::kCached, .request = request.shared_from_this(), .token = cached});
    }
  } else {
    chunk = std::min(PendingLocked(seq), budget);
    // Prompt logprobs come from the logits of each prompt position: the workers return one row per sequence
    // and step, so such a prompt is computed one token a step.
    if (request.params.sampling.prompt_logprobs && seq.index == 0 && seq.num_sent < seq.num_prompt) chunk = 1;
    if (chunk <= 0) return 0;
    const size_t copies = copies_.size();
    while (!blocks_.Grow(seq.blocks, seq.num_sent + chunk, new_ids_, copies_)) {
      if (start || !may_preempt || !PreemptOneLocked(seq)) return 0;
    }
    // Only a fork shares a partial block, and ForkLocked gives the child its copy at once: a sequence on the
    // workers never has its table's blocks swapped.
    TESSERA_CHECK(start || copies_.size() == copies);
  }
  if (start) {
    seq.id = next_seq_id_++;
    seq.on_workers = true;
    control::v1::NewSequence* added = step.add_new_sequences();
    added->set_seq_id(seq.id);
    added->set_num_prompt_tokens(seq.num_prompt);
    added->mutable_cached_tokens()->Add(seq.tokens.begin(), seq.tokens.begin() + seq.num_sent);
    const SamplingParams& p = request.params.sampling;
    control::v1::SamplingParams* sp = added->mutable_sampling();
    sp->set_temperature(p.temperature);
    sp->set_top_k(p.top_k);
    sp->set_top_p(p.top_p);
    sp->set_seed(p.seed + static_cast<uint64_t>(seq.index));
    sp->set_min_p(p.min_p);
    sp->set_repetition_penalty(p.repetition_penalty);
    sp->set_presence_penalty(p.presence_penalty);
    sp->set_frequency_penalty(p.frequency_penalty);
    for (const auto& [token, bias] : p.logit_bias) (*sp->mutable_logit_bias())[token] = bias;
    sp->set_min_tokens(p.min_tokens);
    if (p.min_tokens > 0) {
      sp->mutable_stop_token_ids()->Add(request.params.stop_token_ids.begin(),
                                        request.params.stop_token_ids.end());
    }
    sp->set_logprobs(p.logprobs);
    sp->set_top_logprobs(p.top_logprobs);
    sp->set_prompt_logprobs(p.prompt_logprobs && seq.index == 0);
    if (p.prompt_logprobs && seq.index == 0) {
      added->mutable_prompt_tokens()->Add(seq.tokens.begin(), seq.tokens.begin() + seq.num_prompt);
    }
    added->set_return_logits(request.params.return_logits);
  }
  control::v1::ScheduledSequence* entry = step.add_scheduled();
  entry->set_seq_id(seq.id);
  entry->mutable_tokens()->Add(seq.tokens.begin() + seq.num_sent, seq.tokens.begin() + seq.num_sent + chunk);
  if (start) {  // the workers learn the whole table, the cached or shared blocks first
    entry->mutable_new_block_ids()->Add(seq.blocks.block_ids.begin(), seq.blocks.block_ids.end());
  } else {
    entry->mutable_new_block_ids()->Add(new_ids_.begin(), new_ids_.end());
  }
  flight.num_tokens += chunk;
  flight.num_prompt_tokens += std::max(0, std::min(seq.num_sent + chunk, seq.num_prompt) - seq.num_sent);
  seq.num_sent += chunk;
  const bool sample = !seq.holds_last && seq.num_sent == static_cast<int>(seq.tokens.size());
  entry->set_sample(sample);
  seq.in_flight = true;
  flight.scheduled.push_back(&seq);
  flight.chunk.push_back(chunk);
  if (sample) flight.sampled.push_back(&seq);
  return chunk;
}

bool Scheduler::FormStepLocked(std::string& serialized, Dropped& dropped) {
  if (!ready_ || !failure_.ok() || stopping_ || suspended_) return false;
  const double start = Now();
  // Drop requests that are over and whose sequences are all retired.
  auto over = std::stable_partition(running_.begin(), running_.end(), [](const std::shared_ptr<Request>& r) {
    if (!r->finished) return true;
    return std::any_of(r->seqs.begin(), r->seqs.end(), [](const auto& seq) { return !seq->retired; });
  });
  std::move(over, running_.end(), std::back_inserter(dropped));
  running_.erase(over, running_.end());

  int max_seqs = options_.max_num_seqs;
  if (options_.max_steps_in_flight > 1) {
    // Split the batch into micro-batches so that stages overlap: the batch counts the waiting requests that
    // could join it, or the first micro-batches would be too small to ever let them in.
    const int batch = std::min(options_.max_num_seqs, num_running_seqs_ + num_waiting_seqs_);
    max_seqs = std::max(1, (batch + options_.max_steps_in_flight - 1) / options_.max_steps_in_flight);
  }
  int budget = options_.max_num_batched_tokens;
  control::v1::Step& step = *step_;
  step.Clear();  // keeps the entries' memory for this step
  InFlight flight;
  copies_.clear();
  auto full = [&] { return budget == 0 || static_cast<int>(flight.scheduled.size()) == max_seqs; };
  // Running sequences: decodes first, then prompt chunks, then sequences that start or resume (not on the
  // workers: forked, preempted, or admitted earlier without room). Only running ones may preempt.
  enum Pass { kDecode, kPrefill, kStart };
  for (Pass pass : {kDecode, kPrefill, kStart}) {
    for (size_t r = 0; r < running_.size() && !full(); ++r) {
      Request& request = *running_[r];
      for (size_t s = 0; s < request.seqs.size() && !full(); ++s) {
        Seq& seq = *request.seqs[s];
        if (seq.done || seq.retired || seq.in_flight || PendingLocked(seq) <= 0) continue;
        const bool decode = seq.on_workers && !seq.holds_last &&
                            seq.num_sent == static_cast<int>(seq.tokens.size()) - 1 &&
                            seq.num_sent >= seq.num_prompt;
        const Pass kind = !seq.on_workers ? kStart : decode ? kDecode : kPrefill;
        if (kind != pass || (pass == kStart && seq.preempted_at_step == next_step_id_)) continue;
        budget -= ScheduleSeqLocked(seq, budget, pass != kStart, step, flight);
      }
    }
  }
  // New requests, best first, while they fit.
  while (!full()) {
    Request* admitted = AdmitOneLocked(budget);
    if (admitted == nullptr) break;
    for (size_t s = 0; s < admitted->seqs.size() && !full(); ++s) {
      budget -= ScheduleSeqLocked(*admitted->seqs[s], budget, /*may_preempt=*/false, step, flight);
    }
  }
  if (flight.scheduled.empty()) return false;
  const uint64_t step_id = next_step_id_++;
  step.set_step_id(step_id);
  step.mutable_finished()->Add(forget_.begin(), forget_.end());
  forget_.clear();
  for (const std::vector<KvBlockCopy>* list : {&fork_copies_, &copies_}) {
    for (const KvBlockCopy& copy : *list) {
      control::v1::BlockCopy* c = step.add_copies();
      c->set_src(copy.src);
      c->set_dst(copy.dst);
    }
  }
  fork_copies_.clear();
  flight.sent_at = Now();
  stats_.schedule_seconds += flight.sent_at - start;
  in_flight_[step_id] = std::move(flight);
  serialized = step.SerializeAsString();
  stats_.step_bytes += static_cast<int64_t>(serialized.size());
  return true;
}

void Scheduler::DeliverEventsLocked(Dropped& dropped) {
  std::vector<Event>& batch = delivering_;  // only the pumping thread touches it
  batch.swap(events_);  // events_ takes the emptied buffer back
  mu_.Unlock();
  dropped.clear();
  std::vector<std::pair<Request*, int>> stops;  // choices whose OnToken answered true
  auto stopped = [&](Request* request, int index) {
    return std::find(stops.begin(), stops.end(), std::make_pair(request, index)) != stops.end();
  };
  for (Event& event : batch) {
    GenerationObserver& observer = *event.request->observer;
    switch (event.kind) {
      case Event::Kind::kCached:
        observer.OnCachedTokens(event.token);
        break;
      case Event::Kind::kPromptLogprobs:
        observer.OnPromptLogprobs(event.logprobs);
        break;
      case Event::Kind::kLogits:
        observer.OnLogits(event.index, event.logits.data(), static_cast<int64_t>(event.logits.size()));
        break;
      case Event::Kind::kLogprobs:
        observer.OnLogprobs(event.index, event.logprobs.front());
        break;
      case Event::Kind::kToken:
        if (observer.OnToken(event.index, event.token)) stops.emplace_back(event.request.get(), event.index);
        break;
      case Event::Kind::kChoiceEnd:
        // max_tokens was reached by the token that matched a stop string: that is a stop.
        if (event.reason == FinishReason::kLength && stopped(event.request.get(), event.index)) {
          event.reason = FinishReason::kStop;
        }
        if (metrics_ != nullptr) {  // the final reason is known only here
          const bool stop = event.reason == FinishReason::kStop;
          metrics_->request_success(stop ? FinishLabel::kStop : FinishLabel::kLength).Add();
        }
        observer.OnChoiceEnd(event.index, event.reason);
        break;
      case Event::Kind::kDone:
        observer.OnDone(event.status);
        break;
    }
  }
  // The requests the events held are released here, outside the lock, except those with a stopped choice:
  // `dropped` keeps them alive for the loop below (Pump releases them after unlocking).
  for (const auto& [request, index] : stops) dropped.push_back(request->shared_from_this());
  batch.clear();
  mu_.Lock();
  for (const auto& [request, index] : stops) {
    Seq& seq = *request->seqs[index];
    if (!request->finished && !seq.done) EndChoiceLocked(seq, FinishReason::kStop);
  }
}

void Scheduler::Pump() {
  Dropped dropped;  // destroyed after the lock is released
  std::string serialized;
  mu_.Lock();
  if (pumping_) {  // that thread sees this caller's change before it stops
    mu_.Unlock();
    return;
  }
  pumping_ = true;
  while (true) {
    ExpireLocked();
    if (!events_.empty()) {
      // A client woken by these events (a request's end) may read /metrics at once: the gauges first.
      RecordGaugesLocked();
      DeliverEventsLocked(dropped);
      continue;
    }
    if (static_cast<int>(in_flight_.size()) >= options_.max_steps_in_flight ||
        !FormStepLocked(serialized, dropped)) {
      break;  // nothing changed since the lock was last taken: nothing more to do
    }
    mu_.Unlock();
    dropped.clear();
    const double start = Now();
    const absl::Status status = sink_.SendStep(serialized);
    const double sent = Now() - start;
    mu_.Lock();
    stats_.send_seconds += sent;
    if (!status.ok()) {
      // The group broke: with recovery, the coordinator re-forms it and resumes (or fails) this scheduler.
      if (options_.suspend_on_send_failure) {
        SuspendLocked();
      } else {
        FailLocked(status);
      }
    }
  }
  RecordGaugesLocked();
  pumping_ = false;
  mu_.Unlock();
}

void Scheduler::RecordGaugesLocked() {
  if (metrics_ == nullptr) return;
  metrics_->num_requests_running.Set(num_running_seqs_);
  metrics_->num_requests_waiting.Set(num_waiting_seqs_);
  const int num_blocks = blocks_.num_blocks();
  metrics_->kv_cache_usage_perc.Set(
      num_blocks > 0 ? static_cast<double>(num_blocks - blocks_.num_free()) / num_blocks : 0.0);
}

}  // namespace tessera
