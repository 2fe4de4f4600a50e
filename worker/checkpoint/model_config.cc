#include "worker/checkpoint/model_config.h"

#include <charconv>
#include <filesystem>

#include "core/status_macros.h"
#include "core/str_cat.h"
#include "worker/checkpoint/json_fields.h"

namespace tessera {

namespace {

using json_internal::Json;
using json_internal::JsonFields;

absl::Status CheckPositive(const JsonFields& f, std::string_view field, int64_t value) {
  if (value <= 0) return f.Error(Cat(field, "=", value, " must be positive"));
  return absl::OkStatus();
}

// The llama3 frequency-scaling fields of `object` (rope_scaling, or transformers 5's rope_parameters), whose
// rope_type has been read as `type`; `name` is the object's key. nullopt for no scaling ("default").
absl::Status ParseScalingFields(const Json& object, std::string_view name, const std::string& type,
                                const JsonFields& f, std::optional<RopeScaling>& out) {
  out.reset();
  if (type.empty() || type == "default") return absl::OkStatus();
  if (type != "llama3") {
    return f.Error(Cat(name, ".rope_type=\"", type, "\" is not supported (only \"llama3\" or \"default\")"));
  }
  const std::string prefix = Cat(name, ".");
  JsonFields rf(object, f.source(), prefix);
  RopeScaling s;
  s.rope_type = type;
  RETURN_IF_ERROR(rf.Double("factor", s.factor, true));
  RETURN_IF_ERROR(rf.Double("low_freq_factor", s.low_freq_factor, true));
  RETURN_IF_ERROR(rf.Double("high_freq_factor", s.high_freq_factor, true));
  RETURN_IF_ERROR(rf.Int("original_max_position_embeddings", s.original_max_position_embeddings, true));
  if (!(s.factor > 0)) return f.Error(Cat(name, ".factor=", s.factor, " must be positive"));
  if (!(s.low_freq_factor > 0) || !(s.high_freq_factor > s.low_freq_factor)) {
    return f.Error(Cat(name, ".low_freq_factor=", s.low_freq_factor,
                       " must be positive and below high_freq_factor=", s.high_freq_factor));
  }
  if (s.original_max_position_embeddings <= 0) {
    return f.Error(Cat(name, ".original_max_position_embeddings=", s.original_max_position_embeddings,
                       " must be positive"));
  }
  out = s;
  return absl::OkStatus();
}

bool SameScaling(const std::optional<RopeScaling>& a, const std::optional<RopeScaling>& b) {
  if (a.has_value() != b.has_value()) return false;
  return !a || (a->factor == b->factor && a->low_freq_factor == b->low_freq_factor &&
                a->high_freq_factor == b->high_freq_factor &&
                a->original_max_position_embeddings == b->original_max_position_embeddings);
}

std::string ScalingText(const std::optional<RopeScaling>& s) {
  if (!s) return "none";
  return Cat(s->rope_type, " (factor ", s->factor, ", low_freq_factor ", s->low_freq_factor,
             ", high_freq_factor ", s->high_freq_factor, ", original_max_position_embeddings ",
             s->original_max_position_embeddings, ")");
}

// RoPE from either form: transformers <= 4 writes top-level rope_theta and rope_scaling; transformers 5
// writes rope_parameters {rope_theta, rope_type, factor, ...}. Both may be present; where they disagree the
// config is ambiguous and refused, naming both keys.
absl::Status ParseRope(const Json& j, const JsonFields& f, ModelConfig& c) {
  const bool has_theta = f.Has("rope_theta");
  RETURN_IF_ERROR(f.Double("rope_theta", c.rope_theta, false));
  std::optional<RopeScaling> scaling;
  auto it = j.find("rope_scaling");
  const bool has_scaling = it != j.end() && !it->is_null();
  if (has_scaling) {
    if (!it->is_object()) return f.Error(Cat("rope_scaling must be an object or null, got ", it->dump()));
    JsonFields rf(*it, f.source(), "rope_scaling.");
    std::string type;
    // Older configs spell rope_type as "type".
    RETURN_IF_ERROR(rf.String(rf.Has("rope_type") ? "rope_type" : "type", type, false));
    RETURN_IF_ERROR(ParseScalingFields(*it, "rope_scaling", type, f, scaling));
  }
  c.rope_scaling = scaling;
  auto params = j.find("rope_parameters");
  if (params == j.end() || params->is_null()) return absl::OkStatus();
  if (!params->is_object()) return f.Error(Cat("rope_parameters must be an object, got ", params->dump()));
  JsonFields pf(*params, f.source(), "rope_parameters.");
  if (pf.Has("rope_theta")) {
    double theta = 0;
    RETURN_IF_ERROR(pf.Double("rope_theta", theta, true));
    if (has_theta && theta != c.rope_theta) {
      return f.Error(Cat("rope_parameters.rope_theta=", theta, " contradicts rope_theta=", c.rope_theta));
    }
    c.rope_theta = theta;
  }
  std::string type;
  RETURN_IF_ERROR(pf.String("rope_type", type, false));
  std::optional<RopeScaling> from_params;
  RETURN_IF_ERROR(ParseScalingFields(*params, "rope_parameters", type, f, from_params));
  if (has_scaling && !SameScaling(scaling, from_params)) {
    return f.Error(Cat("rope_parameters (", ScalingText(from_params), ") contradicts rope_scaling (",
                       ScalingText(scaling), ")"));
  }
  c.rope_scaling = from_params;
  return absl::OkStatus();
}

// torch_dtype (transformers <= 4) or dtype (transformers 5); both present and different is an error.
absl::Status ParseDtype(const JsonFields& f, std::string& out) {
  std::string torch_dtype, dtype;
  RETURN_IF_ERROR(f.String("torch_dtype", torch_dtype, false));
  RETURN_IF_ERROR(f.String("dtype", dtype, false));
  if (!torch_dtype.empty() && !dtype.empty() && torch_dtype != dtype) {
    return f.Error(Cat("dtype=", dtype, " contradicts torch_dtype=", torch_dtype));
  }
  if (!dtype.empty()) out = dtype;
  if (!torch_dtype.empty()) out = torch_dtype;
  return absl::OkStatus();
}

// quantization_config: only import-gguf's kept blocks (tessera_gguf_blocks), whose tensors say their own
// types; any other method (awq, gptq, fp8, bitsandbytes, ...) stores weights Tessera would misread.
absl::Status CheckQuantization(const Json& object, const JsonFields& f) {
  auto it = object.find("quantization_config");
  if (it == object.end() || it->is_null()) return absl::OkStatus();
  std::string method = "(none)";
  if (it->is_object() && it->contains("quant_method") && (*it)["quant_method"].is_string()) {
    method = (*it)["quant_method"].get<std::string>();
  }
  if (method == "tessera_gguf_blocks") return absl::OkStatus();
  return f.Error(
      Cat("quantization_config.quant_method=", method,
          " is not supported (Tessera reads BF16 / F16 / F32 weights, and Q8_0 / Q4_0 / Q4_1 blocks "
          "kept by import-gguf --keep-quantized)"));
}

absl::Status ParseArchitecture(const Json& object, const JsonFields& f, std::string& out) {
  auto it = object.find("architectures");
  if (it != object.end() && !it->is_null()) {
    if (!it->is_array() || it->empty() || !(*it)[0].is_string()) {
      return f.Error(Cat("architectures must be a non-empty list of strings, got ", it->dump()));
    }
    out = (*it)[0].get<std::string>();
  }
  if (out != "LlamaForCausalLM") {
    return f.Error(Cat("architectures=", out, " is not supported (only LlamaForCausalLM)"));
  }
  std::string model_type = "llama";
  RETURN_IF_ERROR(f.String("model_type", model_type, false));
  if (model_type != "llama") return f.Error(Cat("model_type=", model_type, " is not supported (only llama)"));
  std::string hidden_act = "silu";
  RETURN_IF_ERROR(f.String("hidden_act", hidden_act, false));
  if (hidden_act != "silu") return f.Error(Cat("hidden_act=", hidden_act, " is not supported (only silu)"));
  for (const char* bias : {"attention_bias", "mlp_bias"}) {
    bool value = false;
    RETURN_IF_ERROR(f.Bool(bias, value));
    if (value) return f.Error(Cat(bias, "=true is not supported"));
  }
  return absl::OkStatus();
}

absl::Status CheckTokenId(const JsonFields& f, std::string_view field, int id, int vocab_size) {
  if (id < 0 || id >= vocab_size) {
    return f.Error(Cat(field, "=", id, " is outside the vocabulary [0, ", vocab_size, ")"));
  }
  return absl::OkStatus();
}

// A float as the shortest decimal that reads back as the same float, then as a double ("0.6", not
// 0.600000024).
double ShortestDouble(float f) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), f);
  double d = f;
  if (ec == std::errc()) std::from_chars(buf, end, d);
  return d;
}

