// Whole models on the CUDA backend against the CPU backend (label `gpu`; skips without a GPU): random-weight
// "tiny" and "small" checkpoints from MakeModel, the same steps on both. Logits: max|gpu - cpu| <=
// 3e-2 * max|cpu| per step (bf16 activations and a bf16 residual stream on the GPU, f32 on the CPU). Greedy
// tokens on tiny must be equal for 32 steps; a flip is reported with the CPU's top-1 / top-2 margin.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "tests/util/status_matchers.h"
#include "worker/checkpoint/make_model.h"
#include "worker/model_runner.h"

namespace tessera {
namespace {

const std::vector<int32_t> kPromptA = {128000, 9906, 11,  1917, 0,   77,  3000, 12,  5,
                                       9,      100,  101, 102,  103, 104, 105,  106, 2};
const std::vector<int32_t> kPromptB = {128000, 40, 1093, 264, 8};

struct Pair {
  std::unique_ptr<Checkpoint> checkpoint;
  std::unique_ptr<CpuBackend> cpu;
  std::unique_ptr<CudaBackend> gpu;
  std::unique_ptr<ModelRunner> cpu_runner, gpu_runner;
  Tensor gpu_logits_;  // the GPU runner's last logits, on the device
};

class CudaModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto count = CudaBackend::DeviceCount();
    if (!count.ok()) GTEST_SKIP() << "skipped, no usable GPU: " << count.status().message();
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // With `graphs`, the GPU runner captures its decode graphs (batch sizes up to 8) and decode steps replay
  // them; otherwise it runs every step eagerly.
  void Load(const std::string& preset, Pair& p, bool graphs = false) {
    dir_ = ::testing::TempDir() + "/cuda_model_test_" + preset + "_" + std::to_string(getpid());
    MakeModelOptions options;
    options.preset = preset;
    options.out_dir = dir_;
    options.seed = 11;
    ASSERT_OK(MakeModel(options));
    ASSERT_OK_AND_ASSIGN(Checkpoint checkpoint, Checkpoint::Open(dir_));
    p.checkpoint = std::make_unique<Checkpoint>(std::move(checkpoint));
    CpuBackendOptions cpu_options;
    ASSERT_OK_AND_ASSIGN(p.cpu, CpuBackend::Create(cpu_options));
    ASSERT_OK_AND_ASSIGN(p.gpu, CudaBackend::Create(CudaBackendOptions{}));
    ModelRunnerOptions runner;
    runner.model.max_num_tokens = 64;
    runner.model.max_num_seqs = 8;
    ASSERT_OK_AND_ASSIGN(p.cpu_runner, ModelRunner::Create(*p.checkpoint, *p.cpu, runner));
    runner.graph_max_batch = graphs ? 8 : 0;
    ASSERT_OK_AND_ASSIGN(p.gpu_runner, ModelRunner::Create(*p.checkpoint, *p.gpu, runner));
    ASSERT_OK(p.cpu_runner->AllocateKvCache(64));
    ASSERT_OK(p.gpu_runner->AllocateKvCache(64));
    ASSERT_OK(p.gpu_runner->CaptureGraphs());
    ASSERT_EQ(p.gpu_runner->num_graphs(), graphs ? 4 : 0);
  }

  static Sequence Prompt(const std::vector<int32_t>& ids) {
    Sequence s;
    s.tokens = ids;
    s.num_prompt_tokens = static_cast<int>(ids.size());
    return s;
  }

  // One step on both runners; returns both logits on the host and checks the tolerance. Each sequence gets
  // the blocks its tokens need (the CPU's and GPU's copies of a sequence have separate caches, same ids).
  void Step(Pair& p, std::vector<Sequence*> cpu_seqs, std::vector<Sequence*> gpu_seqs,
            std::vector<float>& cpu_logits, std::vector<float>& gpu_logits, const std::string& what) {
    for (std::vector<Sequence*>* seqs : {&cpu_seqs, &gpu_seqs}) {
      int next = 0;  // sequence i owns blocks [32 i, 32 i + 32): enough for these tests' contexts
      for (Sequence* seq : *seqs) {
        while (seq->block_table.size() * 16 < seq->tokens.size()) {
          seq->block_table.push_back(next * 32 + static_cast<int32_t>(seq->block_table.size()));
        }
        ++next;
      }
    }
    ASSERT_OK_AND_ASSIGN(Tensor lc, p.cpu_runner->Forward(cpu_seqs));
    ASSERT_OK_AND_ASSIGN(Tensor lg, p.gpu_runner->Forward(gpu_seqs));
    p.gpu_logits_ = lg;
    cpu_logits.assign(lc.data_as<float>(), lc.data_as<float>() + lc.numel());
    gpu_logits.assign(lg.numel(), 0.0f);
    EXPECT_OK(p.gpu->CopyToHost(gpu_logits.data(), lg.data(), lg.nbytes()));
    ASSERT_EQ(cpu_logits.size(), gpu_logits.size());
    float max_ref = 0, max_diff = 0;
    for (size_t i = 0; i < cpu_logits.size(); ++i) {
      max_ref = std::max(max_ref, std::fabs(cpu_logits[i]));
      max_diff = std::max(max_diff, std::fabs(gpu_logits[i] - cpu_logits[i]));
    }
    EXPECT_LE(max_diff, 3e-2f * max_ref)
        << what << ": max |gpu - cpu| " << max_diff << ", max |cpu| " << max_ref;
    std::printf("%s: max |gpu - cpu| = %.4g, max |cpu| = %.4g\n", what.c_str(), max_diff, max_ref);
  }

