// Tests for make-model: the tiny preset written, reopened and validated; determinism by seed; weight
// statistics; options and their errors.
#include "worker/checkpoint/make_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "tests/util/status_matchers.h"
#include "tests/worker/checkpoint/test_files.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/checkpoint/model_presets.h"

namespace tessera {
namespace {

using ::tessera::testing::ReadFile;
using ::tessera::testing::ScopedTempDir;
using ::tessera::testing::StatusIs;
using ::tessera::testing::WriteFile;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

MakeModelOptions Options(const std::string& preset, const std::string& out_dir, uint64_t seed = 0) {
  MakeModelOptions options;
  options.preset = preset;
  options.out_dir = out_dir;
  options.seed = seed;
  return options;
}

std::vector<std::string> ShardFiles(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path().filename().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

struct Stats {
  double mean = 0, std = 0;
};

Stats TensorStats(const Checkpoint& ckpt, const std::string& name, int64_t rows, int64_t cols) {
  std::vector<float> values(rows * cols);
  Tensor dst(values.data(), DType::kF32, {rows, cols});
  EXPECT_OK(ckpt.ReadRows(name, 0, rows, dst));
  double sum = 0, sum2 = 0;
  for (float v : values) sum += v;
  Stats s;
  s.mean = sum / values.size();
  for (float v : values) sum2 += (v - s.mean) * (v - s.mean);
  s.std = std::sqrt(sum2 / values.size());
  return s;
}

TEST(MakeModelTest, TinyPresetOpensAndValidates) {
  ScopedTempDir dir;
  ASSERT_OK(MakeModel(Options("tiny", dir.path(), 1)));
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  EXPECT_OK(ckpt.ValidateForLlama());
  ASSERT_OK_AND_ASSIGN(ModelConfig preset, PresetConfig("tiny"));
  EXPECT_EQ(ckpt.config().ToJson(), preset.ToJson());
  EXPECT_EQ(ckpt.generation_config().temperature, 0.6f);
  EXPECT_EQ(ckpt.generation_config().top_p, 0.9f);
  EXPECT_EQ(ckpt.generation_config().bos_token_id, 128000);
  EXPECT_THAT(ckpt.generation_config().eos_token_ids, ElementsAre(128001, 128008, 128009));

  const std::vector<std::string> shards = ShardFiles(dir.path());
  ASSERT_GE(shards.size(), 2u);
  EXPECT_EQ(shards[0], "model-00001-of-0000" + std::to_string(shards.size()) + ".safetensors");
  auto index = nlohmann::json::parse(ReadFile(dir.File("model.safetensors.index.json")));
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), preset.NumParameters() * 2);
  EXPECT_EQ(index["weight_map"].size(), LlamaTensorSpecs(preset).size());
  ASSERT_OK_AND_ASSIGN(TensorInfo info, ckpt.Info("lm_head.weight"));
  EXPECT_EQ(info.dtype, DType::kBF16);
}

TEST(MakeModelTest, WeightsHaveInitializerStatistics) {
  ScopedTempDir dir;
  ASSERT_OK(MakeModel(Options("tiny", dir.path(), 3)));
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  for (const char* name : {"model.layers.0.mlp.gate_proj.weight", "model.layers.3.self_attn.k_proj.weight"}) {
    ASSERT_OK_AND_ASSIGN(TensorInfo info, ckpt.Info(name));
    Stats s = TensorStats(ckpt, name, info.shape[0], info.shape[1]);
    EXPECT_NEAR(s.mean, 0.0, 0.002) << name;
    EXPECT_NEAR(s.std, 0.02, 0.001) << name;
  }
  Stats embed = TensorStats(ckpt, "model.embed_tokens.weight", 2000, 128);
  EXPECT_NEAR(embed.std, 0.02, 0.001);
  std::vector<float> norm(128);
  Tensor dst(norm.data(), DType::kF32, {128});
  ASSERT_OK(ckpt.ReadRows("model.layers.1.input_layernorm.weight", 0, 128, dst));
  double mean = 0;
  for (float v : norm) mean += v / 128;
  EXPECT_NEAR(mean, 1.0, 0.01);
}

TEST(MakeModelTest, SameSeedGivesSameFilesAndOtherSeedDiffers) {
  ScopedTempDir a, b, c;
  ASSERT_OK(MakeModel(Options("tiny", a.path(), 42)));
  ASSERT_OK(MakeModel(Options("tiny", b.path(), 42)));
  ASSERT_OK(MakeModel(Options("tiny", c.path(), 43)));
  const std::vector<std::string> shards = ShardFiles(a.path());
  ASSERT_EQ(shards, ShardFiles(b.path()));
  for (const std::string& f : shards) {
    const std::string bytes = ReadFile(a.File(f));
    EXPECT_TRUE(bytes == ReadFile(b.File(f))) << f;
    EXPECT_FALSE(bytes == ReadFile(c.File(f))) << f;
  }
}

TEST(MakeModelTest, ConfigOnlyWritesNoWeights) {
  ScopedTempDir dir;
  MakeModelOptions options = Options("llama3.1-405b", dir.File("sub/dir"));
  options.config_only = true;
  ASSERT_OK(MakeModel(options));
  EXPECT_TRUE(ShardFiles(dir.File("sub/dir")).empty());
  ASSERT_OK_AND_ASSIGN(ModelConfig c, ModelConfig::Load(dir.File("sub/dir/config.json")));
  EXPECT_EQ(c.num_hidden_layers, 126);
  EXPECT_TRUE(std::filesystem::exists(dir.File("sub/dir/generation_config.json")));
}

TEST(MakeModelTest, UsesConfigPathAndMaxShardBytes) {
  ScopedTempDir dir;
  ASSERT_OK_AND_ASSIGN(ModelConfig config, PresetConfig("tiny"));
  config.num_hidden_layers = 1;
  config.vocab_size = 1000;
  config.tie_word_embeddings = true;
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  WriteFile(dir.File("my_config.json"), config.ToJson());
  MakeModelOptions options = Options("", dir.File("out"));
  options.config_path = dir.File("my_config.json");
  options.max_shard_bytes = 100'000;
  ASSERT_OK(MakeModel(options));
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.File("out")));
  EXPECT_OK(ckpt.ValidateForLlama());
  EXPECT_FALSE(ckpt.Has("lm_head.weight"));
  EXPECT_EQ(ckpt.config().vocab_size, 1000);
  // 1000x128 BF16 = 256000 bytes: the embedding alone is over the limit and gets its own shard.
  EXPECT_GE(ShardFiles(dir.File("out")).size(), 3u);
  for (const std::string& f : ShardFiles(dir.File("out"))) {
    ASSERT_OK_AND_ASSIGN(SafetensorsFile shard, SafetensorsFile::Open(dir.File("out/" + f)));
    uint64_t bytes = 0;
    for (const TensorInfo& t : shard.tensors()) bytes += t.nbytes();
    EXPECT_TRUE(bytes <= 100'000 || shard.tensors().size() == 1) << f;
  }
}

