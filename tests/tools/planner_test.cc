#include "tools/planner.h"

#include <gtest/gtest.h>

#include <cstdio>

#include "tests/util/status_matchers.h"
#include "worker/checkpoint/model_presets.h"
#include "worker/kv_cache.h"
#include "worker/model_split.h"

namespace tessera::tools {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

ModelConfig Preset(const char* name) {
  absl::StatusOr<ModelConfig> config = PresetConfig(name);
  TESSERA_CHECK(config.ok());
  return *config;
}

// meta-llama/Llama-2-70b-hf's config.json: the "LLaMA 70B" of TensorRT-LLM's published figures.
ModelConfig Llama2_70b() {
  ModelConfig c = Preset("llama3-70b");
  c.vocab_size = 32000;
  c.max_position_embeddings = 4096;
  c.rope_scaling.reset();
  c.rope_theta = 10000;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

PlanOptions Options(const char* gpu, int gpus_per_node) {
  PlanOptions o;
  o.gpu = *FindGpu(gpu);
  o.gpus_per_node = gpus_per_node;
  return o;
}

ParallelConfig Split(const ModelConfig& c, int tp, int pp) { return *SplitModel(c, tp, pp); }

// Independent counts, written out from the shapes of HF's tensors: elements of one decoder layer on a rank
// with `q_rows` query rows, `kv_rows` rows each of k and v, and `mlp` columns of gate / up / down.
int64_t LayerElements(int64_t hidden, int64_t q_rows, int64_t kv_rows, int64_t mlp) {
  return q_rows * hidden         // q_proj [q_rows, hidden]
         + 2 * kv_rows * hidden  // k_proj, v_proj [kv_rows, hidden]
         + hidden * q_rows       // o_proj [hidden, q_rows]
         + 2 * mlp * hidden      // gate_proj, up_proj [mlp, hidden]
         + hidden * mlp          // down_proj [hidden, mlp]
         + 2 * hidden;           // input_layernorm, post_attention_layernorm
}

TEST(PlannerTest, WeightBytesOfLlama70bAtTp8AreExact) {
  const ModelConfig c = Preset("llama3-70b");
  // tp 8: 8 of 64 query heads, 1 of 8 KV heads (head_dim 128), 28672 / 8 MLP columns, 128256 / 8 = 16032
  // vocabulary rows (+ 1 zero row in the embedding).
  const int64_t layer = LayerElements(8192, 8 * 128, 128, 3584);
  const int64_t expected = 2 * (80 * layer + (16032 + 1) * 8192 + 16032 * 8192 + 8192);
  EXPECT_EQ(expected, 17'640'751'104);
  const ParallelConfig p = Split(c, 8, 1);
  for (int rank = 0; rank < 8; ++rank) EXPECT_EQ(RankWeightBytes(c, p, rank), expected) << "rank " << rank;
  // The whole model on one GPU is its parameter count in bf16.
  EXPECT_EQ(RankWeightBytes(c, Split(c, 1, 1), 0), 2 * c.NumParameters());
}

TEST(PlannerTest, WeightBytesOf405bAtTp8Pp2SplitTheStages) {
  const ModelConfig c = Preset("llama3.1-405b");
  const ParallelConfig p = Split(c, 8, 2);
  // 126 layers: 63 per stage. 16 of 128 query heads, 1 of 8 KV heads, 53248 / 8 = 6656 MLP columns.
  const int64_t layers = 63 * LayerElements(16384, 16 * 128, 128, 6656);
  const int64_t embedding = (16032 + 1) * int64_t{16384}, lm_head = 16032 * int64_t{16384};
  EXPECT_EQ(RankWeightBytes(c, p, 0), 2 * (layers + embedding));        // stage 0: embedding
  EXPECT_EQ(RankWeightBytes(c, p, 8), 2 * (layers + lm_head + 16384));  // stage 1: lm_head, final norm
  int64_t total = 0;
  for (int rank = 0; rank < 16; ++rank) total += RankWeightBytes(c, p, rank);
  // Every parameter once, plus the embedding's zero rows and the norms each of the other 7 TP ranks repeats.
  const int64_t norms = 126 * 2 * 16384 + 16384;
  EXPECT_EQ(total, 2 * (c.NumParameters() + 8 * int64_t{16384} + 7 * norms));
}

TEST(PlannerTest, WeightBytesReplicateKvHeadsAndCopyTiedEmbeddingsToTheLastStage) {
  ModelConfig c = Preset("tiny");  // hidden 128, 4 layers, 4 heads, 2 KV heads of 32, MLP 384
  c.tie_word_embeddings = true;
  // tp 4 > 2 KV heads: each rank holds one KV head (replicated); vocab 128256 / 4 = 32064 rows.
  const int64_t layer = LayerElements(128, 32, 32, 96);
  const int64_t embedding = (32064 + 1) * 128;
  const ParallelConfig one_stage = Split(c, 4, 1);
  EXPECT_EQ(RankWeightBytes(c, one_stage, 3), 2 * (4 * layer + embedding + 128));  // lm_head = embedding
  // pp 3 splits 4 layers 1, 2, 1 (the leftover before the last stage); the last stage loads the embedding
  // slice again for its tied lm_head.
  const ParallelConfig three = Split(c, 4, 3);
  EXPECT_EQ(three.StageLayers(1).size(), 2);
  EXPECT_EQ(RankWeightBytes(c, three, 0), 2 * (1 * layer + embedding));
  EXPECT_EQ(RankWeightBytes(c, three, 4), 2 * (2 * layer));
  EXPECT_EQ(RankWeightBytes(c, three, 8), 2 * (1 * layer + embedding + 128));
}

TEST(PlannerTest, KvBytesPerTokenMatchWhatTheRunnerAllocates) {
  const ModelConfig c = Preset("llama3-70b");
  // 2 (K and V) x 80 layers x 1 KV head x 128 x 2 bytes.
  EXPECT_EQ(RankKvBytesPerToken(c, Split(c, 8, 1), 0, KvCacheDtype::kBf16), 40960);
  EXPECT_EQ(RankKvBytesPerToken(c, Split(c, 8, 1), 0, KvCacheDtype::kFp8), 20480);
  EXPECT_EQ(RankKvBytesPerToken(c, Split(c, 4, 2), 0, KvCacheDtype::kBf16), 2 * 40 * 2 * 128 * 2);
  // The runner's block: KvCacheShape{stage layers, local KV heads} (LlamaModel::KvShape).
  const ModelConfig tiny = Preset("tiny");
  const ParallelConfig p = Split(tiny, 4, 3);
  for (int rank = 0; rank < p.world_size(); ++rank) {
    KvCacheShape shape;
    shape.num_layers = static_cast<int>(p.StageLayers(p.PpRank(rank)).size());
    shape.num_kv_heads = static_cast<int>(p.KvHeads(p.TpRank(rank)).size());
    shape.head_dim = tiny.head_dim;
    EXPECT_EQ(RankKvBytesPerToken(tiny, p, rank, KvCacheDtype::kBf16) * kKvBlockSize,
              shape.BytesPerBlock(DType::kBF16))
        << "rank " << rank;
  }
}

TEST(PlannerTest, KvCacheIsWhatTheBudgetLeavesAndMaxBatchIsTokensOverLength) {
  const ModelConfig c = Preset("llama3-70b");
  PlanOptions o = Options("h100-80gb", 8);
  o.max_model_len = 131072;
  ASSERT_OK_AND_ASSIGN(Layout l, EvaluateLayout(c, 8, 1, o));
  const int64_t usable = static_cast<int64_t>(81559.0 * (1 << 20) * 0.90);
  for (const RankMemory& r : l.ranks) {
    EXPECT_EQ(r.kv_budget_bytes, usable - r.weight_bytes - r.activation_bytes);
    EXPECT_GT(r.activation_bytes, kRuntimeReserveBytes);
  }
  EXPECT_EQ(l.kv_tokens % kKvBlockSize, 0);
  EXPECT_LE(l.kv_tokens * l.kv_bytes_per_token, l.kv_cache_bytes);
  EXPECT_GT((l.kv_tokens + kKvBlockSize) * l.kv_bytes_per_token, l.kv_cache_bytes);
  EXPECT_EQ(l.max_batch, l.kv_tokens / 131072);
  EXPECT_TRUE(l.fits);
  EXPECT_GE(l.max_batch, 8);  // about 50 GiB of KV cache at 40 KiB per token
}

TEST(PlannerTest, RejectsSplitsTheServerRejects) {
  const ModelConfig c = Preset("llama3-70b");
  const PlanOptions o = Options("h100-80gb", 8);
  EXPECT_THAT(EvaluateLayout(c, 3, 1, o),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("num_attention_heads=64 is not divisible by tp=3")));
  EXPECT_THAT(EvaluateLayout(c, 16, 1, Options("h100-80gb", 16)), StatusIs(absl::StatusCode::kOk));
  EXPECT_THAT(EvaluateLayout(c, 16, 1, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--gpus-per-node 8")));
  EXPECT_THAT(EvaluateLayout(c, 1, 81, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_hidden_layers=80")));
  // 12 GPUs on 8-GPU nodes: 6 per node would cut a tp-4 stage in two.
  EXPECT_THAT(EvaluateLayout(c, 4, 3, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("whole pipeline stages")));
  ASSERT_OK_AND_ASSIGN(Layout l, EvaluateLayout(c, 8, 3, o));
  EXPECT_EQ(l.nodes, 3);
  EXPECT_EQ(l.ranks_per_node, 8);
  EXPECT_EQ(l.stage_layers, (std::vector<int>{27, 27, 26}));
}

TEST(PlannerTest, RecommendsTheFewestNodesThenTheLargestTp) {
  ASSERT_OK_AND_ASSIGN(Plan p70, MakePlan(Preset("llama3-70b"), Options("h100-80gb", 8)));
  EXPECT_EQ(p70.options.nodes, 1);
  EXPECT_EQ(p70.options.max_model_len, 131072);
  const Layout& a = p70.layouts[p70.recommended];
  EXPECT_EQ(std::make_tuple(a.tp, a.pp, a.nodes), std::make_tuple(8, 1, 1));

  ASSERT_OK_AND_ASSIGN(Plan h100, MakePlan(Preset("llama3.1-405b"), Options("h100-80gb", 8)));
  const Layout& b = h100.layouts[h100.recommended];
  EXPECT_EQ(std::make_tuple(b.tp, b.pp, b.nodes, b.ranks_per_node), std::make_tuple(8, 2, 2, 8));
  for (const Layout& l : h100.layouts) EXPECT_FALSE(l.fits && l.nodes == 1) << l.tp << "x" << l.pp;

  ASSERT_OK_AND_ASSIGN(Plan h200, MakePlan(Preset("llama3.1-405b"), Options("h200-141gb", 8)));
  const Layout& d = h200.layouts[h200.recommended];
  EXPECT_EQ(std::make_tuple(d.tp, d.pp, d.nodes), std::make_tuple(8, 1, 1));
}

TEST(PlannerTest, NothingFitsNamesTheModelSizeAndTheGpus) {
  PlanOptions o = Options("a100-80gb", 4);
  o.nodes = 1;
  EXPECT_THAT(MakePlan(Preset("llama3.1-405b"), o),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       AllOf(HasSubstr("405.9 B parameters"), HasSubstr("4 x a100-80gb"),
                             HasSubstr("80.0 GiB each"))));
}

TEST(PlannerTest, RejectsBadOptions) {
  const ModelConfig c = Preset("tiny");
  PlanOptions o = Options("h100-80gb", 0);
  EXPECT_THAT(MakePlan(c, o), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--gpus-per-node 0")));
  o = Options("h100-80gb", 8);
  o.gpu_memory_utilization = 1.5;
  EXPECT_THAT(MakePlan(c, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--gpu-memory-utilization")));
  o = Options("h100-80gb", 8);
  o.max_model_len = 1 << 20;
  EXPECT_THAT(MakePlan(c, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_position_embeddings")));
  EXPECT_THAT(FindGpu("h100"),
              StatusIs(absl::StatusCode::kNotFound, AllOf(HasSubstr("\"h100\""), HasSubstr("h200-141gb"))));
  EXPECT_THAT(ParseKvCacheDtype("int4"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("int4")));
}

TEST(PlannerTest, DecodeRooflineIsBoundedByReadingTheWeights) {
  const ModelConfig c = Preset("llama3-70b");
  const PlanOptions o = Options("h100-80gb", 8);
  ASSERT_OK_AND_ASSIGN(Layout tp8, EvaluateLayout(c, 8, 1, o));
  const DecodePoint one = DecodeRoofline(c, tp8, 1, 2048, o);
  // Reading the weights but the embedding table (a lookup reads one row), plus 160 all-reduces of at least
  // their latency each.
  const double weights =
      static_cast<double>(tp8.weight_bytes - (16032 + 1) * 8192 * 2) / o.gpu.hbm_bytes_per_s;
  EXPECT_GT(one.token_latency_s, weights + 160 * o.collective_latency_s);
  EXPECT_LT(one.token_latency_s, 1.5 * (weights + 160 * o.collective_latency_s));
  const DecodePoint many = DecodeRoofline(c, tp8, 128, 2048, o);
  EXPECT_GT(many.token_latency_s, one.token_latency_s);
  EXPECT_GT(many.tokens_per_s, 50 * one.tokens_per_s);
  // Pipeline stages add latency at batch 1 (each stage reads its weights in turn). At batch 128 two
  // micro-batches of 64 keep both stages busy, but each stage reads its weights once per micro-batch: less
  // throughput than tp 8 while weights dominate the bytes read.
  ASSERT_OK_AND_ASSIGN(Layout tp4pp2, EvaluateLayout(c, 4, 2, o));
  EXPECT_GT(DecodeRoofline(c, tp4pp2, 1, 2048, o).token_latency_s, 1.5 * one.token_latency_s);
  const double pp_throughput = DecodeRoofline(c, tp4pp2, 128, 2048, o).tokens_per_s;
  EXPECT_GT(pp_throughput, 0.5 * many.tokens_per_s);
  EXPECT_LT(pp_throughput, many.tokens_per_s);
  EXPECT_DOUBLE_EQ(AllReduceSeconds(450'000'000, 8, o), 10e-6 + 2.0 * 7 / 8 * 1e-3);
}

TEST(PlannerTest, PipelineStagesOnOtherNodesSendOverTheNetwork) {
  const ModelConfig c = Preset("llama3.1-405b");
  PlanOptions o = Options("h100-80gb", 8);
  ASSERT_OK_AND_ASSIGN(Layout l, EvaluateLayout(c, 8, 2, o));
  const double fast = PrefillRoofline(c, l, 2048, o);
  o.network_bytes_per_s /= 100;
  // 2048 x 16384 x 2 bytes = 64 MiB crosses the network once.
  EXPECT_NEAR(PrefillRoofline(c, l, 2048, o) - fast, 2048.0 * 16384 * 2 * (100 - 1) / 50e9, 1e-9);
}

// The roofline is a lower bound on time; published measurements of real engines take 1x to 3x of it.

TEST(PlannerTest, RooflineAgreesWithVllmDecodeOnH200) {
  // vLLM's performance benchmark (https://buildkite.com/vllm/performance-benchmark/builds/9515, "Latency
  // tests": input 32 tokens, output 128 tokens, batch size 8; Llama 3 70B, bf16): latency_llama70B_tp4 on
  // H200, mean end-to-end latency 2077.53 ms.
  const double measured = 2.07753;
  const ModelConfig c = Preset("llama3-70b");
  const PlanOptions o = Options("h200-141gb", 8);
  ASSERT_OK_AND_ASSIGN(Layout l, EvaluateLayout(c, 4, 1, o));
  // One step prefills the 8 prompts (256 tokens; the first output token), then 127 decode steps.
  double roofline = PrefillRoofline(c, l, 8 * 32, o);
  for (int i = 0; i < 127; ++i) roofline += DecodeRoofline(c, l, 8, 32 + i, o).token_latency_s;
  EXPECT_GE(measured / roofline, 1.0) << roofline;
  EXPECT_LE(measured / roofline, 3.0) << roofline;
  std::printf("measured %.1f ms, roofline %.1f ms: %.2fx\n", measured * 1e3, roofline * 1e3,
              measured / roofline);
}

TEST(PlannerTest, RooflineAgreesWithTensorRtLlmPrefillOnA100) {
  // TensorRT-LLM's performance page, "Low Latency", A100 GPUs (FP16), LLaMA 70B, batch 1, TP 4, input length
  // 2048: 1st token latency 377 ms.
  // https://github.com/NVIDIA/TensorRT-LLM/blob/138f96d45f90b9667426f7c47297d8c06bafac73/docs/source/performance.md
  const double measured = 0.377;
  const ModelConfig c = Llama2_70b();
  const PlanOptions o = Options("a100-80gb", 8);
  ASSERT_OK_AND_ASSIGN(Layout l, EvaluateLayout(c, 4, 1, o));
  const double roofline = PrefillRoofline(c, l, 2048, o);
  EXPECT_GE(measured / roofline, 1.0) << roofline;
  EXPECT_LE(measured / roofline, 3.0) << roofline;
  std::printf("measured %.1f ms, roofline %.1f ms: %.2fx\n", measured * 1e3, roofline * 1e3,
              measured / roofline);
}

}  // namespace
}  // namespace tessera::tools
