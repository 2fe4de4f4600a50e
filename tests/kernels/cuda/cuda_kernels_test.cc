// Every CudaBackend method against the CpuBackend on fresh random inputs of awkward sizes (label `gpu`; each
// test skips with the reason on machines without a GPU). Inputs are bf16 on both sides (the CPU gets them
// widened to f32, exactly); GPU outputs start as NaN. Tolerances, per op, follow from bf16 outputs (one
// rounding: 2^-9 relative) unless stated.
#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <string>

#include "kernels/sampler.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/util/status_matchers.h"

namespace tessera::testing {
namespace {

using CudaKernelsTest = CudaTest;

TEST_F(CudaKernelsTest, EmbeddingGatherCopyAndKvWritesAreExact) {
  for (int64_t h : {130, 128, 7}) {  // row bytes: 4-byte, 16-byte and 2-byte units
    const int64_t v = 1001, t = 37;
    std::vector<uint16_t> table = RandomBf16(rng_, v * h);
    std::vector<int32_t> ids(t);
    for (int32_t& id : ids) id = std::uniform_int_distribution<int32_t>(0, v - 1)(rng_);
    Tensor table_d = Upload(table, DType::kBF16, {v, h});
    Tensor ids_d = Upload(ids, DType::kI32, {t});
    Tensor emb = PoisonedBf16({t, h});
    gpu_->Embedding(ids_d, table_d, emb);
    std::vector<float> want(t * h);
    for (int64_t i = 0; i < t; ++i) {
      for (int64_t j = 0; j < h; ++j) want[i * h + j] = Bf16ToF32(table[ids[i] * h + j]);
    }
    ExpectClose(Download(emb), want, 0, 0, "Embedding h=" + std::to_string(h));

    std::vector<int32_t> rows = {36, 0, 5, 5, 17, 2, 30, 1, 33, 9, 11};
    Tensor rows_d = Upload(rows, DType::kI32, {static_cast<int64_t>(rows.size())});
    Tensor gathered = PoisonedBf16({static_cast<int64_t>(rows.size()), h});
    gpu_->GatherRows(emb, rows_d, gathered);
    std::vector<float> want_rows;
    for (int32_t r : rows)
      want_rows.insert(want_rows.end(), want.begin() + r * h, want.begin() + (r + 1) * h);
    ExpectClose(Download(gathered), want_rows, 0, 0, "GatherRows");

    Tensor copy = PoisonedBf16({t, h});
    gpu_->Copy(emb, copy);
    ExpectClose(Download(copy), want, 0, 0, "Copy");
  }

  // KV cache: 9 blocks of 16, nkv 3, head_dim 40; slot -1 is skipped.
  const int64_t nkv = 3, hd = 40, blocks = 9, bs = 16, t = 23;
  std::vector<int32_t> slots(blocks * bs);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng_);
  slots.resize(t);
  slots[4] = -1;
  std::vector<uint16_t> k = RandomBf16(rng_, t * nkv * hd), v = RandomBf16(rng_, t * nkv * hd);
  AttentionMeta meta;
  meta.slot_mapping = Upload(slots, DType::kI32, {t}).data_as<int32_t>();
  meta.num_tokens = static_cast<int>(t);
  meta.block_size = static_cast<int>(bs);
  Tensor kc = PoisonedBf16({blocks, bs, nkv, hd}), vc = PoisonedBf16({blocks, bs, nkv, hd});
  Tensor k_d = Upload(k, DType::kBF16, {t, nkv * hd}), v_d = Upload(v, DType::kBF16, {t, nkv * hd});
  gpu_->WriteKvCache(meta, k_d, v_d, kc, vc);
  std::vector<float> kc_h = Download(kc), vc_h = Download(vc);
  for (int64_t i = 0; i < t; ++i) {
    if (slots[i] < 0) continue;
    for (int64_t j = 0; j < nkv * hd; ++j) {
      ASSERT_EQ(kc_h[slots[i] * nkv * hd + j], Bf16ToF32(k[i * nkv * hd + j])) << "token " << i;
      ASSERT_EQ(vc_h[slots[i] * nkv * hd + j], Bf16ToF32(v[i * nkv * hd + j])) << "token " << i;
    }
  }
}

// Linear: bf16 x and w; the CPU computes in f32 from the same values. Tolerance for a bf16 y:
// 8e-3 * |ref| + 1e-2 * rms(ref) (output rounding plus accumulation order); for an F32 y: 1e-3 * rms(ref).
void CheckLinear(CudaTest& t, int64_t m, int64_t n, int64_t k, DType y_dtype) {
  std::vector<uint16_t> x = RandomBf16(t.rng_, m * k), w = RandomBf16(t.rng_, n * k, 0.05f);
  Tensor x_d = t.Upload(x, DType::kBF16, {m, k}), w_d = t.Upload(w, DType::kBF16, {n, k});
  Tensor y_d = y_dtype == DType::kF32 ? t.PoisonedF32({m, n}) : t.PoisonedBf16({m, n});
  t.gpu_->Linear(x_d, w_d, y_d);
  std::vector<float> xf = CudaTest::Widen(x), want(m * n);
  Tensor xc = View(xf, {m, k}), yc = View(want, {m, n});
  t.cpu_->Linear(xc, Tensor(w.data(), DType::kBF16, {n, k}), yc);
  double sq = 0;
  for (float f : want) sq += static_cast<double>(f) * f;
  const float rms = static_cast<float>(std::sqrt(sq / static_cast<double>(want.size())));
  const std::string what = "Linear M=" + std::to_string(m) + " N=" + std::to_string(n) +
                           " K=" + std::to_string(k) + (y_dtype == DType::kF32 ? " f32" : " bf16");
  if (y_dtype == DType::kF32) {
    t.ExpectClose(t.Download(y_d), want, 0, 1e-3f * rms, what);
  } else {
    t.ExpectClose(t.Download(y_d), want, 8e-3f, 1e-2f * rms, what);
  }
}

TEST_F(CudaKernelsTest, LinearMatchesTheCpuAtDecodeAndPrefillSizes) {
  for (int64_t m : {1, 7, 130, 2048}) {
    CheckLinear(*this, m, 1000, 520, DType::kBF16);  // N, K not multiples of 16
    CheckLinear(*this, m, 333, 123, DType::kBF16);   // odd: rows only 2-byte aligned
  }
  CheckLinear(*this, 7, 1234, 256, DType::kF32);  // the lm_head case: F32 logits from bf16 activations
  CheckLinear(*this, 1, 4096, 4096, DType::kBF16);
}

TEST_F(CudaKernelsTest, RmsNormAndAddRmsNormMatchTheCpu) {
  for (int64_t h : {1000, 4096, 77}) {
    const int64_t rows = 5;
    std::vector<uint16_t> x = RandomBf16(rng_, rows * h, 2.0f), res = RandomBf16(rng_, rows * h);
    std::vector<uint16_t> w = RandomBf16(rng_, h);
    for (uint16_t& b : w) b = F32ToBf16(1.0f + 0.1f * Bf16ToF32(b));
    Tensor x_d = Upload(x, DType::kBF16, {rows, h}), w_d = Upload(w, DType::kBF16, {h});
    Tensor out = PoisonedBf16({rows, h});
    gpu_->RmsNorm(x_d, w_d, 1e-5f, out);
    std::vector<float> xf = Widen(x), want(rows * h);
    Tensor xc = View(xf, {rows, h}), oc = View(want, {rows, h});
    Tensor wc(w.data(), DType::kBF16, {h});
    cpu_->RmsNorm(xc, wc, 1e-5f, oc);
    ExpectClose(Download(out), want, 8e-3f, 1e-3f, "RmsNorm h=" + std::to_string(h));
    gpu_->RmsNorm(x_d, w_d, 1e-5f, x_d);  // in place
    ExpectClose(Download(x_d), want, 8e-3f, 1e-3f, "RmsNorm in place");

    // AddRmsNorm: the GPU rounds the residual sum to bf16 (HF's bf16 residual stream) and normalizes that,
    // so hidden gets two roundings' worth: 1.6e-2 relative.
    Tensor hid_d = Upload(x, DType::kBF16, {rows, h}), res_d = Upload(res, DType::kBF16, {rows, h});
    gpu_->AddRmsNorm(hid_d, res_d, w_d, 1e-5f);
    std::vector<float> hid_c = Widen(x), res_c = Widen(res);
    Tensor hc = View(hid_c, {rows, h}), rc = View(res_c, {rows, h});
    cpu_->AddRmsNorm(hc, rc, wc, 1e-5f);
    ExpectClose(Download(res_d), res_c, 4e-3f, 1e-6f, "AddRmsNorm residual");
    ExpectClose(Download(hid_d), hid_c, 1.6e-2f, 2e-3f, "AddRmsNorm hidden");
  }
}

TEST_F(CudaKernelsTest, RopeMatchesTheCpuWithLlama3Scaling) {
  for (int hd : {64, 128, 32}) {
    const int64_t t = 19, nq = 6, nk = 2;
    RopeParams rope;
    rope.llama3_scaling = true;
    rope.factor = 8;
    std::vector<int32_t> pos(t);
    for (int32_t& p : pos) p = std::uniform_int_distribution<int32_t>(0, 131071)(rng_);
    pos[0] = 0;
    pos[1] = 1;
    std::vector<uint16_t> q = RandomBf16(rng_, t * nq * hd), k = RandomBf16(rng_, t * nk * hd);
    AttentionMeta meta;
    meta.num_tokens = static_cast<int>(t);
    meta.positions = Upload(pos, DType::kI32, {t}).data_as<int32_t>();
    Tensor q_d = Upload(q, DType::kBF16, {t, nq * hd}), k_d = Upload(k, DType::kBF16, {t, nk * hd});
    gpu_->Rope(meta, rope, hd, q_d, k_d);
    std::vector<float> qf = Widen(q), kf = Widen(k);
    Tensor qc = View(qf, {t, nq * hd}), kc = View(kf, {t, nk * hd});
    AttentionMeta host_meta = meta;
    host_meta.positions = pos.data();
    cpu_->Rope(host_meta, rope, hd, qc, kc);
    ExpectClose(Download(q_d), qf, 8e-3f, 2e-3f, "Rope q hd=" + std::to_string(hd));
    ExpectClose(Download(k_d), kf, 8e-3f, 2e-3f, "Rope k hd=" + std::to_string(hd));
  }
}

// A failure while enqueuing (here: a RoPE table that would first be uploaded inside a capture) is a Status, not
// an abort: EndCapture returns it naming the cause, and the backend stays broken (Synchronize, CopyToHost say
// the same) instead of running on.
TEST_F(CudaKernelsTest, AnEnqueueFailureIsAStatusAndTheBackendStaysBroken) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<CudaBackend> fresh, CudaBackend::Create(CudaBackendOptions{}));
  const int64_t t = 3, hd = 64;
  std::vector<int32_t> pos = {0, 1, 2};
  AttentionMeta meta;
  meta.num_tokens = static_cast<int>(t);
  meta.positions = Upload(pos, DType::kI32, {t}).data_as<int32_t>();
  Tensor q = Upload(RandomBf16(rng_, t * hd), DType::kBF16, {t, hd});
  Tensor k = Upload(RandomBf16(rng_, t * hd), DType::kBF16, {t, hd});
  EXPECT_OK(gpu_->Synchronize());
  ASSERT_OK(fresh->BeginCapture());
  fresh->Rope(meta, RopeParams{}, static_cast<int>(hd), q, k);  // never warmed up
  EXPECT_THAT(fresh->EndCapture().status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, ::testing::HasSubstr("RoPE table")));
  EXPECT_THAT(fresh->Synchronize(), StatusIs(absl::StatusCode::kFailedPrecondition));
  uint16_t host = 0;
  EXPECT_THAT(fresh->CopyToHost(&host, q.data(), 2), StatusIs(absl::StatusCode::kFailedPrecondition));
}

