#include "parallel/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <gloo/rendezvous/store.h>
#include <nccl.h>

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/custom_all_reduce.h"
#include "parallel/store_exchange.h"

namespace tessera {
namespace {

using Clock = std::chrono::steady_clock;

// Between two polls of a running operation: yield for the first 2 ms (a decode step's all-reduce takes tens
// of microseconds, so sleeping would add latency), then sleep 50 us so that a long wait does not burn a core.
void Backoff(Clock::time_point start) {
  if (Clock::now() - start < std::chrono::milliseconds(2)) {
    std::this_thread::yield();
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

}  // namespace

struct NcclCommunicator::Impl {
  NcclOptions options;
  cudaStream_t stream = nullptr;  // every NCCL call is enqueued here: our own, or options.stream
  bool own_stream = false;
  ncclComm_t comm = nullptr;
  float* scratch = nullptr;  // [1] on the device, Barrier's all-reduce (its value does not matter)
  std::unique_ptr<CustomAllReduce> custom;  // stream-ordered groups that qualify
  std::string custom_off_reason;

  // `comm` is aborted (and so freed) at most once, from any thread: the operations' thread, the watchdog,
  // Abort. Lock order: none (never held while calling out, except ncclCommAbort).
  std::mutex mu;
  bool aborted = false;  // guarded by mu: comm was aborted (and so freed): never touch it again
  absl::Status broken;   // guarded by mu: the first error; every later call returns it

  // The watchdog of stream-ordered groups.
  std::thread watchdog;
  std::condition_variable watch_cv;          // with mu
  bool watching = false;                     // guarded by mu: a step is in flight
  bool stopping = false;                     // guarded by mu
  Clock::time_point watch_deadline;          // guarded by mu
  cudaEvent_t step_done = nullptr;           // recorded after each watched step's work

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping = true;
    }
    watch_cv.notify_all();
    if (watchdog.joinable()) watchdog.join();
    custom.reset();
    if (comm == nullptr && scratch == nullptr && stream == nullptr) return;  // nothing was made
    cudaSetDevice(options.device);
    if (comm != nullptr && !IsAborted()) {
      // Finalize flushes outstanding work; in non-blocking mode it may return ncclInProgress and is polled
      // (Poll aborts the communicator when finalizing fails or times out).
      bool finalized = false;
      if (Broken().ok()) {
        const ncclResult_t r = ncclCommFinalize(comm);
        finalized = (r == ncclSuccess || r == ncclInProgress) && Poll("finalize").ok();
      }
      if (finalized) {
        ncclCommDestroy(comm);
      } else {
        AbortComm();
      }
    }
    if (step_done != nullptr) cudaEventDestroy(step_done);
    if (scratch != nullptr) cudaFree(scratch);
    if (stream != nullptr && own_stream) cudaStreamDestroy(stream);
  }

  bool stream_ordered() const { return !own_stream; }
  bool IsAborted() {
    std::lock_guard<std::mutex> lock(mu);
    return aborted;
  }
  absl::Status Broken() {
    std::lock_guard<std::mutex> lock(mu);
    return broken;
  }

  std::string Where() const {
    return absl::StrCat("rank ", options.rank, " of group '", options.group, "' (device ", options.device,
                        ")");
  }

  std::string NcclMessage(const char* op, ncclResult_t result) {
    std::string message = absl::StrCat("nccl ", op, " on ", Where(), " failed: ", ncclGetErrorString(result));
    if (!IsAborted()) {
      const char* last = ncclGetLastError(comm);  // comm may be null
      if (last != nullptr && last[0] != '\0') absl::StrAppend(&message, " (", last, ")");
    }
    return message;
  }

  // Aborts the NCCL communicator once (its kernels stop and its resources are freed) and the custom
  // all-reduce's waits.
  void AbortComm() {
    if (custom != nullptr) custom->Abort();
    std::lock_guard<std::mutex> lock(mu);
    if (comm != nullptr && !aborted) {
      ncclCommAbort(comm);
      aborted = true;
    }
  }

  // Aborts and marks this communicator broken with `status` (the first failure wins).
  absl::Status Fail(absl::Status status) {
    AbortComm();
    std::lock_guard<std::mutex> lock(mu);
    if (broken.ok()) broken = std::move(status);
    watching = false;
    return broken;
  }

