#include "coordinator/scheduler.h"

#include <algorithm>
#include <chrono>

#include "core/str_cat.h"
#include "tessera/control/v1/control.pb.h"

namespace tessera {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Scheduler::Scheduler(const SchedulerOptions& options, StepSink& sink)
    : options_(options), sink_(sink), blocks_(options.num_kv_blocks, options.block_size) {}

Scheduler::~Scheduler() {
  std::unique_lock<std::mutex> lock(mu_);
  stopping_ = true;
  FailLocked(absl::UnavailableError("the server is shutting down"));
  cv_.wait(lock, [&] { return !pumping_; });
}

bool Scheduler::ready() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ready_ && failure_.ok() && !stopping_;
}

void Scheduler::Activate(int num_kv_blocks) {
  std::unique_lock<std::mutex> lock(mu_);
  options_.num_kv_blocks = num_kv_blocks;
  blocks_ = BlockManager(num_kv_blocks, options_.block_size);
  ready_ = failure_.ok();
  Pump(lock);
}

Scheduler::Stats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

int Scheduler::num_free_blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return blocks_.num_free();
}

absl::Status Scheduler::Submit(GenerationRequest request, std::shared_ptr<GenerationObserver> observer) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!failure_.ok()) return absl::UnavailableError(failure_.message());
  if (stopping_) return absl::UnavailableError("the server is shutting down");
  if (!ready_) return absl::UnavailableError("not serving yet: the workers are still loading the model");
  if (by_id_.count(request.id) > 0) {
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
  if (static_cast<int>(waiting_.size()) >= options_.max_queued_requests) {
    return absl::ResourceExhaustedError(
        Cat("the queue is full: ", waiting_.size(),
            " requests are waiting (max_queued_requests=", options_.max_queued_requests, ")"));
  }
  auto owned = std::make_unique<Request>();
  owned->params = std::move(request);
  owned->observer = std::move(observer);
  by_id_[owned->params.id] = owned.get();
  waiting_.push_back(std::move(owned));
  Pump(lock);
  return absl::OkStatus();
}

absl::Status Scheduler::Cancel(const std::string& request_id) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = by_id_.find(request_id);
  if (it == by_id_.end()) return absl::NotFoundError(Cat("no request \"", request_id, "\" is running"));
  Request& request = *it->second;
  FinishRequestLocked(request, absl::CancelledError(Cat("request \"", request_id, "\" was cancelled")));
  if (request.seqs.empty()) {  // still waiting
    waiting_.erase(std::find_if(waiting_.begin(), waiting_.end(),
                                [&](const std::unique_ptr<Request>& r) { return r.get() == &request; }));
  } else {
    for (auto& seq : request.seqs) {
      if (!seq->done) {
        seq->done = true;
        --request.choices_left;
        if (!seq->in_flight) RetireSeqLocked(*seq);
      }
    }
  }
  Pump(lock);
  return absl::OkStatus();
}

void Scheduler::OnStepResult(uint64_t step_id, const std::vector<int32_t>& tokens, double worker_seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  {
    auto it = in_flight_.find(step_id);
    if (it == in_flight_.end()) {
      if (failure_.ok())
        FailLocked(absl::InternalError(Cat("the output rank answered unknown step ", step_id)));
      return;
    }
    InFlight step = std::move(it->second);
    in_flight_.erase(it);
    if (tokens.size() != step.sampled.size()) {
      FailLocked(absl::InternalError(Cat("the output rank answered step ", step_id, " with ", tokens.size(),
                                         " tokens for ", step.sampled.size(), " sampled sequences")));
      return;
    }
    ++stats_.steps;
    stats_.step_seconds += Now() - step.sent_at;
    stats_.worker_seconds += worker_seconds;
    for (Seq* seq : step.scheduled) seq->in_flight = false;
    for (size_t i = 0; i < step.sampled.size(); ++i) {
      Seq& seq = *step.sampled[i];
      if (seq.done) continue;
      const int32_t token = tokens[i];
      seq.tokens.push_back(token);
      const GenerationRequest& params = seq.request->params;
      const bool stop_string = seq.request->observer->OnToken(seq.index, token);
      const bool stop_id = std::find(params.stop_token_ids.begin(), params.stop_token_ids.end(), token) !=
                           params.stop_token_ids.end();
      const int generated = static_cast<int>(seq.tokens.size()) - seq.num_prompt;
      if (stop_string || stop_id) {
        EndChoiceLocked(seq, FinishReason::kStop);
      } else if (generated >= params.max_tokens) {
        EndChoiceLocked(seq, FinishReason::kLength);
      }
    }
    for (Seq* seq : step.scheduled) {
      if (seq->done && seq->reserved > 0) RetireSeqLocked(*seq);
    }
  }
  Pump(lock);
}

