// Tests for config.json / generation_config.json parsing, validation messages and presets.
#include "worker/checkpoint/model_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/util/status_matchers.h"
#include "tests/worker/checkpoint/test_files.h"
#include "worker/checkpoint/model_presets.h"

namespace tessera {
namespace {

using ::tessera::testing::ScopedTempDir;
using ::tessera::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

using Json = nlohmann::json;

// A valid config (tiny shape) to mutate.
Json BaseConfig() {
  return Json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 192, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2, "vocab_size": 1000,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "bos_token_id": 1,
    "eos_token_id": 2, "tie_word_embeddings": false, "torch_dtype": "bfloat16"})");
}

absl::StatusOr<ModelConfig> ParseJson(const Json& j) { return ModelConfig::Parse(j.dump(), "config.json"); }

void ExpectInvalid(const Json& j, const std::string& culprit) {
  EXPECT_THAT(ParseJson(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                     AllOf(HasSubstr("config.json: "), HasSubstr(culprit))))
      << j.dump();
}

TEST(ModelConfigTest, ParsesFieldsAndDefaultsHeadDim) {
  ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseJson(BaseConfig()));
  EXPECT_EQ(c.hidden_size, 192);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_THAT(c.eos_token_ids, ElementsAre(2));
  EXPECT_FALSE(c.rope_scaling.has_value());
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
}

TEST(ModelConfigTest, ParsesEosTokenIdAsList) {
  Json j = BaseConfig();
  j["eos_token_id"] = {2, 3, 4};
  ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseJson(j));
  EXPECT_THAT(c.eos_token_ids, ElementsAre(2, 3, 4));
}

TEST(ModelConfigTest, KeyValueHeadsDefaultToAttentionHeads) {
  Json j = BaseConfig();
  j.erase("num_key_value_heads");
  ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseJson(j));
  EXPECT_EQ(c.num_key_value_heads, 6);
}

TEST(ModelConfigTest, ExplicitHeadDimNeedNotMatchHiddenOverHeads) {
  Json j = BaseConfig();
  j["num_attention_heads"] = 5;
  j["num_key_value_heads"] = 5;
  j["head_dim"] = 64;
  ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseJson(j));
  EXPECT_EQ(c.head_dim, 64);
}

TEST(ModelConfigTest, RopeScalingNullAbsentOrDefaultIsNullopt) {
  for (Json scaling : {Json(nullptr), Json{{"rope_type", "default"}}}) {
    Json j = BaseConfig();
    j["rope_scaling"] = scaling;
    ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseJson(j));
    EXPECT_FALSE(c.rope_scaling.has_value()) << scaling.dump();
  }
}

TEST(ModelConfigTest, ParsesLlama3RopeScaling) {
  Json j = BaseConfig();
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 32.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseJson(j));
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_EQ(c.rope_scaling->rope_type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling->factor, 32.0);
  EXPECT_EQ(c.rope_scaling->original_max_position_embeddings, 8192);
}

// transformers 5 writes rope_parameters and dtype instead of rope_theta, rope_scaling and torch_dtype.
Json TransformersV5Config() {
  Json j = BaseConfig();
  j.erase("rope_theta");
  j.erase("torch_dtype");
  j["dtype"] = "float32";
  j["rope_parameters"] = {{"rope_theta", 100000.0},  {"rope_type", "llama3"},
                          {"factor", 8.0},           {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  return j;
}

TEST(ModelConfigTest, ReadsTransformers5RopeParametersAndDtype) {
  ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseJson(TransformersV5Config()));
  EXPECT_DOUBLE_EQ(c.rope_theta, 100000.0);
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_EQ(c.rope_scaling->rope_type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling->factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling->high_freq_factor, 4.0);
  EXPECT_EQ(c.torch_dtype, "float32");

  Json j = TransformersV5Config();
  j["rope_parameters"] = {{"rope_theta", 100000.0}, {"rope_type", "default"}};
  ASSERT_OK_AND_ASSIGN(c, ParseJson(j));
  EXPECT_DOUBLE_EQ(c.rope_theta, 100000.0);
  EXPECT_FALSE(c.rope_scaling.has_value());
}

TEST(ModelConfigTest, AcceptsBothRopeFormsWhenTheyAgree) {
  Json j = TransformersV5Config();
  j["rope_theta"] = 100000.0;
  j["torch_dtype"] = "float32";
  j["rope_scaling"] = j["rope_parameters"];
  j["rope_scaling"].erase("rope_theta");
  ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseJson(j));
  EXPECT_DOUBLE_EQ(c.rope_theta, 100000.0);
  EXPECT_TRUE(c.rope_scaling.has_value());
}

