// The prompts of `tessera bench`: read from a JSONL dataset, or random token ids of a fixed length.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tools/bench/request.h"

namespace tessera::tools::bench {

// Reads `path`: one JSON object per non-blank line with "prompt" (a string) or "prompt_token_ids" (a list of
// non-negative ints), and optionally "max_tokens" (a positive int; else `default_max_tokens`). Returns
// `num_prompts` requests, taking the lines in order and cycling when the file has fewer. NOT_FOUND when the
// file cannot be opened; INVALID_ARGUMENT naming the file and line for a bad line or an empty file.
[[nodiscard]] absl::StatusOr<std::vector<BenchRequest>> ReadDataset(const std::string& path, int num_prompts,
                                                                    int default_max_tokens, bool ignore_eos);

// `num_prompts` prompts of `input_len` ids drawn uniformly from [id_begin, id_end) with a generator seeded by
// `seed`, each asking for exactly `output_len` tokens (ignore_eos). Requires id_begin < id_end.
std::vector<BenchRequest> RandomRequests(int num_prompts, int input_len, int output_len, int32_t id_begin,
                                         int32_t id_end, uint64_t seed);

}  // namespace tessera::tools::bench