// RopeQkvToCache on the GPU: the same bits as the GPU's Rope then WriteKvCache, and close to the CPU's.
TEST_F(CudaKernelsTest, RopeQkvToCacheMatchesRopeThenWriteKvCache) {
  const int64_t t = 11, nq = 8, nkv = 2, hd = 128, block_size = 16, blocks = 2;
  const int64_t q_width = nq * hd, kv_width = nkv * hd, width = q_width + 2 * kv_width;
  RopeParams rope;
  rope.llama3_scaling = true;
  rope.factor = 8;
  std::vector<int32_t> pos(t), slots(t);
  for (int64_t i = 0; i < t; ++i) {
    pos[i] = std::uniform_int_distribution<int32_t>(0, 131071)(rng_);
    slots[i] = i == 4 ? -1 : static_cast<int32_t>((i * 3 + 2) % (blocks * block_size));
  }
  std::vector<uint16_t> qkv = RandomBf16(rng_, t * width);
  AttentionMeta meta;
  meta.num_tokens = static_cast<int>(t);
  meta.block_size = static_cast<int>(block_size);
  meta.positions = Upload(pos, DType::kI32, {t}).data_as<int32_t>();
  meta.slot_mapping = Upload(slots, DType::kI32, {t}).data_as<int32_t>();
  const std::vector<uint16_t> zeros(blocks * block_size * kv_width, 0);
  Tensor qkv_d = Upload(qkv, DType::kBF16, {t, width});
  Tensor q_d = PoisonedBf16({t, q_width});
  Tensor kc = Upload(zeros, DType::kBF16, {blocks, block_size, nkv, hd});
  Tensor vc = Upload(zeros, DType::kBF16, {blocks, block_size, nkv, hd});
  gpu_->RopeQkvToCache(meta, rope, static_cast<int>(hd), qkv_d, q_d, kc, vc);

  std::vector<uint16_t> q_part, k_part, v_part;
  for (int64_t i = 0; i < t; ++i) {
    const uint16_t* row = qkv.data() + i * width;
    q_part.insert(q_part.end(), row, row + q_width);
    k_part.insert(k_part.end(), row + q_width, row + q_width + kv_width);
    v_part.insert(v_part.end(), row + q_width + kv_width, row + width);
  }
  Tensor q2 = Upload(q_part, DType::kBF16, {t, q_width}), k2 = Upload(k_part, DType::kBF16, {t, kv_width});
  Tensor v2 = Upload(v_part, DType::kBF16, {t, kv_width});
  Tensor kc2 = Upload(zeros, DType::kBF16, {blocks, block_size, nkv, hd});
  Tensor vc2 = Upload(zeros, DType::kBF16, {blocks, block_size, nkv, hd});
  gpu_->Rope(meta, rope, static_cast<int>(hd), q2, k2);
  gpu_->WriteKvCache(meta, k2, v2, kc2, vc2);
  EXPECT_EQ(Download(q_d), Download(q2));
  EXPECT_EQ(Download(kc), Download(kc2));
  EXPECT_EQ(Download(vc), Download(vc2));
}

