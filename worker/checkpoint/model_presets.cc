#include "worker/checkpoint/model_presets.h"

#include "absl/strings/str_join.h"
#include "core/str_cat.h"

namespace tessera {

namespace {

// Fields shared by every Llama 3.x model: vocabulary, special tokens, RoPE base and 128K context.
ModelConfig Llama3Base() {
  ModelConfig c;
  c.vocab_size = 128256;
  c.rope_theta = 500000;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 131072;
  c.rope_scaling = RopeScaling{"llama3", 8, 1, 4, 8192};
  c.bos_token_id = 128000;
  c.eos_token_ids = {128001, 128008, 128009};
  c.torch_dtype = "bfloat16";
  return c;
}

ModelConfig Shape(int hidden, int layers, int heads, int kv_heads, int intermediate) {
  ModelConfig c = Llama3Base();
  c.hidden_size = hidden;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.intermediate_size = intermediate;
  return c;
}

}  // namespace

std::vector<std::string> PresetNames() {
  return {"tiny", "small", "llama3-8b", "llama3-70b", "llama3.1-405b"};
}

absl::StatusOr<ModelConfig> PresetConfig(std::string_view name) {
  if (name == "tiny") {
    ModelConfig c = Shape(128, 4, 4, 2, 384);
    c.head_dim = 32;
    return c;
  }
  if (name == "small") {  // meta-llama/Llama-3.2-1B-Instruct
    ModelConfig c = Shape(2048, 16, 32, 8, 8192);
    c.tie_word_embeddings = true;
    c.rope_scaling->factor = 32;
    return c;
  }
  if (name == "llama3-8b") return Shape(4096, 32, 32, 8, 14336);         // meta-llama/Llama-3.1-8B-Instruct
  if (name == "llama3-70b") return Shape(8192, 80, 64, 8, 28672);        // meta-llama/Llama-3.3-70B-Instruct
  if (name == "llama3.1-405b") return Shape(16384, 126, 128, 8, 53248);  // meta-llama/Llama-3.1-405B-Instruct
  return absl::NotFoundError(
      Cat("unknown model preset \"", name, "\"; presets are: ", absl::StrJoin(PresetNames(), ", ")));
}

}  // namespace tessera
