// TokenizerFilesFromGguf. The vocabulary and merges (up to hundreds of thousands of entries) are written as
// text directly; the small objects through nlohmann::json.
#include "worker/checkpoint/gguf_tokenizer.h"

#include <nlohmann/json.hpp>
#include <unordered_set>

#include "core/status_macros.h"
#include "core/str_cat.h"

namespace tessera {
namespace {

using Json = nlohmann::json;                 // keys sorted, as transformers writes tokenizer_config.json
using OrderedJson = nlohmann::ordered_json;  // keys in tokenizers' order

// Llama 3's pre-tokenizer regex, as in its tokenizer.json.
constexpr std::string_view kLlama3Regex =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|)re"
    R"re( ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

// llama.cpp's token types (llama_token_type).
constexpr int64_t kTokenTypeControl = 3;
constexpr int64_t kTokenTypeUserDefined = 4;
constexpr int64_t kMaxTokenType = 6;

absl::Status Invalid(const GgufFile& f, std::string_view what) {
  return absl::InvalidArgumentError(Cat(f.path(), ": ", what));
}

// `s` as a JSON string literal; INVALID_ARGUMENT naming `what` when it is not valid UTF-8.
absl::StatusOr<std::string> Quote(const GgufFile& f, std::string_view s, const std::string& what) {
  try {
    return Json(std::string(s)).dump(-1, ' ', false, Json::error_handler_t::strict);
  } catch (const Json::exception&) {
    return Invalid(f, Cat(what, " is not valid UTF-8"));
  }
}

template <typename J>
absl::StatusOr<std::string> Dump(const GgufFile& f, const J& j, std::string_view what) {
  try {
    return j.dump(2, ' ', false, J::error_handler_t::strict) + "\n";
  } catch (const typename J::exception& e) {
    return Invalid(f, Cat("cannot write ", what, ": ", e.what()));
  }
}

OrderedJson ByteLevel(bool add_prefix_space, bool trim_offsets, bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", add_prefix_space},
          {"trim_offsets", trim_offsets},
          {"use_regex", use_regex}};
}

absl::StatusOr<OrderedJson> PreTokenizer(const GgufFile& f, std::string_view pre) {
  if (pre == "llama-bpe") {
    OrderedJson split = {{"type", "Split"},
                         {"pattern", {{"Regex", std::string(kLlama3Regex)}}},
                         {"behavior", "Isolated"},
                         {"invert", false}};
    return OrderedJson{{"type", "Sequence"}, {"pretokenizers", {split, ByteLevel(false, true, false)}}};
  }
  if (pre == "smollm") {
    OrderedJson digits = {{"type", "Digits"}, {"individual_digits", true}};
    return OrderedJson{{"type", "Sequence"}, {"pretokenizers", {digits, ByteLevel(false, true, true)}}};
  }
  if (pre == "gpt2") return ByteLevel(false, true, true);
  return Invalid(f, Cat("metadata key 'tokenizer.ggml.pre' = '", pre,
                        "' is not supported (only llama-bpe, smollm, gpt2)"));
}