TEST_F(CudaKernelsTest, SiluMulFusedAndAddMatchTheCpu) {
  for (int64_t width : {12345, 8192}) {  // scalar and 16-byte paths
    const int64_t rows = 3, n = rows * width;
    std::vector<uint16_t> gu = RandomBf16(rng_, 2 * n, 3.0f);
    Tensor gu_d = Upload(gu, DType::kBF16, {rows, 2 * width});
    std::vector<float> guf = Widen(gu), want(n);
    Tensor guc = View(guf, {rows, 2 * width}), wc = View(want, {rows, width});
    Tensor out = PoisonedBf16({rows, width});
    gpu_->SiluMulFused(gu_d, out);
    cpu_->SiluMulFused(guc, wc);
    ExpectClose(Download(out), want, 8e-3f, 1e-5f, "SiluMulFused width=" + std::to_string(width));
  }
  for (int64_t n : {12345, 8192}) {
    std::vector<uint16_t> a = RandomBf16(rng_, n, 3.0f), b = RandomBf16(rng_, n);
    Tensor a_d = Upload(a, DType::kBF16, {n}), b_d = Upload(b, DType::kBF16, {n});
    std::vector<float> af = Widen(a), bf = Widen(b), want(n);
    Tensor ac = View(af, {n}), bc = View(bf, {n}), wc = View(want, {n});
    Tensor out = PoisonedBf16({n});
    gpu_->Add(a_d, b_d, out);
    cpu_->Add(ac, bc, wc);
    ExpectClose(Download(out), want, 4e-3f, 1e-6f, "Add n=" + std::to_string(n));
    gpu_->Add(a_d, b_d, a_d);  // aliasing
    ExpectClose(Download(a_d), want, 4e-3f, 1e-6f, "Add in place");
  }
}

