// Tests for ImportGguf: a tiny llama GGUF built here (every supported tensor type, q / k stored permuted as
// llama.cpp's converter does) imported and reopened with Checkpoint; the HF names, the q / k un-permutation
// against llama.cpp's formula; and the failures, which must leave no directory behind.
#include "worker/checkpoint/gguf_import.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "absl/strings/str_format.h"
#include "core/str_cat.h"
#include "tests/util/status_matchers.h"
#include "tests/worker/checkpoint/gguf_test_builder.h"
#include "tests/worker/checkpoint/test_files.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/checkpoint/gguf_config.h"
#include "worker/checkpoint/gguf_dequant.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using ::tessera::testing::GgufBuilder;
using ::tessera::testing::Pod;
using ::tessera::testing::ReadFile;
using ::tessera::testing::ScopedTempDir;
using ::tessera::testing::StatusIs;
using ::tessera::testing::WriteFile;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Code = absl::StatusCode;

constexpr int kLayers = 2, kHidden = 64, kHeads = 4, kKvHeads = 2, kHeadDim = 16, kFf = 96, kVocab = 70;

// How to spoil the tiny model.
struct Tiny {
  std::string arch = "llama";
  bool tied = true;
  std::string skip_tensor, skip_key;
  std::vector<std::string> extra_tensors;  // F32 [kHidden]
  std::vector<float> rope_freqs;           // stored as rope_freqs.weight when not empty
  int feed_forward_length = kFf;
  std::string rope_scaling_type;
  bool quantized_qk = false;  // q_proj as Q8_0 and k_proj as Q4_1 blocks (stored permuted, like any q / k)
};

struct Expected {
  std::map<std::string, std::vector<float>> values;  // HF name -> values in HF order
};

std::string Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

// llama.cpp's permute(w, n_head): within each head, HF row half * d/2 + i moves to row 2i + half.
std::vector<float> LlamaCppPermute(const std::vector<float>& w, int64_t rows, int64_t cols, int heads) {
  std::vector<float> out(w.size());
  const int64_t d = rows / heads;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t half = 0; half < 2; ++half)
      for (int64_t i = 0; i < d / 2; ++i)
        std::copy_n(&w[(h * d + half * d / 2 + i) * cols], cols, &out[(h * d + 2 * i + half) * cols]);
  return out;
}

// Random bytes for `n` values of a quantized type, every f16 scale a sane number.
std::string QuantBlocks(GgmlType type, int64_t n, std::mt19937& rng) {
  const GgmlBlockLayout layout = BlockLayout(type);
  std::string out;
  for (int64_t b = 0; b < n / layout.block_size; ++b) {
    std::string block(layout.type_size, '\0');
    for (char& c : block) c = static_cast<char>(rng() & 0xff);
    const uint16_t d = F32ToF16(std::ldexp(1.0f + (rng() % 100) / 100.0f, -8));
    std::memcpy(block.data(), &d, 2);
    if (type == GgmlType::kQ4_1) std::memcpy(block.data() + 2, &d, 2);
    out += block;
  }
  return out;
}

