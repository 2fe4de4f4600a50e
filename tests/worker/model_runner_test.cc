// ModelRunner on the tiny preset: steps that mix prefill and decode, chunked prefill and batch composition
// give the same tokens as sequences run alone; bad steps fail cleanly without changing state.
#include "worker/model_runner.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>

#include "kernels/cpu/cpu_backend.h"
#include "tests/util/status_matchers.h"
#include "tests/util/tiny_model.h"
#include "worker/checkpoint/make_model.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

class ModelRunnerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { dir_ = new std::string(::tessera::testing::MakeTinyModel("model_runner_test", 3)); }
  static void TearDownTestSuite() {
    ::tessera::testing::RemoveTinyModel(*dir_);
    delete dir_;
  }

  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(auto checkpoint, Checkpoint::Open(*dir_));
    checkpoint_ = std::make_unique<Checkpoint>(std::move(checkpoint));
    ASSERT_OK_AND_ASSIGN(backend_, CpuBackend::Create({.num_threads = 2, .linear = {}}));
  }

  std::unique_ptr<ModelRunner> MakeRunner(int num_blocks, int max_tokens = 64, int graph_max_batch = 0) {
    ModelRunnerOptions options;
    options.model.max_num_tokens = max_tokens;
    options.model.max_num_seqs = 8;
    options.graph_max_batch = graph_max_batch;
    auto runner = ModelRunner::Create(*checkpoint_, *backend_, options);
    EXPECT_TRUE(runner.ok()) << runner.status();
    EXPECT_OK((*runner)->AllocateKvCache(num_blocks));
    EXPECT_OK((*runner)->CaptureGraphs());
    allocator_ = std::make_unique<BlockAllocator>(num_blocks);
    return std::move(runner).value();
  }

  // Gives each sequence the blocks its tokens need (the coordinator's block manager in serving), then steps.
  absl::StatusOr<Tensor> Forward(ModelRunner& runner, const std::vector<Sequence*>& seqs) {
    for (Sequence* seq : seqs) {
      RETURN_IF_ERROR(allocator_->Cover(static_cast<int64_t>(seq->tokens.size()), seq->block_table));
    }
    return runner.Forward(seqs);
  }

  static Sequence Prompt(std::vector<int32_t> ids) {
    Sequence s;
    s.num_prompt_tokens = static_cast<int>(ids.size());
    s.tokens = std::move(ids);
    return s;
  }

  // Greedy generation of one sequence alone, `steps` tokens.
  std::vector<int32_t> GenerateAlone(std::vector<int32_t> prompt, int steps) {
    auto runner = MakeRunner(16);
    Sequence seq = Prompt(prompt);
    for (int i = 0; i < steps; ++i) {
      auto logits = Forward(*runner, {&seq});
      EXPECT_TRUE(logits.ok()) << logits.status();
      EXPECT_OK(runner->SampleAndAppend(*logits, {&seq}));
    }
    return {seq.tokens.begin() + seq.num_prompt_tokens, seq.tokens.end()};
  }

  static std::string* dir_;
  std::unique_ptr<BlockAllocator> allocator_;  // of the last runner made
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<CpuBackend> backend_;
};
std::string* ModelRunnerTest::dir_ = nullptr;

const std::vector<int32_t> kPromptA = {128000, 9906, 11,  1917, 0,   77,  3000, 12,  5,
                                       9,      100,  101, 102,  103, 104, 105,  106, 2};
const std::vector<int32_t> kPromptB = {128000, 40, 1093, 264, 8};

TEST_F(ModelRunnerTest, StepsMixingPrefillAndDecodeMatchSequencesRunAlone) {
  std::vector<int32_t> alone_a = GenerateAlone(kPromptA, 10);
  std::vector<int32_t> alone_b = GenerateAlone(kPromptB, 6);

  auto runner = MakeRunner(16);
  Sequence a = Prompt(kPromptA), b = Prompt(kPromptB);
  for (int i = 0; i < 4; ++i) {  // a alone: prefill then decode
    ASSERT_OK_AND_ASSIGN(Tensor logits, Forward(*runner, {&a}));
    EXPECT_OK(runner->SampleAndAppend(logits, {&a}));
  }
  for (int i = 0; i < 6; ++i) {  // b's prefill joins a's decode in one step, then both decode
    ASSERT_OK_AND_ASSIGN(Tensor logits, Forward(*runner, {&b, &a}));
    EXPECT_OK(runner->SampleAndAppend(logits, {&b, &a}));
  }
  EXPECT_EQ(std::vector<int32_t>(a.tokens.begin() + a.num_prompt_tokens, a.tokens.end()), alone_a);
  EXPECT_EQ(std::vector<int32_t>(b.tokens.begin() + b.num_prompt_tokens, b.tokens.end()), alone_b);
}

