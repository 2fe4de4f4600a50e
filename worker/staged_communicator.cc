#include "worker/staged_communicator.h"

#include "core/check.h"
#include "core/dtype.h"
#include "core/status_macros.h"

namespace tessera {

char* StagedCommunicator::Staging(std::vector<char>& buffer, int64_t bytes) {
  if (static_cast<int64_t>(buffer.size()) < bytes) buffer.resize(static_cast<size_t>(bytes));
  return buffer.data();
}

absl::Status StagedCommunicator::AllReduceSum(Tensor& data) {
  TESSERA_CHECK(data.dtype() == DType::kF32 || data.dtype() == DType::kBF16);
  const int64_t n = data.numel();
  float* sum = reinterpret_cast<float*>(Staging(out_, n * 4));
  if (data.dtype() == DType::kF32) {
    RETURN_IF_ERROR(backend_.CopyToHost(sum, data.data(), n * 4));
  } else {
    const uint16_t* bf16 = reinterpret_cast<uint16_t*>(Staging(in_, n * 2));
    RETURN_IF_ERROR(backend_.CopyToHost(in_.data(), data.data(), n * 2));
    for (int64_t i = 0; i < n; ++i) sum[i] = Bf16ToF32(bf16[i]);
  }
  Tensor host(sum, DType::kF32, {n});
  if (absl::Status s = host_->AllReduceSum(host); !s.ok()) return s;
  if (data.dtype() == DType::kF32) {
    backend_.CopyToDevice(data.data(), sum, n * 4);
  } else {
    uint16_t* bf16 = reinterpret_cast<uint16_t*>(in_.data());
    for (int64_t i = 0; i < n; ++i) bf16[i] = F32ToBf16(sum[i]);
    backend_.CopyToDevice(data.data(), bf16, n * 2);
  }
  return absl::OkStatus();
}

absl::Status StagedCommunicator::AllGather(const Tensor& in, Tensor& out) {
  TESSERA_CHECK(out.nbytes() == in.nbytes() * size());
  char* mine = Staging(in_, in.nbytes());
  char* all = Staging(out_, out.nbytes());
  RETURN_IF_ERROR(backend_.CopyToHost(mine, in.data(), in.nbytes()));
  Tensor host_in(mine, in.dtype(), {in.numel()}), host_out(all, out.dtype(), {out.numel()});
  if (absl::Status s = host_->AllGather(host_in, host_out); !s.ok()) return s;
  backend_.CopyToDevice(out.data(), all, out.nbytes());
  return absl::OkStatus();
}

absl::Status StagedCommunicator::Gather(const Tensor& in, Tensor& out, int root) {
  const bool is_root = rank() == root;
  if (is_root) TESSERA_CHECK(out.nbytes() == in.nbytes() * size());
  char* mine = Staging(in_, in.nbytes());
  char* all = is_root ? Staging(out_, out.nbytes()) : nullptr;
  RETURN_IF_ERROR(backend_.CopyToHost(mine, in.data(), in.nbytes()));
  Tensor host_in(mine, in.dtype(), {in.numel()});
  Tensor host_out = is_root ? Tensor(all, out.dtype(), {out.numel()}) : Tensor();
  RETURN_IF_ERROR(host_->Gather(host_in, host_out, root));
  if (is_root) backend_.CopyToDevice(out.data(), all, out.nbytes());
  return absl::OkStatus();
}

absl::Status StagedCommunicator::Broadcast(Tensor& data, int root) {
  char* host = Staging(out_, data.nbytes());
  if (rank() == root) RETURN_IF_ERROR(backend_.CopyToHost(host, data.data(), data.nbytes()));
  Tensor staged(host, data.dtype(), {data.numel()});
  if (absl::Status s = host_->Broadcast(staged, root); !s.ok()) return s;
  if (rank() != root) backend_.CopyToDevice(data.data(), host, data.nbytes());
  return absl::OkStatus();
}

absl::Status StagedCommunicator::Send(const Tensor& data, int dst) {
  char* host = Staging(out_, data.nbytes());
  RETURN_IF_ERROR(backend_.CopyToHost(host, data.data(), data.nbytes()));
  return host_->Send(Tensor(host, data.dtype(), {data.numel()}), dst);
}

absl::Status StagedCommunicator::Recv(Tensor& data, int src) {
  char* host = Staging(in_, data.nbytes());
  Tensor staged(host, data.dtype(), {data.numel()});
  if (absl::Status s = host_->Recv(staged, src); !s.ok()) return s;
  backend_.CopyToDevice(data.data(), host, data.nbytes());
  return absl::OkStatus();
}

}  // namespace tessera