TEST(MakeModelTest, CopiesTokenizerFiles) {
  ScopedTempDir tok, out;
  WriteFile(tok.File("tokenizer.json"), "{\"model\": {}}");
  WriteFile(tok.File("tokenizer_config.json"), "{}");
  MakeModelOptions options = Options("tiny", out.path());
  options.tokenizer_dir = tok.path();
  options.config_only = true;
  ASSERT_OK(MakeModel(options));
  EXPECT_EQ(ReadFile(out.File("tokenizer.json")), "{\"model\": {}}");
  EXPECT_TRUE(std::filesystem::exists(out.File("tokenizer_config.json")));
}

TEST(MakeModelTest, RejectsBadOptions) {
  ScopedTempDir dir;
  EXPECT_THAT(MakeModel(Options("huge", dir.path())),
              StatusIs(absl::StatusCode::kNotFound, AllOf(HasSubstr("huge"), HasSubstr("tiny"))));
  MakeModelOptions both = Options("tiny", dir.path());
  both.config_path = "x.json";
  EXPECT_THAT(MakeModel(both), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("preset")));
  EXPECT_THAT(MakeModel(Options("tiny", "")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("out_dir")));
  MakeModelOptions missing_config = Options("", dir.path());
  missing_config.config_path = dir.File("missing.json");
  EXPECT_THAT(MakeModel(missing_config), StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing.json")));
  MakeModelOptions missing_tokenizer = Options("tiny", dir.path());
  missing_tokenizer.tokenizer_dir = dir.File("none");
  EXPECT_THAT(MakeModel(missing_tokenizer),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("tokenizer.json")));
}

}  // namespace
}  // namespace tessera