// A tiny llama GGUF; `expected` receives every tensor's HF name and values.
std::string TinyGguf(const Tiny& t, Expected& expected, uint32_t seed = 1) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  GgufBuilder b;
  const auto key = [&](const std::string& k) { return k != t.skip_key; };
  if (key("general.architecture")) b.Str("general.architecture", t.arch);
  if (key("llama.block_count")) b.U32("llama.block_count", kLayers);
  b.U32("llama.context_length", 4096).U32("llama.embedding_length", kHidden);
  b.U32("llama.feed_forward_length", t.feed_forward_length).U32("llama.attention.head_count", kHeads);
  b.U32("llama.attention.head_count_kv", kKvHeads).F32("llama.rope.freq_base", 500000.0f);
  b.F32("llama.attention.layer_norm_rms_epsilon", 1e-5f).U32("llama.rope.dimension_count", kHeadDim);
  if (!t.rope_scaling_type.empty()) b.Str("llama.rope.scaling.type", t.rope_scaling_type);
  std::vector<std::string> tokens;
  for (int i = 0; i < kVocab - 2; ++i) tokens.push_back(Cat("t", i));
  tokens.push_back("<|begin_of_text|>");
  tokens.push_back("<|eot_id|>");
  std::vector<int32_t> types(kVocab, 1);
  types[kVocab - 2] = types[kVocab - 1] = 3;
  b.Str("tokenizer.ggml.model", "gpt2")
      .Str("tokenizer.ggml.pre", "llama-bpe")
      .StrArray("tokenizer.ggml.tokens", tokens);
  b.I32Array("tokenizer.ggml.token_type", types).StrArray("tokenizer.ggml.merges", {"t1 t2", "t3 t4"});
  b.U32("tokenizer.ggml.bos_token_id", kVocab - 2).U32("tokenizer.ggml.eos_token_id", 3);
  b.U32("tokenizer.ggml.eot_token_id", kVocab - 1).Str("tokenizer.chat_template", "{{ bos_token }}hi");

  const auto add = [&](const std::string& gguf, const std::string& hf, GgmlType type, int64_t rows,
                       int64_t cols, int permute_heads = 0) {
    if (gguf == t.skip_tensor) return;
    const std::vector<uint64_t> dims = rows == 1 ? std::vector<uint64_t>{uint64_t(cols)}
                                                 : std::vector<uint64_t>{uint64_t(cols), uint64_t(rows)};
    std::vector<float> hf_values(rows * cols);
    std::string stored;
    if (type == GgmlType::kF32 || type == GgmlType::kF16 || type == GgmlType::kBF16) {
      for (float& v : hf_values) {
        v = normal(rng);
        if (type == GgmlType::kF16) v = F16ToF32(F32ToF16(v));
        if (type == GgmlType::kBF16) v = Bf16ToF32(F32ToBf16(v));
      }
      const std::vector<float> file_order =
          permute_heads ? LlamaCppPermute(hf_values, rows, cols, permute_heads) : hf_values;
      for (float v : file_order) {
        if (type == GgmlType::kF32) stored += Pod(v);
        if (type == GgmlType::kF16) stored += Pod(F32ToF16(v));
        if (type == GgmlType::kBF16) stored += Pod(F32ToBf16(v));
      }
    } else {
      stored = QuantBlocks(type, rows * cols, rng);
      std::vector<float> file_values(rows * cols);
      DequantizeRow(type, stored.data(), rows * cols, file_values.data());  // dequantization is tested apart
      // The stored rows are llama.cpp's permutation of the HF rows: file row f holds HF row hf_row_of[f].
      std::vector<float> hf_row_of(rows);
      for (int64_t r = 0; r < rows; ++r) hf_row_of[r] = static_cast<float>(r);
      if (permute_heads) hf_row_of = LlamaCppPermute(hf_row_of, rows, 1, permute_heads);
      for (int64_t f = 0; f < rows; ++f) {
        std::copy_n(&file_values[f * cols], cols, &hf_values[static_cast<int64_t>(hf_row_of[f]) * cols]);
      }
    }
    b.Tensor(gguf, static_cast<uint32_t>(type), dims, stored);
    expected.values[hf] = hf_values;
  };
  add("token_embd.weight", "model.embed_tokens.weight", GgmlType::kQ8_0, kVocab, kHidden);
  for (int l = 0; l < kLayers; ++l) {
    const std::string g = Cat("blk.", l, "."), h = Cat("model.layers.", l, ".");
    add(g + "attn_norm.weight", h + "input_layernorm.weight", GgmlType::kF32, 1, kHidden);
    add(g + "attn_q.weight", h + "self_attn.q_proj.weight", t.quantized_qk ? GgmlType::kQ8_0 : GgmlType::kF32,
        kHeads * kHeadDim, kHidden, kHeads);
    add(g + "attn_k.weight", h + "self_attn.k_proj.weight", t.quantized_qk ? GgmlType::kQ4_1 : GgmlType::kF16,
        kKvHeads * kHeadDim, kHidden, kKvHeads);
    add(g + "attn_v.weight", h + "self_attn.v_proj.weight", GgmlType::kQ4_0, kKvHeads * kHeadDim, kHidden);
    add(g + "attn_output.weight", h + "self_attn.o_proj.weight", GgmlType::kQ4_1, kHidden, kHeads * kHeadDim);
    add(g + "ffn_norm.weight", h + "post_attention_layernorm.weight", GgmlType::kF32, 1, kHidden);
    add(g + "ffn_gate.weight", h + "mlp.gate_proj.weight", GgmlType::kBF16, kFf, kHidden);
    add(g + "ffn_up.weight", h + "mlp.up_proj.weight", GgmlType::kF32, kFf, kHidden);
    add(g + "ffn_down.weight", h + "mlp.down_proj.weight", GgmlType::kQ8_0, kHidden, kFf);
  }
  add("output_norm.weight", "model.norm.weight", GgmlType::kF32, 1, kHidden);
  if (!t.tied) add("output.weight", "lm_head.weight", GgmlType::kF16, kVocab, kHidden);
  for (const std::string& name : t.extra_tensors) add(name, name, GgmlType::kF32, 1, kHidden);
  if (!t.rope_freqs.empty()) {
    b.Tensor("rope_freqs.weight", 0, {t.rope_freqs.size()}, Bytes(t.rope_freqs));
  }
  return b.Build();
}

