// OneDnnMatmul implementation. Weights [N, K] row-major are described as the K x N matrix with format tag
// `ba` and used in place (no reorder, no copy). Debian's libdnnl 2.6 runs on OpenMP (libgomp): its team size
// is the calling thread's nthreads ICV, so Run sets omp_set_num_threads(num_threads) on the calling thread.
// The OpenMP workers and our ThreadPool workers never run at the same time (each region finishes before the
// next starts; both spin only briefly once idle).
#include "kernels/cpu/onednn_matmul.h"

#include <omp.h>

#include <map>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace tessera {

struct OneDnnMatmul::Impl {
  int num_threads = 1;
  dnnl::engine engine;
  dnnl::stream stream;
  // (m, n, k, accumulate) -> primitive. Prefill batches take few distinct m in practice; the cache is
  // cleared when it grows past kMaxCached so that it stays bounded.
  struct Entry {
    dnnl::matmul primitive;
    dnnl::memory src, weights, dst;  // data handles are set on every call
  };
  std::map<std::tuple<int64_t, int64_t, int64_t, bool>, Entry> cache;
};

namespace {
constexpr size_t kMaxCached = 512;
}  // namespace

absl::StatusOr<std::unique_ptr<OneDnnMatmul>> OneDnnMatmul::Create(int num_threads) {
  auto impl = std::make_unique<Impl>();
  impl->num_threads = num_threads < 1 ? 1 : num_threads;
  try {
    impl->engine = dnnl::engine(dnnl::engine::kind::cpu, 0);
    impl->stream = dnnl::stream(impl->engine);
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat("oneDNN: cannot create the CPU engine: ", e.what()));
  }
  return std::unique_ptr<OneDnnMatmul>(new OneDnnMatmul(std::move(impl)));
}

OneDnnMatmul::OneDnnMatmul(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OneDnnMatmul::~OneDnnMatmul() = default;

int OneDnnMatmul::cached_primitives() const { return static_cast<int>(impl_->cache.size()); }

absl::Status OneDnnMatmul::Run(const uint16_t* src, const uint16_t* w, float* y, int64_t m, int64_t n,
                               int64_t k, bool accumulate) {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  try {
    const auto key = std::make_tuple(m, n, k, accumulate);
    auto it = impl_->cache.find(key);
    if (it == impl_->cache.end()) {
      if (impl_->cache.size() >= kMaxCached) impl_->cache.clear();
      const dnnl::memory::desc src_md({m, k}, dt::bf16, tag::ab);
      const dnnl::memory::desc w_md({k, n}, dt::bf16, tag::ba);
      const dnnl::memory::desc dst_md({m, n}, dt::f32, tag::ab);
      dnnl::primitive_attr attr;
      if (accumulate) {
        dnnl::post_ops ops;
        ops.append_sum(1.0f);
        attr.set_post_ops(ops);
      }
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, w_md, dst_md), attr, impl_->engine);
      Impl::Entry entry{dnnl::matmul(pd), dnnl::memory(src_md, impl_->engine, nullptr),
                        dnnl::memory(w_md, impl_->engine, nullptr),
                        dnnl::memory(dst_md, impl_->engine, nullptr)};
      it = impl_->cache.emplace(key, std::move(entry)).first;
    }
    Impl::Entry& e = it->second;
    e.src.set_data_handle(const_cast<uint16_t*>(src));
    e.weights.set_data_handle(const_cast<uint16_t*>(w));  // only read by the primitive
    e.dst.set_data_handle(y);
    if (omp_get_max_threads() != impl_->num_threads) omp_set_num_threads(impl_->num_threads);
    // The C API takes the arguments as an array: no per-call std::unordered_map.
    const dnnl_exec_arg_t args[] = {
        {DNNL_ARG_SRC, e.src.get()}, {DNNL_ARG_WEIGHTS, e.weights.get()}, {DNNL_ARG_DST, e.dst.get()}};
    dnnl::error::wrap_c_api(dnnl_primitive_execute(e.primitive.get(), impl_->stream.get(), 3, args),
                            "dnnl_primitive_execute");
    impl_->stream.wait();
  } catch (const dnnl::error& e) {
    return absl::InternalError(
        absl::StrCat("oneDNN matmul m=", m, " n=", n, " k=", k, " failed: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace tessera