Json TokenIdsJson(const std::vector<int>& ids) { return ids.size() == 1 ? Json(ids[0]) : Json(ids); }

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::Parse(std::string_view json_text, std::string_view source) {
  ASSIGN_OR_RETURN(Json j, json_internal::ParseJson(json_text, source));
  if (!j.is_object()) return absl::InvalidArgumentError(Cat(source, ": not a JSON object"));
  JsonFields f(j, source);
  ModelConfig c;
  c.rms_norm_eps = 1e-6;  // LlamaConfig's default when the field is absent
  RETURN_IF_ERROR(ParseArchitecture(j, f, c.architecture));
  RETURN_IF_ERROR(f.Int("hidden_size", c.hidden_size, true));
  RETURN_IF_ERROR(f.Int("intermediate_size", c.intermediate_size, true));
  RETURN_IF_ERROR(f.Int("num_hidden_layers", c.num_hidden_layers, true));
  RETURN_IF_ERROR(f.Int("num_attention_heads", c.num_attention_heads, true));
  RETURN_IF_ERROR(f.Int("vocab_size", c.vocab_size, true));
  c.num_key_value_heads = c.num_attention_heads;
  RETURN_IF_ERROR(f.Int("num_key_value_heads", c.num_key_value_heads, false));
  RETURN_IF_ERROR(f.Int("head_dim", c.head_dim, false));
  RETURN_IF_ERROR(f.Int("max_position_embeddings", c.max_position_embeddings, false));
  RETURN_IF_ERROR(f.Double("rms_norm_eps", c.rms_norm_eps, false));
  RETURN_IF_ERROR(f.Bool("tie_word_embeddings", c.tie_word_embeddings));
  RETURN_IF_ERROR(f.OptionalInt("bos_token_id", c.bos_token_id));
  RETURN_IF_ERROR(f.IntOrIntList("eos_token_id", c.eos_token_ids));
  RETURN_IF_ERROR(ParseDtype(f, c.torch_dtype));
  RETURN_IF_ERROR(ParseRope(j, f, c));
  RETURN_IF_ERROR(CheckQuantization(j, f));

  for (auto [field, value] : {std::pair<const char*, int>{"hidden_size", c.hidden_size},
                              {"intermediate_size", c.intermediate_size},
                              {"num_hidden_layers", c.num_hidden_layers},
                              {"num_attention_heads", c.num_attention_heads},
                              {"num_key_value_heads", c.num_key_value_heads},
                              {"max_position_embeddings", c.max_position_embeddings},
                              {"vocab_size", c.vocab_size}}) {
    RETURN_IF_ERROR(CheckPositive(f, field, value));
  }
  if (f.Has("head_dim")) {
    RETURN_IF_ERROR(CheckPositive(f, "head_dim", c.head_dim));
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return f.Error(
          Cat("num_attention_heads=", c.num_attention_heads, " does not divide hidden_size=", c.hidden_size));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return f.Error(Cat("num_key_value_heads=", c.num_key_value_heads,
                       " does not divide num_attention_heads=", c.num_attention_heads));
  }
  if (!(c.rms_norm_eps > 0)) return f.Error(Cat("rms_norm_eps=", c.rms_norm_eps, " must be positive"));
  if (!(c.rope_theta > 0)) return f.Error(Cat("rope_theta=", c.rope_theta, " must be positive"));
  if (c.bos_token_id) RETURN_IF_ERROR(CheckTokenId(f, "bos_token_id", *c.bos_token_id, c.vocab_size));
  for (int id : c.eos_token_ids) RETURN_IF_ERROR(CheckTokenId(f, "eos_token_id", id, c.vocab_size));
  return c;
}

