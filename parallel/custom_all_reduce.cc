#include "parallel/custom_all_reduce.h"

#include <cuda_runtime_api.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/status_macros.h"
#include "core/str_cat.h"
#include "parallel/custom_all_reduce_kernel.h"
#include "parallel/store_exchange.h"

namespace tessera {
namespace {

constexpr char kOk[] = "ok";

std::string Hostname() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "";
  return name;
}

// A verdict travels as "ok<payload>" or "no<reason>".
std::string Verdict(const absl::Status& local, std::string_view payload) {
  return local.ok() ? Cat(kOk, payload) : Cat("no", local.message());
}
bool VerdictOk(const std::string& v) { return v.rfind(kOk, 0) == 0; }
std::string_view VerdictBody(const std::string& v) { return std::string_view(v).substr(2); }

// The first rank whose verdict is not ok, as UNAVAILABLE naming it; OK when all are.
absl::Status FirstRefusal(const std::vector<std::string>& verdicts, std::string_view stage) {
  for (size_t r = 0; r < verdicts.size(); ++r) {
    if (!VerdictOk(verdicts[r])) {
      return absl::UnavailableError(Cat(stage, " failed on rank ", r, ": ", VerdictBody(verdicts[r])));
    }
  }
  return absl::OkStatus();
}

}  // namespace

struct CustomAllReduce::Impl {
  CustomAllReduceOptions options;
  AllReduceTopology topology;
  char* region = nullptr;        // this rank's signals + 2 message buffers (cudaMalloc)
  uint32_t* counters = nullptr;  // [kOneShotBlocks] epochs
  int* abort_host = nullptr;     // cudaHostAlloc, mapped
  const volatile int* abort_device = nullptr;
  char* peers[kOneShotMaxWorld] = {};  // peers' regions opened with IPC (null for this rank)

  ~Impl() {
    if (region == nullptr && counters == nullptr && abort_host == nullptr) return;
    cudaSetDevice(options.device);
    if (abort_host != nullptr) __atomic_store_n(abort_host, 1, __ATOMIC_RELEASE);
    cudaDeviceSynchronize();  // no kernel of ours may still read or write what is freed below
    for (char* peer : peers) {
      if (peer != nullptr) cudaIpcCloseMemHandle(peer);
    }
    if (region != nullptr) cudaFree(region);
    if (counters != nullptr) cudaFree(counters);
    if (abort_host != nullptr) cudaFreeHost(abort_host);
  }

  std::string Where() const {
    return Cat("rank ", options.rank, " of group '", options.group, "' (device ", options.device, ")");
  }
  absl::Status CudaError(const char* call, cudaError_t e) const {
    return absl::UnavailableError(Cat(call, " failed on ", Where(), ": ", cudaGetErrorString(e)));
  }
  StoreLocation Location() const {
    return {options.store_address, options.store_dir, options.timeout, options.store_token,
            options.store_tls};
  }

  // Whether this device can read every peer's, from the peers' PCI bus ids.
  absl::Status CheckPeerAccess(const std::vector<std::string>& bus_ids) const {
    for (int r = 0; r < options.size; ++r) {
      if (r == options.rank) continue;
      int device = -1;
      if (cudaDeviceGetByPCIBusId(&device, bus_ids[static_cast<size_t>(r)].c_str()) != cudaSuccess) {
        cudaGetLastError();
        return absl::UnavailableError(Cat("rank ", r, "'s GPU (", bus_ids[static_cast<size_t>(r)],
                                          ") is not visible to rank ", options.rank));
      }
      if (device == options.device) continue;  // two ranks on one GPU (tests): its own memory
      int can = 0;
      if (cudaDeviceCanAccessPeer(&can, options.device, device) != cudaSuccess || can == 0) {
        cudaGetLastError();
        return absl::UnavailableError(Cat("device ", options.device, " (rank ", options.rank,
                                          ") has no peer access to device ", device, " (rank ", r, ")"));
      }
    }
    return absl::OkStatus();
  }