// Imports `gguf_bytes` into dir/out.
absl::StatusOr<ImportGgufResult> Import(const ScopedTempDir& dir, const std::string& gguf_bytes,
                                        DType dtype = DType::kF32, int64_t max_shard_bytes = 4'000'000'000,
                                        bool keep_quantized = false) {
  WriteFile(dir.File("model.gguf"), gguf_bytes);
  ImportGgufOptions options;
  options.gguf_path = dir.File("model.gguf");
  options.out_dir = dir.File("out");
  options.dtype = dtype;
  options.max_shard_bytes = max_shard_bytes;
  options.keep_quantized = keep_quantized;
  return ImportGguf(options);
}

// Entries of the temporary directory other than the GGUF: the snapshot and any leftover staging directory.
std::vector<std::string> Written(const ScopedTempDir& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    if (e.path().filename() != "model.gguf") names.push_back(e.path().filename().string());
  }
  return names;
}

// Expects every tensor of the snapshot to equal `expected` (rounded to bf16 for a BF16 snapshot).
void ExpectTensors(const Checkpoint& ckpt, const Expected& expected) {
  EXPECT_EQ(ckpt.TensorNames().size(), expected.values.size());
  for (const auto& [name, want] : expected.values) {
    ASSERT_OK_AND_ASSIGN(Tensor t, ckpt.Map(name));
    ASSERT_EQ(t.numel(), static_cast<int64_t>(want.size())) << name;
    for (size_t i = 0; i < want.size(); ++i) {
      if (t.dtype() == DType::kF32) {
        ASSERT_EQ(t.data_as<const float>()[i], want[i]) << name << " value " << i;
      } else {
        ASSERT_EQ(t.data_as<const uint16_t>()[i], F32ToBf16(want[i])) << name << " value " << i;
      }
    }
  }
}