// The PagedAttention tests run every case through three backends: the fixture's (kAuto, or what
// TESSERA_CUDA_ATTENTION says) and two that force the CUDA-core (attention.cu) and the tensor-core
// (attention_mma.cu) kernel.
class CudaAttentionTest : public CudaTest {
 public:
  void SetUp() override {
    CudaTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    for (AttentionKernel kernel : {AttentionKernel::kSimt, AttentionKernel::kMma}) {
      CudaBackendOptions options;
      options.attention_kernel = kernel;
      ASSERT_OK_AND_ASSIGN(std::unique_ptr<CudaBackend> backend, CudaBackend::Create(options));
      ASSERT_EQ(backend->attention_kernel(), kernel);
      forced_.push_back(std::move(backend));
    }
  }

  std::vector<std::unique_ptr<CudaBackend>> forced_;  // kSimt, kMma; same device as gpu_, own streams
};

const char* KernelName(AttentionKernel kernel) {
  switch (kernel) {
    case AttentionKernel::kSimt:
      return "simt";
    case AttentionKernel::kMma:
      return "mma";
    default:
      return "auto";
  }
}

// One attention step: sequences with (cached, new) token counts, random bf16 caches of block_size `bs` over
// shuffled blocks, checked against the CPU on each of the fixture's backends. A `stated_max_seq_len` larger
// than the longest context is what a step graph passes (captured for the longest context a sequence can
// have).
void CheckAttention(CudaAttentionTest& t, const std::vector<std::pair<int, int>>& seqs, int nkv, int group,
                    int hd, int bs = 16, int stated_max_seq_len = 0) {
  const int nq = nkv * group;
  int max_blocks = 0, total_blocks = 0, num_tokens = 0, max_q = 0, max_len = 0;
  std::string shape;  // "(cached+new, ...)", the first few sequences
  for (auto [cached, fresh] : seqs) {
    const int len = cached + fresh;
    max_blocks = std::max(max_blocks, (len + bs - 1) / bs);
    total_blocks += (len + bs - 1) / bs;
    num_tokens += fresh;
    max_q = std::max(max_q, fresh);
    max_len = std::max(max_len, len);
    if (shape.size() < 40)
      shape += (shape.empty() ? "" : ", ") + std::to_string(cached) + "+" + std::to_string(fresh);
  }
  const int num_blocks = total_blocks + 3;
  std::vector<int32_t> free_blocks(num_blocks);
  std::iota(free_blocks.begin(), free_blocks.end(), 0);
  std::shuffle(free_blocks.begin(), free_blocks.end(), t.rng_);
  std::vector<int32_t> query_start = {0}, seq_lens, tables(seqs.size() * max_blocks, 0), positions, slots;
  size_t next = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const auto [cached, fresh] = seqs[s];
    const int len = cached + fresh;
    for (int b = 0; b < (len + bs - 1) / bs; ++b) tables[s * max_blocks + b] = free_blocks[next++];
    for (int p = cached; p < len; ++p) {
      positions.push_back(p);
      slots.push_back(tables[s * max_blocks + p / bs] * bs + p % bs);
    }
    query_start.push_back(query_start.back() + fresh);
    seq_lens.push_back(len);
  }
  const int64_t cache_elems = int64_t{num_blocks} * bs * nkv * hd;
  std::vector<uint16_t> kc = RandomBf16(t.rng_, cache_elems), vc = RandomBf16(t.rng_, cache_elems);
  std::vector<uint16_t> q = RandomBf16(t.rng_, int64_t{num_tokens} * nq * hd);

  AttentionMeta host;
  host.query_start = query_start.data();
  host.seq_lens = seq_lens.data();
  host.block_tables = tables.data();
  host.slot_mapping = slots.data();
  host.positions = positions.data();
  host.num_seqs = static_cast<int>(seqs.size());
  host.num_tokens = num_tokens;
  host.max_blocks_per_seq = max_blocks;
  host.block_size = bs;
  host.max_query_len = max_q;
  host.max_seq_len = std::max(max_len, stated_max_seq_len);
  AttentionMeta dev = host;
  dev.query_start = t.Upload(query_start, DType::kI32, {host.num_seqs + 1}).data_as<int32_t>();
  dev.seq_lens = t.Upload(seq_lens, DType::kI32, {host.num_seqs}).data_as<int32_t>();
  dev.block_tables = t.Upload(tables, DType::kI32, {static_cast<int64_t>(tables.size())}).data_as<int32_t>();
  dev.slot_mapping = t.Upload(slots, DType::kI32, {num_tokens}).data_as<int32_t>();
  dev.positions = t.Upload(positions, DType::kI32, {num_tokens}).data_as<int32_t>();

  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  Tensor kc_d = t.Upload(kc, DType::kBF16, {num_blocks, bs, nkv, hd});
  Tensor vc_d = t.Upload(vc, DType::kBF16, {num_blocks, bs, nkv, hd});
  Tensor q_d = t.Upload(q, DType::kBF16, {num_tokens, nq * hd});

  std::vector<float> kcf = CudaTest::Widen(kc), vcf = CudaTest::Widen(vc), qf = CudaTest::Widen(q);
  std::vector<float> want(int64_t{num_tokens} * nq * hd);
  Tensor kcc = View(kcf, {num_blocks, bs, nkv, hd}), vcc = View(vcf, {num_blocks, bs, nkv, hd});
  Tensor qc = View(qf, {num_tokens, nq * hd}), oc = View(want, {num_tokens, nq * hd});
  t.cpu_->PagedAttention(host, qc, kcc, vcc, nq, nkv, hd, scale, oc);

  for (CudaBackend* gpu : {t.gpu_.get(), t.forced_[0].get(), t.forced_[1].get()}) {
    Tensor out = t.PoisonedBf16({num_tokens, nq * hd});
    EXPECT_OK(t.gpu_->Synchronize());  // the inputs and the poison were enqueued on gpu_'s stream
    gpu->PagedAttention(dev, q_d, kc_d, vc_d, nq, nkv, hd, scale, out);
    EXPECT_OK(gpu->Synchronize());
    // Outputs are convex combinations of bf16 values of magnitude ~1: 8e-3 relative + 4e-3 absolute (the mma
    // kernel's bf16 probabilities included).
    t.ExpectClose(t.Download(out), want, 8e-3f, 4e-3f,
                  std::string("PagedAttention kernel=") + KernelName(gpu->attention_kernel()) +
                      " nkv=" + std::to_string(nkv) + " group=" + std::to_string(group) +
                      " hd=" + std::to_string(hd) + " bs=" + std::to_string(bs) +
                      " seqs=" + std::to_string(seqs.size()) + " (" + shape + ")");
  }
}