TEST(ModelConfigTest, RejectsContradictingRopeForms) {
  Json j = TransformersV5Config();
  j["rope_theta"] = 500000.0;
  ExpectInvalid(j, "rope_parameters.rope_theta=100000 contradicts rope_theta=500000");
  j = TransformersV5Config();
  j["rope_scaling"] = nullptr;
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 32.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  ExpectInvalid(j, "rope_parameters (llama3 (factor 8");
  ExpectInvalid(j, "contradicts rope_scaling (llama3 (factor 32");
  j = TransformersV5Config();
  j["torch_dtype"] = "bfloat16";
  ExpectInvalid(j, "dtype=float32 contradicts torch_dtype=bfloat16");
}

TEST(ModelConfigTest, RejectsMalformedRopeParameters) {
  Json j = TransformersV5Config();
  j["rope_parameters"] = 5;
  ExpectInvalid(j, "rope_parameters must be an object");
  j = TransformersV5Config();
  j["rope_parameters"]["rope_type"] = "yarn";
  ExpectInvalid(j, "rope_parameters.rope_type=\"yarn\" is not supported");
  j = TransformersV5Config();
  j["rope_parameters"].erase("factor");
  ExpectInvalid(j, "missing required field rope_parameters.factor");
  j = TransformersV5Config();
  j["rope_parameters"]["rope_theta"] = "big";
  ExpectInvalid(j, "rope_parameters.rope_theta");
  j = TransformersV5Config();
  j["dtype"] = 3;
  ExpectInvalid(j, "dtype");
}

TEST(ModelConfigTest, RejectsMissingRequiredFields) {
  for (const char* field :
       {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"}) {
    Json j = BaseConfig();
    j.erase(field);
    ExpectInvalid(j, std::string("missing required field ") + field);
  }
}

TEST(ModelConfigTest, RejectsWrongJsonTypes) {
  for (auto [field, value] : std::vector<std::pair<std::string, Json>>{{"hidden_size", "192"},
                                                                       {"hidden_size", 192.5},
                                                                       {"rms_norm_eps", "small"},
                                                                       {"tie_word_embeddings", 1},
                                                                       {"eos_token_id", "2"},
                                                                       {"eos_token_id", {1, "x"}},
                                                                       {"torch_dtype", 16},
                                                                       {"rope_scaling", 8}}) {
    Json j = BaseConfig();
    j[field] = value;
    ExpectInvalid(j, field);
  }
}

TEST(ModelConfigTest, RejectsNonPositiveSizes) {
  for (const char* field : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                            "num_key_value_heads", "vocab_size", "max_position_embeddings", "head_dim"}) {
    Json j = BaseConfig();
    j[field] = field == std::string("head_dim") ? 0 : -1;
    ExpectInvalid(j, std::string(field) + "=");
  }
}

TEST(ModelConfigTest, RejectsHeadsThatDoNotDivideHidden) {
  Json j = BaseConfig();
  j["num_attention_heads"] = 5;
  j["num_key_value_heads"] = 5;
  ExpectInvalid(j, "num_attention_heads=5 does not divide hidden_size=192");
}

TEST(ModelConfigTest, RejectsKeyValueHeadsThatDoNotDivideHeads) {
  Json j = BaseConfig();
  j["num_attention_heads"] = 8;
  j["hidden_size"] = 256;
  j["num_key_value_heads"] = 3;
  ExpectInvalid(j, "num_key_value_heads=3 does not divide num_attention_heads=8");
}

TEST(ModelConfigTest, RejectsUnsupportedRopeType) {
  Json j = BaseConfig();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  ExpectInvalid(j, "rope_scaling.rope_type=\"yarn\"");
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  ExpectInvalid(j, "rope_scaling.rope_type=\"linear\"");
}

TEST(ModelConfigTest, RejectsLlama3RopeScalingWithoutFactor) {
  Json j = BaseConfig();
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  ExpectInvalid(j, "missing required field rope_scaling.factor");
}

TEST(ModelConfigTest, RejectsUnknownArchitecture) {
  Json j = BaseConfig();
  j["architectures"] = {"MistralForCausalLM"};
  ExpectInvalid(j, "architectures=MistralForCausalLM");
  j = BaseConfig();
  j["hidden_act"] = "gelu";
  ExpectInvalid(j, "hidden_act=gelu");
}