TEST_F(ModelRunnerTest, ChunkedPrefillGivesTheSameLogitsAsOneStep) {
  auto whole_runner = MakeRunner(16);
  Sequence whole = Prompt(kPromptA);
  ASSERT_OK_AND_ASSIGN(Tensor whole_logits, Forward(*whole_runner, {&whole}));
  std::vector<float> expected(whole_logits.data_as<float>(),
                              whole_logits.data_as<float>() + whole_logits.numel());

  auto runner = MakeRunner(16);
  Sequence chunked = Prompt({kPromptA.begin(), kPromptA.begin() + 7});
  ASSERT_OK(Forward(*runner, {&chunked}).status());
  chunked.tokens.assign(kPromptA.begin(), kPromptA.end());  // the rest of the prompt, 11 more tokens
  ASSERT_OK_AND_ASSIGN(Tensor logits, Forward(*runner, {&chunked}));
  ASSERT_EQ(logits.numel(), static_cast<int64_t>(expected.size()));
  float max_ref = 0, max_diff = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    max_ref = std::max(max_ref, std::fabs(expected[i]));
    max_diff = std::max(max_diff, std::fabs(logits.data_as<float>()[i] - expected[i]));
  }
  // Both steps run the same kernels on the same rows; only the oneDNN/GEMV split can differ (bf16 rounding).
  EXPECT_LE(max_diff, 1e-2f * max_ref);
}

TEST_F(ModelRunnerTest, RejectsTokenOutsideTheVocabularyNamingTheSequence) {
  auto runner = MakeRunner(4);
  Sequence seq = Prompt({1, 2, 128256});
  seq.id = 42;
  seq.block_table = {0};
  EXPECT_THAT(runner->Forward({&seq}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("sequence 42 (row 0 of the step): token id 128256")));
  EXPECT_EQ(seq.num_computed_tokens, 0);
}

TEST_F(ModelRunnerTest, RejectsAShortBlockTableAndLeavesSequencesAsTheyWere) {
  auto runner = MakeRunner(4);
  Sequence a = Prompt(std::vector<int32_t>(20, 5)), b = Prompt({1, 2, 3});
  a.id = 7;
  b.id = 9;
  a.block_table = {0, 1};
  b.block_table = {};  // 1 needed
  EXPECT_THAT(
      runner->Forward({&a, &b}).status(),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("sequence 9 (row 1 of the step) has 3 tokens but a block table of 0 blocks")));
  EXPECT_EQ(a.num_computed_tokens, 0);
  a.block_table = {0};  // 20 tokens need 2
  EXPECT_THAT(runner->Forward({&a}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("sequence 7 (row 0 of the step) has 20 tokens")));
  a.block_table = {0, 1, 2};  // a table may run ahead of the tokens
  ASSERT_OK(runner->Forward({&a}).status());
  EXPECT_EQ(a.num_computed_tokens, 20);
}

TEST_F(ModelRunnerTest, RejectsBlockIdsOutsideTheCache) {
  auto runner = MakeRunner(4);
  for (int32_t bad : {4, -1}) {
    Sequence seq = Prompt(std::vector<int32_t>(20, 5));
    seq.id = 3;
    seq.block_table = {0, bad};
    EXPECT_THAT(runner->Forward({&seq}).status(),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr(absl::StrCat("sequence 3 (row 0 of the step): block id ", bad,
                                                " at index 1 of its block table is outside [0, 4)"))));
  }
}