// Decode rows in a step graph captured for a 128k context: the split has many parts, and each row divides its
// own (short) context among them, leaving most parts empty.
TEST_F(CudaAttentionTest, PagedAttentionDecodeWithAGraphsLongestContextMatchesTheCpu) {
  for (int group : {1, 8}) {
    CheckAttention(*this, {{36, 1}, {4, 1}, {700, 1}, {0, 1}}, 2, group, 128, 16, 131072);
    CheckAttention(*this, {{100, 1}}, 8, group, 64, 16, 131072);
  }
}

TEST_F(CudaAttentionTest, PagedAttentionDecodeMatchesTheCpu) {
  for (int group : {1, 4, 8}) {
    // Few sequences with long contexts: the context split (flash-decoding) path.
    CheckAttention(*this, {{1999, 1}, {37, 1}, {700, 1}}, 2, group, 128);
    // Many sequences: one block per (sequence, KV head).
    std::vector<std::pair<int, int>> many;
    for (int s = 0; s < 70; ++s) many.push_back({std::uniform_int_distribution<int>(0, 300)(rng_), 1});
    CheckAttention(*this, many, 8, group, 64);
  }
}

TEST_F(CudaAttentionTest, PagedAttentionMixedPrefillAndDecodeMatchesTheCpu) {
  for (int group : {1, 4, 8}) {
    CheckAttention(*this, {{0, 37}, {15, 1}, {33, 100}, {300, 1}, {0, 1}}, 2, group, 128);
    CheckAttention(*this, {{0, 200}, {5, 3}}, 1, group, 32);  // head_dim 32: the CUDA-core kernel only
    CheckAttention(*this, {{0, 65}, {40, 1}, {0, 1}, {130, 17}, {7, 1}}, 2, group, 64, 32);
  }
  CheckAttention(*this, {{0, 513}}, 8, 4, 128);                    // one long prompt, the 8B model's shape
  CheckAttention(*this, {{0, 100}, {20, 1}, {9, 33}}, 2, 3, 128);  // group 3: mma tiles of 21 tokens, 63 rows
  CheckAttention(*this, {{0, 70}, {300, 1}}, 1, 16, 128);          // group 16: mma tiles of 4 tokens
  CheckAttention(*this, {{0, 90}, {64, 40}, {500, 1}}, 2, 2, 256);  // head_dim 256: 32-key mma tiles
}

