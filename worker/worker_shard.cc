#include "worker/worker_shard.h"

#include <sys/resource.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/resource_usage.h"
#include "core/status_macros.h"
#include "kernels/backend_factory.h"
#include "parallel/communicator_factory.h"
#include "worker/model_split.h"
#include "worker/staged_communicator.h"

namespace tessera {
namespace {

namespace cv1 = control::v1;
using Clock = WorkerShard::Clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// The same error with `prefix` in front of its message.
absl::Status Prefixed(const absl::Status& status, const std::string& prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

const char* PhaseName(int phase) {
  static const char* const kNames[] = {"registered", "shard assigned", "groups joined", "weights loaded",
                                       "KV cache allocated"};
  return kNames[phase];
}

}  // namespace

WorkerShard::WorkerShard(const WorkerShardOptions& options) : options_(options), epoch_(options.epoch) {}

WorkerShard::~WorkerShard() = default;

void WorkerShard::AbortCommunicators() {
  for (CommunicatorSlot* slot : {tp_slot_.load(std::memory_order_acquire), pp_slot_.load(std::memory_order_acquire)}) {
    if (slot != nullptr) slot->Abort();
  }
}

void WorkerShard::Log(const std::string& line) const {
  if (options_.log) options_.log(absl::StrCat("worker rank ", options_.rank, ": ", line));
}

absl::StatusOr<int64_t> WorkerShard::DefaultKvCacheBudget(int world_size) {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024 / 4 / std::max(1, world_size);
  }
  return absl::UnavailableError(
      "cannot read MemAvailable from /proc/meminfo for the default KV cache budget");
}

absl::StatusOr<int64_t> WorkerShard::AccountedKvCacheBudget(const MemoryInfo& memory) {
  const int64_t usable = static_cast<int64_t>(static_cast<double>(memory.total_bytes) * kGpuMemoryUtilization);
  if (usable <= memory.used_bytes) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no memory is left for the KV cache: ", memory.used_bytes, " bytes are in use of the ", usable,
        " usable (", kGpuMemoryUtilization, " of ", memory.total_bytes, ")"));
  }
  return usable - memory.used_bytes;
}

std::vector<cv1::WorkerMessage> WorkerShard::Handle(const cv1::CoordinatorMessage& message,
                                                    Clock::time_point received) {
  std::vector<cv1::WorkerMessage> replies;
  auto reply = [&]() -> cv1::WorkerMessage& {
    cv1::WorkerMessage& m = replies.emplace_back();
    m.set_epoch(epoch());
    m.set_rank(options_.rank);
    return m;
  };
  auto error = [&](const absl::Status& status, uint64_t step_id) {
    cv1::WorkerError* e = reply().mutable_error();
    e->set_code(static_cast<int32_t>(status.code()));
    e->set_message(absl::StrCat("rank ", options_.rank, ": ", status.message()));
    e->set_step_id(step_id);
  };
  // A regrouping Reset moves the worker to a newer epoch from whichever it is in (an earlier attempt's Reset
  // may not have reached it).
  const bool regroup = message.body_case() == cv1::CoordinatorMessage::kReset &&
                       message.reset().new_epoch() > epoch();
  if (message.epoch() != epoch() && !regroup) {
    error(absl::FailedPreconditionError(
              absl::StrCat("stale epoch ", message.epoch(), " (worker is in epoch ", epoch(), ")")),
          0);
    return replies;
  }
  const Clock::time_point start = Clock::now();
  cv1::Ack ack;
  absl::Status status;
  switch (message.body_case()) {
    case cv1::CoordinatorMessage::kAssignShard:
      status = AssignShard(message.assign_shard());
      break;
    case cv1::CoordinatorMessage::kInitComm:
      status = InitComm(message.init_comm());
      break;
    case cv1::CoordinatorMessage::kLoadWeights:
      status = LoadWeights(ack);
      break;
    case cv1::CoordinatorMessage::kProfileMemory:
      status = ProfileMemory(message.profile_memory(), ack);
      break;
    case cv1::CoordinatorMessage::kAllocateKvCache:
      status = AllocateKvCache(message.allocate_kv_cache());
      break;
    case cv1::CoordinatorMessage::kStep: {
      uint64_t step_id = 0;
      cv1::StepResult result;
      bool has_result = false;
      status = Step(message.step(), received, step_id, result, has_result);
      if (!status.ok()) {
        error(status, step_id);
      } else if (has_result) {
        *reply().mutable_step_result() = std::move(result);
      }
      return replies;
    }
    case cv1::CoordinatorMessage::kReset:
      seqs_.Clear();
      if (message.reset().new_epoch() > epoch()) {
        // The old groups are broken (a rank is gone): close them; the model keeps its weights and KV cache.
        if (tp_group_ != nullptr) tp_group_->Reset(nullptr);
        if (pp_group_ != nullptr) pp_group_->Reset(nullptr);
        if (phase_ >= Phase::kConnected) {
          rejoin_phase_ = phase_;
          phase_ = Phase::kAssigned;
        }
        epoch_.store(message.reset().new_epoch(), std::memory_order_release);
        Log(absl::StrCat("reset for epoch ", message.reset().new_epoch(), ": communicators closed"));
      }
      break;
    case cv1::CoordinatorMessage::kDrain:
      ack.set_peak_rss_bytes(PeakRssBytes());  // steps are handled in order: every earlier one is done
      break;
    case cv1::CoordinatorMessage::kShutdown:
      done_ = true;
      return replies;
    case cv1::CoordinatorMessage::kHeartbeat:
      return replies;
    case cv1::CoordinatorMessage::BODY_NOT_SET:
      status = absl::UnimplementedError("a coordinator message with no body this worker knows");
      break;
  }
  if (!status.ok()) {
    error(status, 0);
    return replies;
  }
  ack.set_message(static_cast<int32_t>(message.body_case()));
  ack.set_seconds(Seconds(start, Clock::now()));
  *reply().mutable_ack() = std::move(ack);
  return replies;
}

