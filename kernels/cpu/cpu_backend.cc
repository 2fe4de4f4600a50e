// CpuBackend implementation: shape checks, the pool's work split, and the small element-wise kernels (which
// are memory-bound, so plain loops the compiler vectorizes for the baseline ISA suffice).
#include "kernels/cpu/cpu_backend.h"

#include <sys/mman.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/gemv_quant.h"
#include "kernels/cpu/rope.h"

namespace tessera {
namespace {

// Elements per parallel chunk of the element-wise kernels: big enough to amortise a dispatch (~1 us).
constexpr int64_t kElementGrain = 1 << 15;

void FreeAligned(void* p) { std::free(p); }

// Rows per chunk so that a chunk holds about kElementGrain elements.
int64_t RowGrain(int64_t row_elems) {
  return std::max<int64_t>(1, kElementGrain / std::max<int64_t>(row_elems, 1));
}

bool SameShape(const Tensor& a, const Tensor& b) {
  if (a.ndim() != b.ndim()) return false;
  for (int i = 0; i < a.ndim(); ++i) {
    if (a.dim(i) != b.dim(i)) return false;
  }
  return true;
}

// out = x * rsqrt(mean(x^2) + eps) * w for one row; sum of squares in double.
inline void NormRow(const float* x, const uint16_t* w, int64_t h, float eps, float* out) {
  double sum = 0;
  for (int64_t i = 0; i < h; ++i) sum += static_cast<double>(x[i]) * x[i];
  const float inv =
      static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(h) + static_cast<double>(eps)));
  for (int64_t i = 0; i < h; ++i) out[i] = (x[i] * inv) * Bf16ToF32(w[i]);
}

}  // namespace

absl::StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(const CpuBackendOptions& options) {
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_threads must be >= 0, got ", options.num_threads));
  }
  if (!GemvIsaSupported(options.linear.gemv_isa)) {
    return absl::InvalidArgumentError(absl::StrCat("linear.gemv_isa ", GemvIsaName(options.linear.gemv_isa),
                                                   " is not supported by this CPU"));
  }
  int threads = options.num_threads;
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  auto pool = std::make_unique<ThreadPool>(threads);
  auto linear = CpuLinear::Create(pool.get(), options.linear);
  if (!linear.ok()) return linear.status();
  return std::unique_ptr<CpuBackend>(new CpuBackend(std::move(pool), std::move(linear).value()));
}

CpuBackend::CpuBackend(std::unique_ptr<ThreadPool> pool, std::unique_ptr<CpuLinear> linear)
    : pool_(std::move(pool)), linear_(std::move(linear)), sample_scratch_(pool_->num_threads()) {}

CpuBackend::~CpuBackend() = default;

absl::StatusOr<DeviceBuffer> CpuBackend::Allocate(int64_t bytes) {
  TESSERA_CHECK(capture_ == nullptr);  // not capturable
  if (bytes < 0) return absl::InvalidArgumentError(absl::StrCat("Allocate: negative size ", bytes));
  // Buffers of 2 MiB and more (weights, the KV cache) are 2 MiB aligned and asked to be backed by huge
  // pages: streaming weights through 4 KiB pages costs a TLB miss every 4 KiB, which on a VM is a
  // two-level page walk.
  constexpr int64_t kHugePage = int64_t{2} << 20;
  const int64_t alignment = bytes >= kHugePage ? kHugePage : 64;
  const int64_t rounded = std::max<int64_t>(64, (bytes + alignment - 1) / alignment * alignment);
  void* p = std::aligned_alloc(static_cast<size_t>(alignment), static_cast<size_t>(rounded));
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("Allocate: cannot allocate ", bytes, " bytes of host memory"));
  }
  if (alignment == kHugePage) madvise(p, static_cast<size_t>(rounded), MADV_HUGEPAGE);  // a hint only
  return DeviceBuffer(p, bytes, &FreeAligned);
}

