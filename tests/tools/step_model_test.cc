// The step model: its counts of the two decode designs (launches, graph segments, round trips, weight and
// NVLink bytes), and its after-design counts against the real CPU forward of a tiny model, counted by a
// Backend decorator.
#include "tools/step_model.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "kernels/cpu/cpu_backend.h"
#include "tests/util/status_matchers.h"
#include "tests/util/tiny_model.h"
#include "tools/planner.h"
#include "worker/checkpoint/make_model.h"
#include "worker/checkpoint/model_presets.h"
#include "worker/kv_cache.h"
#include "worker/model_runner.h"
#include "worker/model_split.h"

namespace tessera::tools {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

ModelConfig Preset(const char* name) {
  absl::StatusOr<ModelConfig> config = PresetConfig(name);
  TESSERA_CHECK(config.ok());
  return *config;
}

StepCost Step(const ModelConfig& m, StepShape shape, StepDesign design) {
  absl::StatusOr<StepCost> cost = ModelStep(m, shape, design, StepHardware());
  TESSERA_CHECK(cost.ok());
  return *cost;
}

StepShape Decode(int tp, int batch, int context = 1024) {
  return {.tp = tp, .pp = 1, .batch = batch, .tokens = batch, .context = context};
}

TEST(StepModelTest, AfterDesignDecodeIsOneGraphAndOneRoundTrip) {
  const ModelConfig c = Preset("llama3-70b");
  for (int tp : {1, 2, 8}) {
    const StepCost after = Step(c, Decode(tp, 1), StepDesign::kAfter);
    EXPECT_TRUE(after.graph);
    EXPECT_EQ(after.graph_segments, 1) << "tp " << tp;
    EXPECT_EQ(after.launches[LaunchKind::kGraphLaunch], 1);
    EXPECT_EQ(after.host_round_trips, 1);
  }
}

TEST(StepModelTest, BeforeDesignCutsTheGraphAtEveryCollective) {
  const ModelConfig c = Preset("llama3-70b");  // 80 layers
  const StepCost before = Step(c, Decode(8, 1), StepDesign::kBefore);
  // 2 all-reduces per layer, the vocabulary-parallel embedding's all-reduce, the lm_head's all-gather.
  EXPECT_EQ(before.launches[LaunchKind::kCollective], 2 * 80 + 1 + 1);
  EXPECT_EQ(before.graph_segments, 2 * 80 + 1 + 1 + 1);
  EXPECT_EQ(before.launches[LaunchKind::kGraphLaunch], before.graph_segments);
  EXPECT_EQ(before.host_round_trips, before.graph_segments);
  // The after design runs the same collectives inside its one graph.
  const StepCost after = Step(c, Decode(8, 1), StepDesign::kAfter);
  EXPECT_EQ(after.launches[LaunchKind::kCollective], before.launches[LaunchKind::kCollective]);
  // Without TP there is nothing to cut: one graph either way.
  EXPECT_EQ(Step(c, Decode(1, 1), StepDesign::kBefore).graph_segments, 1);
}

TEST(StepModelTest, GemmsPerLayerAreFourAfterAndSevenBefore) {
  const ModelConfig c = Preset("llama3-70b");
  for (int tp : {1, 8}) {
    const StepCost after = Step(c, Decode(tp, 4), StepDesign::kAfter);
    const StepCost before = Step(c, Decode(tp, 4), StepDesign::kBefore);
    // + 1: the lm_head.
    EXPECT_EQ(after.launches[LaunchKind::kGemm], 4 * 80 + 1);
    EXPECT_EQ(before.launches[LaunchKind::kGemm], 7 * 80 + 1);
    EXPECT_EQ(after.launches[LaunchKind::kRopeCache], 80);
    EXPECT_EQ(before.launches[LaunchKind::kRopeCache], 2 * 80);
    // The logits: one copy per rank after, one per row per rank before (batch 4: a graph of 4 rows).
    EXPECT_EQ(after.launches[LaunchKind::kCopy], tp > 1 ? tp : 0);
    EXPECT_EQ(before.launches[LaunchKind::kCopy], tp > 1 ? tp * 4 : 0);
  }
}

TEST(StepModelTest, DecodeReadsEveryWeightOfTheRankOnce) {
  const ModelConfig c = Preset("llama3-70b");  // untied: the lm_head is its own slice
  for (int tp : {1, 8}) {
    const ParallelConfig p = *SplitModel(c, tp, 1);
    const StepCost cost = Step(c, Decode(tp, 1), StepDesign::kAfter);
    // The planner's bytes hold the whole embedding slice (and its zero row when split); a step reads only
    // the rows it looks up.
    const int64_t rows = p.VocabShard(0).size() + (tp > 1 ? 1 : 0);
    EXPECT_EQ(cost.weight_bytes, RankWeightBytes(c, p, 0) - rows * 8192 * 2) << "tp " << tp;
    EXPECT_EQ(cost.embedding_bytes, 8192 * 2);
    // The same weights in both designs: fusing GEMMs changes launches, not bytes of weights.
    EXPECT_EQ(Step(c, Decode(tp, 1), StepDesign::kBefore).weight_bytes, cost.weight_bytes);
  }
}

TEST(StepModelTest, NothingCrossesNvlinkWithoutTensorParallelism) {
  const ModelConfig c = Preset("llama3-8b");
  for (StepDesign d : {StepDesign::kBefore, StepDesign::kAfter}) {
    const StepCost cost = Step(c, Decode(1, 32), d);
    EXPECT_EQ(cost.nvlink_bytes, 0);
    EXPECT_EQ(cost.launches[LaunchKind::kCollective], 0);
    EXPECT_EQ(cost.collective_us, 0);
  }
  EXPECT_GT(Step(c, Decode(2, 32), StepDesign::kAfter).nvlink_bytes, 0);
}

TEST(StepModelTest, SmallAllReducesAreOneShotAndLargeOnesRing) {
  const ModelConfig c = Preset("llama3-70b");
  // Batch 1 at tp 8: 16 KiB per all-reduce, one-shot: each rank reads 7 peers' buffers.
  const StepCost small = Step(c, Decode(8, 1), StepDesign::kAfter);
  const int64_t all_reduces = 2 * 80 + 1;
  const int64_t gather = 7 * 16032 * 4;  // rank 0 receives 7 blocks of one row of 16032 f32 logits
  EXPECT_EQ(small.nvlink_bytes, all_reduces * 7 * 8192 * 2 + gather);
  // The old design ran NCCL's ring: 2 x 7/8 of each message.
  const StepCost ring = Step(c, Decode(8, 1), StepDesign::kBefore);
  EXPECT_EQ(ring.nvlink_bytes, all_reduces * (2 * 8192 * 2 * 7 / 8) + gather);
  // Batch 64: 1 MiB per all-reduce, over the 512 KiB threshold: the ring in both designs.
  EXPECT_EQ(Step(c, Decode(8, 64), StepDesign::kAfter).nvlink_bytes,
            Step(c, Decode(8, 64), StepDesign::kBefore).nvlink_bytes);
}

TEST(StepModelTest, EstimateGrowsWithBatchAndTheNewDesignIsFaster) {
  const ModelConfig c = Preset("llama3-70b");
  for (StepDesign d : {StepDesign::kBefore, StepDesign::kAfter}) {
    double previous = 0;
    for (int batch : {1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 512}) {
      const StepCost cost = Step(c, Decode(8, batch), d);
      EXPECT_GE(cost.estimated_us, previous) << StepDesignName(d) << " batch " << batch;
      EXPECT_LE(cost.hbm_roofline_us, cost.estimated_us);
      previous = cost.estimated_us;
    }
  }
  for (int batch : {1, 64}) {
    EXPECT_LT(Step(c, Decode(8, batch), StepDesign::kAfter).estimated_us,
              Step(c, Decode(8, batch), StepDesign::kBefore).estimated_us);
  }
}

TEST(StepModelTest, PrefillRunsEagerly) {
  const ModelConfig c = Preset("llama3-70b");
  const StepShape prefill = {.tp = 8, .pp = 1, .batch = 1, .tokens = 2048, .context = 0};
  const StepCost after = Step(c, prefill, StepDesign::kAfter);
  EXPECT_FALSE(after.graph);
  EXPECT_EQ(after.graph_segments, 0);
  EXPECT_EQ(after.launches[LaunchKind::kGraphLaunch], 0);
  EXPECT_EQ(after.host_round_trips, 1);
  // Eagerly too, the old design synchronized before every collective.
  EXPECT_EQ(Step(c, prefill, StepDesign::kBefore).host_round_trips, 2 * 80 + 2 + 1);
  EXPECT_GT(after.compute_us, after.hbm_us);  // 2048 tokens: the GEMMs are compute-bound
}

TEST(StepModelTest, PipelineStagesCountTheirOwnLayersAndSend) {
  const ModelConfig c = Preset("llama3.1-405b");  // 126 layers
  const StepCost cost =
      Step(c, {.tp = 8, .pp = 2, .batch = 8, .tokens = 8, .context = 1024}, StepDesign::kAfter);
  EXPECT_EQ(cost.layers, 63);
  EXPECT_EQ(cost.launches[LaunchKind::kGemm] % 4, cost.pp_rank == 1 ? 1 : 0);
  EXPECT_EQ(cost.pp_send_bytes, cost.pp_rank == 0 ? 8 * 16384 * 2 : 0);
}

TEST(StepModelTest, RejectsBadShapesNamingTheField) {
  const ModelConfig c = Preset("llama3-70b");
  EXPECT_THAT(ModelStep(c, Decode(8, 0), StepDesign::kAfter, StepHardware()).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("batch 0")));
  EXPECT_THAT(ModelStep(c, {.tp = 8, .batch = 4, .tokens = 2}, StepDesign::kAfter, StepHardware()).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tokens 2")));
  EXPECT_THAT(ModelStep(c, Decode(8, 1, -1), StepDesign::kAfter, StepHardware()).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("context -1")));
  EXPECT_THAT(ModelStep(c, Decode(3, 1), StepDesign::kAfter, StepHardware()).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tp=3")));
}

// Forwards every call to a real backend and counts the calls by LaunchKind: those run now (`eager`), and
// those recorded between BeginCapture and EndCapture (`captured`, the kernels of a graph).
class CountingBackend final : public Backend {
 public:
  explicit CountingBackend(Backend& inner) : inner_(inner) {}