  // Polls until NCCL has nothing in progress and the stream has drained, or the timeout passes. Errors abort
  // the communicator: DEADLINE_EXCEEDED on timeout, UNAVAILABLE for NCCL's or CUDA's asynchronous errors.
  absl::Status Poll(const char* op) {
    const auto start = Clock::now();
    const auto deadline = start + options.timeout;
    while (true) {
      if (IsAborted()) return Fail(absl::UnavailableError(absl::StrCat("nccl ", op, " on ", Where(), ": aborted")));
      ncclResult_t async = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(comm, &async);
      if (r != ncclSuccess) return Fail(absl::UnavailableError(NcclMessage(op, r)));
      if (async != ncclSuccess && async != ncclInProgress) {
        return Fail(absl::UnavailableError(NcclMessage(op, async)));
      }
      if (async == ncclSuccess) {
        const cudaError_t q = cudaStreamQuery(stream);
        if (q == cudaSuccess) return absl::OkStatus();
        if (q != cudaErrorNotReady) {
          return Fail(absl::UnavailableError(
              absl::StrCat("nccl ", op, " on ", Where(), " failed: CUDA: ", cudaGetErrorString(q))));
        }
      }
      if (Clock::now() >= deadline) {
        return Fail(absl::DeadlineExceededError(
            absl::StrCat("nccl ", op, " on ", Where(), " did not finish within ", options.timeout.count(),
                         " ms (a peer did not take part); the communicator is aborted")));
      }
      Backoff(start);
    }
  }

  // A non-blocking communicator's call may return ncclInProgress while NCCL sets up (connections on first
  // use): polls until that is done, bounded by the timeout. Does not wait for the stream.
  absl::Status WaitEnqueued(const char* op) {
    const auto start = Clock::now();
    while (true) {
      ncclResult_t async = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(comm, &async);
      if (r != ncclSuccess) return Fail(absl::UnavailableError(NcclMessage(op, r)));
      if (async == ncclSuccess) return absl::OkStatus();
      if (async != ncclInProgress) return Fail(absl::UnavailableError(NcclMessage(op, async)));
      if (Clock::now() - start >= options.timeout) {
        return Fail(absl::DeadlineExceededError(absl::StrCat("nccl ", op, " on ", Where(), " could not be enqueued within ",
                                                             options.timeout.count(), " ms")));
      }
      Backoff(start);
    }
  }

  // Sets this rank's device on the calling thread and enqueues one NCCL call; `wait`: also waits for it
  // (and everything before it on the stream).
  enum class Wait { kNo, kYes };
  template <typename F>
  absl::Status Run(const char* op, Wait wait, F&& enqueue) {
    if (absl::Status b = Broken(); !b.ok()) return b;
    const cudaError_t e = cudaSetDevice(options.device);
    if (e != cudaSuccess) {
      return Fail(absl::UnavailableError(
          absl::StrCat("nccl ", op, " on ", Where(), ": cudaSetDevice failed: ", cudaGetErrorString(e))));
    }
    const ncclResult_t r = enqueue();
    if (r != ncclSuccess && r != ncclInProgress) return Fail(absl::UnavailableError(NcclMessage(op, r)));
    if (wait == Wait::kYes) return Poll(op);
    return r == ncclInProgress ? WaitEnqueued(op) : absl::OkStatus();
  }
  // Collectives: enqueue only when stream-ordered, else enqueue and wait.
  Wait CollectiveWait() const { return stream_ordered() ? Wait::kNo : Wait::kYes; }

