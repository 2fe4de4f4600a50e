#include "parallel/gloo_communicator.h"

#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>
#include <signal.h>

#include <cstring>
#include <exception>
#include <filesystem>
#include <mutex>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "parallel/grpc_store.h"
#include "parallel/timeout_error.h"

namespace tessera {

struct GlooCommunicator::Impl {
  GlooOptions options;
  std::unique_ptr<gloo::rendezvous::Store> base_store;  // FileStore or GrpcStore
  std::unique_ptr<gloo::rendezvous::PrefixStore> store;
  std::shared_ptr<gloo::transport::Device> device;
  std::shared_ptr<gloo::rendezvous::Context> context;
  absl::Status broken;       // the first error; every later call returns it
  std::vector<char> peers;  // the other ranks' contributions to a direct all-reduce (grows, never shrinks)
  std::mutex abort_mu;       // Abort (any thread) against the buffers an operation waits on
  bool aborted = false;                                   // guarded by abort_mu
  std::vector<gloo::transport::UnboundBuffer*> waiting;  // guarded by abort_mu

  // The buffers one operation waits on, registered for Abort while it lives. Throws when already aborted.
  class Waits {
   public:
    Waits(Impl& impl, std::initializer_list<gloo::transport::UnboundBuffer*> buffers) : impl_(impl), n_(buffers.size()) {
      std::lock_guard<std::mutex> lock(impl_.abort_mu);
      if (impl_.aborted) throw gloo::IoException("aborted: the group is being re-formed");
      impl_.waiting.insert(impl_.waiting.end(), buffers.begin(), buffers.end());
    }
    ~Waits() {
      std::lock_guard<std::mutex> lock(impl_.abort_mu);
      impl_.waiting.resize(impl_.waiting.size() - n_);
    }

   private:
    Impl& impl_;
    const size_t n_;
  };

  // Runs a Gloo call, turning its exceptions into a Status that names the operation and this rank. A timeout
  // (DEADLINE_EXCEEDED) is a TimeoutError from our own waits and store, or any Gloo exception raised once the
  // call has run for the timeout (Gloo's own waits and its FileStore throw untyped IoExceptions when their
  // deadline passes); every other failure is UNAVAILABLE.
  template <typename F>
  absl::Status Guard(const char* op, F&& fn) {
    if (!broken.ok()) return broken;
    {
      std::lock_guard<std::mutex> lock(abort_mu);
      if (aborted) {  // also Gloo's own algorithms, which Abort cannot interrupt once they wait
        broken = absl::UnavailableError(absl::StrCat("gloo ", op, " on rank ", options.rank, " of group '",
                                                     options.group, "' failed: aborted (the group is re-formed)"));
        return broken;
      }
    }
    const auto start = std::chrono::steady_clock::now();
    bool timed_out = false;
    std::string what;
    try {
      fn();
      return absl::OkStatus();
    } catch (const TimeoutError& e) {
      timed_out = true;
      what = e.what();
    } catch (const std::exception& e) {
      timed_out = std::chrono::steady_clock::now() - start >= options.timeout;
      what = e.what();
    }
    std::string message = absl::StrCat("gloo ", op, " on rank ", options.rank, " of group '", options.group,
                                       "' failed: ", what);
    broken = timed_out ? absl::DeadlineExceededError(message) : absl::UnavailableError(message);
    return broken;
  }
};

namespace {

// Gloo writes to its sockets without MSG_NOSIGNAL, so a peer that dies mid-collective would kill this process
// with SIGPIPE instead of failing the call. Ignore SIGPIPE (when nobody installed a handler): the write then
// fails with EPIPE, which Gloo reports as an exception and we as UNAVAILABLE.
void IgnoreSigpipeOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current {};
    if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
  });
}

}  // namespace

GlooCommunicator::GlooCommunicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GlooCommunicator::~GlooCommunicator() = default;

absl::StatusOr<std::unique_ptr<GlooCommunicator>> GlooCommunicator::Create(const GlooOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(absl::StrCat("gloo group '", options.group, "': rank=", options.rank,
                                                   " is not in [0, size=", options.size, ")"));
  }
  if (options.store_dir.empty() == options.store_address.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gloo group '", options.group, "': give exactly one rendezvous store (address or directory)"));
  }
  IgnoreSigpipeOnce();
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  absl::Status status = impl->Guard("rendezvous", [&] {
    if (!options.store_address.empty()) {
      impl->base_store = std::make_unique<GrpcStore>(options.store_address, options.timeout,
                                                     options.store_token, options.store_tls);
    } else {
      std::filesystem::create_directories(options.store_dir);
      impl->base_store = std::make_unique<gloo::rendezvous::FileStore>(options.store_dir);
    }
    impl->store = std::make_unique<gloo::rendezvous::PrefixStore>(options.group, *impl->base_store);
    gloo::transport::tcp::attr attr;
    attr.hostname = options.hostname;
    impl->device = gloo::transport::tcp::CreateDevice(attr);
    impl->context = std::make_shared<gloo::rendezvous::Context>(options.rank, options.size);
    impl->context->setTimeout(options.timeout);
    impl->context->connectFullMesh(*impl->store, impl->device);
  });
  if (!status.ok()) return status;
  return std::unique_ptr<GlooCommunicator>(new GlooCommunicator(std::move(impl)));
}