  LaunchCounts eager, captured;
  int synchronizes = 0;

  void Reset() {
    eager = captured = LaunchCounts();
    synchronizes = 0;
  }

  DeviceKind device() const override { return inner_.device(); }
  DType activation_dtype() const override { return inner_.activation_dtype(); }
  void* native_stream() const override { return inner_.native_stream(); }
  absl::StatusOr<DeviceBuffer> Allocate(int64_t bytes) override { return inner_.Allocate(bytes); }
  void CopyToDevice(void* dst, const void* src, int64_t bytes) override {
    Count(LaunchKind::kUpload);
    inner_.CopyToDevice(dst, src, bytes);
  }
  absl::Status CopyToHost(void* dst, const void* src, int64_t bytes) override {
    ++synchronizes;  // synchronous: the host waits for the device
    return inner_.CopyToHost(dst, src, bytes);
  }
  void CopyRowsToDevice(void* dst, int64_t dst_pitch, const void* src, int64_t src_pitch, int64_t row_bytes,
                        int64_t rows) override {
    Count(LaunchKind::kUpload);
    inner_.CopyRowsToDevice(dst, dst_pitch, src, src_pitch, row_bytes, rows);
  }
  void Copy(const Tensor& src, Tensor& dst) override {
    Count(LaunchKind::kCopy);
    inner_.Copy(src, dst);
  }
  void Copy2D(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t row_bytes,
              int64_t rows) override {
    Count(LaunchKind::kCopy);
    inner_.Copy2D(src, src_pitch, dst, dst_pitch, row_bytes, rows);
  }
  void Embedding(const Tensor& ids, const Tensor& table, Tensor& out) override {
    Count(LaunchKind::kGather);
    inner_.Embedding(ids, table, out);
  }
  void GatherRows(const Tensor& src, const Tensor& rows, Tensor& out) override {
    Count(LaunchKind::kGather);
    inner_.GatherRows(src, rows, out);
  }
  void Linear(const Tensor& x, const Tensor& w, Tensor& y) override {
    Count(LaunchKind::kGemm);
    inner_.Linear(x, w, y);
  }
  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    Count(LaunchKind::kNorm);
    inner_.RmsNorm(x, weight, eps, out);
  }
  void AddRmsNorm(Tensor& hidden, Tensor& residual, const Tensor& weight, float eps) override {
    Count(LaunchKind::kNorm);
    inner_.AddRmsNorm(hidden, residual, weight, eps);
  }
  void Rope(const AttentionMeta& meta, const RopeParams& rope, int head_dim, Tensor& q, Tensor& k) override {
    Count(LaunchKind::kRopeCache);
    inner_.Rope(meta, rope, head_dim, q, k);
  }
  void WriteKvCache(const AttentionMeta& meta, const Tensor& k, const Tensor& v, Tensor& k_cache,
                    Tensor& v_cache) override {
    Count(LaunchKind::kRopeCache);
    inner_.WriteKvCache(meta, k, v, k_cache, v_cache);
  }
  void RopeQkvToCache(const AttentionMeta& meta, const RopeParams& rope, int head_dim, const Tensor& qkv,
                      Tensor& q, Tensor& k_cache, Tensor& v_cache) override {
    Count(LaunchKind::kRopeCache);
    inner_.RopeQkvToCache(meta, rope, head_dim, qkv, q, k_cache, v_cache);
  }
  void PagedAttention(const AttentionMeta& meta, const Tensor& q, const Tensor& k_cache,
                      const Tensor& v_cache, int num_heads, int num_kv_heads, int head_dim, float scale,
                      Tensor& out) override {
    Count(LaunchKind::kAttention);
    inner_.PagedAttention(meta, q, k_cache, v_cache, num_heads, num_kv_heads, head_dim, scale, out);
  }
  void SiluMulFused(const Tensor& gate_up, Tensor& out) override {
    Count(LaunchKind::kActivation);
    inner_.SiluMulFused(gate_up, out);
  }
  void Add(const Tensor& a, const Tensor& b, Tensor& out) override {
    Count(LaunchKind::kElementwise);
    inner_.Add(a, b, out);
  }
  using Backend::Sample;
  absl::Status Sample(const Tensor& logits, const SamplingRow* rows, int32_t* out_ids,
                      SampleLogprobs* out_logprobs) override {
    ++synchronizes;
    return inner_.Sample(logits, rows, out_ids, out_logprobs);
  }
  absl::Status Synchronize() override {
    ++synchronizes;
    return inner_.Synchronize();
  }
  absl::Status BeginCapture() override {
    capturing_ = true;
    return inner_.BeginCapture();
  }
  absl::StatusOr<std::unique_ptr<StepGraph>> EndCapture() override {
    capturing_ = false;
    return inner_.EndCapture();
  }
  absl::Status Replay(const StepGraph& graph) override {
    Count(LaunchKind::kGraphLaunch);
    return inner_.Replay(graph);
  }