  // The watchdog thread of a stream-ordered group: while a step is watched, polls its completion event and
  // NCCL's asynchronous error every 100 us; a failure or an overrun aborts the communicator.
  void WatchLoop() {
    cudaSetDevice(options.device);
    std::unique_lock<std::mutex> lock(mu);
    while (true) {
      watch_cv.wait(lock, [&] { return stopping || watching; });
      if (stopping) return;
      const Clock::time_point deadline = watch_deadline;
      lock.unlock();
      absl::Status failure;
      bool done = false;
      const cudaError_t q = cudaEventQuery(step_done);
      if (q == cudaSuccess) {
        done = true;
      } else if (q != cudaErrorNotReady) {
        failure = absl::UnavailableError(
            absl::StrCat("a step on ", Where(), " failed: CUDA: ", cudaGetErrorString(q)));
      } else {
        ncclResult_t async = ncclSuccess;
        const ncclResult_t r = IsAborted() ? ncclSuccess : ncclCommGetAsyncError(comm, &async);
        if (r != ncclSuccess || (async != ncclSuccess && async != ncclInProgress)) {
          failure = absl::UnavailableError(NcclMessage("step", r != ncclSuccess ? r : async));
        } else if (Clock::now() >= deadline) {
          failure = absl::DeadlineExceededError(
              absl::StrCat("a step's collectives on ", Where(), " did not finish within ", options.timeout.count(),
                           " ms (a peer did not take part); the communicator is aborted"));
        }
      }
      if (!failure.ok()) Fail(failure).IgnoreError();
      lock.lock();
      if (done) watching = false;
      if (!done && failure.ok()) {
        watch_cv.wait_for(lock, std::chrono::microseconds(100), [&] { return stopping || !watching; });
      }
    }
  }

  // Rank 0 makes the unique id and publishes it; the others wait for it (bounded by the timeout).
  absl::Status ExchangeUniqueId(ncclUniqueId& id) {
    if (options.rank == 0) {
      const ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess) return absl::UnavailableError(NcclMessage("ncclGetUniqueId", r));
    }
    if (options.size == 1) return absl::OkStatus();
    const std::string key = absl::StrCat(options.group, "/nccl_unique_id");
    const StoreLocation location{options.store_address, options.store_dir, options.timeout,
                                 options.store_token, options.store_tls};
    return UseStore(location, absl::StrCat("nccl rendezvous of '", key, "' on ", Where()),
                    [&](gloo::rendezvous::Store& store) {
                      if (options.rank == 0) {
                        const char* bytes = reinterpret_cast<const char*>(&id);
                        store.set(key, std::vector<char>(bytes, bytes + sizeof(id)));
                        return absl::OkStatus();
                      }
                      store.wait({key}, options.timeout);
                      const std::vector<char> value = store.get(key);
                      if (value.size() != sizeof(id)) {
                        return absl::UnavailableError(absl::StrCat("nccl rendezvous on ", Where(), ": key '", key,
                                                                   "' holds ", value.size(), " bytes, want ",
                                                                   sizeof(id)));
                      }
                      std::memcpy(&id, value.data(), sizeof(id));
                      return absl::OkStatus();
                    });
  }

  // Non-blocking ncclCommInitRankConfig, polled until done or the timeout (then aborted).
  absl::Status InitComm(const ncclUniqueId& id) {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const ncclResult_t r = ncclCommInitRankConfig(&comm, options.size, id, options.rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) {
      const std::string message = NcclMessage("ncclCommInitRankConfig", r);
      if (comm != nullptr) AbortComm();
      return r == ncclInvalidArgument || r == ncclInvalidUsage ? absl::FailedPreconditionError(message)
                                                               : absl::UnavailableError(message);
    }
    return Poll("initialization");
  }
};

