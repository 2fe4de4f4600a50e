// ModelConfig and GenerationConfig: the Hugging Face config.json and generation_config.json of a Llama model,
// parsed and validated (every error names the file and the field), and written back in HF's layout.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera {

// rope_scaling with rope_type "llama3" (Llama 3.1+).
struct RopeScaling {
  std::string rope_type = "llama3";
  double factor = 8;
  double low_freq_factor = 1;
  double high_freq_factor = 4;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture = "LlamaForCausalLM";
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;  // num_attention_heads when absent
  int head_dim = 0;             // hidden_size / num_attention_heads when absent
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000;
  std::optional<RopeScaling> rope_scaling;  // null, absent or rope_type "default" -> nullopt
  int max_position_embeddings = 2048;
  int vocab_size = 0;
  bool tie_word_embeddings = false;
  std::optional<int> bos_token_id;
  std::vector<int> eos_token_ids;  // eos_token_id is an int or a list
  std::string torch_dtype = "bfloat16";

  // Parses and validates config.json text. `source` (the file name) starts every error message. Required:
  // hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size; absent optional
  // fields take Hugging Face LlamaConfig's defaults (rms_norm_eps 1e-6, rope_theta 10000,
  // max_position_embeddings 2048). RoPE and dtype are read in both forms: transformers <= 4's top-level
  // rope_theta / rope_scaling / torch_dtype and transformers 5's rope_parameters / dtype (values that
  // contradict each other are an error naming both keys). Errors: INVALID_ARGUMENT naming the field (bad
  // JSON, wrong types, non-positive sizes, head counts that do not divide, unsupported architecture /
  // rope_type / hidden_act / biases, token ids outside the vocabulary).
  [[nodiscard]] static absl::StatusOr<ModelConfig> Parse(std::string_view json_text, std::string_view source);
  // Reads and parses `path`. NOT_FOUND when the file does not exist.
  [[nodiscard]] static absl::StatusOr<ModelConfig> Load(const std::string& path);

  // A Hugging Face config.json (model_type "llama", architectures [...], every field above). Parse(ToJson())
  // gives back an equal config.
  std::string ToJson() const;

  // Parameter count (embedding, layers, final norm, lm_head unless tied).
  int64_t NumParameters() const;
};

// generation_config.json: default sampling parameters and special tokens.
struct GenerationConfig {
  std::optional<float> temperature;
  std::optional<float> top_p;
  std::optional<int> top_k;
  std::optional<int> bos_token_id;
  std::vector<int> eos_token_ids;

  // Reads `path`. A missing file gives empty defaults; bad JSON or wrong field types are INVALID_ARGUMENT
  // naming the file and field.
  [[nodiscard]] static absl::StatusOr<GenerationConfig> Load(const std::string& path);
  [[nodiscard]] static absl::StatusOr<GenerationConfig> Parse(std::string_view json_text,
                                                              std::string_view source);
  // HF layout; unset fields are omitted, do_sample is true when temperature or top_p is set.
  std::string ToJson() const;
};

}  // namespace tessera