int GlooCommunicator::rank() const { return impl_->options.rank; }
int GlooCommunicator::size() const { return impl_->options.size; }

namespace {

// Up to this size an all-reduce exchanges whole buffers in one hop (every rank sends its data to every other
// and sums locally in rank order) instead of Gloo's ring, whose 2 (size - 1) dependent hops dominate the
// latency of the small all-reduces of decode (a hidden state per token; measured on loopback at tp=2: ring
// 0.2-1.4 ms, one hop ~0.1 ms). Larger buffers take the bandwidth-optimal ring.
constexpr int64_t kDirectAllReduceBytes = 256 << 10;

// Gloo's waits throw when their timeout passes; false means Abort ended them.
void WaitOrThrow(bool completed, const char* what) {
  if (!completed) throw gloo::IoException(std::string(what) + " aborted");
}

}  // namespace

namespace {

// out[i] = the sum over ranks r of rank r's element i (rank `self`'s is out itself, the others' are in `peers`,
// `count` elements apart), in rank order and in fp32, for F32 (float) and BF16 (uint16_t bits).
template <typename T>
void SumInRankOrder(T* out, const T* peers, int64_t count, int n, int self) {
  auto load = [](T v) {
    if constexpr (std::is_same_v<T, float>) {
      return v;
    } else {
      return Bf16ToF32(v);
    }
  };
  for (int64_t i = 0; i < count; ++i) {
    float sum = 0;
    for (int r = 0; r < n; ++r) sum += load((r == self ? out : peers + r * count)[i]);
    if constexpr (std::is_same_v<T, float>) {
      out[i] = sum;
    } else {
      out[i] = F32ToBf16(sum);
    }
  }
}

}  // namespace

absl::Status GlooCommunicator::AllReduceSum(Tensor& data) {
  const DType dtype = data.dtype();
  TESSERA_CHECK(dtype == DType::kF32 || dtype == DType::kBF16);
  if (size() == 1) return absl::OkStatus();
  if (data.nbytes() <= kDirectAllReduceBytes) {
    return impl_->Guard("all-reduce", [&] {
      const int n = size(), self = rank();
      const size_t bytes = static_cast<size_t>(data.nbytes());
      const int64_t count = data.numel();
      if (impl_->peers.size() < bytes * n) impl_->peers.resize(bytes * n);
      char* peers = impl_->peers.data();  // rank r's data at [r * bytes, (r + 1) * bytes)
      auto mine = impl_->context->createUnboundBuffer(data.data(), bytes);
      auto theirs = impl_->context->createUnboundBuffer(peers, bytes * n);
      Impl::Waits waits(*impl_, {mine.get(), theirs.get()});
      const uint64_t slot = impl_->context->nextSlot();
      for (int r = 0; r < n; ++r) {
        if (r != self) theirs->recv(r, slot, bytes * r, bytes);
      }
      for (int r = 0; r < n; ++r) {
        if (r != self) mine->send(r, slot);
      }
      for (int i = 0; i < n - 1; ++i) WaitOrThrow(theirs->waitRecv(nullptr, impl_->options.timeout), "recv");
      for (int i = 0; i < n - 1; ++i) WaitOrThrow(mine->waitSend(nullptr, impl_->options.timeout), "send");
      // The same order of additions (in fp32) on every rank, so that every rank ends with the same bits.
      if (dtype == DType::kF32) {
        SumInRankOrder(data.data_as<float>(), reinterpret_cast<const float*>(peers), count, n, self);
      } else {
        SumInRankOrder(static_cast<uint16_t*>(data.data()), reinterpret_cast<const uint16_t*>(peers), count, n,
                       self);
      }
    });
  }
  return impl_->Guard("all-reduce", [&] {
    gloo::AllreduceOptions opts(impl_->context);
    if (dtype == DType::kF32) {
      opts.setOutput(data.data_as<float>(), static_cast<size_t>(data.numel()));
      opts.setReduceFunction(
          [](void* c, const void* a, const void* b, size_t n) { gloo::sum<float>(c, a, b, n); });
    } else {  // BF16 on the wire, each partial sum rounded to BF16 (as NCCL's ring does)
      opts.setOutput(static_cast<uint16_t*>(data.data()), static_cast<size_t>(data.numel()));
      opts.setReduceFunction([](void* c, const void* a, const void* b, size_t n) {
        const auto* x = static_cast<const uint16_t*>(a);
        const auto* y = static_cast<const uint16_t*>(b);
        auto* z = static_cast<uint16_t*>(c);
        for (size_t i = 0; i < n; ++i) z[i] = F32ToBf16(Bf16ToF32(x[i]) + Bf16ToF32(y[i]));
      });
    }
    opts.setTimeout(impl_->options.timeout);
    gloo::allreduce(opts);
  });
}