namespace {

absl::Status OutOfOrder(const std::string& what, int phase) {
  return absl::FailedPreconditionError(absl::StrCat(
      what, " out of order: this worker is at \"", PhaseName(phase),
      "\" (setup runs assign_shard, init_comm, load_weights, then profile_memory and allocate_kv_cache)"));
}

}  // namespace

absl::Status WorkerShard::AssignShard(const cv1::AssignShard& assign) {
  if (phase_ != Phase::kNew) return OutOfOrder("assign_shard", static_cast<int>(phase_));
  const int world = options_.world_size;
  if (assign.rank() != options_.rank) {
    return absl::InvalidArgumentError(absl::StrCat("assign_shard is for rank ", assign.rank()));
  }
  if (assign.tp_size() <= 0 || assign.pp_size() <= 0 || assign.tp_size() * assign.pp_size() != world) {
    return absl::InvalidArgumentError(absl::StrCat("assign_shard: tp_size=", assign.tp_size(),
                                                   " x pp_size=", assign.pp_size(),
                                                   " does not make the group's ", world, " ranks"));
  }
  if (assign.max_num_tokens() <= 0 || assign.max_num_seqs() <= 0 || assign.num_threads() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "assign_shard: max_num_tokens=", assign.max_num_tokens(), " and max_num_seqs=", assign.max_num_seqs(),
        " must be positive, num_threads=", assign.num_threads(), " not negative"));
  }
  DeviceKind device = options_.device;
  if (!assign.device().empty()) {
    absl::StatusOr<DeviceKind> parsed = ParseDeviceKind(assign.device());
    if (!parsed.ok()) return Prefixed(parsed.status(), "assign_shard: ");
    device = *parsed;
  }
  int device_index = 0;
  bool use_nccl = false;
  if (device == DeviceKind::kCuda) {
    absl::StatusOr<int> gpus = CountDevices(device);
    if (!gpus.ok()) return Prefixed(gpus.status(), "assign_shard: ");
    device_index = options_.device_index >= 0 ? options_.device_index
                                              : ParallelConfig::DeviceOfRank(options_.rank, *gpus);
    if (assign.communicator() == "nccl") {
      use_nccl = true;
    } else if (assign.communicator().empty()) {
      use_nccl = !(assign.single_node() && *gpus < world);
    } else if (assign.communicator() != "gloo") {
      return absl::InvalidArgumentError(
          absl::StrCat("assign_shard: communicator '", assign.communicator(), "' is not nccl or gloo"));
    }
  }
  if (assign.has_graph_max_batch() && assign.graph_max_batch() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("assign_shard: graph_max_batch=", assign.graph_max_batch(), " is negative"));
  }
  PrefillPrecision precision = PrefillPrecision::kSplitBf16;
  if (!assign.prefill_precision().empty()) {
    RETURN_IF_ERROR(Prefixed(ParsePrefillPrecision(assign.prefill_precision(), precision), "assign_shard: "));
  }
  QuantActivations quant_activations = QuantActivations::kFp32;
  if (!assign.quant_activations().empty()) {
    RETURN_IF_ERROR(
        Prefixed(ParseQuantActivations(assign.quant_activations(), quant_activations), "assign_shard: "));
  }
  // The null device reads no weights: the shapes the config implies are enough.
  absl::StatusOr<Checkpoint> checkpoint =
      device == DeviceKind::kNull ? Checkpoint::OpenShapes(assign.model_dir()) : Checkpoint::Open(assign.model_dir());
  if (!checkpoint.ok()) return Prefixed(checkpoint.status(), "assign_shard: ");
  std::vector<int> pp_layers(assign.pp_layers().begin(), assign.pp_layers().end());
  absl::StatusOr<ParallelConfig> parallel =
      SplitModel(checkpoint->config(), assign.tp_size(), assign.pp_size(), pp_layers);
  if (!parallel.ok()) {
    return Prefixed(parallel.status(), absl::StrCat("assign_shard: ", assign.model_dir(), ": "));
  }
  BackendOptions backend_options;
  backend_options.device = device;
  backend_options.device_index = device_index;
  backend_options.prefill_precision = precision;
  backend_options.quant_activations = quant_activations;
  if (device == DeviceKind::kCpu) {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    backend_options.num_threads =
        assign.num_threads() > 0 ? assign.num_threads() : std::max(1, cores / world);
  }
  const int threads = backend_options.num_threads;
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend(backend_options);
  if (!backend.ok()) return Prefixed(backend.status(), "assign_shard: ");

  assign_ = assign;
  checkpoint_ = std::make_unique<Checkpoint>(std::move(checkpoint).value());
  parallel_ = std::make_unique<ParallelConfig>(std::move(parallel).value());
  backend_ = std::move(backend).value();
  device_ = device;
  device_index_ = device_index;
  use_nccl_ = use_nccl;
  phase_ = Phase::kAssigned;
  Log(absl::StrCat("assigned tp_rank ", parallel_->TpRank(options_.rank), " pp_rank ",
                   parallel_->PpRank(options_.rank), " of ", parallel_->ToString(), " of ",
                   assign.model_dir(), " on ",
                   device == DeviceKind::kCpu    ? absl::StrCat("cpu (", threads, " threads)")
                   : device == DeviceKind::kCuda ? absl::StrCat("cuda:", device_index)
                                                 : std::string("the null device")));
  return absl::OkStatus();
}

