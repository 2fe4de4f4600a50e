#include "coordinator/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "coordinator/metrics.h"
#include "core/check.h"
#include "core/str_cat.h"
#include "tessera/control/v1/control.pb.h"

namespace tessera {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Scheduler::Scheduler(const SchedulerOptions& options, StepSink& sink, EngineMetrics* metrics)
    : options_(options), sink_(sink), metrics_(metrics), blocks_(options.num_kv_blocks, options.block_size) {}

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
  return ready_ && failure_.ok() && !stopping_;
}

void Scheduler::Activate(int num_kv_blocks) {
  {
    absl::MutexLock lock(&mu_);
    options_.num_kv_blocks = num_kv_blocks;
    blocks_ = BlockManager(num_kv_blocks, options_.block_size);
    ready_ = failure_.ok();
  }
  Pump();
}

Scheduler::Stats Scheduler::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

int Scheduler::num_free_blocks() const {
  absl::MutexLock lock(&mu_);
  return blocks_.num_free();
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
    if (!ready_) return absl::UnavailableError("not serving yet: the workers are still loading the model");
    for (size_t i = 0; i < requests.size(); ++i) {
      const GenerationRequest& request = requests[i];
      const bool repeated = std::any_of(requests.begin(), requests.begin() + static_cast<std::ptrdiff_t>(i),
                                        [&](const GenerationRequest& r) { return r.id == request.id; });
      if (by_id_.count(request.id) > 0 || repeated) {
        return absl::AlreadyExistsError(Cat("request_id \"", request.id, "\" is already running"));
      }
      const int64_t context = static_cast<int64_t>(request.prompt.size()) + request.max_tokens;
      const int64_t needed = int64_t{request.n} * blocks_.BlocksFor(context);
      if (needed > blocks_.num_blocks()) {
        return absl::InvalidArgumentError(Cat("the request needs ", needed, " KV cache blocks (n=", request.n,
                                              " x (", request.prompt.size(), " prompt + ", request.max_tokens,
                                              " max_tokens) tokens in blocks of ", blocks_.block_size(),
                                              ") but the whole cache has ", blocks_.num_blocks()));
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
      num_waiting_seqs_ += owned->params.n;
      by_id_[owned->params.id] = owned.get();
      waiting_.push_back(std::move(owned));
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
    FinishRequestLocked(request, absl::CancelledError(Cat("request \"", request_id, "\" was cancelled")));
    if (request.seqs.empty()) {  // still waiting
      auto waiting = std::find_if(waiting_.begin(), waiting_.end(),
                                  [&](const std::shared_ptr<Request>& r) { return r.get() == &request; });
      dropped = std::move(*waiting);
      waiting_.erase(waiting);
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

void Scheduler::ApplyStepResultLocked(const control::v1::StepResult& result) {
  const uint64_t step_id = result.step_id();
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
  // The logits rows by sampled sequence.
  std::vector<const control::v1::LogitsRow*> rows(step.sampled.size(), nullptr);
  for (const control::v1::LogitsRow& row : result.logits()) {
    auto sampled = std::find_if(step.sampled.begin(), step.sampled.end(),
                                [&](const Seq* seq) { return seq->id == row.seq_id(); });
    if (sampled == step.sampled.end() || row.values().size() % sizeof(float) != 0) {
      FailLocked(absl::InternalError(Cat(
          "the output rank answered step ", step_id, " with a logits row for sequence ", row.seq_id(),
          sampled == step.sampled.end() ? " that it did not sample"
                                        : Cat(" of ", row.values().size(), " bytes (not float32 values)"))));
      return;
    }
    rows[sampled - step.sampled.begin()] = &row;
  }
  const double now = Now();
  ++stats_.steps;
  if (result.graph()) ++stats_.graph_steps;
  stats_.step_seconds += now - step.sent_at;
  stats_.worker_seconds += result.worker_seconds();
  if (metrics_ != nullptr) {
    metrics_->worker_step_seconds.Observe(result.worker_seconds());
    metrics_->control_plane_seconds.Observe(std::max(0.0, now - step.sent_at - result.worker_seconds()));
    metrics_->iteration_tokens_total.Observe(step.num_tokens);
    if (step.num_prompt_tokens > 0) metrics_->prompt_tokens_total.Add(step.num_prompt_tokens);
  }
  int num_generated = 0;
  for (Seq* seq : step.scheduled) seq->in_flight = false;
  for (size_t i = 0; i < step.sampled.size(); ++i) {
    Seq& seq = *step.sampled[i];
    if (seq.done) continue;
    Request& request = *seq.request;
    const int32_t token = result.tokens(static_cast<int>(i));
    seq.tokens.push_back(token);
    ++num_generated;
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
    if (rows[i] != nullptr) {
      Event logits{.kind = Event::Kind::kLogits, .request = request.shared_from_this(), .index = seq.index};
      const std::string& bytes = rows[i]->values();
      logits.logits.resize(bytes.size() / sizeof(float));
      std::memcpy(logits.logits.data(), bytes.data(), bytes.size());
      events_.push_back(std::move(logits));
    }
    events_.push_back({.kind = Event::Kind::kToken,
                       .request = request.shared_from_this(),
                       .index = seq.index,
                       .token = token});
    // A stop string is the observer's answer to this token: DeliverEventsLocked applies it (and turns a
    // kLength end queued here into kStop).
    const std::vector<int32_t>& stop_ids = request.params.stop_token_ids;
    const bool stop_id = std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end();
    const int generated = static_cast<int>(seq.tokens.size()) - seq.num_prompt;
    if (stop_id) {
      EndChoiceLocked(seq, FinishReason::kStop);
    } else if (generated >= request.params.max_tokens) {
      EndChoiceLocked(seq, FinishReason::kLength);
    }
  }
  if (metrics_ != nullptr && num_generated > 0) metrics_->generation_tokens_total.Add(num_generated);
  for (Seq* seq : step.scheduled) {
    if (seq->done && seq->reserved > 0) RetireSeqLocked(*seq);
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
  const absl::Status unavailable = absl::UnavailableError(status.message());
  for (auto& request : waiting_) FinishRequestLocked(*request, unavailable);
  for (auto& request : running_) FinishRequestLocked(*request, unavailable);
  waiting_.clear();  // the queued OnDone events hold the requests until they are delivered
  running_.clear();
  by_id_.clear();
  in_flight_.clear();
  forget_.clear();
  num_running_seqs_ = 0;
  num_waiting_seqs_ = 0;
  blocks_ = BlockManager(options_.num_kv_blocks, options_.block_size);
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
  if (metrics_ != nullptr && !status.ok()) {
    int open = request.params.n;
    if (!request.seqs.empty()) {
      open = static_cast<int>(std::count_if(request.seqs.begin(), request.seqs.end(),
                                            [](const std::unique_ptr<Seq>& seq) { return !seq->done; }));
    }
    const FinishLabel label = absl::IsCancelled(status) ? FinishLabel::kAbort : FinishLabel::kError;
    if (open > 0) metrics_->request_success(label).Add(open);
  }
  events_.push_back({.kind = Event::Kind::kDone, .request = request.shared_from_this(), .status = status});
  auto it = by_id_.find(request.params.id);
  if (it != by_id_.end() && it->second == &request) by_id_.erase(it);  // the id may be used again
}

void Scheduler::RetireSeqLocked(Seq& seq) {
  if (seq.num_sent > 0) forget_.push_back(seq.id);
  blocks_.Release(seq.blocks, seq.reserved);
  seq.reserved = 0;
  --num_running_seqs_;
}

void Scheduler::AdmitLocked() {
  while (!waiting_.empty()) {
    Request& request = *waiting_.front();
    const int n = request.params.n;
    const int per_seq =
        blocks_.BlocksFor(static_cast<int64_t>(request.params.prompt.size()) + request.params.max_tokens);
    if (num_running_seqs_ + n > options_.max_num_seqs || !blocks_.TryReserve(n * per_seq)) return;
    request.admitted = Now();
    for (int i = 0; metrics_ != nullptr && i < n; ++i) {
      metrics_->request_queue_time_seconds.Observe(request.admitted - request.arrival);
    }
    for (int i = 0; i < n; ++i) {
      auto seq = std::make_unique<Seq>();
      seq->id = next_seq_id_++;
      seq->request = &request;
      seq->index = i;
      seq->tokens = request.params.prompt;
      seq->num_prompt = static_cast<int>(request.params.prompt.size());
      seq->reserved = per_seq;
      request.seqs.push_back(std::move(seq));
    }
    request.choices_left = n;
    num_running_seqs_ += n;
    num_waiting_seqs_ -= n;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

bool Scheduler::FormStepLocked(std::string& serialized, Dropped& dropped) {
  if (!ready_ || !failure_.ok() || stopping_) return false;
  // Drop requests that are over and whose sequences are all retired.
  auto over = std::stable_partition(running_.begin(), running_.end(), [](const std::shared_ptr<Request>& r) {
    if (!r->finished) return true;
    return std::any_of(r->seqs.begin(), r->seqs.end(), [](const auto& seq) { return seq->reserved > 0; });
  });
  std::move(over, running_.end(), std::back_inserter(dropped));
  running_.erase(over, running_.end());

  int max_seqs = options_.max_num_seqs;
  if (options_.max_steps_in_flight > 1) {  // split the batch into micro-batches so that stages overlap
    max_seqs =
        std::max(1, (num_running_seqs_ + options_.max_steps_in_flight - 1) / options_.max_steps_in_flight);
  }
  int budget = options_.max_num_batched_tokens;
  control::v1::Step step;
  InFlight flight;
  for (auto& request : running_) {
    for (auto& owned : request->seqs) {
      Seq& seq = *owned;
      if (seq.done || seq.in_flight) continue;
      const int pending = static_cast<int>(seq.tokens.size()) - seq.num_sent;
      if (pending <= 0) continue;
      if (budget == 0 || static_cast<int>(flight.scheduled.size()) == max_seqs) break;
      const int chunk = std::min(pending, budget);
      flight.num_tokens += chunk;
      flight.num_prompt_tokens += std::max(0, std::min(seq.num_sent + chunk, seq.num_prompt) - seq.num_sent);
      if (seq.num_sent == 0) {
        control::v1::NewSequence* added = step.add_new_sequences();
        added->set_seq_id(seq.id);
        added->set_num_prompt_tokens(seq.num_prompt);
        const SamplingParams& sampling = request->params.sampling;
        added->mutable_sampling()->set_temperature(sampling.temperature);
        added->mutable_sampling()->set_top_k(sampling.top_k);
        added->mutable_sampling()->set_top_p(sampling.top_p);
        added->mutable_sampling()->set_seed(sampling.seed + static_cast<uint64_t>(seq.index));
        added->set_return_logits(request->params.return_logits);
      }
      control::v1::ScheduledSequence* entry = step.add_scheduled();
      entry->set_seq_id(seq.id);
      entry->mutable_tokens()->Add(seq.tokens.begin() + seq.num_sent,
                                   seq.tokens.begin() + seq.num_sent + chunk);
      new_ids_.clear();
      blocks_.Grow(seq.num_sent + chunk, seq.blocks, new_ids_);
      entry->mutable_new_block_ids()->Add(new_ids_.begin(), new_ids_.end());
      seq.num_sent += chunk;
      budget -= chunk;
      const bool sample = seq.num_sent == static_cast<int>(seq.tokens.size());
      entry->set_sample(sample);
      seq.in_flight = true;
      flight.scheduled.push_back(&seq);
      if (sample) flight.sampled.push_back(&seq);
    }
  }
  if (flight.scheduled.empty()) return false;
  const uint64_t step_id = next_step_id_++;
  step.set_step_id(step_id);
  step.mutable_finished()->Add(forget_.begin(), forget_.end());
  forget_.clear();
  flight.sent_at = Now();
  in_flight_[step_id] = std::move(flight);
  serialized = step.SerializeAsString();
  return true;
}

void Scheduler::DeliverEventsLocked(Dropped& dropped) {
  std::vector<Event> batch;
  batch.swap(events_);
  mu_.Unlock();
  dropped.clear();
  std::vector<std::pair<Request*, int>> stops;  // choices whose OnToken answered true
  auto stopped = [&](Request* request, int index) {
    return std::find(stops.begin(), stops.end(), std::make_pair(request, index)) != stops.end();
  };
  for (Event& event : batch) {
    GenerationObserver& observer = *event.request->observer;
    switch (event.kind) {
      case Event::Kind::kLogits:
        observer.OnLogits(event.index, event.logits.data(), static_cast<int64_t>(event.logits.size()));
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
  for (Event& event : batch) dropped.push_back(std::move(event.request));  // released outside the lock
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
    AdmitLocked();
    if (!events_.empty()) {
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
    if (!status.ok()) FailLocked(status);
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