absl::Status GlooCommunicator::AllGather(const Tensor& in, Tensor& out) {
  TESSERA_CHECK(in.dtype() == out.dtype() && out.nbytes() == in.nbytes() * size());
  const size_t bytes = static_cast<size_t>(in.nbytes());
  std::memcpy(static_cast<char*>(out.data()) + bytes * rank(), in.data(), bytes);
  if (size() == 1) return absl::OkStatus();
  // One hop: every rank sends its part to every other (the same bytes per rank as a ring, without its
  // size - 1 dependent steps).
  return impl_->Guard("all-gather", [&] {
    const int n = size(), self = rank();
    auto all = impl_->context->createUnboundBuffer(out.data(), bytes * n);
    Impl::Waits waits(*impl_, {all.get()});
    const uint64_t slot = impl_->context->nextSlot();
    for (int r = 0; r < n; ++r) {
      if (r != self) all->recv(r, slot, bytes * r, bytes);
    }
    for (int r = 0; r < n; ++r) {
      if (r != self) all->send(r, slot, bytes * self, bytes);
    }
    for (int i = 0; i < n - 1; ++i) WaitOrThrow(all->waitRecv(nullptr, impl_->options.timeout), "recv");
    for (int i = 0; i < n - 1; ++i) WaitOrThrow(all->waitSend(nullptr, impl_->options.timeout), "send");
  });
}

absl::Status GlooCommunicator::Gather(const Tensor& in, Tensor& out, int root) {
  TESSERA_CHECK(root >= 0 && root < size());
  const size_t bytes = static_cast<size_t>(in.nbytes());
  const int n = size(), self = rank();
  if (self == root) {
    TESSERA_CHECK(in.dtype() == out.dtype() && out.nbytes() == in.nbytes() * n);
    std::memcpy(static_cast<char*>(out.data()) + bytes * root, in.data(), bytes);
  }
  if (n == 1) return absl::OkStatus();
  return impl_->Guard("gather", [&] {
    const uint64_t slot = impl_->context->nextSlot();
    if (self == root) {
      auto all = impl_->context->createUnboundBuffer(out.data(), bytes * n);
      Impl::Waits waits(*impl_, {all.get()});
      for (int r = 0; r < n; ++r) {
        if (r != self) all->recv(r, slot, bytes * r, bytes);
      }
      for (int i = 0; i < n - 1; ++i) WaitOrThrow(all->waitRecv(nullptr, impl_->options.timeout), "recv");
    } else {
      auto mine = impl_->context->createUnboundBuffer(const_cast<void*>(in.data()), bytes);
      Impl::Waits waits(*impl_, {mine.get()});
      mine->send(root, slot, 0, bytes);
      WaitOrThrow(mine->waitSend(nullptr, impl_->options.timeout), "send");
    }
  });
}

absl::Status GlooCommunicator::Broadcast(Tensor& data, int root) {
  TESSERA_CHECK(root >= 0 && root < size());
  if (size() == 1) return absl::OkStatus();
  return impl_->Guard("broadcast", [&] {
    gloo::BroadcastOptions opts(impl_->context);
    opts.setOutput(static_cast<char*>(data.data()), static_cast<size_t>(data.nbytes()));
    opts.setRoot(root);
    opts.setTimeout(impl_->options.timeout);
    gloo::broadcast(opts);
  });
}

absl::Status GlooCommunicator::Send(const Tensor& data, int dst) {
  TESSERA_CHECK(dst >= 0 && dst < size() && dst != rank());
  return impl_->Guard("send", [&] {
    auto buffer = impl_->context->createUnboundBuffer(data.data(), static_cast<size_t>(data.nbytes()));
    Impl::Waits waits(*impl_, {buffer.get()});
    buffer->send(dst, /*slot=*/0);
    if (!buffer->waitSend(nullptr, impl_->options.timeout)) throw gloo::IoException("send aborted");
  });
}

absl::Status GlooCommunicator::Recv(Tensor& data, int src) {
  TESSERA_CHECK(src >= 0 && src < size() && src != rank());
  return impl_->Guard("recv", [&] {
    auto buffer = impl_->context->createUnboundBuffer(data.data(), static_cast<size_t>(data.nbytes()));
    Impl::Waits waits(*impl_, {buffer.get()});
    buffer->recv(src, /*slot=*/0);
    if (!buffer->waitRecv(nullptr, impl_->options.timeout)) throw gloo::IoException("recv aborted");
  });
}

void GlooCommunicator::Abort() {
  std::lock_guard<std::mutex> lock(impl_->abort_mu);
  impl_->aborted = true;
  for (gloo::transport::UnboundBuffer* buffer : impl_->waiting) {
    buffer->abortWaitRecv();
    buffer->abortWaitSend();
  }
}

absl::Status GlooCommunicator::Barrier() {
  if (size() == 1) return absl::OkStatus();
  return impl_->Guard("barrier", [&] {
    gloo::BarrierOptions opts(impl_->context);
    opts.setTimeout(impl_->options.timeout);
    gloo::barrier(opts);
  });
}

}  // namespace tessera