TEST(GgufImportTest, ImportsATinyModelThatCheckpointLoadsExactly) {
  ScopedTempDir dir;
  Expected expected;
  ASSERT_OK_AND_ASSIGN(ImportGgufResult result, Import(dir, TinyGguf(Tiny{}, expected)));
  EXPECT_EQ(result.tensors, static_cast<int64_t>(expected.values.size()));
  EXPECT_EQ(result.shards, 1);
  EXPECT_THAT(Written(dir), ElementsAre("out"));
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.File("out")));
  EXPECT_OK(ckpt.ValidateForLlama());
  const ModelConfig& c = ckpt.config();
  EXPECT_EQ(c.num_hidden_layers, kLayers);
  EXPECT_EQ(c.hidden_size, kHidden);
  EXPECT_EQ(c.num_attention_heads, kHeads);
  EXPECT_EQ(c.num_key_value_heads, kKvHeads);
  EXPECT_EQ(c.head_dim, kHeadDim);
  EXPECT_EQ(c.intermediate_size, kFf);
  EXPECT_EQ(c.vocab_size, kVocab);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rms_norm_eps, static_cast<double>(1e-5f));
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.rope_scaling.has_value());
  EXPECT_EQ(c.bos_token_id, kVocab - 2);
  EXPECT_THAT(c.eos_token_ids, ElementsAre(3, kVocab - 1));  // eos, then eot
  EXPECT_EQ(c.torch_dtype, "float32");
  EXPECT_THAT(ckpt.generation_config().eos_token_ids, ElementsAre(3, kVocab - 1));
  ExpectTensors(ckpt, expected);
  const nlohmann::json config = nlohmann::json::parse(ReadFile(dir.File("out/tokenizer_config.json")));
  EXPECT_EQ(config["bos_token"], "<|begin_of_text|>");
  EXPECT_EQ(config["chat_template"], "{{ bos_token }}hi");
  EXPECT_EQ(config["model_max_length"], 4096);
}

TEST(GgufImportTest, Bf16SnapshotRoundsToNearestEvenAndUntiedModelsKeepLmHead) {
  ScopedTempDir dir;
  Expected expected;
  Tiny tiny;
  tiny.tied = false;
  ASSERT_OK(Import(dir, TinyGguf(tiny, expected, 2), DType::kBF16));
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.File("out")));
  EXPECT_FALSE(ckpt.config().tie_word_embeddings);
  EXPECT_EQ(ckpt.config().torch_dtype, "bfloat16");
  EXPECT_TRUE(ckpt.Has("lm_head.weight"));
  ExpectTensors(ckpt, expected);
}

TEST(GgufImportTest, KeepQuantizedKeepsQ8AndQ4BlocksInHfRowOrder) {
  ScopedTempDir dir;
  Expected expected;
  Tiny tiny;
  tiny.quantized_qk = true;
  ASSERT_OK_AND_ASSIGN(ImportGgufResult result,
                       Import(dir, TinyGguf(tiny, expected, 3), DType::kBF16, 4'000'000'000, true));
  // Per layer q, k, v, o, down; plus the embedding.
  EXPECT_EQ(result.quantized, 1 + 5 * kLayers);
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.File("out")));
  EXPECT_OK(ckpt.ValidateForLlama());
  const std::map<std::string, DType> kept = {{"self_attn.q_proj.weight", DType::kQ8_0},
                                             {"self_attn.k_proj.weight", DType::kQ4_1},
                                             {"self_attn.v_proj.weight", DType::kQ4_0},
                                             {"self_attn.o_proj.weight", DType::kQ4_1},
                                             {"mlp.down_proj.weight", DType::kQ8_0}};
  for (const auto& [name, want] : expected.values) {
    ASSERT_OK_AND_ASSIGN(TensorInfo info, ckpt.Info(name));
    DType type = name == "model.embed_tokens.weight" ? DType::kQ8_0 : DType::kBF16;
    for (const auto& [suffix, t] : kept) {
      if (name.ends_with(suffix)) type = t;
    }
    EXPECT_EQ(info.dtype, type) << name;
    // Kept blocks dequantize to exactly the GGUF's values, un-permuted; the rest is rounded to bf16.
    const int64_t rows = info.shape[0], cols = info.shape.size() == 2 ? info.shape[1] : 1;
    std::vector<float> values(rows * cols);
    Tensor dst = info.shape.size() == 2 ? Tensor(values.data(), DType::kF32, {rows, cols})
                                        : Tensor(values.data(), DType::kF32, {rows});
    ASSERT_OK(ckpt.ReadRows(name, 0, rows, dst));
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(values[i], IsQuantized(type) ? want[i] : Bf16ToF32(F32ToBf16(want[i]))) << name << " " << i;
    }
  }
  const nlohmann::json config = nlohmann::json::parse(ReadFile(dir.File("out/config.json")));
  EXPECT_EQ(config["quantization_config"]["quant_method"], "tessera_gguf_blocks");
  EXPECT_EQ(config["quantization_config"]["tensors_by_type"],
            nlohmann::json({{"Q4_0", 2}, {"Q4_1", 4}, {"Q8_0", 5}}));
  EXPECT_EQ(ckpt.config().torch_dtype, "bfloat16");
}