void CpuBackend::CopyToDevice(void* dst, const void* src, int64_t bytes) {
  TESSERA_CHECK(capture_ == nullptr);  // not capturable
  if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
}

absl::Status CpuBackend::CopyToHost(void* dst, const void* src, int64_t bytes) {
  TESSERA_CHECK(capture_ == nullptr);  // not capturable
  if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
  return absl::OkStatus();
}

void CpuBackend::Copy(const Tensor& src, Tensor& dst) {
  if (capture_ != nullptr) return Record([=, this]() mutable { Copy(src, dst); });
  TESSERA_CHECK(src.dtype() == dst.dtype() && src.numel() == dst.numel());
  if (src.data() == dst.data()) return;
  const char* s = static_cast<const char*>(src.data());
  char* d = static_cast<char*>(dst.data());
  pool_->ParallelFor(src.nbytes(), kElementGrain * 4,
                     [&](int64_t b, int64_t e) { std::memcpy(d + b, s + b, static_cast<size_t>(e - b)); });
}

void CpuBackend::Copy2D(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t row_bytes,
                        int64_t rows) {
  if (capture_ != nullptr)
    return Record([=, this]() { Copy2D(src, src_pitch, dst, dst_pitch, row_bytes, rows); });
  TESSERA_CHECK(row_bytes >= 0 && rows >= 0 && src_pitch >= row_bytes && dst_pitch >= row_bytes);
  const char* s = static_cast<const char*>(src);
  char* d = static_cast<char*>(dst);
  pool_->ParallelFor(rows, RowGrain(row_bytes), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      std::memcpy(d + r * dst_pitch, s + r * src_pitch, static_cast<size_t>(row_bytes));
  });
}

void CpuBackend::Embedding(const Tensor& ids, const Tensor& table, Tensor& out) {
  if (capture_ != nullptr) return Record([=, this]() mutable { Embedding(ids, table, out); });
  TESSERA_CHECK(ids.dtype() == DType::kI32 && out.dtype() == DType::kF32);
  TESSERA_CHECK(table.dtype() == DType::kBF16 || IsQuantized(table.dtype()));
  TESSERA_CHECK(table.ndim() == 2 && out.ndim() == 2 && out.dim(0) == ids.numel() &&
                out.dim(1) == table.dim(1));
  const int64_t h = table.dim(1);
  const int32_t* id = ids.data_as<int32_t>();
  if (IsQuantized(table.dtype())) {
    // Rows dequantized to fp32 exactly (as the GGUF reader's DequantizeRow).
    const DType type = table.dtype();
    const int64_t row_bytes = QuantRowBytes(type, h);  // CHECKs h % 32 == 0
    const uint8_t* tab = static_cast<const uint8_t*>(table.data());
    float* o = out.data_as<float>();
    pool_->ParallelFor(ids.numel(), RowGrain(h), [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t)
        DequantizeQuantRow(type, tab + int64_t{id[t]} * row_bytes, h, o + t * h);
    });
    return;
  }
  const uint16_t* tab = table.data_as<uint16_t>();
  float* o = out.data_as<float>();
  pool_->ParallelFor(ids.numel(), RowGrain(h), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const uint16_t* row = tab + static_cast<int64_t>(id[t]) * h;
      for (int64_t i = 0; i < h; ++i) o[t * h + i] = Bf16ToF32(row[i]);
    }
  });
}

void CpuBackend::GatherRows(const Tensor& src, const Tensor& rows, Tensor& out) {
  if (capture_ != nullptr) return Record([=, this]() mutable { GatherRows(src, rows, out); });
  TESSERA_CHECK(rows.dtype() == DType::kI32 && src.dtype() == out.dtype() && src.ndim() >= 1);
  TESSERA_CHECK(out.ndim() == src.ndim() && out.dim(0) == rows.numel());
  const int64_t row_bytes = src.dim(0) == 0 ? 0 : src.nbytes() / src.dim(0);
  TESSERA_CHECK(out.nbytes() == rows.numel() * row_bytes);
  const int32_t* r = rows.data_as<int32_t>();
  const char* s = static_cast<const char*>(src.data());
  char* d = static_cast<char*>(out.data());
  for (int64_t i = 0; i < rows.numel(); ++i) {
    TESSERA_CHECK(r[i] >= 0 && r[i] < src.dim(0));
    std::memcpy(d + i * row_bytes, s + static_cast<int64_t>(r[i]) * row_bytes,
                static_cast<size_t>(row_bytes));
  }
}

