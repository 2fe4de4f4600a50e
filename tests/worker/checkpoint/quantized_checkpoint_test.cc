// Block-quantized checkpoints (import-gguf --keep-quantized): Checkpoint's validation and its row / column
// slices of Q8_0 / Q4_0 / Q4_1 tensors (blocks copied as they are, or dequantized exactly into floats), and
// WeightLoader on the CPU backend (rows, columns and fused projections copied as blocks, zero rows, a mix of
// block types stacked as BF16).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "kernels/cpu/cpu_backend.h"
#include "tests/util/status_matchers.h"
#include "tests/worker/checkpoint/test_files.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/checkpoint/gguf_dequant.h"
#include "worker/checkpoint/safetensors_writer.h"
#include "worker/weight_loader.h"

namespace tessera {
namespace {

using ::tessera::testing::ScopedTempDir;
using ::tessera::testing::StatusIs;
using ::tessera::testing::WriteFile;
using ::testing::AllOf;
using ::testing::HasSubstr;
using Code = absl::StatusCode;

ModelConfig TinyConfig() {
  ModelConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 40;
  c.max_position_embeddings = 128;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

// Random blocks of `type` for `n` weights, every fp16 scale (and Q4_1 minimum) a sane finite number.
std::string RandomBlocks(DType type, int64_t n, std::mt19937& rng) {
  std::string out(static_cast<size_t>(DTypeBytes(type, n)), '\0');
  for (char& c : out) c = static_cast<char>(rng() & 0xff);
  for (int64_t b = 0; b < n / 32; ++b) {
    char* block = out.data() + b * DTypeBlockBytes(type);
    const uint16_t d = F32ToF16(std::ldexp(1.0f + static_cast<float>(rng() % 100) / 100.0f, -7));
    std::memcpy(block, &d, 2);
    if (type == DType::kQ4_1) std::memcpy(block + 2, &d, 2);
  }
  return out;
}

std::vector<float> Dequantize(DType type, const std::string& blocks, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  DequantizeRow(GgmlTypeOfBlockDType(type), blocks.data(), n, out.data());
  return out;
}

// A one-layer checkpoint: each tensor that `type_of` gives a block type is random blocks of that type, the
// others BF16 (2-D) or F32 (the norms). Returns every tensor's dtype and every quantized tensor's bytes.
struct Written {
  std::map<std::string, std::string> blocks;
  std::map<std::string, DType> types;
};
Written WriteQuantized(const ScopedTempDir& dir, const std::function<DType(const std::string&)>& type_of) {
  const ModelConfig config = TinyConfig();
  WriteFile(dir.File("config.json"), config.ToJson());
  std::mt19937 rng(11);
  Written w;
  std::vector<TensorData> tensors;
  std::vector<std::string> storage;
  storage.reserve(32);
  for (const TensorSpec& spec : LlamaTensorSpecs(config)) {
    int64_t numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    DType type = type_of(spec.name);
    if (IsQuantized(type)) {
      storage.push_back(RandomBlocks(type, numel, rng));
      w.blocks[spec.name] = storage.back();
    } else {
      type = spec.shape.size() == 2 ? DType::kBF16 : DType::kF32;
      storage.emplace_back(static_cast<size_t>(numel * DTypeSize(type)), '\0');
      if (type == DType::kBF16) {
        for (int64_t i = 0; i < numel; ++i) {
          const uint16_t h = F32ToBf16(static_cast<float>(i % 7) / 8.0f);
          std::memcpy(storage.back().data() + 2 * i, &h, 2);
        }
      }
    }
    w.types[spec.name] = type;
    tensors.push_back({spec.name, type, spec.shape, storage.back()});
  }
  EXPECT_OK(WriteSafetensors(dir.File("model.safetensors"), tensors, {{"format", "pt"}}));
  return w;
}

bool IsNorm(const std::string& name) { return name.find("norm") != std::string::npos; }

DType AllQ8(const std::string& name) { return IsNorm(name) ? DType::kF32 : DType::kQ8_0; }

// gate Q4_0, up Q4_1, down Q8_0, q/k/v Q8_0 and o Q4_1, the embedding Q4_0.
DType Mixed(const std::string& name) {
  if (IsNorm(name)) return DType::kF32;
  if (name.find("gate_proj") != std::string::npos) return DType::kQ4_0;
  if (name.find("up_proj") != std::string::npos || name.find("o_proj") != std::string::npos) {
    return DType::kQ4_1;
  }
  if (name.find("embed_tokens") != std::string::npos) return DType::kQ4_0;
  return DType::kQ8_0;
}

TEST(QuantizedCheckpointTest, ValidatesAndReadsRowsAsBlocksOrExactFloats) {
  ScopedTempDir dir;
  const Written w = WriteQuantized(dir, Mixed);
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  EXPECT_OK(ckpt.ValidateForLlama());
  for (const auto& [name, blocks] : w.blocks) {
    ASSERT_OK_AND_ASSIGN(TensorInfo info, ckpt.Info(name));
    const DType type = w.types.at(name);
    EXPECT_EQ(info.dtype, type) << name;
    const int64_t rows = info.shape[0], cols = info.shape[1], row_bytes = DTypeBytes(type, cols);
    // Rows [1, 3) as blocks, in place and copied.
    ASSERT_OK_AND_ASSIGN(Tensor mapped, ckpt.MapRows(name, 1, 2));
    EXPECT_EQ(mapped.dtype(), type);
    EXPECT_EQ(mapped.nbytes(), 2 * row_bytes);
    EXPECT_EQ(std::memcmp(mapped.data(), blocks.data() + row_bytes, 2 * row_bytes), 0) << name;
    std::string copy(static_cast<size_t>(2 * row_bytes), '\0');
    Tensor copy_dst(copy.data(), type, {2, cols});
    ASSERT_OK(ckpt.ReadRows(name, 1, 2, copy_dst));
    EXPECT_EQ(copy, blocks.substr(row_bytes, 2 * row_bytes)) << name;
    // Every row dequantized into F32 (exact) and BF16 (rounded).
    const std::vector<float> want = Dequantize(type, blocks, rows * cols);
    std::vector<float> f32(static_cast<size_t>(rows * cols));
    Tensor f32_dst(f32.data(), DType::kF32, {rows, cols});
    ASSERT_OK(ckpt.ReadRows(name, 0, rows, f32_dst));
    EXPECT_EQ(f32, want) << name;
    std::vector<uint16_t> bf16(static_cast<size_t>(cols));
    Tensor bf16_dst(bf16.data(), DType::kBF16, {1, cols});
    ASSERT_OK(ckpt.ReadRows(name, rows - 1, 1, bf16_dst));
    for (int64_t i = 0; i < cols; ++i) ASSERT_EQ(bf16[i], F32ToBf16(want[(rows - 1) * cols + i])) << name;
  }
}

TEST(QuantizedCheckpointTest, ReadsColumnSlicesOnBlockBoundariesOnly) {
  ScopedTempDir dir;
  const Written w = WriteQuantized(dir, AllQ8);
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  const std::string name = "model.layers.0.mlp.down_proj.weight";  // [64, 96]: 3 blocks a row
  const std::string& blocks = w.blocks.at(name);
  std::string slice(static_cast<size_t>(64 * 34), '\0');
  Tensor dst(slice.data(), DType::kQ8_0, {64, 32});
  ASSERT_OK(ckpt.ReadColumns(name, 64, 32, dst));
  for (int64_t r = 0; r < 64; ++r) {
    ASSERT_EQ(slice.substr(r * 34, 34), blocks.substr(r * 102 + 68, 34)) << "row " << r;
  }
  const std::vector<float> all = Dequantize(DType::kQ8_0, blocks, 64 * 96);
  std::vector<float> f32(64 * 64);
  Tensor f32_dst(f32.data(), DType::kF32, {64, 64});
  ASSERT_OK(ckpt.ReadColumns(name, 32, 64, f32_dst));
  for (int64_t r = 0; r < 64; ++r) {
    for (int64_t c = 0; c < 64; ++c) ASSERT_EQ(f32[r * 64 + c], all[r * 96 + 32 + c]);
  }
  std::vector<float> off(64 * 32);
  Tensor off_dst(off.data(), DType::kF32, {64, 32});
  EXPECT_THAT(ckpt.ReadColumns(name, 16, 32, off_dst),
              StatusIs(Code::kInvalidArgument, AllOf(HasSubstr(name), HasSubstr("[16, 48)"),
                                                     HasSubstr("block boundaries"), HasSubstr("Q8_0"))));
  // Blocks of one type are not another's.
  std::string q4(64 * 18, '\0');
  Tensor q4_dst(q4.data(), DType::kQ4_0, {64, 32});
  EXPECT_THAT(ckpt.ReadColumns(name, 0, 32, q4_dst),
              StatusIs(Code::kInvalidArgument, AllOf(HasSubstr("cannot convert Q8_0 to Q4_0"))));
}

TEST(QuantizedCheckpointTest, ValidateRefusesAQuantizedNorm) {
  ScopedTempDir dir;
  WriteQuantized(
      dir, [](const std::string& name) { return name == "model.norm.weight" ? DType::kQ8_0 : DType::kBF16; });
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  EXPECT_THAT(ckpt.ValidateForLlama(),
              StatusIs(Code::kInvalidArgument, AllOf(HasSubstr("model.safetensors"),
                                                     HasSubstr("model.norm.weight"), HasSubstr("Q8_0"))));
}

TEST(QuantizedCheckpointTest, ConfigWithAnotherQuantizationMethodIsRefused) {
  ScopedTempDir dir;
  std::string config = TinyConfig().ToJson();
  config.insert(config.find('{') + 1, R"("quantization_config": {"quant_method": "awq", "bits": 4},)");
  WriteFile(dir.File("config.json"), config);
  EXPECT_THAT(ModelConfig::Load(dir.File("config.json")),
              StatusIs(Code::kInvalidArgument, AllOf(HasSubstr("config.json"), HasSubstr("awq"))));
  config = TinyConfig().ToJson();
  config.insert(config.find('{') + 1, R"("quantization_config": {"quant_method": "tessera_gguf_blocks"},)");
  WriteFile(dir.File("config.json"), config);
  EXPECT_OK(ModelConfig::Load(dir.File("config.json")));
}

class QuantizedWeightLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CpuBackendOptions options;
    options.num_threads = 1;
    ASSERT_OK_AND_ASSIGN(backend_, CpuBackend::Create(options));
  }
  std::unique_ptr<CpuBackend> backend_;
};

TEST_F(QuantizedWeightLoaderTest, KeepsBlocksOnTheCpu) {
  ScopedTempDir dir;
  const Written w = WriteQuantized(dir, Mixed);
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.path()));
  WeightLoader loader(ckpt, *backend_);

  // Rows: the blocks as they are.
  const std::string up = "model.layers.0.mlp.up_proj.weight";  // Q4_1 [96, 64]
  ASSERT_OK_AND_ASSIGN(Tensor rows, loader.LoadRows(up, 48, 48));
  EXPECT_EQ(rows.dtype(), DType::kQ4_1);
  EXPECT_EQ(rows.dim(0), 48);
  EXPECT_EQ(rows.dim(1), 64);
  EXPECT_EQ(std::memcmp(rows.data(), w.blocks.at(up).data() + 48 * 40, 48 * 40), 0);
  EXPECT_EQ(loader.bytes_copied(), 48 * 40);

  // Columns (a row-parallel weight's slice): copied as blocks.
  const std::string down = "model.layers.0.mlp.down_proj.weight";  // Q8_0 [64, 96]
  ASSERT_OK_AND_ASSIGN(Tensor cols, loader.LoadColumns(down, 32, 64));
  EXPECT_EQ(cols.dtype(), DType::kQ8_0);
  for (int64_t r = 0; r < 64; ++r) {
    ASSERT_EQ(
        std::memcmp(static_cast<char*>(cols.data()) + r * 68, w.blocks.at(down).data() + r * 102 + 34, 68),
        0);
  }
  EXPECT_EQ(loader.bytes_copied(), 48 * 40 + 64 * 68);
  EXPECT_THAT(loader.LoadColumns(down, 48, 32),
              StatusIs(Code::kInvalidArgument, AllOf(HasSubstr(down), HasSubstr("block boundaries"))));

  // The vocabulary-split embedding's zero row is zero blocks (zero weights).
  const std::string embed = "model.embed_tokens.weight";  // Q4_0 [40, 64]
  ASSERT_OK_AND_ASSIGN(Tensor table, loader.LoadRows(embed, 20, 20, 1));
  EXPECT_EQ(table.dtype(), DType::kQ4_0);
  EXPECT_EQ(table.dim(0), 21);
  EXPECT_EQ(std::memcmp(table.data(), w.blocks.at(embed).data() + 20 * 36, 20 * 36), 0);
  EXPECT_EQ(std::string(static_cast<char*>(table.data()) + 20 * 36, 36), std::string(36, '\0'));
  std::vector<float> zero_row(64, 1.0f);
  DequantizeRow(GgmlType::kQ4_0, static_cast<char*>(table.data()) + 20 * 36, 64, zero_row.data());
  EXPECT_EQ(zero_row, std::vector<float>(64, 0.0f));

  // q, k, v all Q8_0: one Q8_0 weight. gate (Q4_0) with up (Q4_1): BF16 of the exact values.
  const std::string p = "model.layers.0.";
  ASSERT_OK_AND_ASSIGN(Tensor qkv, loader.LoadStackedRows({{p + "self_attn.q_proj.weight", 16, 32},
                                                           {p + "self_attn.k_proj.weight", 0, 16},
                                                           {p + "self_attn.v_proj.weight", 16, 16}}));
  EXPECT_EQ(qkv.dtype(), DType::kQ8_0);
  EXPECT_EQ(qkv.dim(0), 64);
  const char* q = static_cast<const char*>(qkv.data());
  EXPECT_EQ(std::memcmp(q, w.blocks.at(p + "self_attn.q_proj.weight").data() + 16 * 68, 32 * 68), 0);
  EXPECT_EQ(std::memcmp(q + 32 * 68, w.blocks.at(p + "self_attn.k_proj.weight").data(), 16 * 68), 0);
  EXPECT_EQ(std::memcmp(q + 48 * 68, w.blocks.at(p + "self_attn.v_proj.weight").data() + 16 * 68, 16 * 68),
            0);
  ASSERT_OK_AND_ASSIGN(Tensor gate_up, loader.LoadStackedRows({{p + "mlp.gate_proj.weight", 0, 96},
                                                               {p + "mlp.up_proj.weight", 0, 96}}));
  EXPECT_EQ(gate_up.dtype(), DType::kBF16);
  const std::vector<float> gate = Dequantize(DType::kQ4_0, w.blocks.at(p + "mlp.gate_proj.weight"), 96 * 64);
  const std::vector<float> upv = Dequantize(DType::kQ4_1, w.blocks.at(up), 96 * 64);
  const uint16_t* g = gate_up.data_as<uint16_t>();
  for (int64_t i = 0; i < 96 * 64; ++i) {
    ASSERT_EQ(g[i], F32ToBf16(gate[i])) << i;
    ASSERT_EQ(g[96 * 64 + i], F32ToBf16(upv[i])) << i;
  }
  std::vector<DeviceBuffer> buffers = loader.TakeBuffers();
  EXPECT_EQ(buffers.size(), 5u);
}

}  // namespace
}  // namespace tessera
