// Tensor x pipeline parallelism across real processes (fork, Gloo over loopback): every split gives the same
// greedy tokens and logits as one rank, on the tiny preset and on an awkward config (uneven vocabulary split,
// KV heads replicated, tied embeddings, uneven stages), and each rank reads only its shard of the checkpoint.
// The harness plays the coordinator's part: the output rank samples and every rank learns the tokens.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "parallel/gloo_communicator.h"
#include "tests/util/status_matchers.h"
#include "worker/checkpoint/make_model.h"
#include "worker/model_runner.h"
#include "worker/model_split.h"

namespace tessera {
namespace {

using namespace std::chrono_literals;

const std::vector<std::vector<int32_t>> kPrompts = {
    {1, 17, 300, 42, 999, 5, 77}, {1, 600, 3}, {1, 11, 22, 33, 44, 55, 66, 77, 88, 99, 111, 222, 333}};
constexpr int kSteps = 8;

// What one rank reports: the tokens of every prompt, the first step's logits of prompt 0 and the bytes of
// checkpoint data it read.
struct RankResult {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<float> first_logits;
  int64_t bytes_read = 0;
};

struct Split {
  int tp = 1, pp = 1;
  std::vector<int> pp_layers;  // empty: even
  bool graphs = false;         // decode steps replay captured step graphs (the CPU's call lists)
  std::string ToString() const {
    std::string s = "tp=" + std::to_string(tp) + " pp=" + std::to_string(pp);
    if (!pp_layers.empty()) s += " pp_layers=" + std::to_string(pp_layers[0]) + ",...";
    if (graphs) s += " graphs";
    return s;
  }
};

absl::StatusOr<std::unique_ptr<GlooCommunicator>> Group(const std::string& store, const std::string& name,
                                                        int rank, int size) {
  GlooOptions gloo;
  gloo.group = name;
  gloo.rank = rank;
  gloo.size = size;
  gloo.store_dir = store;
  gloo.timeout = 20s;
  return GlooCommunicator::Create(gloo);
}

absl::StatusOr<RankResult> RunRank(const std::string& model, const Split& split, int rank,
                                   const std::string& store) {
  ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::Open(model));
  const ModelConfig& c = checkpoint.config();
  ASSIGN_OR_RETURN(ParallelConfig parallel, SplitModel(c, split.tp, split.pp, split.pp_layers));
  const int tp_rank = parallel.TpRank(rank), pp_rank = parallel.PpRank(rank);
  std::unique_ptr<GlooCommunicator> tp_group, pp_group, world;
  if (split.tp > 1) {
    ASSIGN_OR_RETURN(tp_group, Group(store, "tp" + std::to_string(pp_rank), tp_rank, split.tp));
  }
  if (split.pp > 1) {
    ASSIGN_OR_RETURN(pp_group, Group(store, "pp" + std::to_string(tp_rank), pp_rank, split.pp));
  }
  if (parallel.world_size() > 1) {
    ASSIGN_OR_RETURN(world, Group(store, "world", rank, parallel.world_size()));
  }
  ASSIGN_OR_RETURN(auto backend, CpuBackend::Create({.num_threads = 1, .linear = {}}));
  ModelRunnerOptions options;
  options.model.max_num_tokens = 64;
  options.model.max_num_seqs = 4;
  options.model.parallel = &parallel;
  options.model.rank = rank;
  options.model.tp_group = tp_group.get();
  options.pp_group = pp_group.get();
  options.graph_max_batch = split.graphs ? 4 : 0;
  ASSIGN_OR_RETURN(auto runner, ModelRunner::Create(checkpoint, *backend, options));
  RETURN_IF_ERROR(runner->AllocateKvCache(16));
  RETURN_IF_ERROR(runner->CaptureGraphs());
  BlockAllocator blocks(16);  // every rank takes the same ids in the same order
  std::vector<Sequence> seqs(kPrompts.size());
  std::vector<Sequence*> batch;
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    seqs[i].tokens = kPrompts[i];
    seqs[i].num_prompt_tokens = static_cast<int>(kPrompts[i].size());
    batch.push_back(&seqs[i]);
  }
  RankResult result;
  std::vector<int32_t> sampled(batch.size());
  for (int step = 0; step < kSteps; ++step) {
    for (Sequence* seq : batch) {
      RETURN_IF_ERROR(blocks.Cover(static_cast<int64_t>(seq->tokens.size()), seq->block_table));
    }
    ASSIGN_OR_RETURN(Tensor logits, runner->Forward(batch));
    if (step == 0 && rank == parallel.output_rank()) {  // only the output rank assembles the logits
      result.first_logits.assign(logits.data_as<float>(), logits.data_as<float>() + c.vocab_size);
    }
    if (rank == parallel.output_rank()) {  // samples, then tells everyone (the coordinator's job in serving)
      EXPECT_OK(runner->SampleAndAppend(logits, batch));
      for (size_t i = 0; i < batch.size(); ++i) sampled[i] = batch[i]->tokens.back();
    }
    if (world != nullptr) {
      Tensor ids(sampled.data(), DType::kI32, {static_cast<int64_t>(sampled.size())});
      RETURN_IF_ERROR(world->Broadcast(ids, parallel.output_rank()));
      if (rank != parallel.output_rank()) {
        for (size_t i = 0; i < batch.size(); ++i) batch[i]->tokens.push_back(sampled[i]);
      }
    }
  }
  if (split.graphs && runner->graph_steps() != kSteps - 1) {  // every step after the prompts
    return absl::InternalError(absl::StrCat("rank ", rank, " replayed ", runner->graph_steps(), " graphs"));
  }
  // Gloo is host-synchronous: each collective of a captured step cuts it (the embedding's all-reduce on the
  // first stage, two all-reduces a layer, the lm_head's gather on the last stage), so a step is that many
  // segments plus one. (A stream-ordered NCCL group captures them all: one segment; captured_step_test.)
  if (split.graphs) {
    int collectives = 0;
    if (split.tp > 1) {
      collectives = 2 * static_cast<int>(parallel.StageLayers(pp_rank).size()) +
                    (parallel.IsFirstStage(pp_rank) ? 1 : 0) + (parallel.IsLastStage(pp_rank) ? 1 : 0);
    }
    for (int i = 0; i < runner->num_graphs(); ++i) {
      if (runner->graph_segments(i) != collectives + 1) {
        return absl::InternalError(absl::StrCat("rank ", rank, ": graph ", i, " has ", runner->graph_segments(i),
                                                " segments, want ", collectives + 1));
      }
    }
  }
  for (const Sequence& s : seqs)
    result.tokens.emplace_back(s.tokens.begin() + s.num_prompt_tokens, s.tokens.end());
  result.bytes_read = checkpoint.bytes_accessed();
  return result;
}