void CpuBackend::Linear(const Tensor& x, const Tensor& w, Tensor& y) {
  if (capture_ != nullptr) return Record([=, this]() mutable { Linear(x, w, y); });
  TESSERA_CHECK(x.dtype() == DType::kF32 && y.dtype() == DType::kF32);
  TESSERA_CHECK(w.dtype() == DType::kBF16 || IsQuantized(w.dtype()));
  const auto [m, n, k] = CheckLinearShapes(x, w, y);
  if (m == 0) return;
  if (w.dtype() == DType::kBF16) {
    linear_->Forward(x.data_as<float>(), w.data_as<uint16_t>(), y.data_as<float>(), m, n, k);
  } else {
    TESSERA_CHECK(k % kQuantBlockSize == 0);
    linear_->ForwardQuant(x.data_as<float>(), static_cast<const uint8_t*>(w.data()), w.dtype(),
                          y.data_as<float>(), m, n, k);
  }
}

void CpuBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  if (capture_ != nullptr) return Record([=, this]() mutable { RmsNorm(x, weight, eps, out); });
  TESSERA_CHECK(x.dtype() == DType::kF32 && out.dtype() == DType::kF32 && weight.dtype() == DType::kBF16);
  const int64_t h = weight.numel();
  TESSERA_CHECK(x.dim(-1) == h && out.numel() == x.numel());
  const float* xs = x.data_as<float>();
  const uint16_t* w = weight.data_as<uint16_t>();
  float* o = out.data_as<float>();
  pool_->ParallelFor(x.numel() / h, RowGrain(h), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) NormRow(xs + t * h, w, h, eps, o + t * h);
  });
}

void CpuBackend::AddRmsNorm(Tensor& hidden, Tensor& residual, const Tensor& weight, float eps) {
  if (capture_ != nullptr) return Record([=, this]() mutable { AddRmsNorm(hidden, residual, weight, eps); });
  TESSERA_CHECK(hidden.dtype() == DType::kF32 && residual.dtype() == DType::kF32 &&
                weight.dtype() == DType::kBF16);
  const int64_t h = weight.numel();
  TESSERA_CHECK(hidden.dim(-1) == h && residual.numel() == hidden.numel());
  float* hs = hidden.data_as<float>();
  float* rs = residual.data_as<float>();
  const uint16_t* w = weight.data_as<uint16_t>();
  pool_->ParallelFor(hidden.numel() / h, RowGrain(h), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      float* r = rs + t * h;
      const float* hrow = hs + t * h;
      for (int64_t i = 0; i < h; ++i) r[i] += hrow[i];
      NormRow(r, w, h, eps, hs + t * h);
    }
  });
}

const std::vector<float>& CpuBackend::InvFreq(const RopeParams& rope, int head_dim) {
  for (const InvFreqEntry& e : inv_freq_cache_) {
    if (e.head_dim == head_dim && e.rope.theta == rope.theta &&
        e.rope.llama3_scaling == rope.llama3_scaling && e.rope.factor == rope.factor &&
        e.rope.low_freq_factor == rope.low_freq_factor && e.rope.high_freq_factor == rope.high_freq_factor &&
        e.rope.original_max_position_embeddings == rope.original_max_position_embeddings) {
      return e.inv_freq;
    }
  }
  inv_freq_cache_.push_back({rope, head_dim, RopeInvFreq(rope, head_dim)});
  return inv_freq_cache_.back().inv_freq;
}

