#include "tools/bench/prompts.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace tessera::tools::bench {
namespace {

absl::StatusOr<BenchRequest> ParseLine(const std::string& line, int default_max_tokens, bool ignore_eos) {
  const nlohmann::json json = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) return absl::InvalidArgumentError("not a JSON object");
  BenchRequest request;
  request.ignore_eos = ignore_eos;
  request.max_tokens = default_max_tokens;
  const bool has_text = json.contains("prompt"), has_ids = json.contains("prompt_token_ids");
  if (has_text == has_ids) {
    return absl::InvalidArgumentError("give exactly one of \"prompt\" and \"prompt_token_ids\"");
  }
  if (has_text) {
    if (!json["prompt"].is_string() || json["prompt"].get_ref<const std::string&>().empty()) {
      return absl::InvalidArgumentError("\"prompt\" is not a non-empty string");
    }
    request.text = json["prompt"].get<std::string>();
  } else {
    const nlohmann::json& ids = json["prompt_token_ids"];
    if (!ids.is_array() || ids.empty()) {
      return absl::InvalidArgumentError("\"prompt_token_ids\" is not a non-empty list");
    }
    for (size_t i = 0; i < ids.size(); ++i) {
      if (!ids[i].is_number_integer() || ids[i].get<int64_t>() < 0 || ids[i].get<int64_t>() > INT32_MAX) {
        return absl::InvalidArgumentError(absl::StrCat("\"prompt_token_ids\"[", i, "] is not a token id"));
      }
      request.token_ids.push_back(static_cast<int32_t>(ids[i].get<int64_t>()));
    }
  }
  if (json.contains("max_tokens")) {
    const nlohmann::json& m = json["max_tokens"];
    if (!m.is_number_integer() || m.get<int64_t>() <= 0 || m.get<int64_t>() > INT32_MAX) {
      return absl::InvalidArgumentError("\"max_tokens\" is not a positive integer");
    }
    request.max_tokens = static_cast<int>(m.get<int64_t>());
  }
  return request;
}

}  // namespace

absl::StatusOr<std::vector<BenchRequest>> ReadDataset(const std::string& path, int num_prompts,
                                                      int default_max_tokens, bool ignore_eos) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open dataset ", path));
  std::vector<BenchRequest> lines;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    absl::StatusOr<BenchRequest> request = ParseLine(line, default_max_tokens, ignore_eos);
    if (!request.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", number, ": ", request.status().message()));
    }
    lines.push_back(*std::move(request));
    if (static_cast<int>(lines.size()) >= num_prompts) break;
  }
  if (lines.empty()) return absl::InvalidArgumentError(absl::StrCat("dataset ", path, " has no prompts"));
  std::vector<BenchRequest> requests;
  requests.reserve(num_prompts);
  for (int i = 0; i < num_prompts; ++i) requests.push_back(lines[i % lines.size()]);
  return requests;
}

std::vector<BenchRequest> RandomRequests(int num_prompts, int input_len, int output_len, int32_t id_begin,
                                         int32_t id_end, uint64_t seed) {
  TESSERA_CHECK(id_begin < id_end);
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ULL);  // not the arrival schedule's stream
  std::uniform_int_distribution<int32_t> id(id_begin, id_end - 1);
  std::vector<BenchRequest> requests(std::max(num_prompts, 0));
  for (BenchRequest& request : requests) {
    request.token_ids.resize(std::max(input_len, 0));
    for (int32_t& t : request.token_ids) t = id(rng);
    request.max_tokens = output_len;
    request.ignore_eos = true;
  }
  return requests;
}

}  // namespace tessera::tools::bench