NcclCommunicator::NcclCommunicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NcclCommunicator::~NcclCommunicator() = default;

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(const NcclOptions& options) {
  const std::string group = absl::StrCat("nccl group '", options.group, "'");
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(
        absl::StrCat(group, ": rank=", options.rank, " is not in [0, size=", options.size, ")"));
  }
  if (options.size > 1 && options.store_dir.empty() == options.store_address.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(group, ": give exactly one rendezvous store (address or directory)"));
  }
  if (options.device < 0) {
    return absl::InvalidArgumentError(absl::StrCat(group, ": device=", options.device, " is negative"));
  }
  if (options.timeout.count() <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(group, ": timeout=", options.timeout.count(), " ms is not positive"));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  const std::string where = impl->Where();

  int devices = 0;
  cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat(
        "nccl on ", where, ": no usable GPU: cudaGetDeviceCount failed: ", cudaGetErrorString(e)));
  }
  if (options.device >= devices) {
    return absl::FailedPreconditionError(
        absl::StrCat("nccl on ", where, ": this machine has ", devices, " CUDA device(s)"));
  }
  auto cuda_error = [&](const char* call, cudaError_t error) {
    return absl::UnavailableError(
        absl::StrCat("nccl on ", where, ": ", call, " failed: ", cudaGetErrorString(error)));
  };
  if (e = cudaSetDevice(options.device); e != cudaSuccess) return cuda_error("cudaSetDevice", e);
  if (options.stream != nullptr) {
    impl->stream = static_cast<cudaStream_t>(options.stream);
    if (e = cudaEventCreateWithFlags(&impl->step_done, cudaEventDisableTiming); e != cudaSuccess) {
      return cuda_error("cudaEventCreateWithFlags", e);
    }
  } else {
    if (e = cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking); e != cudaSuccess) {
      return cuda_error("cudaStreamCreateWithFlags", e);
    }
    impl->own_stream = true;
  }
  if (e = cudaMalloc(&impl->scratch, sizeof(float)); e != cudaSuccess) return cuda_error("cudaMalloc", e);

  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (absl::Status s = impl->ExchangeUniqueId(id); !s.ok()) return s;
  if (absl::Status s = impl->InitComm(id); !s.ok()) return s;
  if (impl->stream_ordered()) {
    if (!options.custom_all_reduce || options.size == 1) {
      impl->custom_off_reason = options.size == 1 ? "world size 1" : "turned off";
    } else {
      CustomAllReduceOptions custom;
      custom.group = absl::StrCat(options.group, "/custom_all_reduce");
      custom.rank = options.rank;
      custom.size = options.size;
      custom.device = options.device;
      custom.store_address = options.store_address;
      custom.store_token = options.store_token;
      custom.store_tls = options.store_tls;
      custom.store_dir = options.store_dir;
      custom.timeout = options.timeout;
      absl::StatusOr<std::unique_ptr<CustomAllReduce>> made = CustomAllReduce::Create(custom);
      if (made.ok()) {
        impl->custom = std::move(made).value();
      } else if (made.status().code() == absl::StatusCode::kUnavailable) {  // not for this group: NCCL only
        impl->custom_off_reason = std::string(made.status().message());
      } else {
        return absl::Status(made.status().code(),
                            absl::StrCat("nccl on ", where, ": the custom all-reduce: ", made.status().message()));
      }
    }
    impl->watchdog = std::thread([raw = impl.get()] { raw->WatchLoop(); });
  }
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(impl)));
}

int NcclCommunicator::rank() const { return impl_->options.rank; }
int NcclCommunicator::size() const { return impl_->options.size; }

absl::Status NcclCommunicator::AllReduceSum(Tensor& data) {
  TESSERA_CHECK(data.dtype() == DType::kF32 || data.dtype() == DType::kBF16);
  if (impl_->custom != nullptr && impl_->custom->Takes(data)) {
    if (absl::Status b = impl_->Broken(); !b.ok()) return b;
    absl::Status s = impl_->custom->AllReduceSum(data, impl_->stream);
    return s.ok() ? s : impl_->Fail(absl::Status(s.code(), absl::StrCat("custom all-reduce on ", impl_->Where(), ": ", s.message())));
  }
  const ncclDataType_t type = data.dtype() == DType::kF32 ? ncclFloat32 : ncclBfloat16;
  return impl_->Run("all-reduce", impl_->CollectiveWait(), [&] {
    return ncclAllReduce(data.data(), data.data(), static_cast<size_t>(data.numel()), type, ncclSum,
                         impl_->comm, impl_->stream);
  });
}

absl::Status NcclCommunicator::AllGather(const Tensor& in, Tensor& out) {
  TESSERA_CHECK(in.dtype() == out.dtype() && out.nbytes() == in.nbytes() * size());
  return impl_->Run("all-gather", impl_->CollectiveWait(), [&] {
    return ncclAllGather(in.data(), out.data(), static_cast<size_t>(in.nbytes()), ncclUint8, impl_->comm,
                         impl_->stream);
  });
}