 private:
  void Count(LaunchKind kind) { ++(capturing_ ? captured : eager)[kind]; }

  Backend& inner_;
  bool capturing_ = false;
};

std::string Describe(const LaunchCounts& counts) {
  std::string s;
  for (int k = 0; k < kNumLaunchKinds; ++k) {
    s +=
        std::string(LaunchKindName(static_cast<LaunchKind>(k))) + "=" + std::to_string(counts.count[k]) + " ";
  }
  return s;
}

// The after design's counts against what the tiny model's real forward (tp 1, the CPU backend) calls.
class StepModelCountTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { dir_ = new std::string(::tessera::testing::MakeTinyModel("step_model_test", 5)); }
  static void TearDownTestSuite() {
    ::tessera::testing::RemoveTinyModel(*dir_);
    delete dir_;
  }

  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(auto checkpoint, Checkpoint::Open(*dir_));
    checkpoint_ = std::make_unique<Checkpoint>(std::move(checkpoint));
    ASSERT_OK_AND_ASSIGN(cpu_, CpuBackend::Create({.num_threads = 2, .linear = {}}));
    counting_ = std::make_unique<CountingBackend>(*cpu_);
  }

  // A runner on the counting backend with `prompt_len` tokens of one sequence already computed.
  std::unique_ptr<ModelRunner> Prefilled(int graph_max_batch, Sequence& seq, int prompt_len) {
    ModelRunnerOptions options;
    options.model.max_num_tokens = 64;
    options.model.max_num_seqs = 4;
    options.graph_max_batch = graph_max_batch;
    auto runner = ModelRunner::Create(*checkpoint_, *counting_, options);
    EXPECT_TRUE(runner.ok()) << runner.status();
    EXPECT_OK((*runner)->AllocateKvCache(16));
    for (int i = 0; i < prompt_len; ++i) seq.tokens.push_back(1000 + 37 * i);
    seq.num_prompt_tokens = prompt_len;
    seq.block_table = {3, 7, 11};
    counting_->Reset();
    EXPECT_OK((*runner)->CaptureGraphs());
    EXPECT_TRUE((*runner)->Forward({&seq}).ok());
    seq.tokens.push_back(42);  // the decode step's new token
    return std::move(runner).value();
  }

  static std::string* dir_;
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<CpuBackend> cpu_;
  std::unique_ptr<CountingBackend> counting_;
};
std::string* StepModelCountTest::dir_ = nullptr;

