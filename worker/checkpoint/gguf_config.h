// The Hugging Face config of a llama GGUF file: every ModelConfig field read from the llama.* and
// tokenizer.ggml.* metadata, and Llama 3.1's rope_scaling recovered from the rope_freqs.weight factors
// llama.cpp's converter writes in its place.
#pragma once

#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/checkpoint/gguf_file.h"
#include "worker/checkpoint/model_config.h"

namespace tessera {

// The LlamaForCausalLM config of `file`, validated as config.json would be (ModelConfig::Parse of its
// ToJson), with torch_dtype `torch_dtype`. Fields: llama.block_count, context_length, embedding_length,
// feed_forward_length, attention.head_count, attention.head_count_kv (default head_count),
// attention.layer_norm_rms_epsilon, rope.freq_base (default 10000); head_dim from attention.key_length or
// rope.dimension_count (else embedding_length / head_count); vocab_size from llama.vocab_size or the length
// of tokenizer.ggml.tokens; tie_word_embeddings when there is no output.weight tensor; bos from
// tokenizer.ggml.bos_token_id; eos from eos_token_id, then eot_token_id and eom_token_id when present and
// different (llama.cpp stops generation at all three). Errors name the file and the key or tensor:
// NOT_FOUND for missing metadata; INVALID_ARGUMENT for general.architecture other than "llama", values of the
// wrong type or range, partial rotary dims, rope.scaling.type other than "none", rope_freqs.weight factors
// that are not llama3's, or a config that ModelConfig refuses.
[[nodiscard]] absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& file,
                                                              std::string_view torch_dtype);

// The llama3 rope_scaling whose frequency factors (llama.cpp's rope_freqs: one per rotary pair i, for the
// frequency theta^(-2i / head_dim)) are `factors`, given original_max_position_embeddings; nullopt when every
// factor is 1. factor is the largest factor; low_freq_factor and high_freq_factor are fitted (least squares)
// to the factors between 1 and factor, then every factor is recomputed from the fitted values. `what` names
// the tensor in messages. INVALID_ARGUMENT when a factor is not finite and positive, the factors cannot be
// fitted, or a recomputed factor differs from the stored one by more than 1e-3 relative.
[[nodiscard]] absl::StatusOr<std::optional<RopeScaling>> FitLlama3RopeScaling(
    const std::vector<float>& factors, double rope_theta, int head_dim, int original_max_position_embeddings,
    std::string_view what);

// The factors llama.cpp's converter writes for `scaling` (its formula, evaluated in double).
std::vector<double> Llama3RopeFactors(const RopeScaling& scaling, double rope_theta, int head_dim);

}  // namespace tessera