TEST(ModelConfigTest, RejectsTokenIdsOutsideVocabulary) {
  Json j = BaseConfig();
  j["eos_token_id"] = {2, 1000};
  ExpectInvalid(j, "eos_token_id=1000 is outside the vocabulary [0, 1000)");
  j = BaseConfig();
  j["bos_token_id"] = -1;
  ExpectInvalid(j, "bos_token_id=-1");
}

TEST(ModelConfigTest, RejectsBadJsonWithPosition) {
  EXPECT_THAT(ModelConfig::Parse("{\"hidden_size\": 12,\n oops}", "config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("config.json: not valid JSON"), HasSubstr("line 2"))));
  EXPECT_THAT(ModelConfig::Parse("[]", "config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.json: not a JSON object")));
}

TEST(ModelConfigTest, LoadOfMissingFileIsNotFound) {
  ScopedTempDir dir;
  EXPECT_THAT(ModelConfig::Load(dir.File("config.json")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("config.json")));
}

TEST(ModelConfigTest, PresetsRoundTripThroughToJson) {
  for (const std::string& name : PresetNames()) {
    ASSERT_OK_AND_ASSIGN(ModelConfig preset, PresetConfig(name));
    ASSERT_OK_AND_ASSIGN(ModelConfig parsed, ModelConfig::Parse(preset.ToJson(), name));
    EXPECT_EQ(parsed.ToJson(), preset.ToJson()) << name;
    EXPECT_EQ(Json::parse(preset.ToJson())["model_type"], "llama");
  }
}

TEST(ModelConfigTest, PresetsHaveThePublishedParameterCounts) {
  const std::vector<std::pair<std::string, int64_t>> expected = {{"tiny", 33621120},
                                                                 {"small", 1235814400},
                                                                 {"llama3-8b", 8030261248},
                                                                 {"llama3-70b", 70553706496},
                                                                 {"llama3.1-405b", 405853388800}};
  for (const auto& [name, params] : expected) {
    ASSERT_OK_AND_ASSIGN(ModelConfig c, PresetConfig(name));
    EXPECT_EQ(c.NumParameters(), params) << name;
  }
}

TEST(ModelConfigTest, UnknownPresetIsNotFoundAndListsPresets) {
  EXPECT_THAT(PresetConfig("huge"),
              StatusIs(absl::StatusCode::kNotFound, AllOf(HasSubstr("huge"), HasSubstr("tiny, small"))));
}

TEST(GenerationConfigTest, MissingFileGivesEmptyDefaults) {
  ScopedTempDir dir;
  ASSERT_OK_AND_ASSIGN(GenerationConfig g, GenerationConfig::Load(dir.File("generation_config.json")));
  EXPECT_FALSE(g.temperature.has_value());
  EXPECT_TRUE(g.eos_token_ids.empty());
}

TEST(GenerationConfigTest, RoundTripsThroughToJson) {
  GenerationConfig g;
  g.temperature = 0.6f;
  g.top_p = 0.9f;
  g.top_k = 50;
  g.bos_token_id = 128000;
  g.eos_token_ids = {128001, 128008, 128009};
  const std::string text = g.ToJson();
  EXPECT_THAT(text, HasSubstr("\"temperature\": 0.6,"));
  ScopedTempDir dir;
  tessera::testing::WriteFile(dir.File("generation_config.json"), text);
  ASSERT_OK_AND_ASSIGN(GenerationConfig back, GenerationConfig::Load(dir.File("generation_config.json")));
  EXPECT_EQ(back.temperature, 0.6f);
  EXPECT_EQ(back.top_p, 0.9f);
  EXPECT_EQ(back.top_k, 50);
  EXPECT_EQ(back.bos_token_id, 128000);
  EXPECT_THAT(back.eos_token_ids, ElementsAre(128001, 128008, 128009));
}

TEST(GenerationConfigTest, RejectsWrongTypesNamingFileAndField) {
  EXPECT_THAT(GenerationConfig::Parse(R"({"temperature": "hot"})", "generation_config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("generation_config.json"), HasSubstr("temperature"))));
  EXPECT_THAT(GenerationConfig::Parse("{", "generation_config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("generation_config.json")));
}

}  // namespace
}  // namespace tessera
