// ServedModel: what the coordinator knows of the model it serves (filled by the tools layer from config.json
// and generation_config.json; the coordinator never reads checkpoints itself).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tessera {

struct ServedModel {
  std::string id;   // the name clients use
  std::string dir;  // the Hugging Face snapshot directory
  int vocab_size = 0;
  int max_position_embeddings = 0;
  int num_layers = 0;
  std::vector<int32_t> eos_token_ids;  // config.json's and generation_config.json's
  // generation_config.json's sampling defaults (unset: greedy).
  std::optional<float> default_temperature;
  std::optional<float> default_top_p;
  std::optional<int> default_top_k;
  int tp_size = 1;
  int pp_size = 1;
  std::string device = "cpu";
};

}  // namespace tessera