absl::Status NcclCommunicator::Gather(const Tensor& in, Tensor& out, int root) {
  TESSERA_CHECK(root >= 0 && root < size());
  const size_t bytes = static_cast<size_t>(in.nbytes());
  const bool is_root = rank() == root;
  if (is_root) TESSERA_CHECK(in.dtype() == out.dtype() && out.nbytes() == in.nbytes() * size());
  return impl_->Run("gather", impl_->CollectiveWait(), [&] {
    if (is_root && bytes > 0) {  // root's own part: a device copy in stream order
      const cudaError_t e = cudaMemcpyAsync(static_cast<char*>(out.data()) + bytes * root, in.data(), bytes,
                                            cudaMemcpyDeviceToDevice, impl_->stream);
      if (e != cudaSuccess) return ncclUnhandledCudaError;
    }
    ncclResult_t r = ncclGroupStart();
    for (int peer = 0; peer < size() && r == ncclSuccess; ++peer) {
      if (peer == rank()) continue;
      if (is_root) {
        r = ncclRecv(static_cast<char*>(out.data()) + bytes * peer, bytes, ncclUint8, peer, impl_->comm,
                     impl_->stream);
      } else if (peer == root) {
        r = ncclSend(in.data(), bytes, ncclUint8, root, impl_->comm, impl_->stream);
      }
    }
    const ncclResult_t end = ncclGroupEnd();
    return r != ncclSuccess ? r : end;
  });
}

absl::Status NcclCommunicator::Broadcast(Tensor& data, int root) {
  TESSERA_CHECK(root >= 0 && root < size());
  return impl_->Run("broadcast", impl_->CollectiveWait(), [&] {
    return ncclBroadcast(data.data(), data.data(), static_cast<size_t>(data.nbytes()), ncclUint8, root,
                         impl_->comm, impl_->stream);
  });
}

absl::Status NcclCommunicator::Send(const Tensor& data, int dst) {
  TESSERA_CHECK(dst >= 0 && dst < size() && dst != rank());
  return impl_->Run("send", Impl::Wait::kYes, [&] {
    return ncclSend(data.data(), static_cast<size_t>(data.nbytes()), ncclUint8, dst, impl_->comm,
                    impl_->stream);
  });
}

absl::Status NcclCommunicator::Recv(Tensor& data, int src) {
  TESSERA_CHECK(src >= 0 && src < size() && src != rank());
  return impl_->Run("recv", Impl::Wait::kYes, [&] {
    return ncclRecv(data.data(), static_cast<size_t>(data.nbytes()), ncclUint8, src, impl_->comm,
                    impl_->stream);
  });
}

absl::Status NcclCommunicator::Barrier() {
  return impl_->Run("barrier", Impl::Wait::kYes, [&] {
    return ncclAllReduce(impl_->scratch, impl_->scratch, 1, ncclFloat32, ncclSum, impl_->comm, impl_->stream);
  });
}

void NcclCommunicator::Abort() {
  impl_->Fail(absl::UnavailableError(
                  absl::StrCat("nccl on ", impl_->Where(), ": aborted (the group is being re-formed)")))
      .IgnoreError();
}

bool NcclCommunicator::stream_ordered() const { return impl_->stream_ordered(); }

void NcclCommunicator::WatchStep() {
  if (!impl_->stream_ordered()) return;
  Impl& im = *impl_;
  if (!im.Broken().ok()) return;
  cudaSetDevice(im.options.device);
  const cudaError_t e = cudaEventRecord(im.step_done, im.stream);
  if (e != cudaSuccess) {
    im.Fail(absl::UnavailableError(
                absl::StrCat("nccl on ", im.Where(), ": cudaEventRecord failed: ", cudaGetErrorString(e))))
        .IgnoreError();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(im.mu);
    im.watching = true;
    im.watch_deadline = Clock::now() + im.options.timeout;
  }
  im.watch_cv.notify_all();
}

absl::Status NcclCommunicator::StepStatus() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->watching = false;  // the caller waited for the stream: the step is over, one way or another
  return impl_->broken;
}

std::string NcclCommunicator::custom_all_reduce_off_reason() const { return impl_->custom_off_reason; }

}  // namespace tessera

// The plugin's entry point (libtessera_nccl.so), found with dlsym by JoinGroup (communicator_factory.cc).
extern "C" tessera::Communicator* TesseraCreateNcclCommunicator(const tessera::NcclOptions* options,
                                                                absl::Status* error) {
  absl::StatusOr<std::unique_ptr<tessera::NcclCommunicator>> comm =
      tessera::NcclCommunicator::Create(*options);
  if (!comm.ok()) {
    *error = comm.status();
    return nullptr;
  }
  return comm->release();
}
