// The null device's accounting against the planner: every rank of the 405B (tp 8 x pp 2) and 70B (tp 8;
// tp 4 x pp 2) layouts, loaded on a NullBackend from a config-only directory, holds exactly the weight bytes
// `tessera plan` computes for it from the config (RankWeightBytes), reads nothing, and its "would load" bytes
// are its slice of the checkpoint.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>

#include "kernels/null/null_backend.h"
#include "tests/util/status_matchers.h"
#include "tests/util/test_env.h"
#include "tools/planner.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/checkpoint/make_model.h"
#include "worker/model_runner.h"
#include "worker/model_split.h"

namespace tessera {
namespace {

// A TP or pipeline group for loading only: nothing is communicated while weights load.
class IdleGroup final : public Communicator {
 public:
  IdleGroup(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::Status AllReduceSum(Tensor&) override { return absl::OkStatus(); }
  absl::Status AllGather(const Tensor&, Tensor&) override { return absl::OkStatus(); }
  absl::Status Gather(const Tensor&, Tensor&, int) override { return absl::OkStatus(); }
  absl::Status Broadcast(Tensor&, int) override { return absl::OkStatus(); }
  absl::Status Send(const Tensor&, int) override { return absl::OkStatus(); }
  absl::Status Recv(Tensor&, int) override { return absl::OkStatus(); }
  absl::Status Barrier() override { return absl::OkStatus(); }

 private:
  int rank_, size_;
};

void ExpectEveryRankHoldsItsPlannedShard(const char* preset, int tp, int pp) {
  const std::string dir = ::tessera::testing::FreshTempDir(std::string("null_shard_") + preset);
  MakeModelOptions make;
  make.preset = preset;
  make.out_dir = dir;
  make.config_only = true;
  ASSERT_OK(MakeModel(make));
  ASSERT_OK_AND_ASSIGN(Checkpoint shapes, Checkpoint::OpenShapes(dir));
  ASSERT_OK_AND_ASSIGN(ParallelConfig parallel, SplitModel(shapes.config(), tp, pp));
  int64_t total_read = 0;
  for (int rank = 0; rank < tp * pp; ++rank) {
    ASSERT_OK_AND_ASSIGN(Checkpoint checkpoint, Checkpoint::OpenShapes(dir));
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<NullBackend> backend, NullBackend::Create({}));
    IdleGroup tp_group(parallel.TpRank(rank), tp), pp_group(parallel.PpRank(rank), pp);
    ModelRunnerOptions options;
    options.model.max_num_tokens = 2048;
    options.model.max_num_seqs = 256;
    options.model.parallel = &parallel;
    options.model.rank = rank;
    options.model.tp_group = tp > 1 ? &tp_group : nullptr;
    options.pp_group = pp > 1 ? &pp_group : nullptr;
    options.graph_max_batch = 0;
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<ModelRunner> runner, ModelRunner::Create(checkpoint, *backend, options));
    EXPECT_EQ(runner->allocated_weight_bytes(), tools::RankWeightBytes(shapes.config(), parallel, rank))
        << preset << " rank " << rank;
    EXPECT_GT(backend->allocated_bytes(), runner->allocated_weight_bytes());  // and the activations
    total_read += checkpoint.bytes_accessed();
  }
  // Every tensor is read once over all ranks, except the embedding, which the last stage reads again as the
  // lm_head when the embeddings are tied (not so in these presets).
  int64_t checkpoint_bytes = 0;
  for (const TensorSpec& spec : LlamaTensorSpecs(shapes.config())) {
    int64_t n = 2;
    for (int64_t d : spec.shape) n *= d;
    // Norm weights are replicated over the TP ranks.
    checkpoint_bytes += spec.shape.size() == 1 ? n * tp : n;
  }
  EXPECT_EQ(total_read, checkpoint_bytes) << preset;
}

TEST(NullShardBytesTest, Llama405bAtTp8Pp2) { ExpectEveryRankHoldsItsPlannedShard("llama3.1-405b", 8, 2); }
TEST(NullShardBytesTest, Llama70bAtTp8) { ExpectEveryRankHoldsItsPlannedShard("llama3-70b", 8, 1); }
TEST(NullShardBytesTest, Llama70bAtTp4Pp2) { ExpectEveryRankHoldsItsPlannedShard("llama3-70b", 4, 2); }

}  // namespace
}  // namespace tessera