absl::Status WorkerShard::InitComm(const cv1::InitComm& init) {
  if (phase_ != Phase::kAssigned) return OutOfOrder("init_comm", static_cast<int>(phase_));
  const ParallelConfig& p = *parallel_;
  const int rank = options_.rank, tp_rank = p.TpRank(rank), pp_rank = p.PpRank(rank);
  if (p.world_size() > 1 && init.store_address().empty()) {
    return absl::InvalidArgumentError("init_comm: store_address is empty");
  }
  if (init.timeout_ms() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("init_comm: timeout_ms=", init.timeout_ms(), " is negative"));
  }
  // The TP group's NCCL communicator is stream-ordered on the backend's stream (its collectives are part of
  // the step's CUDA graph); the pipeline's stays host-synchronous (its sends follow a finished step).
  enum class Ordering { kHost, kStream };
  auto join = [&](const std::string& group, int group_rank, int size,
                  Ordering ordering) -> absl::StatusOr<std::unique_ptr<Communicator>> {
    GroupOptions group_options;
    group_options.group = absl::StrCat(init.group_prefix(), "/", group);
    group_options.rank = group_rank;
    group_options.size = size;
    group_options.store_address = init.store_address();
    group_options.store_token = init.store_token();
    group_options.store_tls = options_.control_tls;
    group_options.hostname = options_.listen_host;
    group_options.device_index = device_index_;
    if (ordering == Ordering::kStream) group_options.cuda_stream = backend_->native_stream();
    if (init.timeout_ms() > 0) group_options.timeout = std::chrono::milliseconds(init.timeout_ms());
    // CPU tensors move over Gloo (TCP); CUDA tensors over NCCL, or over Gloo staged through host memory when
    // ranks share a GPU (NCCL refuses that).
    const bool staged = device_ == DeviceKind::kCuda && !use_nccl_;
    const CommunicatorKind kind =
        device_ == DeviceKind::kCuda && use_nccl_ ? CommunicatorKind::kNccl : CommunicatorKind::kGloo;
    absl::StatusOr<std::unique_ptr<Communicator>> comm = JoinGroup(kind, group_options);
    if (!comm.ok()) {
      return Prefixed(comm.status(), absl::StrCat("init_comm: group ", group_options.group, " via ",
                                                  group_options.store_address, ": "));
    }
    if (staged)
      return std::unique_ptr<Communicator>(new StagedCommunicator(std::move(comm).value(), *backend_));
    return comm;
  };
  // Every rank joins its TP group first, then its pipeline: no rank waits on a group another has not reached.
  if (p.tp_size() > 1) {
    ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, join(p.TpGroupName(options_.rank), tp_rank, p.tp_size(), Ordering::kStream));
    if (tp_group_ == nullptr) {
      tp_group_ = std::make_unique<CommunicatorSlot>(tp_rank, p.tp_size());
      tp_slot_.store(tp_group_.get(), std::memory_order_release);
    }
    tp_group_->Reset(std::move(comm));
    if (runner_ != nullptr && tp_group_->stream_ordered() && runner_->num_graphs() > 0) {
      runner_->DropGraphs();  // they hold the old communicator's collectives
      Log("dropped its decode-step graphs: the re-formed TP group's collectives are new (steps run eagerly)");
    }
  }
  if (p.pp_size() > 1) {
    ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, join(p.PpGroupName(options_.rank), pp_rank, p.pp_size(), Ordering::kHost));
    if (pp_group_ == nullptr) {
      pp_group_ = std::make_unique<CommunicatorSlot>(pp_rank, p.pp_size());
      pp_slot_.store(pp_group_.get(), std::memory_order_release);
    }
    pp_group_->Reset(std::move(comm));
  }
  phase_ = rejoin_phase_ != Phase::kNew ? rejoin_phase_ : Phase::kConnected;  // a re-formed group: as it was
  rejoin_phase_ = Phase::kNew;
  if (p.world_size() > 1) Log(absl::StrCat("joined its groups through ", init.store_address()));
  return absl::OkStatus();
}