TEST_F(StepModelCountTest, EagerDecodeStepCallsWhatTheModelCounts) {
  const int prompt_len = 21;
  Sequence seq;
  std::unique_ptr<ModelRunner> runner = Prefilled(/*graph_max_batch=*/0, seq, prompt_len);
  counting_->Reset();
  ASSERT_OK_AND_ASSIGN(Tensor logits, runner->Forward({&seq}));
  (void)logits;

  const ModelConfig tiny = Preset("tiny");
  const StepShape shape = {
      .tp = 1, .pp = 1, .batch = 1, .tokens = 1, .context = prompt_len, .graph_max_batch = 0};
  ASSERT_OK_AND_ASSIGN(StepCost cost, ModelStep(tiny, shape, StepDesign::kAfter, StepHardware()));
  EXPECT_FALSE(cost.graph);
  EXPECT_EQ(counting_->eager, cost.launches)
      << "forward: " << Describe(counting_->eager) << "\nmodel:   " << Describe(cost.launches);
  EXPECT_EQ(counting_->synchronizes, cost.host_round_trips);
  EXPECT_EQ(cost.graph_segments, 0);
  // Spelled out for the tiny model's 4 layers.
  EXPECT_EQ(cost.launches[LaunchKind::kGemm], 4 * 4 + 1);
  EXPECT_EQ(cost.launches[LaunchKind::kNorm], 2 * 4 + 1);
}