  // This rank's memory: zeroed signals and buffers, counters, the abort flag; returns its IPC handle.
  absl::StatusOr<cudaIpcMemHandle_t> Allocate() {
    const size_t bytes = static_cast<size_t>(kOneShotSignalBytes + 2 * options.max_bytes);
    if (cudaError_t e = cudaMalloc(reinterpret_cast<void**>(&region), bytes); e != cudaSuccess) {
      region = nullptr;
      return CudaError("cudaMalloc of the custom all-reduce's buffers", e);
    }
    if (cudaError_t e = cudaMalloc(reinterpret_cast<void**>(&counters), kOneShotBlocks * sizeof(uint32_t));
        e != cudaSuccess) {
      counters = nullptr;
      return CudaError("cudaMalloc of the custom all-reduce's counters", e);
    }
    if (cudaError_t e =
            cudaHostAlloc(reinterpret_cast<void**>(&abort_host), sizeof(int), cudaHostAllocMapped);
        e != cudaSuccess) {
      abort_host = nullptr;
      return CudaError("cudaHostAlloc of the abort flag", e);
    }
    *abort_host = 0;
    void* device_flag = nullptr;
    if (cudaError_t e = cudaHostGetDevicePointer(&device_flag, abort_host, 0); e != cudaSuccess) {
      return CudaError("cudaHostGetDevicePointer", e);
    }
    abort_device = static_cast<const volatile int*>(device_flag);
    if (cudaError_t e = cudaMemset(region, 0, bytes); e != cudaSuccess) return CudaError("cudaMemset", e);
    if (cudaError_t e = cudaMemset(counters, 0, kOneShotBlocks * sizeof(uint32_t)); e != cudaSuccess) {
      return CudaError("cudaMemset", e);
    }
    if (cudaError_t e = cudaDeviceSynchronize(); e != cudaSuccess)
      return CudaError("cudaDeviceSynchronize", e);
    cudaIpcMemHandle_t handle;
    if (cudaError_t e = cudaIpcGetMemHandle(&handle, region); e != cudaSuccess) {
      return CudaError("cudaIpcGetMemHandle", e);
    }
    return handle;
  }