absl::Status WorkerShard::LoadWeights(cv1::Ack& ack) {
  if (phase_ != Phase::kConnected) return OutOfOrder("load_weights", static_cast<int>(phase_));
  const Clock::time_point start = Clock::now();
  ModelRunnerOptions options;
  options.model.max_num_tokens = assign_.max_num_tokens();
  options.model.max_num_seqs = assign_.max_num_seqs();
  options.model.parallel = parallel_.get();
  options.model.rank = options_.rank;
  options.model.tp_group = tp_group_.get();
  options.pp_group = pp_group_.get();
  options.graph_max_batch = assign_.has_graph_max_batch() ? assign_.graph_max_batch() : -1;
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner = ModelRunner::Create(*checkpoint_, *backend_, options);
  if (!runner.ok()) return Prefixed(runner.status(), "load_weights: ");
  runner_ = std::move(runner).value();
  phase_ = Phase::kLoaded;
  const double seconds = Seconds(start, Clock::now());
  ack.set_bytes_read(checkpoint_->bytes_accessed());
  ack.set_peak_rss_bytes(PeakRssBytes());
  if (checkpoint_->shapes_only()) {
    // The first figure is what a real device would read from the checkpoint; the second what it would hold
    // (tessera plan's weights per GPU: the embedding's zero row where the vocabulary is split).
    Log(absl::StrFormat("would load %d bytes of weights; %d bytes of weights accounted on the null device (%.2f s)",
                        checkpoint_->bytes_accessed(), runner_->allocated_weight_bytes(), seconds));
  } else {
    Log(absl::StrFormat("loaded weights in %.2f s (%d bytes)", seconds, checkpoint_->bytes_accessed()));
  }
  return absl::OkStatus();
}