void WriteResult(const RankResult& r, const std::string& path) {
  std::ofstream out(path, std::ios::binary);
  auto put = [&](const void* p, size_t n) {
    out.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
  };
  put(&r.bytes_read, 8);
  for (const auto& t : r.tokens) put(t.data(), t.size() * 4);
  int64_t n = static_cast<int64_t>(r.first_logits.size());
  put(&n, 8);
  put(r.first_logits.data(), r.first_logits.size() * 4);
}

RankResult ReadResult(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  RankResult r;
  in.read(reinterpret_cast<char*>(&r.bytes_read), 8);
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    r.tokens.emplace_back(kSteps);
    in.read(reinterpret_cast<char*>(r.tokens.back().data()), kSteps * 4);
  }
  int64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  r.first_logits.resize(n);
  in.read(reinterpret_cast<char*>(r.first_logits.data()), n * 4);
  return r;
}

// Runs a group of `tp` rank processes; returns each rank's result (an empty optional-like result with no
// tokens when the rank failed, after printing why).
std::vector<RankResult> RunGroup(const std::string& model, const Split& split, const std::string& work) {
  static int counter = 0;
  const std::string store = work + "/store_" + std::to_string(counter++);
  const int world = split.tp * split.pp;
  std::vector<pid_t> pids;
  for (int rank = 0; rank < world; ++rank) {
    pid_t pid = fork();
    if (pid == 0) {
      auto result = RunRank(model, split, rank, store);
      if (!result.ok()) {
        std::fprintf(stderr, "rank %d: %s\n", rank, std::string(result.status().message()).c_str());
        _exit(1);
      }
      WriteResult(*result, work + "/rank" + std::to_string(rank) + ".bin");
      _exit(0);
    }
    pids.push_back(pid);
  }
  std::vector<RankResult> results;
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  for (int rank = 0; rank < world; ++rank) {
    int status = 0;
    while (waitpid(pids[rank], &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pids[rank], SIGKILL);
        waitpid(pids[rank], &status, 0);
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "rank " << rank << " of " << split.ToString() << " failed, status " << status;
    results.push_back(WIFEXITED(status) && WEXITSTATUS(status) == 0
                          ? ReadResult(work + "/rank" + std::to_string(rank) + ".bin")
                          : RankResult{});
  }
  return results;
}

class TensorParallelTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    work_ = std::filesystem::path(::testing::TempDir()) /
            ("tp_test_" + std::to_string(getpid()) + "_" + GetParam());
    std::filesystem::remove_all(work_);
    std::filesystem::create_directories(work_);
    MakeModelOptions make;
    make.out_dir = (work_ / "model").string();
    make.seed = 11;
    if (GetParam() == "tiny") {
      make.preset = "tiny";
    } else {  // 3 layers, 6 heads over 2 KV heads, an odd vocabulary (uneven split), tied embeddings
      make.config_path = (work_ / "config.json").string();
      std::ofstream(make.config_path) << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 192, "intermediate_size": 336, "num_hidden_layers": 3, "num_attention_heads": 6,
        "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 1001, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": true,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 100},
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"})";
    }
    ASSERT_OK(MakeModel(make));
    model_ = make.out_dir;
  }
  void TearDown() override { std::filesystem::remove_all(work_); }

  std::filesystem::path work_;
  std::string model_;
};