  absl::Status OpenPeers(const std::vector<std::string>& verdicts) {
    for (int r = 0; r < options.size; ++r) {
      if (r == options.rank) continue;
      const std::string_view body = VerdictBody(verdicts[static_cast<size_t>(r)]);
      cudaIpcMemHandle_t handle;
      if (body.size() != sizeof(handle)) {
        return absl::UnavailableError(
            Cat("rank ", r, " sent a memory handle of ", body.size(), " bytes, want ", sizeof(handle)));
      }
      std::memcpy(&handle, body.data(), sizeof(handle));
      void* mapped = nullptr;
      if (cudaError_t e = cudaIpcOpenMemHandle(&mapped, handle, cudaIpcMemLazyEnablePeerAccess);
          e != cudaSuccess) {
        cudaGetLastError();
        return absl::UnavailableError(
            Cat("cudaIpcOpenMemHandle of rank ", r, "'s buffers failed: ", cudaGetErrorString(e)));
      }
      peers[r] = static_cast<char*>(mapped);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<std::string>> Exchange(std::string_view stage, std::string_view mine) const {
    return AllGatherThroughStore(Location(), Cat("custom all-reduce ", stage, " on ", Where()),
                                 Cat(options.group, "/", stage), options.rank, options.size, mine);
  }
};

CustomAllReduce::CustomAllReduce(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CustomAllReduce::~CustomAllReduce() = default;

absl::StatusOr<std::unique_ptr<CustomAllReduce>> CustomAllReduce::Create(
    const CustomAllReduceOptions& options) {
  const std::string group = Cat("custom all-reduce group '", options.group, "'");
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(
        Cat(group, ": rank=", options.rank, " is not in [0, size=", options.size, ")"));
  }
  if (options.size > 1 && options.store_dir.empty() == options.store_address.empty()) {
    return absl::InvalidArgumentError(
        Cat(group, ": give exactly one rendezvous store (address or directory)"));
  }
  if (options.max_bytes < 0 || options.max_bytes % 16 != 0) {
    return absl::InvalidArgumentError(
        Cat(group, ": max_bytes=", options.max_bytes, " is not a non-negative multiple of 16"));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  if (impl->options.max_bytes == 0) impl->options.max_bytes = DefaultOneShotMaxBytes(options.size);
  impl->topology.world = options.size;
  const OneShotEligibility world_ok = OneShotEligible({options.size, true, true, true});
  if (!world_ok.ok) return absl::UnavailableError(Cat(group, ": ", world_ok.reason));

  // Every rank's answers in the same order, so that all decide alike; a rank that fails locally still
  // publishes why, so that the others do not wait for it.
  int devices = 0;
  absl::Status local = absl::OkStatus();
  char bus_id[64] = {};
  if (cudaError_t e = cudaGetDeviceCount(&devices); e != cudaSuccess) {
    local = absl::UnavailableError(Cat("no usable GPU: ", cudaGetErrorString(e)));
  } else if (options.device < 0 || options.device >= devices) {
    local = absl::UnavailableError(Cat("device ", options.device, " does not exist"));
  } else if (cudaError_t e2 = cudaSetDevice(options.device); e2 != cudaSuccess) {
    local = impl->CudaError("cudaSetDevice", e2);
  } else if (cudaError_t e3 = cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), options.device);
             e3 != cudaSuccess) {
    local = impl->CudaError("cudaDeviceGetPCIBusId", e3);
  }
  if (options.size == 1) return local.ok() ? absl::UnavailableError(Cat(group, ": world size 1")) : local;

  // 1. Where every rank runs.
  ASSIGN_OR_RETURN(std::vector<std::string> places,
                   impl->Exchange("topology", Verdict(local, Cat(Hostname(), "\n", bus_id))));
  RETURN_IF_ERROR(FirstRefusal(places, Cat(group, ": set-up")));
  std::vector<std::string> hosts, bus_ids;
  for (const std::string& place : places) {
    const std::string_view body = VerdictBody(place);
    const size_t newline = body.find('\n');
    hosts.emplace_back(body.substr(0, newline));
    bus_ids.emplace_back(newline == std::string_view::npos ? std::string_view() : body.substr(newline + 1));
  }
  impl->topology.same_host = true;
  for (const std::string& host : hosts) impl->topology.same_host &= host == hosts[0];

  // 2. Peer access from every rank, and this rank's memory handle.
  absl::Status access = impl->topology.same_host ? impl->CheckPeerAccess(bus_ids) : absl::OkStatus();
  std::string handle_bytes;
  if (access.ok() && impl->topology.same_host) {
    absl::StatusOr<cudaIpcMemHandle_t> handle = impl->Allocate();
    if (handle.ok()) {
      handle_bytes.assign(reinterpret_cast<const char*>(&*handle), sizeof(*handle));
    } else {
      access = handle.status();
    }
  }
  ASSIGN_OR_RETURN(std::vector<std::string> handles,
                   impl->Exchange("handles", Verdict(access, handle_bytes)));
  impl->topology.all_peer_access = FirstRefusal(handles, "").ok();
  const OneShotEligibility eligible = OneShotEligible(impl->topology);
  if (!eligible.ok) {
    absl::Status why = FirstRefusal(handles, "peer access");
    return absl::UnavailableError(
        Cat(group, ": ", eligible.reason, why.ok() ? "" : Cat(" (", why.message(), ")")));
  }

  // 3. Every rank opened every peer's memory.
  const absl::Status opened = impl->OpenPeers(handles);
  ASSIGN_OR_RETURN(std::vector<std::string> opens, impl->Exchange("opened", Verdict(opened, "")));
  RETURN_IF_ERROR(FirstRefusal(opens, Cat(group, ": opening the peers' memory")));
  return std::unique_ptr<CustomAllReduce>(new CustomAllReduce(std::move(impl)));
}

bool CustomAllReduce::Takes(const Tensor& data) const {
  return ChooseAllReduce(impl_->topology, data.nbytes(), data.dtype(), impl_->options.max_bytes) ==
         AllReduceAlgorithm::kOneShot;
}

absl::Status CustomAllReduce::AllReduceSum(Tensor& data, void* stream) {
  TESSERA_CHECK(Takes(data));
  Impl& im = *impl_;
  OneShotParams params;
  for (int r = 0; r < im.options.size; ++r)
    params.regions[r] = r == im.options.rank ? im.region : im.peers[r];
  params.counters = im.counters;
  params.abort = im.abort_device;
  params.rank = im.options.rank;
  params.world = im.options.size;
  params.buffer_bytes = im.options.max_bytes;
  params.in = data.data();
  params.out = data.data();
  params.bytes = data.nbytes();
  params.bf16 = data.dtype() == DType::kBF16;
  if (cudaError_t e = cudaSetDevice(im.options.device); e != cudaSuccess)
    return im.CudaError("cudaSetDevice", e);
  if (cudaError_t e = LaunchOneShotAllReduce(params, static_cast<cudaStream_t>(stream)); e != cudaSuccess) {
    return im.CudaError("launching the one-shot all-reduce", e);
  }
  return absl::OkStatus();
}

void CustomAllReduce::Abort() {
  if (impl_->abort_host != nullptr) __atomic_store_n(impl_->abort_host, 1, __ATOMIC_RELEASE);
}

int64_t CustomAllReduce::max_bytes() const { return impl_->options.max_bytes; }
const AllReduceTopology& CustomAllReduce::topology() const { return impl_->topology; }

}  // namespace tessera