// Prompt lengths around the mma kernel's tiles: 64 / group tokens per block, 64 keys per shared-memory tile.
TEST_F(CudaAttentionTest, PagedAttentionPromptsAroundTileBoundariesMatchTheCpu) {
  for (int len : {1, 15, 16, 17, 63, 64, 65, 200, 513}) {
    for (int group : {1, 4, 8}) {
      for (int hd : {64, 128}) {
        for (int bs : {16, 32}) CheckAttention(*this, {{0, len}}, 2, group, hd, bs);
      }
    }
  }
}

TEST_F(CudaAttentionTest, PagedAttentionPrefillAfterACachedPrefixMatchesTheCpu) {
  for (int group : {1, 4, 8}) {
    for (int hd : {64, 128}) {
      for (int bs : {16, 32}) {
        CheckAttention(*this, {{300, 77}}, 2, group, hd, bs);
        CheckAttention(*this, {{300, 77}, {0, 64}, {1000, 1}, {64, 65}, {15, 1}}, 2, group, hd, bs);
      }
    }
  }
}

// An explicit option wins; for kAuto the environment variable chooses.
TEST_F(CudaKernelsTest, TheAttentionKernelFollowsTheOptionsThenTheEnvironment) {
  const char* old = std::getenv("TESSERA_CUDA_ATTENTION");
  const std::string saved = old == nullptr ? "" : old;
  ASSERT_EQ(setenv("TESSERA_CUDA_ATTENTION", "mma", 1), 0);
  CudaBackendOptions options;
  absl::StatusOr<std::unique_ptr<CudaBackend>> from_env = CudaBackend::Create(options);
  options.attention_kernel = AttentionKernel::kSimt;
  absl::StatusOr<std::unique_ptr<CudaBackend>> explicit_simt = CudaBackend::Create(options);
  if (old == nullptr) {
    unsetenv("TESSERA_CUDA_ATTENTION");
  } else {
    setenv("TESSERA_CUDA_ATTENTION", saved.c_str(), 1);
  }
  ASSERT_OK(from_env);
  ASSERT_OK(explicit_simt);
  EXPECT_EQ((*from_env)->attention_kernel(), AttentionKernel::kMma);
  EXPECT_EQ((*explicit_simt)->attention_kernel(), AttentionKernel::kSimt);
}