TEST(GgufImportTest, WithoutKeepQuantizedQuantizedQAndKAreUnpermutedToo) {
  ScopedTempDir dir;
  Expected expected;
  Tiny tiny;
  tiny.quantized_qk = true;
  ASSERT_OK_AND_ASSIGN(ImportGgufResult result, Import(dir, TinyGguf(tiny, expected, 4)));
  EXPECT_EQ(result.quantized, 0);
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.File("out")));
  ExpectTensors(ckpt, expected);
  const nlohmann::json config = nlohmann::json::parse(ReadFile(dir.File("out/config.json")));
  EXPECT_FALSE(config.contains("quantization_config"));
}

TEST(GgufImportTest, ShardsWhenTheDataPassesMaxShardBytes) {
  ScopedTempDir dir;
  Expected expected;
  ASSERT_OK_AND_ASSIGN(ImportGgufResult result, Import(dir, TinyGguf(Tiny{}, expected), DType::kF32, 40'000));
  EXPECT_GT(result.shards, 2);
  EXPECT_TRUE(fs::exists(dir.File(absl::StrFormat("out/model-00001-of-%05d.safetensors", result.shards))));
  EXPECT_FALSE(fs::exists(dir.File("out/model.safetensors")));
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.File("out")));
  ExpectTensors(ckpt, expected);
}

TEST(GgufImportTest, RecoversLlama3RopeScalingFromRopeFreqs) {
  ScopedTempDir dir;
  Expected expected;
  Tiny tiny;
  RopeScaling scaling;  // factor 8, low 1, high 4, original 8192
  for (double f : Llama3RopeFactors(scaling, 500000.0, kHeadDim))
    tiny.rope_freqs.push_back(static_cast<float>(f));
  ASSERT_OK(Import(dir, TinyGguf(tiny, expected)));
  ASSERT_OK_AND_ASSIGN(Checkpoint ckpt, Checkpoint::Open(dir.File("out")));
  ASSERT_TRUE(ckpt.config().rope_scaling.has_value());
  EXPECT_EQ(ckpt.config().rope_scaling->factor, 8.0);
  EXPECT_EQ(ckpt.config().rope_scaling->low_freq_factor, 1.0);
  EXPECT_EQ(ckpt.config().rope_scaling->high_freq_factor, 4.0);
  EXPECT_EQ(ckpt.config().rope_scaling->original_max_position_embeddings, 8192);
  EXPECT_FALSE(ckpt.Has("rope_freqs.weight"));
}

TEST(GgufImportTest, FitsLlama3ScalingOfEveryShapeFromItsFactors) {
  for (const RopeScaling& want : {RopeScaling{"llama3", 8, 1, 4, 8192}, RopeScaling{"llama3", 32, 1, 4, 8192},
                                  RopeScaling{"llama3", 16, 2, 8, 4096}}) {
    std::vector<float> factors;
    for (double f : Llama3RopeFactors(want, 500000.0, 128)) factors.push_back(static_cast<float>(f));
    ASSERT_OK_AND_ASSIGN(
        std::optional<RopeScaling> got,
        FitLlama3RopeScaling(factors, 500000.0, 128, want.original_max_position_embeddings, "t"));
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(got->factor, want.factor);
    EXPECT_EQ(got->low_freq_factor, want.low_freq_factor);
    EXPECT_EQ(got->high_freq_factor, want.high_freq_factor);
    EXPECT_EQ(got->original_max_position_embeddings, want.original_max_position_embeddings);
  }
  ASSERT_OK_AND_ASSIGN(std::optional<RopeScaling> none,
                       FitLlama3RopeScaling(std::vector<float>(64, 1.0f), 500000.0, 128, 8192, "t"));
  EXPECT_FALSE(none.has_value());
}