TEST_F(ModelRunnerTest, NeedsTheKvCacheBeforeAStepAndAllocatesItOnce) {
  ModelRunnerOptions options;
  options.model.max_num_tokens = 16;
  options.model.max_num_seqs = 2;
  ASSERT_OK_AND_ASSIGN(auto runner, ModelRunner::Create(*checkpoint_, *backend_, options));
  EXPECT_EQ(runner->num_kv_blocks(), 0);
  const ModelConfig& c = checkpoint_->config();
  // Keys and values of every layer, 16 tokens, fp32 on the CPU.
  EXPECT_EQ(runner->KvBlockBytes(),
            int64_t{2} * c.num_hidden_layers * 16 * c.num_key_value_heads * c.head_dim * 4);
  Sequence seq = Prompt({1, 2, 3});
  seq.block_table = {0};
  EXPECT_THAT(runner->Forward({&seq}).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("KV cache")));
  EXPECT_THAT(runner->AllocateKvCache(0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_blocks=0")));
  ASSERT_OK(runner->AllocateKvCache(2));
  EXPECT_EQ(runner->num_kv_blocks(), 2);
  EXPECT_THAT(runner->AllocateKvCache(2),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("already allocated")));
  ASSERT_OK(runner->Forward({&seq}).status());
}

TEST_F(ModelRunnerTest, SampleLeavesSequencesUnchanged) {
  auto runner = MakeRunner(8);
  Sequence a = Prompt(kPromptA), b = Prompt(kPromptB);
  ASSERT_OK_AND_ASSIGN(Tensor logits, Forward(*runner, {&a, &b}));
  std::vector<int32_t> tokens;
  EXPECT_OK(runner->Sample(logits, {&a, &b}, tokens));
  EXPECT_EQ(tokens.size(), 2u);
  EXPECT_EQ(a.tokens, kPromptA);
  std::vector<int32_t> second;
  EXPECT_OK(runner->Sample(logits.Rows(1, 1), {&b}, second));  // rows of the logits sample the same
  EXPECT_EQ(second, std::vector<int32_t>{tokens[1]});
  EXPECT_OK(runner->SampleAndAppend(logits, {&a, &b}));
  EXPECT_EQ(a.tokens.back(), tokens[0]);
  EXPECT_EQ(b.tokens.back(), tokens[1]);
}

