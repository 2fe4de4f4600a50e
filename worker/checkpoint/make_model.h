// make-model: writes a random-weight Llama checkpoint in exactly the Hugging Face layout (config.json,
// generation_config.json, BF16 shards model-0000i-of-0000n.safetensors + model.safetensors.index.json), so
// tests and benchmarks get realistic models on machines with no network.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace tessera {

struct MakeModelOptions {
  std::string preset;           // a PresetNames() entry, or
  std::string config_path;      // a config.json to use instead (exactly one of the two)
  std::string out_dir;          // created if needed; existing files of the same names are overwritten
  uint64_t seed = 0;            // same seed, same weights (independent of the thread count)
  std::string tokenizer_dir;    // when set, tokenizer.json and tokenizer_config.json are copied from here
  bool config_only = false;     // write only config.json and generation_config.json
  int64_t max_shard_bytes = 0;  // 0 = automatic: min(5 GB, half the model), so there are at least two shards
};

// Writes the model directory. Weights: normal(0, 0.02) for linear and embedding weights, 1 + normal(0, 0.02)
// for norm weights, each tensor seeded from hash(seed, name), generated and written chunk by chunk (memory
// use stays small whatever the model size). Errors: INVALID_ARGUMENT for bad options (naming the option),
// NOT_FOUND for an unknown preset or missing config / tokenizer file, errno-derived codes naming the file on
// I/O failure.
[[nodiscard]] absl::Status MakeModel(const MakeModelOptions& options);

}  // namespace tessera
