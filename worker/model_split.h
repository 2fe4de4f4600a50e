// How a model splits over tp x pp ranks: the one place that turns a ModelConfig into the dimensions that
// sharding depends on. ParallelConfig then gives each rank its layers, heads, MLP columns and vocabulary
// rows.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "parallel/parallel_config.h"
#include "worker/checkpoint/model_config.h"

namespace tessera {

// config.json's layers, heads, KV heads, MLP width and vocabulary.
ShardedShape ShardedShapeOf(const ModelConfig& config);

// The model split over tp x pp ranks (pp_layers: layers per stage, empty = even). Errors: INVALID_ARGUMENT
// naming the numbers (ParallelConfig::Create), e.g. "num_attention_heads=9 is not divisible by tp=2".
[[nodiscard]] absl::StatusOr<ParallelConfig> SplitModel(const ModelConfig& config, int tp, int pp,
                                                        std::vector<int> pp_layers = {});

}  // namespace tessera
