// Test and benchmark driver for the tokenizer, used by the Python comparison tests and
// bench/tokenizer_bench.py.
//   tokenizer_driver jsonl --model DIR        stdin: JSON lines, one reply line each on stdout:
//       {"text": T, "add_special_tokens": B}          -> {"ids": [...]} or {"error": "..."}
//       {"ids": [...], "skip_special_tokens": B}      -> {"text": T, "stream": S} (S:
//       IncrementalDetokenizer's
//                                                        output, one id at a time, plus Flush) or {"error":
//                                                        "..."}
//   tokenizer_driver tokenize --model DIR (--text T | --input-jsonl F | --file F) [--add-special-tokens]
//   [--stats] tokenizer_driver detokenize --model DIR --ids 1,2,3 [--skip-special-tokens]
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "coordinator/tokenize_command.h"
#include "coordinator/tokenizer/incremental_detokenizer.h"
#include "coordinator/tokenizer/tokenizer.h"

namespace {

int Jsonl(const tessera::Tokenizer& tokenizer) {
  std::string line;
  while (std::getline(std::cin, line)) {
    nlohmann::json reply;
    try {
      const nlohmann::json request = nlohmann::json::parse(line);
      if (request.contains("text")) {
        auto ids =
            tokenizer.Encode(request["text"].get<std::string>(), request.value("add_special_tokens", false));
        if (ids.ok()) {
          reply["ids"] = *ids;
        } else {
          reply["error"] = ids.status().ToString();
        }
      } else {
        const auto ids = request.at("ids").get<std::vector<int32_t>>();
        const bool skip = request.value("skip_special_tokens", false);
        auto text = tokenizer.Decode(ids, skip);
        if (text.ok()) {
          reply["text"] = *text;
          tessera::IncrementalDetokenizer detokenizer(tokenizer, skip);
          std::string stream;
          for (int32_t id : ids) stream += detokenizer.Add(id).value();
          stream += detokenizer.Flush();
          reply["stream"] = stream;
        } else {
          reply["error"] = text.status().ToString();
        }
      }
    } catch (const std::exception& e) {
      reply["error"] = e.what();
    }
    std::cout << reply.dump() << "\n" << std::flush;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: tokenizer_driver jsonl|tokenize|detokenize --model DIR ...\n";
    return 2;
  }
  const std::string mode = argv[1];
  tessera::TokenizeOptions tokenize;
  tessera::DetokenizeOptions detokenize;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--model") {
      tokenize.model_dir = detokenize.model_dir = value();
    } else if (arg == "--text") {
      tokenize.text = value();
    } else if (arg == "--input-jsonl") {
      tokenize.input_jsonl = value();
    } else if (arg == "--file") {
      tokenize.file = value();
    } else if (arg == "--add-special-tokens") {
      tokenize.add_special_tokens = true;
    } else if (arg == "--stats") {
      tokenize.stats = true;
    } else if (arg == "--skip-special-tokens") {
      detokenize.skip_special_tokens = true;
    } else if (arg == "--ids") {
      const std::string ids = value();
      size_t pos = 0;
      while (pos < ids.size()) {
        size_t comma = ids.find(',', pos);
        if (comma == std::string::npos) comma = ids.size();
        detokenize.ids.push_back(std::stoi(ids.substr(pos, comma - pos)));
        pos = comma + 1;
      }
    } else {
      std::cerr << "unknown argument " << arg << "\n";
      return 2;
    }
  }
  absl::Status status;
  if (mode == "jsonl") {
    auto tokenizer = tessera::Tokenizer::Load(tokenize.model_dir);
    if (!tokenizer.ok()) {
      std::cerr << tokenizer.status() << "\n";
      return 1;
    }
    return Jsonl(**tokenizer);
  } else if (mode == "tokenize") {
    status = tessera::RunTokenize(tokenize, std::cout, std::cerr);
  } else if (mode == "detokenize") {
    status = tessera::RunDetokenize(detokenize, std::cout);
  } else {
    std::cerr << "unknown mode " << mode << "\n";
    return 2;
  }
  if (!status.ok()) {
    std::cerr << status << "\n";
    return 1;
  }
  return 0;
}
