// Named model shapes for make-model: "tiny" for unit tests, "small" (Llama 3.2 1B), and the published Hugging
// Face configs of Llama 3.1 8B, Llama 3.1 / 3.3 70B and Llama 3.1 405B (instruct eos ids).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/checkpoint/model_config.h"

namespace tessera {

// The config of preset `name`. NOT_FOUND listing the preset names when there is none.
[[nodiscard]] absl::StatusOr<ModelConfig> PresetConfig(std::string_view name);

// "tiny", "small", "llama3-8b", "llama3-70b", "llama3.1-405b".
std::vector<std::string> PresetNames();

}  // namespace tessera
