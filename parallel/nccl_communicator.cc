#include "parallel/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <gloo/rendezvous/file_store.h>
#include <nccl.h>

#include <cstring>
#include <exception>
#include <filesystem>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/grpc_store.h"
#include "parallel/timeout_error.h"

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
  cudaStream_t stream = nullptr;  // non-blocking; every NCCL call is enqueued here
  ncclComm_t comm = nullptr;
  float* scratch = nullptr;  // [1] on the device, Barrier's all-reduce (its value does not matter)
  bool aborted = false;      // comm was aborted (and so freed): never destroy it
  absl::Status broken;       // the first operation error; every later call returns it

  ~Impl() {
    if (comm == nullptr && scratch == nullptr && stream == nullptr) return;  // nothing was made
    cudaSetDevice(options.device);
    if (comm != nullptr && !aborted) {
      // Finalize flushes outstanding work; in non-blocking mode it may return ncclInProgress and is polled
      // (Poll aborts the communicator when finalizing fails or times out).
      bool finalized = false;
      if (broken.ok()) {
        const ncclResult_t r = ncclCommFinalize(comm);
        finalized = (r == ncclSuccess || r == ncclInProgress) && Poll("finalize").ok();
      }
      if (finalized) {
        ncclCommDestroy(comm);
      } else if (!aborted) {
        ncclCommAbort(comm);
      }
    }
    if (scratch != nullptr) cudaFree(scratch);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  std::string Where() const {
    return absl::StrCat("rank ", options.rank, " of group '", options.group, "' (device ", options.device,
                        ")");
  }

  std::string NcclMessage(const char* op, ncclResult_t result) const {
    std::string message = absl::StrCat("nccl ", op, " on ", Where(), " failed: ", ncclGetErrorString(result));
    const char* last = ncclGetLastError(comm);  // comm may be null
    if (last != nullptr && last[0] != '\0') absl::StrAppend(&message, " (", last, ")");
    return message;
  }

  // Aborts the NCCL communicator (its kernels stop and its resources are freed) and marks this one broken.
  absl::Status Fail(absl::Status status) {
    if (comm != nullptr && !aborted) {
      ncclCommAbort(comm);
      aborted = true;
    }
    broken = status;
    return status;
  }

  // Polls until NCCL has nothing in progress and the stream has drained, or the timeout passes. Errors abort
  // the communicator: DEADLINE_EXCEEDED on timeout, UNAVAILABLE for NCCL's or CUDA's asynchronous errors.
  absl::Status Poll(const char* op) {
    const auto start = Clock::now();
    const auto deadline = start + options.timeout;
    while (true) {
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

  // Sets this rank's device on the calling thread, enqueues one NCCL call and waits for it.
  template <typename F>
  absl::Status Run(const char* op, F&& enqueue) {
    if (!broken.ok()) return broken;
    const cudaError_t e = cudaSetDevice(options.device);
    if (e != cudaSuccess) {
      return Fail(absl::UnavailableError(
          absl::StrCat("nccl ", op, " on ", Where(), ": cudaSetDevice failed: ", cudaGetErrorString(e))));
    }
    const ncclResult_t r = enqueue();
    if (r != ncclSuccess && r != ncclInProgress) return Fail(absl::UnavailableError(NcclMessage(op, r)));
    return Poll(op);
  }

  // Rank 0 makes the unique id and publishes it; the others wait for it (bounded by the timeout).
  absl::Status ExchangeUniqueId(ncclUniqueId& id) {
    if (options.rank == 0) {
      const ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess) return absl::UnavailableError(NcclMessage("ncclGetUniqueId", r));
    }
    if (options.size == 1) return absl::OkStatus();
    const std::string key = absl::StrCat(options.group, "/nccl_unique_id");
    const Clock::time_point start = Clock::now();
    try {
      std::unique_ptr<gloo::rendezvous::Store> store;
      if (!options.store_address.empty()) {
        store = std::make_unique<GrpcStore>(options.store_address, options.timeout);
      } else {
        std::filesystem::create_directories(options.store_dir);
        store = std::make_unique<gloo::rendezvous::FileStore>(options.store_dir);
      }
      if (options.rank == 0) {
        const char* bytes = reinterpret_cast<const char*>(&id);
        store->set(key, std::vector<char>(bytes, bytes + sizeof(id)));
      } else {
        store->wait({key}, options.timeout);
        const std::vector<char> value = store->get(key);
        if (value.size() != sizeof(id)) {
          return absl::UnavailableError(absl::StrCat("nccl rendezvous on ", Where(), ": key '", key,
                                                     "' holds ", value.size(), " bytes, want ", sizeof(id)));
        }
        std::memcpy(&id, value.data(), sizeof(id));
      }
    } catch (const TimeoutError& e) {  // the rendezvous store's deadline
      return absl::DeadlineExceededError(
          absl::StrCat("nccl rendezvous of '", key, "' on ", Where(), " failed: ", e.what()));
    } catch (const std::exception& e) {  // Gloo's FileStore signals its timeout untyped: judge by the clock
      const std::string message =
          absl::StrCat("nccl rendezvous of '", key, "' on ", Where(), " failed: ", e.what());
      return Clock::now() - start >= options.timeout ? absl::DeadlineExceededError(message)
                                                     : absl::UnavailableError(message);
    }
    return absl::OkStatus();
  }

  // Non-blocking ncclCommInitRankConfig, polled until done or the timeout (then aborted).
  absl::Status InitComm(const ncclUniqueId& id) {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const ncclResult_t r = ncclCommInitRankConfig(&comm, options.size, id, options.rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) {
      const std::string message = NcclMessage("ncclCommInitRankConfig", r);
      if (comm != nullptr) {
        ncclCommAbort(comm);
        aborted = true;
      }
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
  if (e = cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking); e != cudaSuccess) {
    return cuda_error("cudaStreamCreateWithFlags", e);
  }
  if (e = cudaMalloc(&impl->scratch, sizeof(float)); e != cudaSuccess) return cuda_error("cudaMalloc", e);

  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (absl::Status s = impl->ExchangeUniqueId(id); !s.ok()) return s;
  if (absl::Status s = impl->InitComm(id); !s.ok()) return s;
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(impl)));
}