absl::Status WorkerShard::ProfileMemory(const cv1::ProfileMemory& profile, cv1::Ack& ack) {
  if (phase_ < Phase::kLoaded) return OutOfOrder("profile_memory", static_cast<int>(phase_));
  if (profile.kv_cache_memory_bytes() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "profile_memory: kv_cache_memory_bytes=", profile.kv_cache_memory_bytes(), " is negative"));
  }
  int64_t budget = profile.kv_cache_memory_bytes();
  if (budget == 0) {
    absl::StatusOr<MemoryInfo> memory = backend_->Memory();
    if (memory.ok()) {
      absl::StatusOr<int64_t> accounted = AccountedKvCacheBudget(*memory);
      if (!accounted.ok()) return Prefixed(accounted.status(), "profile_memory: ");
      budget = *accounted;
    } else {
      ASSIGN_OR_RETURN(budget, DefaultKvCacheBudget(options_.world_size));
    }
  }
  const int64_t block = runner_->KvBlockBytes();
  const int64_t blocks = std::min<int64_t>(budget / block, std::numeric_limits<int32_t>::max());
  if (blocks == 0) {
    return absl::ResourceExhaustedError(absl::StrCat("profile_memory: a KV cache budget of ", budget,
                                                     " bytes holds no block of ", block, " bytes"));
  }
  ack.set_kv_block_bytes(block);
  ack.set_max_kv_blocks(static_cast<int32_t>(blocks));
  Log(absl::StrCat("KV blocks of ", block, " bytes; a budget of ", budget, " bytes holds ", blocks));
  return absl::OkStatus();
}

absl::Status WorkerShard::AllocateKvCache(const cv1::AllocateKvCache& allocate) {
  if (phase_ != Phase::kLoaded) return OutOfOrder("allocate_kv_cache", static_cast<int>(phase_));
  RETURN_IF_ERROR(Prefixed(runner_->AllocateKvCache(allocate.num_blocks()), "allocate_kv_cache: "));
  Log(absl::StrCat("allocated ", allocate.num_blocks(), " KV blocks (",
                   int64_t{allocate.num_blocks()} * runner_->KvBlockBytes(), " bytes)"));
  // The decode graphs bake in the KV cache's address, so they come after it (every TP rank at once: the
  // coordinator sends this message to all of them together).
  const Clock::time_point start = Clock::now();
  if (!allocate.skip_graphs()) RETURN_IF_ERROR(Prefixed(runner_->CaptureGraphs(), "allocate_kv_cache: "));
  if (runner_->num_graphs() > 0) {
    Log(absl::StrFormat("captured %d decode-step graphs (batch sizes up to %d) in %.2f s",
                        runner_->num_graphs(), runner_->graph_batch_sizes().back(),
                        Seconds(start, Clock::now())));
  }
  phase_ = Phase::kReady;
  return absl::OkStatus();
}

absl::Status WorkerShard::AddLogitsRow(uint64_t seq_id, const Tensor& row, cv1::StepResult& result) {
  cv1::LogitsRow* out = result.add_logits();
  out->set_seq_id(seq_id);
  std::string& values = *out->mutable_values();
  values.resize(static_cast<size_t>(row.nbytes()));
  return backend_->CopyToHost(values.data(), row.data(), row.nbytes());
}

absl::Status WorkerShard::AddPromptLogprobs(uint64_t seq_id, const SequenceEntry& entry, const Tensor& row,
                                            cv1::StepResult& result) {
  const Sequence& seq = entry.seq;
  const int next = seq.num_computed_tokens;  // the token after the last position computed
  if (entry.prompt_logprobs < 0 || next >= static_cast<int>(entry.prompt.size())) return absl::OkStatus();
  const int64_t vocab = row.numel();
  host_row_.resize(static_cast<size_t>(vocab));
  RETURN_IF_ERROR(backend_->CopyToHost(host_row_.data(), row.data(), row.nbytes()));
  SampleLogprobs lp;
  ComputeTokenLogprobs(host_row_.data(), vocab, entry.prompt[next], entry.prompt_logprobs, logprob_scratch_, lp);
  cv1::PromptLogprobs* out = result.add_prompt_logprobs();
  out->set_seq_id(seq_id);
  out->set_first_position(next);
  cv1::TokenLogprobs* e = out->add_entries();
  e->set_seq_id(seq_id);
  e->set_token(lp.token);
  e->set_logprob(static_cast<float>(lp.logprob));
  e->set_rank(static_cast<int32_t>(lp.rank));
  e->mutable_top_ids()->Add(lp.top_ids, lp.top_ids + lp.num_top);
  for (int j = 0; j < lp.num_top; ++j) e->add_top_logprobs(static_cast<float>(lp.top_logprobs[j]));
  return absl::OkStatus();
}

