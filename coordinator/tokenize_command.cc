// RunTokenize / RunDetokenize.
#include "coordinator/tokenize_command.h"

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/tokenizer/utf8.h"
#include "core/status_macros.h"

namespace tessera {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

void PrintIds(const std::vector<int32_t>& ids, std::ostream& out) {
  std::string line = "{\"ids\": [";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) line += ", ";
    line += std::to_string(ids[i]);
  }
  line += "]}\n";
  out << line;
}

}  // namespace

absl::Status RunTokenize(const TokenizeOptions& options, std::ostream& out, std::ostream& err) {
  const int inputs = !options.text.empty() + !options.input_jsonl.empty() + !options.file.empty();
  if (inputs != 1) {
    return absl::InvalidArgumentError("tokenize needs exactly one of --text, --input-jsonl and --file");
  }
  const auto t_start = Clock::now();
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(options.model_dir));
  const auto t_loaded = Clock::now();
  size_t bytes = 0, tokens = 0;
  double encode_s = 0;

  const auto encode = [&](std::string_view text) -> absl::StatusOr<std::vector<int32_t>> {
    const auto t0 = Clock::now();
    auto ids = tokenizer->Encode(text, options.add_special_tokens);
    encode_s += Seconds(t0, Clock::now());
    bytes += text.size();
    if (ids.ok()) tokens += ids->size();
    return ids;
  };

  if (!options.text.empty()) {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, encode(options.text));
    PrintIds(ids, out);
  } else if (!options.file.empty()) {
    std::ifstream in(options.file, std::ios::binary);
    if (!in) return absl::NotFoundError(Cat("cannot open --file ", options.file));
    std::ostringstream buffer;
    buffer << in.rdbuf();
    const std::string text = std::move(buffer).str();
    auto ids = encode(text);
    if (!ids.ok()) return absl::Status(ids.status().code(), Cat(options.file, ": ", ids.status().message()));
    out << "{\"count\": " << ids->size() << "}\n";
  } else {
    std::ifstream in(options.input_jsonl, std::ios::binary);
    if (!in) return absl::NotFoundError(Cat("cannot open --input-jsonl ", options.input_jsonl));
    std::string line;
    for (size_t line_number = 1; std::getline(in, line); ++line_number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const auto bad_line = [&](std::string_view why) {
        return absl::InvalidArgumentError(Cat(options.input_jsonl, ":", line_number, ": ", why));
      };
      std::string text;
      try {
        const nlohmann::json j = nlohmann::json::parse(line);
        if (!j.is_object() || !j.contains("text") || !j["text"].is_string()) {
          return bad_line("expected an object with a string \"text\"");
        }
        text = j["text"].get<std::string>();
      } catch (const nlohmann::json::exception& e) {
        return bad_line(Cat("bad JSON: ", e.what()));
      }
      auto ids = encode(text);
      if (!ids.ok()) return bad_line(std::string(ids.status().message()));
      PrintIds(*ids, out);
    }
  }
  if (options.stats) {
    nlohmann::json stats = {{"load_s", Seconds(t_start, t_loaded)},
                            {"encode_s", encode_s},
                            {"mb_per_s", encode_s > 0 ? bytes / 1e6 / encode_s : 0.0},
                            {"bytes", bytes},
                            {"tokens", tokens}};
    err << stats.dump() << "\n";
  }
  return absl::OkStatus();
}

absl::Status RunDetokenize(const DetokenizeOptions& options, std::ostream& out) {
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(options.model_dir));
  ASSIGN_OR_RETURN(std::string text, tokenizer->Decode(options.ids, options.skip_special_tokens));
  out << nlohmann::json({{"text", text}}).dump() << "\n";
  return absl::OkStatus();
}

}  // namespace tessera