// TemplateProcessing that adds bos and / or eos (Llama 3's form: a Sequence after ByteLevel).
OrderedJson PostProcessor(const std::vector<std::string_view>& tokens, std::optional<int> bos,
                          std::optional<int> eos) {
  if (!bos && !eos) return ByteLevel(true, false, true);
  OrderedJson specials = OrderedJson::object();
  const auto special = [&](int id, int type_id) {
    const std::string token(tokens[id]);
    specials[token] = {{"id", token}, {"ids", {id}}, {"tokens", {token}}};
    return OrderedJson{{"SpecialToken", {{"id", token}, {"type_id", type_id}}}};
  };
  const auto sequence = [](const char* id, int type_id) {
    return OrderedJson{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
  };
  // single: [bos] A [eos]; pair: [bos] A [eos] [bos] B [eos], B's pieces with type_id 1.
  OrderedJson single = OrderedJson::array(), pair = OrderedJson::array();
  if (bos) single.push_back(special(*bos, 0));
  single.push_back(sequence("A", 0));
  if (eos) single.push_back(special(*eos, 0));
  for (int part = 0; part < 2; ++part) {
    if (bos) pair.push_back(special(*bos, part));
    pair.push_back(sequence(part == 0 ? "A" : "B", part));
    if (eos) pair.push_back(special(*eos, part));
  }
  OrderedJson processing = {
      {"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", specials}};
  return OrderedJson{{"type", "Sequence"}, {"processors", {ByteLevel(true, false, true), processing}}};
}

struct Vocabulary {
  std::vector<std::string_view> tokens;
  std::vector<int64_t> types;
  std::optional<int> bos, eos;
  bool add_bos = false, add_eos = false;
};

absl::StatusOr<std::optional<int>> OptionalTokenId(const GgufFile& f, std::string_view key,
                                                   size_t num_tokens) {
  if (!f.Has(key)) return std::nullopt;
  ASSIGN_OR_RETURN(const int64_t id, f.Int(key));
  if (id < 0 || static_cast<uint64_t>(id) >= num_tokens) {
    return Invalid(f, Cat("metadata key '", key, "' = ", id, " is outside the ", num_tokens, " tokens"));
  }
  return static_cast<int>(id);
}

absl::StatusOr<Vocabulary> ReadVocabulary(const GgufFile& f, std::string_view pre) {
  Vocabulary v;
  ASSIGN_OR_RETURN(v.tokens, f.StringArray("tokenizer.ggml.tokens"));
  if (v.tokens.empty()) return Invalid(f, "metadata key 'tokenizer.ggml.tokens' is empty");
  v.types.assign(v.tokens.size(), 1);
  if (f.Has("tokenizer.ggml.token_type")) {
    ASSIGN_OR_RETURN(v.types, f.IntArray("tokenizer.ggml.token_type"));
    if (v.types.size() != v.tokens.size()) {
      return Invalid(f, Cat("metadata key 'tokenizer.ggml.token_type' has ", v.types.size(), " entries for ",
                            v.tokens.size(), " tokens"));
    }
    for (size_t i = 0; i < v.types.size(); ++i) {
      if (v.types[i] < 0 || v.types[i] > kMaxTokenType) {
        return Invalid(f, Cat("metadata key 'tokenizer.ggml.token_type' element ", i, " = ", v.types[i],
                              " is not a token type (0 to ", kMaxTokenType, ")"));
      }
    }
  }
  ASSIGN_OR_RETURN(v.bos, OptionalTokenId(f, "tokenizer.ggml.bos_token_id", v.tokens.size()));
  ASSIGN_OR_RETURN(v.eos, OptionalTokenId(f, "tokenizer.ggml.eos_token_id", v.tokens.size()));
  v.add_bos = pre == "llama-bpe";  // llama.cpp's default for Llama 3
  if (f.Has("tokenizer.ggml.add_bos_token")) {
    ASSIGN_OR_RETURN(v.add_bos, f.Bool("tokenizer.ggml.add_bos_token"));
  }
  if (f.Has("tokenizer.ggml.add_eos_token")) {
    ASSIGN_OR_RETURN(v.add_eos, f.Bool("tokenizer.ggml.add_eos_token"));
  }
  if (v.add_bos && !v.bos) {
    return absl::NotFoundError(Cat(
        f.path(), ": metadata key 'tokenizer.ggml.bos_token_id' is missing but bos is added to every text"));
  }
  if (v.add_eos && !v.eos) {
    return absl::NotFoundError(Cat(
        f.path(), ": metadata key 'tokenizer.ggml.eos_token_id' is missing but eos is added to every text"));
  }
  return v;
}

// The "model" object: {"type": "BPE", ..., "vocab": {...}, "merges": [...]}, indented as a top-level member.
absl::StatusOr<std::string> BpeModelJson(const GgufFile& f, const Vocabulary& v, bool ignore_merges) {
  ASSIGN_OR_RETURN(std::vector<std::string_view> merges, f.StringArray("tokenizer.ggml.merges"));
  std::string out =
      Cat("{\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n"
          "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": "
          "false,\n"
          "    \"byte_fallback\": false,\n    \"ignore_merges\": ",
          ignore_merges ? "true" : "false", ",\n    \"vocab\": {");
  std::unordered_set<std::string_view> seen;
  seen.reserve(v.tokens.size());
  bool first = true;
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    ASSIGN_OR_RETURN(std::string quoted, Quote(f, v.tokens[id], Cat("tokenizer.ggml.tokens element ", id)));
    if (!seen.insert(v.tokens[id]).second) continue;
    out += Cat(first ? "\n      " : ",\n      ", quoted, ": ", id);
    first = false;
  }
  out += "\n    },\n    \"merges\": [";
  for (size_t i = 0; i < merges.size(); ++i) {
    const size_t space = merges[i].find(' ');
    if (space == 0 || space == std::string_view::npos || space + 1 == merges[i].size() ||
        merges[i].find(' ', space + 1) != std::string_view::npos) {
      return Invalid(f, Cat("metadata key 'tokenizer.ggml.merges' element ", i, " '", merges[i],
                            "' is not two tokens separated by one space"));
    }
    ASSIGN_OR_RETURN(std::string quoted, Quote(f, merges[i], Cat("tokenizer.ggml.merges element ", i)));
    out += Cat(i == 0 ? "\n      " : ",\n      ", quoted);
  }
  out += "\n    ]\n  }";
  return out;
}