void CpuBackend::Rope(const AttentionMeta& meta, const RopeParams& rope, int head_dim, Tensor& q, Tensor& k) {
  if (capture_ != nullptr) return Record([=, this]() mutable { Rope(meta, rope, head_dim, q, k); });
  TESSERA_CHECK(q.dtype() == DType::kF32 && k.dtype() == DType::kF32);
  TESSERA_CHECK(head_dim > 0 && head_dim % 2 == 0 && head_dim <= kMaxAttentionHeadDim);
  const int64_t tokens = meta.num_tokens;
  TESSERA_CHECK(q.numel() % (tokens * head_dim) == 0 && k.numel() % (tokens * head_dim) == 0);
  const int nq = static_cast<int>(q.numel() / (tokens * head_dim));
  const int nk = static_cast<int>(k.numel() / (tokens * head_dim));
  const float* inv_freq = InvFreq(rope, head_dim).data();
  float* qs = q.data_as<float>();
  float* ks = k.data_as<float>();
  pool_->ParallelFor(tokens, RowGrain(static_cast<int64_t>(nq + nk) * head_dim * 4),
                     [&](int64_t b, int64_t e) {
                       float cos_sin[kMaxAttentionHeadDim];
                       for (int64_t t = b; t < e; ++t) {
                         const int32_t pos = meta.positions[t];
                         RopeToken(inv_freq, head_dim, pos, nq, qs + t * nq * head_dim, cos_sin);
                         // Same angles for k: recomputing them costs little next to the rotation.
                         RopeToken(inv_freq, head_dim, pos, nk, ks + t * nk * head_dim, cos_sin);
                       }
                     });
}

void CpuBackend::WriteKvCache(const AttentionMeta& meta, const Tensor& k, const Tensor& v, Tensor& k_cache,
                              Tensor& v_cache) {
  if (capture_ != nullptr) return Record([=, this]() mutable { WriteKvCache(meta, k, v, k_cache, v_cache); });
  TESSERA_CHECK(k.dtype() == DType::kF32 && v.dtype() == DType::kF32 && k_cache.dtype() == DType::kF32 &&
                v_cache.dtype() == DType::kF32);
  TESSERA_CHECK(k_cache.ndim() == 4 && SameShape(k_cache, v_cache) && SameShape(k, v));
  const int64_t row = k_cache.dim(2) * k_cache.dim(3);  // nkv * head_dim
  const int64_t slots = k_cache.dim(0) * k_cache.dim(1);
  TESSERA_CHECK(k_cache.dim(1) == meta.block_size && k.numel() == meta.num_tokens * row);
  const float* kd = k.data_as<float>();
  const float* vd = v.data_as<float>();
  float* kc = k_cache.data_as<float>();
  float* vc = v_cache.data_as<float>();
  for (int t = 0; t < meta.num_tokens; ++t) {
    const int64_t slot = meta.slot_mapping[t];
    if (slot < 0) continue;
    TESSERA_CHECK(slot < slots);
    std::memcpy(kc + slot * row, kd + t * row, row * sizeof(float));
    std::memcpy(vc + slot * row, vd + t * row, row * sizeof(float));
  }
}