  // 32 greedy steps of two prompts on both backends (see the tests below).
  void TinyGreedy(bool graphs);

  std::string dir_;
};

// Top-1 minus top-2 of a row.
float Margin(const float* row, int64_t vocab) {
  float a = -INFINITY, b = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) {
    if (row[i] > a) {
      b = a;
      a = row[i];
    } else if (row[i] > b) {
      b = row[i];
    }
  }
  return a - b;
}

void CudaModelTest::TinyGreedy(bool graphs) {
  Pair p;
  ASSERT_NO_FATAL_FAILURE(Load("tiny", p, graphs));
  const int64_t vocab = p.checkpoint->config().vocab_size;
  Sequence ca = Prompt(kPromptA), cb = Prompt(kPromptB), ga = Prompt(kPromptA), gb = Prompt(kPromptB);
  std::vector<float> lc, lg;
  for (int step = 0; step < 32; ++step) {
    // Step 0 prefills both prompts in one step; later steps decode both (mixed batches are covered by
    // cuda_kernels_test and model_runner_test).
    ASSERT_NO_FATAL_FAILURE(Step(p, {&ca, &cb}, {&ga, &gb}, lc, lg, "tiny step " + std::to_string(step)));
    EXPECT_OK(p.cpu_runner->SampleAndAppend(Tensor(lc.data(), DType::kF32, {2, vocab}), {&ca, &cb}));
    // The GPU samples from its own logits (still on the device: the runner's buffer, valid until next step).
    EXPECT_OK(p.gpu_runner->SampleAndAppend(p.gpu_logits_, {&ga, &gb}));
    for (int s = 0; s < 2; ++s) {
      const Sequence& c = s == 0 ? ca : cb;
      const Sequence& g = s == 0 ? ga : gb;
      ASSERT_EQ(c.tokens.back(), g.tokens.back())
          << "greedy token of sequence " << s << " differs at step " << step
          << "; the CPU's top-1 - top-2 margin " << Margin(lc.data() + s * vocab, vocab);
    }
  }
  EXPECT_EQ(p.gpu_runner->graph_steps(), graphs ? 31 : 0);  // every decode step replayed a CUDA graph
}

TEST_F(CudaModelTest, TinyLogitsAndThirtyTwoGreedyTokensMatchTheCpu) { TinyGreedy(false); }

// The same through CUDA graphs: two sequences padded to the captured batch of 2, contexts growing across
// blocks while the graph (captured for the longest context) stays the same.
TEST_F(CudaModelTest, TinyThroughCudaGraphsMatchesTheCpu) { TinyGreedy(true); }

TEST_F(CudaModelTest, SmallLogitsMatchTheCpu) {
  Pair p;
  ASSERT_NO_FATAL_FAILURE(Load("small", p));
  const int64_t vocab = p.checkpoint->config().vocab_size;
  Sequence ca = Prompt(kPromptA), cb = Prompt(kPromptB), ga = Prompt(kPromptA), gb = Prompt(kPromptB);
  std::vector<float> lc, lg;
  for (int step = 0; step < 4; ++step) {
    ASSERT_NO_FATAL_FAILURE(Step(p, {&ca, &cb}, {&ga, &gb}, lc, lg, "small step " + std::to_string(step)));
    // Both continue with the CPU's greedy tokens, so that the contexts stay identical.
    EXPECT_OK(p.cpu_runner->SampleAndAppend(Tensor(lc.data(), DType::kF32, {2, vocab}), {&ca, &cb}));
    ga.tokens.push_back(ca.tokens.back());
    gb.tokens.push_back(cb.tokens.back());
  }
}

}  // namespace
}  // namespace tessera