absl::Status WorkerShard::Step(const std::string& bytes, Clock::time_point received, uint64_t& step_id,
                               cv1::StepResult& result, bool& has_result) {
  cv1::Step step;
  if (!step.ParseFromString(bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("step: ", bytes.size(), " bytes are not a serialized Step"));
  }
  step_id = step.step_id();
  if (phase_ != Phase::kReady) {
    return OutOfOrder(absl::StrCat("step ", step_id, " (before allocate_kv_cache)"),
                      static_cast<int>(phase_));
  }
  const std::string where = absl::StrCat("step ", step_id, ": ");
  // Applies the delta in the proto's order, checked against the model and the KV cache; on any error the
  // batch is as before the step (the table undoes the delta itself, or Undo after it was applied).
  const ModelConfig& config = runner_->config();
  StepLimits limits;
  limits.vocab_size = config.vocab_size;
  limits.max_context = config.max_position_embeddings;
  limits.num_kv_blocks = runner_->num_kv_blocks();
  limits.max_num_tokens = assign_.max_num_tokens();
  limits.max_num_seqs = assign_.max_num_seqs();
  RETURN_IF_ERROR(Prefixed(seqs_.Apply(step, limits), where));
  auto fail = [&](absl::Status status) {
    seqs_.Undo();
    return Prefixed(status, where);
  };
  if (!seqs_.copies().empty()) {
    absl::Status copied = runner_->CopyKvBlocks(seqs_.copies());
    if (!copied.ok()) return fail(copied);
  }
  const std::vector<Sequence*>& batch = seqs_.batch();
  const bool output_rank = options_.rank == parallel_->output_rank();
  has_result = output_rank;
  result.set_step_id(step_id);
  if (batch.empty()) return absl::OkStatus();
  const int64_t graph_steps = runner_->graph_steps();
  absl::StatusOr<Tensor> logits = runner_->Forward(batch);
  busy_seconds_.store(runner_->compute_seconds(), std::memory_order_relaxed);
  if (!logits.ok()) return fail(logits.status());
  result.set_graph(runner_->graph_steps() > graph_steps);
  if (output_rank) {
    for (int i = 0; i < step.scheduled_size(); ++i) {  // prompt logprobs, from the rows of prompt positions
      const SequenceEntry& entry = *seqs_.Find(step.scheduled(i).seq_id());
      if (entry.prompt_logprobs < 0) continue;
      absl::Status added = AddPromptLogprobs(step.scheduled(i).seq_id(), entry, logits->Rows(i, 1), result);
      if (!added.ok()) return fail(added);
    }
    // Sample runs of consecutive sampled rows (chunked prompts' rows are skipped), keeping step order.
    const int n = step.scheduled_size();
    for (int begin = 0; begin < n;) {
      if (!step.scheduled(begin).sample()) {
        ++begin;
        continue;
      }
      int end = begin;
      sample_run_.clear();
      while (end < n && step.scheduled(end).sample()) sample_run_.push_back(batch[end++]);
      for (int i = begin; i < end; ++i) {
        const uint64_t id = step.scheduled(i).seq_id();
        if (!seqs_.Find(id)->return_logits) continue;
        absl::Status added = AddLogitsRow(id, logits->Rows(i, 1), result);
        if (!added.ok()) return fail(added);
      }
      absl::Status sampled =
          runner_->Sample(logits->Rows(begin, end - begin), sample_run_, sampled_, /*want_logprobs=*/true);
      if (!sampled.ok()) return fail(sampled);
      result.mutable_tokens()->Add(sampled_.begin(), sampled_.end());
      for (int i = begin; i < end; ++i) {  // the logprobs of the sequences that asked, in step order
        if (batch[i]->sampling.top_logprobs < 0) continue;
        const SampleLogprobs& lp = runner_->sampled_logprobs()[i - begin];
        cv1::TokenLogprobs* out = result.add_logprobs();
        out->set_seq_id(step.scheduled(i).seq_id());
        out->set_token(lp.token);
        out->set_logprob(static_cast<float>(lp.logprob));
        out->set_rank(static_cast<int32_t>(lp.rank));
        out->mutable_top_ids()->Add(lp.top_ids, lp.top_ids + lp.num_top);
        for (int j = 0; j < lp.num_top; ++j) out->add_top_logprobs(static_cast<float>(lp.top_logprobs[j]));
      }
      begin = end;
    }
    result.set_worker_seconds(Seconds(received, Clock::now()));
  }
  return absl::OkStatus();
}

}  // namespace tessera