void CpuBackend::RopeQkvToCache(const AttentionMeta& meta, const RopeParams& rope, int head_dim,
                                const Tensor& qkv, Tensor& q, Tensor& k_cache, Tensor& v_cache) {
  if (capture_ != nullptr)
    return Record([=, this]() mutable { RopeQkvToCache(meta, rope, head_dim, qkv, q, k_cache, v_cache); });
  TESSERA_CHECK(qkv.dtype() == DType::kF32 && q.dtype() == DType::kF32 && k_cache.dtype() == DType::kF32 &&
                v_cache.dtype() == DType::kF32);
  TESSERA_CHECK(head_dim > 0 && head_dim % 2 == 0 && head_dim <= kMaxAttentionHeadDim);
  TESSERA_CHECK(k_cache.ndim() == 4 && SameShape(k_cache, v_cache) && k_cache.dim(1) == meta.block_size &&
                k_cache.dim(3) == head_dim);
  const int64_t tokens = meta.num_tokens;
  const int nkv = static_cast<int>(k_cache.dim(2));
  TESSERA_CHECK(q.numel() % (tokens * head_dim) == 0);
  const int nq = static_cast<int>(q.numel() / (tokens * head_dim));
  const int64_t q_width = int64_t{nq} * head_dim, kv_width = int64_t{nkv} * head_dim;
  const int64_t width = q_width + 2 * kv_width;
  TESSERA_CHECK(qkv.numel() == tokens * width);
  const int64_t slots = k_cache.dim(0) * k_cache.dim(1);
  const float* inv_freq = InvFreq(rope, head_dim).data();
  const float* in = qkv.data_as<float>();
  float* qs = q.data_as<float>();
  float* kc = k_cache.data_as<float>();
  float* vc = v_cache.data_as<float>();
  pool_->ParallelFor(tokens, RowGrain(width * 4), [&](int64_t b, int64_t e) {
    float cos_sin[kMaxAttentionHeadDim];
    for (int64_t t = b; t < e; ++t) {
      const float* row = in + t * width;
      const int32_t pos = meta.positions[t];
      float* q_row = qs + t * q_width;
      std::memcpy(q_row, row, static_cast<size_t>(q_width) * sizeof(float));
      RopeToken(inv_freq, head_dim, pos, nq, q_row, cos_sin);
      const int64_t slot = meta.slot_mapping[t];
      if (slot < 0) continue;
      TESSERA_CHECK(slot < slots);
      float* k_row = kc + slot * kv_width;  // rotated in place in the cache, as Rope then WriteKvCache
      std::memcpy(k_row, row + q_width, static_cast<size_t>(kv_width) * sizeof(float));
      RopeToken(inv_freq, head_dim, pos, nkv, k_row, cos_sin);
      std::memcpy(vc + slot * kv_width, row + q_width + kv_width,
                  static_cast<size_t>(kv_width) * sizeof(float));
    }
  });
}

void CpuBackend::PagedAttention(const AttentionMeta& meta, const Tensor& q, const Tensor& k_cache,
                                const Tensor& v_cache, int num_heads, int num_kv_heads, int head_dim,
                                float scale, Tensor& out) {
  if (capture_ != nullptr)
    return Record([=, this]() mutable {
      PagedAttention(meta, q, k_cache, v_cache, num_heads, num_kv_heads, head_dim, scale, out);
    });
  TESSERA_CHECK(q.dtype() == DType::kF32 && out.dtype() == DType::kF32 && k_cache.dtype() == DType::kF32 &&
                v_cache.dtype() == DType::kF32);
  TESSERA_CHECK(num_kv_heads > 0 && num_heads % num_kv_heads == 0 && head_dim > 0 &&
                head_dim <= kMaxAttentionHeadDim);
  TESSERA_CHECK(k_cache.ndim() == 4 && SameShape(k_cache, v_cache) && k_cache.dim(1) == meta.block_size &&
                k_cache.dim(2) == num_kv_heads && k_cache.dim(3) == head_dim);
  const int64_t q_elems = static_cast<int64_t>(meta.num_tokens) * num_heads * head_dim;
  TESSERA_CHECK(q.numel() == q_elems && out.numel() == q_elems);
  const AttentionArgs args{&meta,
                           q.data_as<float>(),
                           k_cache.data_as<float>(),
                           v_cache.data_as<float>(),
                           out.data_as<float>(),
                           num_heads,
                           num_kv_heads,
                           head_dim,
                           scale};
  const AttentionFn fn = BestAttentionFn();
  pool_->ParallelFor(static_cast<int64_t>(meta.num_tokens) * num_kv_heads, 1,
                     [&](int64_t b, int64_t e) { fn(args, b, e); });
}