TEST_P(TensorParallelTest, SplitsGiveTheTokensAndLogitsOfOneRankAndReadOnlyTheirShard) {
  std::vector<RankResult> whole = RunGroup(model_, Split{}, work_.string());
  ASSERT_EQ(whole.size(), 1u);
  ASSERT_FALSE(whole[0].tokens.empty());
  const int64_t total_bytes = whole[0].bytes_read;
  float max_ref = 0;
  for (float v : whole[0].first_logits) max_ref = std::max(max_ref, std::fabs(v));

  const bool tiny = GetParam() == "tiny";  // 4 layers, 4 heads; awkward: 3 layers, 6 heads
  std::vector<Split> splits = {{2, 1, {}}, {1, 2, {}},       {2, 2, {}},
                               {1, 3, {}}, {1, 1, {}, true}, {2, 2, {}, true}};
  if (tiny) {
    splits.push_back({4, 1, {}});
    splits.push_back({1, 2, {1, 3}});
  } else {
    splits.push_back({2, 2, {2, 1}});
  }
  for (const Split& split : splits) {
    SCOPED_TRACE(split.ToString());
    std::vector<RankResult> ranks = RunGroup(model_, split, work_.string());
    int64_t sum_bytes = 0;
    for (int rank = 0; rank < split.tp * split.pp; ++rank) {
      ASSERT_FALSE(ranks[rank].tokens.empty()) << "rank " << rank;
      EXPECT_EQ(ranks[rank].tokens, whole[0].tokens) << "rank " << rank;
      if (!ranks[rank].first_logits.empty()) {  // the last stage's ranks
        float max_diff = 0;
        for (size_t i = 0; i < whole[0].first_logits.size(); ++i) {
          max_diff = std::max(max_diff, std::fabs(ranks[rank].first_logits[i] - whole[0].first_logits[i]));
        }
        // Only the order of fp32 sums differs (partial sums all-reduced): far below bf16 rounding.
        EXPECT_LE(max_diff, 1e-4f * max_ref) << "rank " << rank;
      }
      // A rank reads at most its TP share of the model (a stage holds only part of the layers), plus the
      // replicated norms.
      EXPECT_LE(ranks[rank].bytes_read, total_bytes / split.tp * 105 / 100 + 64 * 1024) << "rank " << rank;
      sum_bytes += ranks[rank].bytes_read;
    }
    // Together the ranks read the checkpoint about once (the tied model's last stage reads its embedding
    // slice for the lm_head as well).
    if (tiny) {
      EXPECT_LE(sum_bytes, total_bytes * 105 / 100 + split.tp * split.pp * 64 * 1024);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, TensorParallelTest, ::testing::Values("tiny", "awkward"));

}  // namespace
}  // namespace tessera