TEST_F(ModelRunnerTest, RejectsAStepLargerThanItsBuffers) {
  auto runner = MakeRunner(8, /*max_tokens=*/8);
  Sequence seq = Prompt(std::vector<int32_t>(9, 1));
  EXPECT_THAT(Forward(*runner, {&seq}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_num_tokens=8")));
}

TEST_F(ModelRunnerTest, RejectsASequenceWithNothingNew) {
  auto runner = MakeRunner(4);
  Sequence seq = Prompt({1, 2});
  ASSERT_OK(Forward(*runner, {&seq}).status());
  EXPECT_THAT(Forward(*runner, {&seq}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no new token")));
}

TEST_F(ModelRunnerTest, SampledTokensDependOnSeedAndStepNotOnTheBatch) {
  auto run = [&](bool with_other) {
    auto runner = MakeRunner(16);
    Sequence seq = Prompt(kPromptB), other = Prompt(kPromptA);
    seq.sampling = {.temperature = 1.0f, .seed = 99};
    other.sampling = {.temperature = 1.0f, .seed = 5};
    for (int i = 0; i < 6; ++i) {
      std::vector<Sequence*> batch = {&seq};
      if (with_other) batch.insert(batch.begin(), &other);
      auto logits = Forward(*runner, batch);
      EXPECT_TRUE(logits.ok());
      EXPECT_OK(runner->SampleAndAppend(*logits, batch));
    }
    return seq.tokens;
  };
  EXPECT_EQ(run(false), run(true));
}

// Decode steps through captured graphs (the CPU's call lists: the same kernels, replayed) give the logits of
// eager steps, for batches that fill a captured size, pad one (3 in 4, 5 in 8) and shrink as sequences
// finish; the padding rows write nothing into the KV cache (block 0 belongs to a real sequence here).
TEST_F(ModelRunnerTest, DecodeStepsThroughGraphsGiveTheEagerLogits) {
  auto eager = MakeRunner(32, 64, 0);
  auto eager_blocks = std::move(allocator_);
  auto graphed = MakeRunner(32, 64, 8);
  EXPECT_EQ(graphed->graph_batch_sizes(), (std::vector<int>{1, 2, 4, 8}));
  EXPECT_EQ(graphed->num_graphs(), 4);
  EXPECT_EQ(eager->num_graphs(), 0);

  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 5; ++i) prompts.push_back({128000, 100 + i, 7 * i + 3, 15 + i, 9});
  prompts[1] = kPromptA;  // 18 tokens: its decode crosses into a second block
  std::vector<Sequence> e(prompts.size()), g(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) e[i] = g[i] = Prompt(prompts[i]);
  auto rows = [](std::vector<Sequence>& v, size_t n) {
    std::vector<Sequence*> r;
    for (size_t i = 0; i < n; ++i) r.push_back(&v[i]);
    return r;
  };
  // Batches of 5, 4, 3, 1 sequences: the first step is the prompts (eager in both), then decode steps.
  int64_t graph_steps = 0;
  for (size_t n : {5u, 5u, 5u, 4u, 4u, 3u, 3u, 1u, 1u}) {
    SCOPED_TRACE(absl::StrCat(n, " sequences, graph step ", graph_steps));
    std::vector<Sequence*> eb = rows(e, n), gb = rows(g, n);
    std::swap(allocator_, eager_blocks);
    ASSERT_OK_AND_ASSIGN(Tensor want, Forward(*eager, eb));
    std::swap(allocator_, eager_blocks);
    const bool decode = g[0].num_computed_tokens > 0;
    ASSERT_OK_AND_ASSIGN(Tensor got, Forward(*graphed, gb));
    if (decode) ++graph_steps;
    EXPECT_EQ(graphed->graph_steps(), graph_steps);
    ASSERT_EQ(got.numel(), want.numel());
    float max_ref = 0, max_diff = 0;
    for (int64_t i = 0; i < want.numel(); ++i) {
      max_ref = std::max(max_ref, std::fabs(want.data_as<float>()[i]));
      max_diff = std::max(max_diff, std::fabs(got.data_as<float>()[i] - want.data_as<float>()[i]));
    }
    // The same kernels on the same rows; only the GEMV/oneDNN choice may differ with the padded row count.
    EXPECT_LE(max_diff, 1e-3f * max_ref);
    EXPECT_OK(eager->SampleAndAppend(want, eb));
    EXPECT_OK(graphed->SampleAndAppend(got, gb));
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(g[i].tokens, e[i].tokens) << "sequence " << i;
  }
  EXPECT_EQ(graph_steps, 8);
}

TEST_F(ModelRunnerTest, StepsThatNoGraphHoldsRunEagerly) {
  auto runner = MakeRunner(32, 64, 2);
  EXPECT_EQ(runner->graph_batch_sizes(), (std::vector<int>{1, 2}));
  Sequence a = Prompt(kPromptB), b = Prompt(kPromptB), c = Prompt(kPromptB);
  ASSERT_OK(Forward(*runner, {&a, &b, &c}).status());  // prompts
  for (Sequence* s : {&a, &b, &c}) s->tokens.push_back(5);
  ASSERT_OK(Forward(*runner, {&a, &b, &c}).status());  // 3 decode rows: more than the largest graph
  EXPECT_EQ(runner->graph_steps(), 0);
  a.tokens.push_back(6);
  b.tokens.insert(b.tokens.end(), {6, 7});  // two new tokens: not a decode step
  ASSERT_OK(Forward(*runner, {&a, &b}).status());
  EXPECT_EQ(runner->graph_steps(), 0);
  a.tokens.push_back(8);
  ASSERT_OK(Forward(*runner, {&a}).status());
  EXPECT_EQ(runner->graph_steps(), 1);
}

TEST_F(ModelRunnerTest, GraphOptionsAndCaptureOrderAreChecked) {
  ModelRunnerOptions options;
  options.model.max_num_tokens = 16;
  options.model.max_num_seqs = 6;
  options.graph_max_batch = -2;
  EXPECT_THAT(ModelRunner::Create(*checkpoint_, *backend_, options).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("graph_max_batch=-2")));
  options.graph_max_batch = -1;  // the CPU's default: off
  ASSERT_OK_AND_ASSIGN(auto runner, ModelRunner::Create(*checkpoint_, *backend_, options));
  EXPECT_TRUE(runner->graph_batch_sizes().empty());
  options.graph_max_batch = 100;  // capped by max_num_seqs
  ASSERT_OK_AND_ASSIGN(runner, ModelRunner::Create(*checkpoint_, *backend_, options));
  EXPECT_EQ(runner->graph_batch_sizes(), (std::vector<int>{1, 2, 4, 6}));
  EXPECT_THAT(runner->CaptureGraphs(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("KV cache")));
  ASSERT_OK(runner->AllocateKvCache(4));
  ASSERT_OK(runner->CaptureGraphs());
  EXPECT_EQ(runner->num_graphs(), 4);
  EXPECT_THAT(runner->CaptureGraphs(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("already captured")));
}

}  // namespace
}  // namespace tessera