TEST_F(StepModelCountTest, CapturedDecodeStepIsOneGraphOfWhatTheModelCounts) {
  const int prompt_len = 30;
  Sequence seq;
  std::unique_ptr<ModelRunner> runner = Prefilled(/*graph_max_batch=*/1, seq, prompt_len);
  ASSERT_EQ(runner->num_graphs(), 1);
  const ModelConfig tiny = Preset("tiny");
  const StepShape shape = {
      .tp = 1, .pp = 1, .batch = 1, .tokens = 1, .context = prompt_len, .graph_max_batch = 1};
  ASSERT_OK_AND_ASSIGN(StepCost cost, ModelStep(tiny, shape, StepDesign::kAfter, StepHardware()));
  ASSERT_TRUE(cost.graph);
  EXPECT_EQ(runner->graph_segments(0), cost.graph_segments);

  // The graph's kernels, as recorded by CaptureGraphs (before the prefill): the model's kernels without the
  // host's uploads and the graph launch.
  LaunchCounts kernels = cost.launches;
  kernels[LaunchKind::kUpload] = 0;
  kernels[LaunchKind::kGraphLaunch] = 0;
  EXPECT_EQ(counting_->captured, kernels)
      << "captured: " << Describe(counting_->captured) << "\nmodel:    " << Describe(kernels);

  // The decode step itself: the uploads and one graph launch from the host, one round trip.
  counting_->Reset();
  ASSERT_OK_AND_ASSIGN(Tensor logits, runner->Forward({&seq}));
  (void)logits;
  EXPECT_EQ(runner->graph_steps(), 1);
  LaunchCounts host;
  host[LaunchKind::kUpload] = cost.launches[LaunchKind::kUpload];
  host[LaunchKind::kGraphLaunch] = cost.launches[LaunchKind::kGraphLaunch];
  EXPECT_EQ(counting_->eager, host) << "forward: " << Describe(counting_->eager);
  EXPECT_EQ(counting_->synchronizes, cost.host_round_trips);
}

}  // namespace
}  // namespace tessera::tools