// Logits of normal(0, scale) over the vocabulary.
std::vector<float> RandomLogits(std::mt19937& rng, int64_t rows, int64_t vocab, float scale) {
  return RandomFloats(rng, rows * vocab, scale);
}

TEST_F(CudaKernelsTest, GreedySamplingIsTheCpuArgmax) {
  const int64_t rows = 9, vocab = 128256;
  std::vector<float> logits = RandomLogits(rng_, rows, vocab, 3.0f);
  logits[3 * vocab + 5] = logits[3 * vocab + 70000] = 100.0f;  // a tie: the first index wins
  Tensor l_d = Upload(logits, DType::kF32, {rows, vocab});
  std::vector<SamplingRow> params(rows);
  std::vector<int32_t> got(rows, -1), want(rows, -2);
  EXPECT_OK(gpu_->Sample(l_d, params.data(), got.data()));
  EXPECT_OK(cpu_->Sample(View(logits, {rows, vocab}), params.data(), want.data()));
  EXPECT_EQ(got, want);
  EXPECT_EQ(got[3], 5);
}

TEST_F(CudaKernelsTest, SampledTokensMatchTheCpuAndDependOnlyOnSeedAndStep) {
  const int64_t vocab = 128256;
  std::vector<SamplingRow> params;
  for (int i = 0; i < 40; ++i) {
    SamplingRow r;
    r.temperature = std::vector<float>{0.7f, 1.0f, 1.3f, 0.1f}[i % 4];
    r.top_k = std::vector<int>{0, 1, 40, 1000, 0}[i % 5];
    r.top_p = std::vector<float>{1.0f, 0.9f, 0.5f, 0.99f, 0.0f, 1.0f, 0.95f}[i % 7];
    r.seed = rng_();
    r.step = static_cast<uint64_t>(i);
    params.push_back(r);
  }
  const int64_t rows = static_cast<int64_t>(params.size());
  for (float scale : {1.0f, 4.0f}) {  // flat (huge nuclei) and peaked distributions
    std::vector<float> logits = RandomLogits(rng_, rows, vocab, scale);
    Tensor l_d = Upload(logits, DType::kF32, {rows, vocab});
    std::vector<int32_t> got(rows, -1), again(rows, -1), want(rows, -2);
    EXPECT_OK(gpu_->Sample(l_d, params.data(), got.data()));
    EXPECT_OK(gpu_->Sample(l_d, params.data(), again.data()));
    EXPECT_OK(cpu_->Sample(View(logits, {rows, vocab}), params.data(), want.data()));
    EXPECT_EQ(got, again) << "the same rows must give the same tokens";
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_EQ(got[r], want[r]) << "row " << r << " (temperature " << params[r].temperature << ", top_k "
                                 << params[r].top_k << ", top_p " << params[r].top_p << ", seed " << seed_
                                 << ")";
    }
    // A row alone gives what it gave in the batch.
    for (int64_t r : {int64_t{0}, int64_t{13}, rows - 1}) {
      int32_t alone = -1;
      EXPECT_OK(gpu_->Sample(l_d.Rows(r, 1), &params[r], &alone));
      EXPECT_EQ(alone, got[r]) << "row " << r;
    }
  }
}