void Scheduler::Fail(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  FailLocked(status);
}

void Scheduler::FailLocked(const absl::Status& status) {
  if (failure_.ok()) failure_ = status;
  ready_ = false;
  const absl::Status unavailable = absl::UnavailableError(status.message());
  for (auto& request : waiting_) FinishRequestLocked(*request, unavailable);
  for (auto& request : running_) FinishRequestLocked(*request, unavailable);
  waiting_.clear();
  running_.clear();
  by_id_.clear();
  in_flight_.clear();
  forget_.clear();
  num_running_seqs_ = 0;
  blocks_ = BlockManager(options_.num_kv_blocks, options_.block_size);
}

void Scheduler::EndChoiceLocked(Seq& seq, FinishReason reason) {
  seq.done = true;
  Request& request = *seq.request;
  if (request.observer != nullptr) request.observer->OnChoiceEnd(seq.index, reason);
  if (--request.choices_left == 0) FinishRequestLocked(request, absl::OkStatus());
  if (!seq.in_flight) RetireSeqLocked(seq);
}

void Scheduler::FinishRequestLocked(Request& request, const absl::Status& status) {
  if (request.observer == nullptr) return;
  request.observer->OnDone(status);
  request.observer = nullptr;
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
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

bool Scheduler::FormStepLocked(std::string& serialized) {
  if (!ready_ || !failure_.ok() || stopping_) return false;
  // Drop requests whose sequences are all retired.
  std::erase_if(running_, [&](const std::unique_ptr<Request>& r) {
    for (const auto& seq : r->seqs) {
      if (seq->reserved > 0) return false;
    }
    return r->observer == nullptr;
  });
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
      if (seq.num_sent == 0) {
        control::v1::NewSequence* added = step.add_new_sequences();
        added->set_seq_id(seq.id);
        added->set_num_prompt_tokens(seq.num_prompt);
        const SamplingParams& sampling = request->params.sampling;
        added->mutable_sampling()->set_temperature(sampling.temperature);
        added->mutable_sampling()->set_top_k(sampling.top_k);
        added->mutable_sampling()->set_top_p(sampling.top_p);
        added->mutable_sampling()->set_seed(sampling.seed + static_cast<uint64_t>(seq.index));
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

void Scheduler::Pump(std::unique_lock<std::mutex>& lock) {
  if (pumping_) {
    repump_ = true;
    return;
  }
  pumping_ = true;
  std::string serialized;
  do {
    repump_ = false;
    AdmitLocked();
    while (static_cast<int>(in_flight_.size()) < options_.max_steps_in_flight && FormStepLocked(serialized)) {
      lock.unlock();
      const double start = Now();
      absl::Status status = sink_.SendStep(serialized);
      const double sent = Now() - start;
      lock.lock();
      stats_.send_seconds += sent;
      if (!status.ok()) FailLocked(status);
    }
  } while (repump_);
  pumping_ = false;
  cv_.notify_all();
}

}  // namespace tessera