TEST(GgufImportTest, RefusesRopeFactorsThatAreNotLlama3s) {
  std::vector<float> factors;
  for (double f : Llama3RopeFactors(RopeScaling{}, 500000.0, 128)) factors.push_back(static_cast<float>(f));
  std::vector<float> bent = factors;
  bent[63] *= 1.01f;  // the last (lowest-frequency) factor no longer equals the plateau
  bent[40] = 1.5f;
  EXPECT_THAT(FitLlama3RopeScaling(bent, 500000.0, 128, 8192, "x.gguf: tensor 'rope_freqs.weight'"),
              StatusIs(Code::kInvalidArgument, AllOf(HasSubstr("x.gguf: tensor 'rope_freqs.weight': factor"),
                                                     HasSubstr("not llama3 frequency factors"))));
  factors[3] = -1;
  EXPECT_THAT(FitLlama3RopeScaling(factors, 500000.0, 128, 8192, "t"),
              StatusIs(Code::kInvalidArgument, HasSubstr("factor 3 = -1 is not finite and positive")));
}

TEST(GgufImportTest, RefusesBadModelsAndLeavesNothingBehind) {
  struct Case {
    Tiny tiny;
    Code code;
    std::vector<std::string> culprits;
  };
  std::vector<Case> cases(8);
  cases[0].tiny.arch = "qwen2";
  cases[0].code = Code::kInvalidArgument;
  cases[0].culprits = {"general.architecture is 'qwen2'"};
  cases[1].tiny.skip_key = "llama.block_count";
  cases[1].code = Code::kNotFound;
  cases[1].culprits = {"metadata key 'llama.block_count' is missing"};
  cases[2].tiny.skip_tensor = "blk.1.ffn_up.weight";
  cases[2].code = Code::kNotFound;
  cases[2].culprits = {"tensor 'blk.1.ffn_up.weight' (model.layers.1.mlp.up_proj.weight) is missing"};
  cases[3].tiny.extra_tensors = {"blk.0.attn_q.bias"};
  cases[3].code = Code::kInvalidArgument;
  cases[3].culprits = {"tensor 'blk.0.attn_q.bias' is not a tensor of a 2-layer llama model"};
  cases[4].tiny.extra_tensors = {"blk.2.attn_norm.weight"};
  cases[4].code = Code::kInvalidArgument;
  cases[4].culprits = {"tensor 'blk.2.attn_norm.weight'"};
  cases[5].tiny.feed_forward_length = 128;
  cases[5].code = Code::kInvalidArgument;
  cases[5].culprits = {"tensor 'blk.0.ffn_gate.weight' has GGUF dims [64, 96] (HF shape [96, 64])",
                       "implies [128, 64]"};
  cases[6].tiny.rope_scaling_type = "linear";
  cases[6].code = Code::kInvalidArgument;
  cases[6].culprits = {"'llama.rope.scaling.type' = 'linear' is not supported"};
  cases[7].tiny.rope_freqs = std::vector<float>(kHeadDim / 2 + 1, 1.0f);
  cases[7].code = Code::kInvalidArgument;
  cases[7].culprits = {"tensor 'rope_freqs.weight' has 9 values"};
  for (const Case& c : cases) {
    ScopedTempDir dir;
    Expected unused;
    absl::StatusOr<ImportGgufResult> result = Import(dir, TinyGguf(c.tiny, unused));
    ASSERT_THAT(result, StatusIs(c.code, HasSubstr("model.gguf: ")));
    for (const std::string& culprit : c.culprits)
      EXPECT_THAT(std::string(result.status().message()), HasSubstr(culprit));
    EXPECT_THAT(Written(dir), ElementsAre());
  }
}

TEST(GgufImportTest, TruncatedFileLeavesNoDirectory) {
  ScopedTempDir dir;
  Expected unused;
  const std::string bytes = TinyGguf(Tiny{}, unused);
  EXPECT_THAT(Import(dir, bytes.substr(0, bytes.size() - 100)),
              StatusIs(Code::kDataLoss, HasSubstr("runs past the end of the file")));
  EXPECT_THAT(Written(dir), ElementsAre());
}