absl::StatusOr<ModelConfig> ModelConfig::Load(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, json_internal::ReadTextFile(path));
  return Parse(text, path);
}

std::string ModelConfig::ToJson() const {
  Json j = Json::object();
  j["architectures"] = {architecture};
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["bos_token_id"] = bos_token_id ? Json(*bos_token_id) : Json(nullptr);
  j["eos_token_id"] = eos_token_ids.empty() ? Json(nullptr) : TokenIdsJson(eos_token_ids);
  j["head_dim"] = head_dim;
  j["hidden_act"] = "silu";
  j["hidden_size"] = hidden_size;
  j["initializer_range"] = 0.02;
  j["intermediate_size"] = intermediate_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["mlp_bias"] = false;
  j["model_type"] = "llama";
  j["num_attention_heads"] = num_attention_heads;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_key_value_heads"] = num_key_value_heads;
  j["pretraining_tp"] = 1;
  j["rms_norm_eps"] = rms_norm_eps;
  if (rope_scaling) {
    j["rope_scaling"] = {{"factor", rope_scaling->factor},
                         {"high_freq_factor", rope_scaling->high_freq_factor},
                         {"low_freq_factor", rope_scaling->low_freq_factor},
                         {"original_max_position_embeddings", rope_scaling->original_max_position_embeddings},
                         {"rope_type", rope_scaling->rope_type}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["rope_theta"] = rope_theta;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["torch_dtype"] = torch_dtype;
  j["transformers_version"] = "4.45.0";
  j["use_cache"] = true;
  j["vocab_size"] = vocab_size;
  return j.dump(2) + "\n";
}

int64_t ModelConfig::NumParameters() const {
  const int64_t h = hidden_size, q = int64_t{num_attention_heads} * head_dim,
                kv = int64_t{num_key_value_heads} * head_dim, inter = intermediate_size, v = vocab_size;
  const int64_t per_layer = 2 * h + q * h + 2 * kv * h + h * q + 3 * h * inter;
  return v * h + num_hidden_layers * per_layer + h + (tie_word_embeddings ? 0 : v * h);
}

absl::StatusOr<GenerationConfig> GenerationConfig::Parse(std::string_view json_text,
                                                         std::string_view source) {
  ASSIGN_OR_RETURN(Json j, json_internal::ParseJson(json_text, source));
  if (!j.is_object()) return absl::InvalidArgumentError(Cat(source, ": not a JSON object"));
  JsonFields f(j, source);
  GenerationConfig g;
  RETURN_IF_ERROR(f.OptionalFloat("temperature", g.temperature));
  RETURN_IF_ERROR(f.OptionalFloat("top_p", g.top_p));
  RETURN_IF_ERROR(f.OptionalInt("top_k", g.top_k));
  RETURN_IF_ERROR(f.OptionalInt("bos_token_id", g.bos_token_id));
  RETURN_IF_ERROR(f.IntOrIntList("eos_token_id", g.eos_token_ids));
  return g;
}

absl::StatusOr<GenerationConfig> GenerationConfig::Load(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return GenerationConfig();
  ASSIGN_OR_RETURN(std::string text, json_internal::ReadTextFile(path));
  return Parse(text, path);
}

std::string GenerationConfig::ToJson() const {
  Json j = Json::object();
  if (bos_token_id) j["bos_token_id"] = *bos_token_id;
  if (temperature || top_p) j["do_sample"] = true;
  if (!eos_token_ids.empty()) j["eos_token_id"] = TokenIdsJson(eos_token_ids);
  if (temperature) j["temperature"] = ShortestDouble(*temperature);
  if (top_k) j["top_k"] = *top_k;
  if (top_p) j["top_p"] = ShortestDouble(*top_p);
  j["transformers_version"] = "4.45.0";
  return j.dump(2) + "\n";
}

}  // namespace tessera