void CpuBackend::SiluMulFused(const Tensor& gate_up, Tensor& out) {
  if (capture_ != nullptr) return Record([=, this]() mutable { SiluMulFused(gate_up, out); });
  TESSERA_CHECK(gate_up.dtype() == DType::kF32 && out.dtype() == DType::kF32);
  const int64_t width = out.dim(-1);
  TESSERA_CHECK(width > 0 && gate_up.numel() == 2 * out.numel() && gate_up.dim(-1) == 2 * width);
  const float* gu = gate_up.data_as<float>();
  float* o = out.data_as<float>();
  pool_->ParallelFor(out.numel(), kElementGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t r = i / width, c = i - r * width;
      const float g = gu[r * 2 * width + c], u = gu[r * 2 * width + width + c];
      o[i] = g / (1.0f + std::exp(-g)) * u;
    }
  });
}

void CpuBackend::Add(const Tensor& a, const Tensor& b, Tensor& out) {
  if (capture_ != nullptr) return Record([=, this]() mutable { Add(a, b, out); });
  TESSERA_CHECK(a.dtype() == DType::kF32 && b.dtype() == DType::kF32 && out.dtype() == DType::kF32);
  TESSERA_CHECK(a.numel() == b.numel() && out.numel() == a.numel());
  const float* x = a.data_as<float>();
  const float* y = b.data_as<float>();
  float* o = out.data_as<float>();
  pool_->ParallelFor(a.numel(), kElementGrain, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) o[i] = x[i] + y[i];
  });
}

absl::Status CpuBackend::Sample(const Tensor& logits, const SamplingRow* rows, int32_t* out_ids,
                                SampleLogprobs* out_logprobs) {
  TESSERA_CHECK(capture_ == nullptr);  // not capturable
  TESSERA_CHECK(logits.dtype() == DType::kF32 && logits.ndim() == 2);
  const int64_t num_rows = logits.dim(0);
  const int64_t vocab = logits.dim(1);
  for (int64_t r = 0; r < num_rows && out_logprobs == nullptr; ++r) TESSERA_CHECK(rows[r].top_logprobs < 0);
  const float* l = logits.data_as<float>();
  // Rows are handed out one at a time (each is independent of the others: batch invariance).
  std::atomic<int64_t> next{0};
  pool_->RunOnAll([&](int thread) {
    SampleScratch& scratch = sample_scratch_[thread];
    for (int64_t r = next.fetch_add(1); r < num_rows; r = next.fetch_add(1)) {
      out_ids[r] = SampleRow(l + r * vocab, vocab, rows[r], scratch,
                             out_logprobs != nullptr ? out_logprobs + r : nullptr);
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::Synchronize() {
  TESSERA_CHECK(capture_ == nullptr);  // not capturable
  return absl::OkStatus();
}

void CpuBackend::Record(std::function<void()> call) { capture_->push_back(std::move(call)); }

namespace {

struct CpuStepGraph final : StepGraph {
  std::vector<std::function<void()>> calls;
};

}  // namespace

absl::Status CpuBackend::BeginCapture() {
  if (capture_ != nullptr)
    return absl::FailedPreconditionError("BeginCapture: a capture is already in progress");
  capture_ = std::make_unique<std::vector<std::function<void()>>>();
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<StepGraph>> CpuBackend::EndCapture() {
  if (capture_ == nullptr) return absl::FailedPreconditionError("EndCapture without BeginCapture");
  auto graph = std::make_unique<CpuStepGraph>();
  graph->calls = std::move(*capture_);
  capture_.reset();
  return graph;
}

absl::Status CpuBackend::Replay(const StepGraph& graph) {
  if (capture_ != nullptr) return absl::FailedPreconditionError("Replay during a capture");
  const auto* cpu = dynamic_cast<const CpuStepGraph*>(&graph);
  if (cpu == nullptr) return absl::InvalidArgumentError("Replay: the graph was not captured by a CpuBackend");
  for (const std::function<void()>& call : cpu->calls) call();
  return absl::OkStatus();
}

}  // namespace tessera