absl::StatusOr<std::string> TokenizerConfigJson(const GgufFile& f, const Vocabulary& v,
                                                int model_max_length) {
  Json config = Json::object();
  config["add_bos_token"] = v.add_bos;
  config["add_eos_token"] = v.add_eos;
  Json decoder = Json::object();
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    if (v.types[id] != kTokenTypeControl && v.types[id] != kTokenTypeUserDefined) continue;
    decoder[std::to_string(id)] = {{"content", std::string(v.tokens[id])},
                                   {"lstrip", false},
                                   {"normalized", false},
                                   {"rstrip", false},
                                   {"single_word", false},
                                   {"special", v.types[id] == kTokenTypeControl}};
  }
  config["added_tokens_decoder"] = decoder;
  const std::pair<const char*, const char*> special_keys[] = {
      {"bos_token", "tokenizer.ggml.bos_token_id"},
      {"eos_token", "tokenizer.ggml.eos_token_id"},
      {"pad_token", "tokenizer.ggml.padding_token_id"},
      {"unk_token", "tokenizer.ggml.unknown_token_id"}};
  for (const auto& [name, key] : special_keys) {
    ASSIGN_OR_RETURN(std::optional<int> id, OptionalTokenId(f, key, v.tokens.size()));
    if (id) config[name] = std::string(v.tokens[*id]);
  }
  if (f.Has("tokenizer.chat_templates")) {  // named templates: tokenizer.chat_template.NAME, plus the default
    ASSIGN_OR_RETURN(std::vector<std::string_view> names, f.StringArray("tokenizer.chat_templates"));
    Json list = Json::array();
    if (f.Has("tokenizer.chat_template")) {
      ASSIGN_OR_RETURN(std::string_view text, f.String("tokenizer.chat_template"));
      list.push_back({{"name", "default"}, {"template", std::string(text)}});
    }
    for (std::string_view name : names) {
      ASSIGN_OR_RETURN(std::string_view text, f.String(Cat("tokenizer.chat_template.", name)));
      list.push_back({{"name", std::string(name)}, {"template", std::string(text)}});
    }
    config["chat_template"] = list;
  } else if (f.Has("tokenizer.chat_template")) {
    ASSIGN_OR_RETURN(std::string_view text, f.String("tokenizer.chat_template"));
    config["chat_template"] = std::string(text);
  }
  config["clean_up_tokenization_spaces"] = false;
  config["model_max_length"] = model_max_length;
  config["tokenizer_class"] = "PreTrainedTokenizerFast";
  return Dump(f, config, "tokenizer_config.json (a token or the chat template is not valid UTF-8)");
}

}  // namespace

absl::StatusOr<GgufTokenizerFiles> TokenizerFilesFromGguf(const GgufFile& f, int model_max_length) {
  ASSIGN_OR_RETURN(std::string_view model, f.String("tokenizer.ggml.model"));
  if (model != "gpt2") {
    return Invalid(f, Cat("metadata key 'tokenizer.ggml.model' = '", model,
                          "' is not supported (only gpt2: byte-level BPE)"));
  }
  std::string_view pre = "gpt2";
  if (f.Has("tokenizer.ggml.pre")) {
    ASSIGN_OR_RETURN(pre, f.String("tokenizer.ggml.pre"));
  }
  ASSIGN_OR_RETURN(OrderedJson pre_tokenizer, PreTokenizer(f, pre));
  ASSIGN_OR_RETURN(Vocabulary v, ReadVocabulary(f, pre));
  ASSIGN_OR_RETURN(std::string model_json, BpeModelJson(f, v, /*ignore_merges=*/pre == "llama-bpe"));

  OrderedJson added = OrderedJson::array();
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    if (v.types[id] != kTokenTypeControl && v.types[id] != kTokenTypeUserDefined) continue;
    added.push_back({{"id", id},
                     {"content", std::string(v.tokens[id])},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", v.types[id] == kTokenTypeControl}});
  }
  OrderedJson head = {{"version", "1.0"},
                      {"truncation", nullptr},
                      {"padding", nullptr},
                      {"added_tokens", added},
                      {"normalizer", nullptr},
                      {"pre_tokenizer", pre_tokenizer},
                      {"post_processor", PostProcessor(v.tokens, v.add_bos ? v.bos : std::nullopt,
                                                       v.add_eos ? v.eos : std::nullopt)},
                      {"decoder", ByteLevel(true, true, true)}};
  ASSIGN_OR_RETURN(std::string text, Dump(f, head, "tokenizer.json"));
  // Replace the closing "\n}\n" with the model member.
  text.resize(text.size() - 3);
  text += Cat(",\n  \"model\": ", model_json, "\n}\n");
  GgufTokenizerFiles files;
  files.tokenizer_json = std::move(text);
  ASSIGN_OR_RETURN(files.tokenizer_config_json, TokenizerConfigJson(f, v, model_max_length));
  return files;
}

}  // namespace tessera
