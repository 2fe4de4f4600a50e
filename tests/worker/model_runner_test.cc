// ModelRunner on the tiny preset: steps that mix prefill and decode, chunked prefill and batch composition
// give the same tokens as sequences run alone; bad steps fail cleanly without changing state.
#include "worker/model_runner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>

#include <unistd.h>

#include "kernels/cpu/cpu_backend.h"
#include "tests/util/status_matchers.h"
#include "worker/checkpoint/make_model.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

class ModelRunnerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(::testing::TempDir() + "/model_runner_test_tiny_" + std::to_string(getpid()));
    MakeModelOptions options;
    options.preset = "tiny";
    options.out_dir = *dir_;
    options.seed = 3;
    absl::Status s = MakeModel(options);
    ASSERT_TRUE(s.ok()) << s;
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }

  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(auto checkpoint, Checkpoint::Open(*dir_));
    checkpoint_ = std::make_unique<Checkpoint>(std::move(checkpoint));
    ASSERT_OK_AND_ASSIGN(backend_, CpuBackend::Create({.num_threads = 2, .linear = {}}));
  }

  std::unique_ptr<ModelRunner> MakeRunner(int num_blocks, int max_tokens = 64) {
    ModelRunnerOptions options;
    options.model.max_num_tokens = max_tokens;
    options.model.max_num_seqs = 8;
    options.num_kv_blocks = num_blocks;
    auto runner = ModelRunner::Create(*checkpoint_, *backend_, options);
    EXPECT_TRUE(runner.ok()) << runner.status();
    return std::move(runner).value();
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
      auto logits = runner->Forward({&seq});
      EXPECT_TRUE(logits.ok()) << logits.status();
      runner->SampleAndAppend(*logits, {&seq});
    }
    return {seq.tokens.begin() + seq.num_prompt_tokens, seq.tokens.end()};
  }

  static std::string* dir_;
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<CpuBackend> backend_;
};
std::string* ModelRunnerTest::dir_ = nullptr;

const std::vector<int32_t> kPromptA = {128000, 9906, 11, 1917, 0, 77, 3000, 12, 5, 9, 100, 101, 102, 103, 104, 105, 106, 2};
const std::vector<int32_t> kPromptB = {128000, 40, 1093, 264, 8};

TEST_F(ModelRunnerTest, StepsMixingPrefillAndDecodeMatchSequencesRunAlone) {
  std::vector<int32_t> alone_a = GenerateAlone(kPromptA, 10);
  std::vector<int32_t> alone_b = GenerateAlone(kPromptB, 6);

  auto runner = MakeRunner(16);
  Sequence a = Prompt(kPromptA), b = Prompt(kPromptB);
  for (int i = 0; i < 4; ++i) {  // a alone: prefill then decode
    ASSERT_OK_AND_ASSIGN(Tensor logits, runner->Forward({&a}));
    runner->SampleAndAppend(logits, {&a});
  }
  for (int i = 0; i < 6; ++i) {  // b's prefill joins a's decode in one step, then both decode
    ASSERT_OK_AND_ASSIGN(Tensor logits, runner->Forward({&b, &a}));
    runner->SampleAndAppend(logits, {&b, &a});
  }
  EXPECT_EQ(std::vector<int32_t>(a.tokens.begin() + a.num_prompt_tokens, a.tokens.end()), alone_a);
  EXPECT_EQ(std::vector<int32_t>(b.tokens.begin() + b.num_prompt_tokens, b.tokens.end()), alone_b);
}

TEST_F(ModelRunnerTest, ChunkedPrefillGivesTheSameLogitsAsOneStep) {
  auto whole_runner = MakeRunner(16);
  Sequence whole = Prompt(kPromptA);
  ASSERT_OK_AND_ASSIGN(Tensor whole_logits, whole_runner->Forward({&whole}));
  std::vector<float> expected(whole_logits.data_as<float>(), whole_logits.data_as<float>() + whole_logits.numel());

  auto runner = MakeRunner(16);
  Sequence chunked = Prompt({kPromptA.begin(), kPromptA.begin() + 7});
  ASSERT_OK(runner->Forward({&chunked}).status());
  chunked.tokens.assign(kPromptA.begin(), kPromptA.end());  // the rest of the prompt, 11 more tokens
  ASSERT_OK_AND_ASSIGN(Tensor logits, runner->Forward({&chunked}));
  ASSERT_EQ(logits.numel(), static_cast<int64_t>(expected.size()));
  float max_ref = 0, max_diff = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    max_ref = std::max(max_ref, std::fabs(expected[i]));
    max_diff = std::max(max_diff, std::fabs(logits.data_as<float>()[i] - expected[i]));
  }
  // Both steps run the same kernels on the same rows; only the oneDNN/GEMV split can differ (bf16 rounding).
  EXPECT_LE(max_diff, 1e-2f * max_ref);
}

TEST_F(ModelRunnerTest, RejectsTokenOutsideTheVocabularyWithoutTakingBlocks) {
  auto runner = MakeRunner(4);
  Sequence seq = Prompt({1, 2, 128256});
  EXPECT_THAT(runner->Forward({&seq}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("token id 128256")));
  EXPECT_EQ(runner->num_free_blocks(), 4);
  EXPECT_TRUE(seq.block_table.empty());
}

TEST_F(ModelRunnerTest, ReportsAFullKvCacheAndLeavesSequencesAsTheyWere) {
  auto runner = MakeRunner(2);
  Sequence a = Prompt(std::vector<int32_t>(20, 5));  // 2 blocks
  Sequence b = Prompt({1, 2, 3});                    // 1 more block: too many
  EXPECT_THAT(runner->Forward({&a, &b}).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("3 blocks")));
  EXPECT_EQ(runner->num_free_blocks(), 2);
  EXPECT_EQ(a.num_computed_tokens, 0);
  ASSERT_OK(runner->Forward({&a}).status());
  EXPECT_EQ(runner->num_free_blocks(), 0);
  runner->Release(a);
  EXPECT_EQ(runner->num_free_blocks(), 2);
}

TEST_F(ModelRunnerTest, RejectsAStepLargerThanItsBuffers) {
  auto runner = MakeRunner(8, /*max_tokens=*/8);
  Sequence seq = Prompt(std::vector<int32_t>(9, 1));
  EXPECT_THAT(runner->Forward({&seq}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_num_tokens=8")));
}

TEST_F(ModelRunnerTest, RejectsASequenceWithNothingNew) {
  auto runner = MakeRunner(4);
  Sequence seq = Prompt({1, 2});
  ASSERT_OK(runner->Forward({&seq}).status());
  EXPECT_THAT(runner->Forward({&seq}).status(),
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
      auto logits = runner->Forward(batch);
      EXPECT_TRUE(logits.ok());
      runner->SampleAndAppend(*logits, batch);
    }
    return seq.tokens;
  };
  EXPECT_EQ(run(false), run(true));
}

}  // namespace
}  // namespace tessera
