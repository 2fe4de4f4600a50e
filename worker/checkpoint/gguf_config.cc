// ModelConfigFromGguf and the llama3 rope_scaling fit.
#include "worker/checkpoint/gguf_config.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>

#include "core/status_macros.h"
#include "core/str_cat.h"

namespace tessera {
namespace {

constexpr int kDefaultOriginalContext = 8192;  // llama.cpp's converter assumes it for Llama 3.1
constexpr double kFactorTolerance = 1e-3;      // relative, between stored and recomputed rope factors

absl::Status Invalid(const GgufFile& f, std::string_view what) {
  return absl::InvalidArgumentError(Cat(f.path(), ": ", what));
}

// An integer key in [1, INT32_MAX].
absl::StatusOr<int> PositiveInt(const GgufFile& f, std::string_view key) {
  ASSIGN_OR_RETURN(const int64_t v, f.Int(key));
  if (v < 1 || v > std::numeric_limits<int32_t>::max()) {
    return Invalid(f, Cat("metadata key '", key, "' = ", v, " must be a positive 32-bit integer"));
  }
  return static_cast<int>(v);
}

// A token id key, checked against the token list.
absl::StatusOr<int> TokenId(const GgufFile& f, std::string_view key, int64_t num_tokens) {
  ASSIGN_OR_RETURN(const int64_t v, f.Int(key));
  if (v < 0 || v >= num_tokens) {
    return Invalid(f, Cat("metadata key '", key, "' = ", v, " is outside the vocabulary of ", num_tokens));
  }
  return static_cast<int>(v);
}

// v rounded to the fewest significant digits (up to 6) that stay within 1e-4 relative: the fit returns
// 0.99999994 for a low_freq_factor of 1.
double Snap(double v) {
  for (int digits = 1; digits <= 6; ++digits) {
    const double scale = std::pow(10.0, digits - 1 - std::floor(std::log10(std::fabs(v))));
    const double r = std::round(v * scale) / scale;
    if (std::fabs(r - v) <= 1e-4 * std::fabs(v)) return r;
  }
  return v;
}

absl::Status SetHeadDim(const GgufFile& f, ModelConfig& c) {
  const bool has_key = f.Has("llama.attention.key_length"), has_rope = f.Has("llama.rope.dimension_count");
  if (has_key) {
    ASSIGN_OR_RETURN(c.head_dim, PositiveInt(f, "llama.attention.key_length"));
  } else if (has_rope) {
    ASSIGN_OR_RETURN(c.head_dim, PositiveInt(f, "llama.rope.dimension_count"));
  } else {
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (has_key && has_rope) {
    ASSIGN_OR_RETURN(const int rope_dims, PositiveInt(f, "llama.rope.dimension_count"));
    if (rope_dims != c.head_dim) {
      return Invalid(f, Cat("llama.rope.dimension_count = ", rope_dims,
                            " differs from llama.attention.key_length = ", c.head_dim,
                            " (partial rotary embeddings are not supported)"));
    }
  }
  if (f.Has("llama.attention.value_length")) {
    ASSIGN_OR_RETURN(const int v, PositiveInt(f, "llama.attention.value_length"));
    if (v != c.head_dim) {
      return Invalid(f, Cat("llama.attention.value_length = ", v, " differs from the head dim ", c.head_dim));
    }
  }
  if (c.head_dim % 2 != 0) return Invalid(f, Cat("the head dim ", c.head_dim, " is odd (RoPE needs pairs)"));
  return absl::OkStatus();
}

// rope_scaling: none, or llama3 recovered from rope_freqs.weight.
absl::Status SetRopeScaling(const GgufFile& f, ModelConfig& c) {
  if (f.Has("llama.rope.scaling.type")) {
    ASSIGN_OR_RETURN(std::string_view type, f.String("llama.rope.scaling.type"));
    if (type != "none") {
      return Invalid(f, Cat("metadata key 'llama.rope.scaling.type' = '", type,
                            "' is not supported (only 'none', or llama3 factors in rope_freqs.weight)"));
    }
  }
  if (f.Has("llama.rope.scale_linear")) {
    ASSIGN_OR_RETURN(const double scale, f.Float("llama.rope.scale_linear"));
    if (scale != 1.0) {
      return Invalid(f,
                     Cat("metadata key 'llama.rope.scale_linear' = ", scale, " is not supported (only 1)"));
    }
  }
  const GgufTensorInfo* freqs = f.FindTensor("rope_freqs.weight");
  if (freqs == nullptr) return absl::OkStatus();
  if (freqs->dims.size() != 1 || freqs->dims[0] != c.head_dim / 2) {
    return Invalid(f, Cat("tensor 'rope_freqs.weight' has ", freqs->num_elements, " values in ",
                          freqs->dims.size(), " dims; head dim ", c.head_dim, " needs ", c.head_dim / 2));
  }
  std::vector<float> factors(static_cast<size_t>(freqs->num_elements));
  DequantizeRow(freqs->type, f.TensorData(*freqs).data(), freqs->num_elements, factors.data());
  int original = kDefaultOriginalContext;
  if (f.Has("llama.rope.scaling.original_context_length")) {
    ASSIGN_OR_RETURN(original, PositiveInt(f, "llama.rope.scaling.original_context_length"));
  }
  ASSIGN_OR_RETURN(c.rope_scaling, FitLlama3RopeScaling(factors, c.rope_theta, c.head_dim, original,
                                                        Cat(f.path(), ": tensor 'rope_freqs.weight'")));
  return absl::OkStatus();
}

absl::Status SetTokens(const GgufFile& f, ModelConfig& c) {
  int64_t num_tokens = 0;
  if (const GgufValue* tokens = f.Find("tokenizer.ggml.tokens")) {
    num_tokens = static_cast<int64_t>(tokens->size);
  }
  if (f.Has("llama.vocab_size")) {
    ASSIGN_OR_RETURN(c.vocab_size, PositiveInt(f, "llama.vocab_size"));
  } else if (num_tokens > 0 && num_tokens <= std::numeric_limits<int32_t>::max()) {
    c.vocab_size = static_cast<int>(num_tokens);
  } else {
    return absl::NotFoundError(
        Cat(f.path(), ": metadata keys 'llama.vocab_size' and 'tokenizer.ggml.tokens' are both missing"));
  }
  const int64_t limit = std::max<int64_t>(num_tokens, c.vocab_size);
  if (f.Has("tokenizer.ggml.bos_token_id")) {
    ASSIGN_OR_RETURN(c.bos_token_id, TokenId(f, "tokenizer.ggml.bos_token_id", limit));
  }
  for (const char* key :
       {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    if (!f.Has(key)) continue;
    ASSIGN_OR_RETURN(const int id, TokenId(f, key, limit));
    if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end()) {
      c.eos_token_ids.push_back(id);
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<double> Llama3RopeFactors(const RopeScaling& s, double rope_theta, int head_dim) {
  const double low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const double high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
  std::vector<double> out;
  for (int i = 0; i < head_dim / 2; ++i) {
    const double freq = 1.0 / std::pow(rope_theta, 2.0 * i / head_dim);
    const double wavelen = 2 * std::numbers::pi / freq;
    if (wavelen < high_wavelen) {
      out.push_back(1.0);
    } else if (wavelen > low_wavelen) {
      out.push_back(s.factor);
    } else {
      const double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                            (s.high_freq_factor - s.low_freq_factor);
      out.push_back(1.0 / ((1 - smooth) / s.factor + smooth));
    }
  }
  return out;
}

absl::StatusOr<std::optional<RopeScaling>> FitLlama3RopeScaling(const std::vector<float>& factors,
                                                                double rope_theta, int head_dim,
                                                                int original_max_position_embeddings,
                                                                std::string_view what) {
  for (size_t i = 0; i < factors.size(); ++i) {
    if (!std::isfinite(factors[i]) || factors[i] <= 0) {
      return absl::InvalidArgumentError(
          Cat(what, ": factor ", i, " = ", factors[i], " is not finite and positive"));
    }
  }
  RopeScaling s;
  s.original_max_position_embeddings = original_max_position_embeddings;
  s.factor = Snap(*std::max_element(factors.begin(), factors.end()));
  if (std::fabs(s.factor - 1) <= kFactorTolerance && std::all_of(factors.begin(), factors.end(), [](float v) {
        return std::fabs(v - 1) <= kFactorTolerance;
      })) {
    return std::nullopt;
  }
  // Between the two plateaus, 1 / f = (1 - smooth) / factor + smooth with smooth = (x - low) / (high - low)
  // and x = original_max_position_embeddings / wavelen: smooth is linear in x, so fit smooth = a x + b.
  double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < factors.size(); ++i) {
    const double fi = factors[i];
    if (fi <= 1 + 1e-5 || fi >= s.factor * (1 - 1e-5)) continue;
    const double freq = 1.0 / std::pow(rope_theta, 2.0 * static_cast<double>(i) / head_dim);
    const double x = original_max_position_embeddings * freq / (2 * std::numbers::pi);
    const double smooth = (1 / fi - 1 / s.factor) / (1 - 1 / s.factor);
    n += 1, sx += x, sy += smooth, sxx += x * x, sxy += x * smooth;
  }
  const double denom = n * sxx - sx * sx;
  if (n >= 2 && denom > 0) {
    const double a = (n * sxy - sx * sy) / denom, b = (sy - a * sx) / n;
    if (!(a > 0))
      return absl::InvalidArgumentError(Cat(what, ": the factors do not rise with the wavelength"));
    s.low_freq_factor = Snap(-b / a);
    s.high_freq_factor = Snap(-b / a + 1 / a);
  }  // else: fewer than two factors between the plateaus; try Llama 3.1's published 1 and 4 (the defaults)
  const std::vector<double> recomputed = Llama3RopeFactors(s, rope_theta, head_dim);
  for (size_t i = 0; i < factors.size(); ++i) {
    if (std::fabs(recomputed[i] - factors[i]) > kFactorTolerance * std::fabs(factors[i])) {
      return absl::InvalidArgumentError(
          Cat(what, ": factor ", i, " = ", factors[i], " but llama3 scaling with factor ", s.factor,
              ", low_freq_factor ", s.low_freq_factor, ", high_freq_factor ", s.high_freq_factor,
              ", original_max_position_embeddings ", original_max_position_embeddings, " gives ",
              recomputed[i], ": these are not llama3 frequency factors"));
    }
  }
  return s;
}

absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& f, std::string_view torch_dtype) {
  ASSIGN_OR_RETURN(std::string_view arch, f.String("general.architecture"));
  if (arch != "llama") {
    return Invalid(f, Cat("general.architecture is '", arch, "'; import-gguf reads only 'llama'"));
  }
  ModelConfig c;
  ASSIGN_OR_RETURN(c.num_hidden_layers, PositiveInt(f, "llama.block_count"));
  ASSIGN_OR_RETURN(c.max_position_embeddings, PositiveInt(f, "llama.context_length"));
  ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(f, "llama.embedding_length"));
  ASSIGN_OR_RETURN(c.intermediate_size, PositiveInt(f, "llama.feed_forward_length"));
  ASSIGN_OR_RETURN(c.num_attention_heads, PositiveInt(f, "llama.attention.head_count"));
  c.num_key_value_heads = c.num_attention_heads;
  if (f.Has("llama.attention.head_count_kv")) {
    ASSIGN_OR_RETURN(c.num_key_value_heads, PositiveInt(f, "llama.attention.head_count_kv"));
  }
  ASSIGN_OR_RETURN(c.rms_norm_eps, f.Float("llama.attention.layer_norm_rms_epsilon"));
  c.rope_theta = 10000;
  if (f.Has("llama.rope.freq_base")) {
    ASSIGN_OR_RETURN(c.rope_theta, f.Float("llama.rope.freq_base"));
  }
  if (!(c.rms_norm_eps > 0) || !(c.rope_theta > 0)) {
    return Invalid(f, Cat("layer_norm_rms_epsilon = ", c.rms_norm_eps, " and rope.freq_base = ", c.rope_theta,
                          " must be positive"));
  }
  RETURN_IF_ERROR(SetHeadDim(f, c));
  RETURN_IF_ERROR(SetRopeScaling(f, c));
  RETURN_IF_ERROR(SetTokens(f, c));
  c.tie_word_embeddings = f.FindTensor("output.weight") == nullptr;
  c.torch_dtype = std::string(torch_dtype);
  return ModelConfig::Parse(c.ToJson(), Cat(f.path(), " (as config.json)"));
}

}  // namespace tessera
