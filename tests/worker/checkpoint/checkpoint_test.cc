// Tests for Checkpoint: opening single-file and sharded directories, index errors, Llama shape validation,
// and the Map / MapRows / ReadRows / ReadColumns slicing with dtype conversion.
#include "worker/checkpoint/checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "tests/util/status_matchers.h"
#include "tests/worker/checkpoint/test_files.h"
#include "worker/checkpoint/safetensors_writer.h"

namespace tessera {
namespace {

using ::tessera::testing::ScopedTempDir;
using ::tessera::testing::StatusIs;
using ::tessera::testing::WriteFile;
using ::testing::AllOf;
using ::testing::HasSubstr;

ModelConfig SmallConfig() {
  ModelConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 50;
  c.max_position_embeddings = 256;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

// The value stored at flat index i of tensor t (exact in BF16, F16 and F32).
float Value(int t, int64_t i) { return static_cast<float>((t * 7 + i) % 64 - 32) / 8.0f; }

std::string Encode(DType dtype, int t, int64_t n) {
  std::string bytes(n * DTypeSize(dtype), '\0');
  for (int64_t i = 0; i < n; ++i) {
    const float v = Value(t, i);
    if (dtype == DType::kF32) {
      std::memcpy(&bytes[i * 4], &v, 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? F32ToBf16(v) : F32ToF16(v);
      std::memcpy(&bytes[i * 2], &h, 2);
    }
  }
  return bytes;
}

struct Layout {
  int num_shards = 2;
  DType dtype = DType::kBF16;
  // Called with the specs before writing (change shapes, drop tensors).
  std::function<void(std::vector<TensorSpec>&)> edit_specs;
};

Layout Shards(int num_shards, DType dtype = DType::kBF16,
              std::function<void(std::vector<TensorSpec>&)> edit_specs = nullptr) {
  Layout layout;
  layout.num_shards = num_shards;
  layout.dtype = dtype;
  layout.edit_specs = std::move(edit_specs);
  return layout;
}

// Writes config.json and weights for `config` into dir: model.safetensors (num_shards == 0) or num_shards
// files plus an index. Tensor t (in LlamaTensorSpecs order) holds Value(t, i).
void WriteCheckpoint(const ScopedTempDir& dir, const ModelConfig& config, const Layout& layout = {}) {
  WriteFile(dir.File("config.json"), config.ToJson());
  std::vector<TensorSpec> specs = LlamaTensorSpecs(config);
  if (layout.edit_specs) layout.edit_specs(specs);
  const int files = std::max(layout.num_shards, 1);
  std::vector<std::vector<std::string>> storage(files);
  std::vector<std::vector<TensorData>> tensors(files);
  nlohmann::json weight_map;
  for (size_t t = 0; t < specs.size(); ++t) {
    const int shard = static_cast<int>(t * files / specs.size());
    int64_t n = 1;
    for (int64_t d : specs[t].shape) n *= d;
    storage[shard].push_back(Encode(layout.dtype, static_cast<int>(t), n));
  }
  std::vector<size_t> next(files, 0);
  for (size_t t = 0; t < specs.size(); ++t) {
    const int shard = static_cast<int>(t * files / specs.size());
    const std::string file = layout.num_shards == 0 ? "model.safetensors"
                                                    : "model-0000" + std::to_string(shard + 1) + "-of-0000" +
                                                          std::to_string(files) + ".safetensors";
    tensors[shard].push_back({specs[t].name, layout.dtype, specs[t].shape, storage[shard][next[shard]++]});
    weight_map[specs[t].name] = file;
  }
  for (int s = 0; s < files; ++s) {
    const std::string file = tensors[s].empty() ? "" : weight_map[tensors[s][0].name].get<std::string>();
    ASSERT_OK(WriteSafetensors(dir.File(file), tensors[s]));
  }
  if (layout.num_shards > 0) {
    WriteFile(dir.File("model.safetensors.index.json"),
              nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump());
  }
}

TEST(CheckpointTest, OpensSingleFileCheckpointAndValidates) {
  ScopedTempDir dir;
  WriteCheckpoint(dir, SmallConfig(), Shards(0));
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  EXPECT_OK(ckpt.ValidateForLlama());
  EXPECT_EQ(ckpt.config().hidden_size, 64);
  EXPECT_TRUE(ckpt.Has("lm_head.weight"));
  EXPECT_FALSE(ckpt.Has("lm_head"));
  EXPECT_EQ(ckpt.TensorNames().size(), LlamaTensorSpecs(SmallConfig()).size());
  EXPECT_EQ(ckpt.bytes_accessed(), 0);
}

TEST(CheckpointTest, OpensShardedCheckpointAndValidates) {
  ScopedTempDir dir;
  WriteCheckpoint(dir, SmallConfig(), Shards(3));
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  EXPECT_OK(ckpt.ValidateForLlama());
  ASSERT_OK_AND_ASSIGN(std::string file, ckpt.FileOf("lm_head.weight"));
  EXPECT_THAT(file, HasSubstr("model-00003-of-00003.safetensors"));
  ASSERT_OK_AND_ASSIGN(TensorInfo info, ckpt.Info("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_EQ(info.shape, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(info.dtype, DType::kBF16);
}

TEST(CheckpointTest, MapAndMapRowsViewTheFileInPlace) {
  ScopedTempDir dir;
  WriteCheckpoint(dir, SmallConfig(), Shards(2, DType::kF32));
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  ASSERT_OK_AND_ASSIGN(Tensor embed, ckpt.Map("model.embed_tokens.weight"));  // tensor 0, [50, 64]
  EXPECT_EQ(embed.ShapeString(), "[50, 64]");
  EXPECT_EQ(embed.dtype(), DType::kF32);
  EXPECT_EQ(embed.data_as<float>()[130], Value(0, 130));
  EXPECT_EQ(ckpt.bytes_accessed(), 50 * 64 * 4);

  ASSERT_OK_AND_ASSIGN(Tensor rows, ckpt.MapRows("model.embed_tokens.weight", 7, 3));
  EXPECT_EQ(rows.ShapeString(), "[3, 64]");
  EXPECT_EQ(rows.data_as<float>()[5], Value(0, 7 * 64 + 5));
  EXPECT_EQ(ckpt.bytes_accessed(), 53 * 64 * 4);
}

TEST(CheckpointTest, MapRowsRejectsOutOfRangeNamingTheTensor) {
  ScopedTempDir dir;
  WriteCheckpoint(dir, SmallConfig());
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  for (auto [begin, count] : std::vector<std::pair<int64_t, int64_t>>{{48, 3}, {-1, 2}, {0, -1}, {51, 0}}) {
    EXPECT_THAT(ckpt.MapRows("model.embed_tokens.weight", begin, count),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model.embed_tokens.weight")));
  }
  EXPECT_THAT(ckpt.MapRows("nope", 0, 1), StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
}

TEST(CheckpointTest, ReadRowsConvertsBetweenDtypes) {
  for (DType file_dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    ScopedTempDir dir;
    WriteCheckpoint(dir, SmallConfig(), Shards(2, file_dtype));
    ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
    const int t = 2;  // model.layers.0.self_attn.q_proj.weight [64, 64]
    std::vector<float> f32(5 * 64, -999.0f);
    Tensor dst(f32.data(), DType::kF32, {5, 64});
    ASSERT_OK(ckpt.ReadRows("model.layers.0.self_attn.q_proj.weight", 11, 5, dst));
    for (int64_t i = 0; i < 5 * 64; ++i)
      ASSERT_EQ(f32[i], Value(t, 11 * 64 + i)) << DTypeName(file_dtype) << i;
    EXPECT_EQ(ckpt.bytes_accessed(), 5 * 64 * DTypeSize(file_dtype));

    std::vector<uint16_t> bf16(5 * 64, 0xffff);
    Tensor dst_bf16(bf16.data(), DType::kBF16, {5, 64});
    ASSERT_OK(ckpt.ReadRows("model.layers.0.self_attn.q_proj.weight", 11, 5, dst_bf16));
    for (int64_t i = 0; i < 5 * 64; ++i) ASSERT_EQ(Bf16ToF32(bf16[i]), Value(t, 11 * 64 + i));

    std::vector<uint16_t> f16(3, 0xffff);  // 1-D: model.layers.0.input_layernorm.weight [64], tensor 1
    Tensor dst_f16(f16.data(), DType::kF16, {3});
    ASSERT_OK(ckpt.ReadRows("model.layers.0.input_layernorm.weight", 60, 3, dst_f16));
    for (int64_t i = 0; i < 3; ++i) ASSERT_EQ(F16ToF32(f16[i]), Value(1, 60 + i));
  }
}

TEST(CheckpointTest, ReadColumnsReadsOnlyTheColumnSlice) {
  ScopedTempDir dir;
  WriteCheckpoint(dir, SmallConfig());
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  const int t = 5;  // model.layers.0.self_attn.o_proj.weight [64, 64]
  std::vector<float> out(64 * 13, -999.0f);
  Tensor dst(out.data(), DType::kF32, {64, 13});
  ASSERT_OK(ckpt.ReadColumns("model.layers.0.self_attn.o_proj.weight", 50, 13, dst));
  for (int64_t r = 0; r < 64; ++r) {
    for (int64_t c = 0; c < 13; ++c) ASSERT_EQ(out[r * 13 + c], Value(t, r * 64 + 50 + c)) << r << "," << c;
  }
  EXPECT_EQ(ckpt.bytes_accessed(), 64 * 13 * 2);
  EXPECT_THAT(ckpt.ReadColumns("model.layers.0.self_attn.o_proj.weight", 60, 13, dst),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("o_proj")));
  EXPECT_THAT(
      ckpt.ReadColumns("model.norm.weight", 0, 1, dst),
      StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr("model.norm.weight"), HasSubstr("2-D"))));
}

TEST(CheckpointTest, ReadRowsRejectsDestinationOfWrongShape) {
  ScopedTempDir dir;
  WriteCheckpoint(dir, SmallConfig());
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  std::vector<float> out(4 * 64);
  Tensor dst(out.data(), DType::kF32, {4, 64});
  EXPECT_THAT(ckpt.ReadRows("model.embed_tokens.weight", 0, 3, dst),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("model.embed_tokens.weight"), HasSubstr("[3, 64]"))));
  Tensor ints(out.data(), DType::kI32, {3, 64});
  EXPECT_THAT(ckpt.ReadRows("model.embed_tokens.weight", 0, 3, ints),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cannot convert BF16 to I32")));
  EXPECT_EQ(ckpt.bytes_accessed(), 0);
}

TEST(CheckpointTest, InfoOfMissingTensorIsNotFoundNamingTensorAndIndex) {
  ScopedTempDir dir;
  WriteCheckpoint(dir, SmallConfig());
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  EXPECT_THAT(ckpt.Info("model.layers.9.mlp.up_proj.weight"),
              StatusIs(absl::StatusCode::kNotFound, AllOf(HasSubstr("model.layers.9.mlp.up_proj.weight"),
                                                          HasSubstr("model.safetensors.index.json"))));
}

TEST(CheckpointTest, RejectsIndexNamingMissingShardFile) {
  ScopedTempDir dir;
  WriteCheckpoint(dir, SmallConfig());
  std::filesystem::remove(dir.File("model-00002-of-00002.safetensors"));
  EXPECT_THAT(Checkpoint::Open(dir.path()),
              StatusIs(absl::StatusCode::kNotFound, AllOf(HasSubstr("model.safetensors.index.json"),
                                                          HasSubstr("model-00002-of-00002.safetensors"))));
}

TEST(CheckpointTest, RejectsIndexThatIsNotJsonOrHasNoWeightMap) {
  ScopedTempDir dir;
  WriteCheckpoint(dir, SmallConfig());
  WriteFile(dir.File("model.safetensors.index.json"), "{\"weight_map\": ");
  EXPECT_THAT(Checkpoint::Open(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("not valid JSON"))));
  WriteFile(dir.File("model.safetensors.index.json"), R"({"metadata": {}})");
  EXPECT_THAT(Checkpoint::Open(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("weight_map"))));
  WriteFile(dir.File("model.safetensors.index.json"), R"({"weight_map": {"a": 3}})");
  EXPECT_THAT(Checkpoint::Open(dir.path()), StatusIs(absl::StatusCode::kInvalidArgument,
                                                     AllOf(HasSubstr("tensor a"), HasSubstr("file name"))));
}

TEST(CheckpointTest, RejectsTensorListedInIndexButAbsentFromShard) {
  ScopedTempDir dir;
  WriteCheckpoint(dir, SmallConfig());
  auto index = nlohmann::json::parse(tessera::testing::ReadFile(dir.File("model.safetensors.index.json")));
  index["weight_map"]["model.extra.weight"] = "model-00001-of-00002.safetensors";
  WriteFile(dir.File("model.safetensors.index.json"), index.dump());
  EXPECT_THAT(Checkpoint::Open(dir.path()),
              StatusIs(absl::StatusCode::kNotFound, AllOf(HasSubstr("model.extra.weight"),
                                                          HasSubstr("model-00001-of-00002.safetensors"))));
}

TEST(CheckpointTest, RejectsTensorStoredInTwoShards) {
  ScopedTempDir dir;
  WriteCheckpoint(dir, SmallConfig());
  // Rewrite shard 2 so that it also holds the embedding that shard 1 holds.
  std::string bytes = Encode(DType::kBF16, 0, 64);
  ASSERT_OK(WriteSafetensors(dir.File("model-00002-of-00002.safetensors"),
                             {{"model.embed_tokens.weight", DType::kBF16, {64}, bytes}}));
  EXPECT_THAT(Checkpoint::Open(dir.path()), StatusIs(absl::StatusCode::kInvalidArgument,
                                                     AllOf(HasSubstr("model.embed_tokens.weight"),
                                                           HasSubstr("model-00001-of-00002.safetensors"),
                                                           HasSubstr("model-00002-of-00002.safetensors"))));
}

TEST(CheckpointTest, RejectsMalformedShardNamingTheFile) {
  ScopedTempDir dir;
  WriteCheckpoint(dir, SmallConfig());
  WriteFile(dir.File("model-00002-of-00002.safetensors"), "short");
  EXPECT_THAT(Checkpoint::Open(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model-00002-of-00002.safetensors")));
}

TEST(CheckpointTest, ValidateRejectsShapeContradictingConfig) {
  ScopedTempDir dir;
  WriteCheckpoint(dir, SmallConfig(), Shards(2, DType::kBF16, [](std::vector<TensorSpec>& specs) {
                    for (TensorSpec& s : specs) {
                      if (s.name == "model.layers.0.self_attn.q_proj.weight") s.shape = {64, 32};
                    }
                  }));
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  EXPECT_THAT(
      ckpt.ValidateForLlama(),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("model-00001-of-00002.safetensors: tensor model.layers.0.self_attn.q_proj.weight "
                         "has shape [64, 32] but config.json implies [64, 64]")));
}

TEST(CheckpointTest, ValidateRejectsMissingTensor) {
  ScopedTempDir dir;
  WriteCheckpoint(dir, SmallConfig(), Shards(2, DType::kBF16, [](std::vector<TensorSpec>& specs) {
                    std::erase_if(specs, [](const TensorSpec& s) {
                      return s.name == "model.layers.1.mlp.down_proj.weight";
                    });
                  }));
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  EXPECT_THAT(ckpt.ValidateForLlama(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("model.layers.1.mlp.down_proj.weight")));
}

TEST(CheckpointTest, TiedEmbeddingsNeedNoLmHead) {
  ModelConfig config = SmallConfig();
  config.tie_word_embeddings = true;
  ScopedTempDir dir;
  WriteCheckpoint(dir, config);
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  EXPECT_FALSE(ckpt.Has("lm_head.weight"));
  EXPECT_OK(ckpt.ValidateForLlama());
}

TEST(CheckpointTest, OpenFailsWithoutConfigOrWeights) {
  ScopedTempDir dir;
  EXPECT_THAT(Checkpoint::Open(dir.path()), StatusIs(absl::StatusCode::kNotFound, HasSubstr("config.json")));
  WriteFile(dir.File("config.json"), SmallConfig().ToJson());
  EXPECT_THAT(Checkpoint::Open(dir.path()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no model.safetensors")));
  WriteFile(dir.File("config.json"), "{}");
  EXPECT_THAT(Checkpoint::Open(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.json: missing required field")));
}

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

// The null device's checkpoint: the config's tensors without weight files.
TEST(CheckpointShapesTest, OpenShapesListsTheConfigsTensorsAsBf16WithoutWeightFiles) {
  ScopedTempDir dir;
  WriteFile(dir.File("config.json"), SmallConfig().ToJson());
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::OpenShapes(dir.path()));
  EXPECT_TRUE(ckpt.shapes_only());
  EXPECT_OK(ckpt.ValidateForLlama());
  EXPECT_EQ(ckpt.TensorNames().size(), LlamaTensorSpecs(SmallConfig()).size());
  ASSERT_OK_AND_ASSIGN(TensorInfo info, ckpt.Info("model.layers.0.mlp.gate_proj.weight"));
  EXPECT_EQ(info.dtype, DType::kBF16);
  EXPECT_EQ(info.shape, (std::vector<int64_t>{96, 64}));
  EXPECT_EQ(info.nbytes(), 96u * 64u * 2u);
  // Nothing to map; reads count the bytes as if read and leave the destination as it is.
  EXPECT_THAT(ckpt.Map("model.norm.weight"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("shapes only")));
  EXPECT_THAT(ckpt.MapRows("model.embed_tokens.weight", 0, 1), StatusIs(absl::StatusCode::kFailedPrecondition));
  std::vector<uint16_t> rows(10 * 64, 7);
  Tensor dst(rows.data(), DType::kBF16, {10, 64});
  EXPECT_OK(ckpt.ReadRows("model.layers.0.mlp.gate_proj.weight", 5, 10, dst));
  EXPECT_EQ(rows[0], 7);
  EXPECT_EQ(ckpt.bytes_accessed(), 10 * 64 * 2);
  std::vector<uint16_t> cols(64 * 8);
  Tensor cdst(cols.data(), DType::kBF16, {64, 8});  // down_proj is [hidden, intermediate]
  EXPECT_OK(ckpt.ReadColumns("model.layers.0.mlp.down_proj.weight", 8, 8, cdst));
  EXPECT_EQ(ckpt.bytes_accessed(), 10 * 64 * 2 + 64 * 8 * 2);
  // Arguments are still checked.
  EXPECT_THAT(ckpt.ReadRows("model.layers.0.mlp.gate_proj.weight", 90, 10, dst),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("gate_proj")));
  EXPECT_THAT(ckpt.Info("model.layers.9.mlp.gate_proj.weight"), StatusIs(absl::StatusCode::kNotFound));
}

TEST(CheckpointShapesTest, OpenShapesNeedsAValidConfig) {
  ScopedTempDir dir;
  EXPECT_THAT(Checkpoint::OpenShapes(dir.path()), StatusIs(absl::StatusCode::kNotFound, HasSubstr("config.json")));
  WriteFile(dir.File("config.json"), "{\"hidden_size\": ");
  EXPECT_THAT(Checkpoint::OpenShapes(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.json")));
}

}  // namespace
}  // namespace tessera