TEST(GgufImportTest, AWriteFailureRemovesTheStagingDirectory) {
  ScopedTempDir dir;
  Expected unused;
  const std::string bytes = TinyGguf(Tiny{}, unused);
  WriteFile(dir.File("model.gguf"), bytes);
  // Files may not grow past 64 KiB: model.safetensors (about 300 KB) fails half-way with EFBIG.
  struct rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct rlimit limit = old_limit;
  limit.rlim_cur = 64 << 10;
  sighandler_t old_handler = signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  ImportGgufOptions options;
  options.gguf_path = dir.File("model.gguf");
  options.out_dir = dir.File("out");
  absl::StatusOr<ImportGgufResult> result = ImportGguf(options);
  setrlimit(RLIMIT_FSIZE, &old_limit);
  signal(SIGXFSZ, old_handler);
  EXPECT_THAT(result, StatusIs(Code::kOutOfRange, HasSubstr("model.safetensors: write failed")));
  EXPECT_THAT(Written(dir), ElementsAre());
}

TEST(GgufImportTest, RefusesANonEmptyOutputDirectoryButFillsAnEmptyOne) {
  ScopedTempDir dir;
  Expected expected;
  const std::string bytes = TinyGguf(Tiny{}, expected);
  fs::create_directories(dir.File("out"));
  WriteFile(dir.File("out/keep.txt"), "mine");
  EXPECT_THAT(Import(dir, bytes),
              StatusIs(Code::kAlreadyExists, HasSubstr("out: exists and is not an empty")));
  EXPECT_EQ(ReadFile(dir.File("out/keep.txt")), "mine");
  fs::remove(dir.File("out/keep.txt"));
  ASSERT_OK(Import(dir, bytes));
  EXPECT_THAT(Written(dir), ElementsAre("out"));
  EXPECT_TRUE(fs::exists(dir.File("out/model.safetensors")));
}

TEST(GgufImportTest, MapsEveryLlamaTensorNameAndNoOther) {
  EXPECT_EQ(HfTensorName("token_embd.weight", 2), "model.embed_tokens.weight");
  EXPECT_EQ(HfTensorName("output_norm.weight", 2), "model.norm.weight");
  EXPECT_EQ(HfTensorName("output.weight", 2), "lm_head.weight");
  EXPECT_EQ(HfTensorName("blk.1.attn_output.weight", 2), "model.layers.1.self_attn.o_proj.weight");
  EXPECT_EQ(HfTensorName("blk.0.ffn_norm.weight", 2), "model.layers.0.post_attention_layernorm.weight");
  EXPECT_EQ(HfTensorName("blk.10.ffn_down.weight", 11), "model.layers.10.mlp.down_proj.weight");
  for (const char* bad :
       {"blk.2.attn_q.weight", "blk.01.attn_q.weight", "blk.-1.attn_q.weight", "blk..attn_q.weight",
        "blk.0.attn_q.bias", "blk.0.attn_q", "token_embd", "rope_freqs.weight", "blk.0x1.ffn_up.weight"}) {
    EXPECT_EQ(HfTensorName(bad, 2), std::nullopt) << bad;
  }
}

TEST(GgufImportTest, UnpermutesRowsAsTheInverseOfLlamaCppsPermute) {
  for (int heads : {1, 3, 4}) {
    for (int64_t head_dim : {2, 8, 64}) {
      const int64_t rows = heads * head_dim;
      std::vector<float> hf_rows(rows);
      for (int64_t r = 0; r < rows; ++r) hf_rows[r] = static_cast<float>(r);
      const std::vector<float> gguf_rows = LlamaCppPermute(hf_rows, rows, 1, heads);
      for (int64_t r = 0; r < rows; ++r) {
        ASSERT_EQ(gguf_rows[GgufRowOfHfRow(r, rows, heads)], static_cast<float>(r))
            << heads << " heads of " << head_dim << ", HF row " << r;
      }
    }
  }
}

}  // namespace
}  // namespace tessera