int NcclCommunicator::rank() const { return impl_->options.rank; }
int NcclCommunicator::size() const { return impl_->options.size; }

absl::Status NcclCommunicator::AllReduceSum(Tensor& data) {
  TESSERA_CHECK(data.dtype() == DType::kF32 || data.dtype() == DType::kBF16);
  const ncclDataType_t type = data.dtype() == DType::kF32 ? ncclFloat32 : ncclBfloat16;
  return impl_->Run("all-reduce", [&] {
    return ncclAllReduce(data.data(), data.data(), static_cast<size_t>(data.numel()), type, ncclSum,
                         impl_->comm, impl_->stream);
  });
}

absl::Status NcclCommunicator::AllGather(const Tensor& in, Tensor& out) {
  TESSERA_CHECK(in.dtype() == out.dtype() && out.nbytes() == in.nbytes() * size());
  return impl_->Run("all-gather", [&] {
    return ncclAllGather(in.data(), out.data(), static_cast<size_t>(in.nbytes()), ncclUint8, impl_->comm,
                         impl_->stream);
  });
}

absl::Status NcclCommunicator::Broadcast(Tensor& data, int root) {
  TESSERA_CHECK(root >= 0 && root < size());
  return impl_->Run("broadcast", [&] {
    return ncclBroadcast(data.data(), data.data(), static_cast<size_t>(data.nbytes()), ncclUint8, root,
                         impl_->comm, impl_->stream);
  });
}

absl::Status NcclCommunicator::Send(const Tensor& data, int dst) {
  TESSERA_CHECK(dst >= 0 && dst < size() && dst != rank());
  return impl_->Run("send", [&] {
    return ncclSend(data.data(), static_cast<size_t>(data.nbytes()), ncclUint8, dst, impl_->comm,
                    impl_->stream);
  });
}

absl::Status NcclCommunicator::Recv(Tensor& data, int src) {
  TESSERA_CHECK(src >= 0 && src < size() && src != rank());
  return impl_->Run("recv", [&] {
    return ncclRecv(data.data(), static_cast<size_t>(data.nbytes()), ncclUint8, src, impl_->comm,
                    impl_->stream);
  });
}

absl::Status NcclCommunicator::Barrier() {
  return impl_->Run("barrier", [&] {
    return ncclAllReduce(impl_->scratch, impl_->scratch, 1, ncclFloat32, ncclSum, impl_->comm, impl_->stream);
  });
}

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
