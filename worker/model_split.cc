#include "worker/model_split.h"

#include <utility>

namespace tessera {

ShardedShape ShardedShapeOf(const ModelConfig& config) {
  return {.num_layers = config.num_hidden_layers,
          .num_heads = config.num_attention_heads,
          .num_kv_heads = config.num_key_value_heads,
          .intermediate_size = config.intermediate_size,
          .vocab_size = config.vocab_size};
}

absl::StatusOr<ParallelConfig> SplitModel(const ModelConfig& config, int tp, int pp,
                                          std::vector<int> pp_layers) {
  return ParallelConfig::Create(ShardedShapeOf(config), tp, pp, std::move(pp_layers));
}

}  // namespace tessera