TEST_F(CudaKernelsTest, ACapturedGraphReplaysWithNewInputs) {
  const int64_t rows = 3, h = 256;
  std::vector<uint16_t> a = RandomBf16(rng_, rows * h), b = RandomBf16(rng_, rows * h),
                        w = RandomBf16(rng_, h);
  Tensor a_d = Upload(a, DType::kBF16, {rows, h}), b_d = Upload(b, DType::kBF16, {rows, h});
  Tensor w_d = Upload(w, DType::kBF16, {h});
  Tensor sum = PoisonedBf16({rows, h}), out = PoisonedBf16({rows, h});
  auto step = [&] {
    gpu_->Add(a_d, b_d, sum);
    gpu_->RmsNorm(sum, w_d, 1e-5f, out);
  };
  step();  // warm-up
  EXPECT_OK(gpu_->Synchronize());
  ASSERT_OK(gpu_->BeginCapture());
  step();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<StepGraph> graph, gpu_->EndCapture());
  for (int i = 0; i < 2; ++i) {
    a = RandomBf16(rng_, rows * h);
    gpu_->CopyToDevice(a_d.data(), a.data(), a_d.nbytes());
    ASSERT_OK(gpu_->Replay(*graph));
    std::vector<float> got = Download(out);
    step();
    EXPECT_EQ(got, Download(out)) << "replay " << i;
  }
}

}  // namespace
}  // namespace tessera::testing
