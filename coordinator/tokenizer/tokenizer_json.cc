// ParseTokenizerJson: the vocabulary and merges through JsonScanner (fast), the rest through nlohmann.
#include "coordinator/tokenizer/tokenizer_json.h"

#include <map>
#include <nlohmann/json.hpp>

#include "coordinator/tokenizer/json_scanner.h"
#include "coordinator/tokenizer/utf8.h"
#include "core/status_macros.h"

namespace tessera::tokenizer_internal {
namespace {

using nlohmann::json;

class Parser {
 public:
  Parser(std::string_view text, std::string_view source) : scanner_(text), source_(source) {}

  absl::StatusOr<TokenizerSpec> Parse();

 private:
  absl::Status Error(std::string_view what) const {
    return absl::InvalidArgumentError(Cat(source_, ": ", what));
  }
  // Prefixes a scanner error with the file name.
  absl::Status Wrap(const absl::Status& s) const {
    return s.ok() ? s : absl::InvalidArgumentError(Cat(source_, ": ", s.message()));
  }
  absl::Status ParseJsonSpan(std::string_view span, std::string_view field, json& out) const;
  absl::Status ParseModel(TokenizerSpec& spec);
  absl::Status ParseVocab(TokenizerSpec& spec);
  absl::Status ParseMerges(TokenizerSpec& spec);
  absl::Status ApplyModelFields(const std::map<std::string, json>& fields, TokenizerSpec& spec) const;
  absl::Status ParseAddedTokens(const json& j, TokenizerSpec& spec) const;
  absl::Status ParsePreTokenizer(const json& j, TokenizerSpec& spec) const;
  absl::Status ParsePostProcessor(const json& j, TokenizerSpec& spec) const;
  absl::Status ParseDecoder(const json& j, TokenizerSpec& spec) const;

  JsonScanner scanner_;
  std::string source_;
  bool saw_vocab_ = false;
};

absl::Status Parser::ParseJsonSpan(std::string_view span, std::string_view field, json& out) const {
  try {
    out = json::parse(span.begin(), span.end());
  } catch (const json::exception& e) {
    return Error(Cat("bad JSON in \"", field, "\": ", e.what()));
  }
  return absl::OkStatus();
}

absl::StatusOr<TokenizerSpec> Parser::Parse() {
  TokenizerSpec spec;
  std::map<std::string, json> fields;
  bool saw_model = false;
  RETURN_IF_ERROR(Wrap(scanner_.Expect('{')));
  if (!scanner_.Consume('}')) {
    do {
      std::string key;
      RETURN_IF_ERROR(Wrap(scanner_.ReadString(key)));
      RETURN_IF_ERROR(Wrap(scanner_.Expect(':')));
      if (key == "model") {
        saw_model = true;
        RETURN_IF_ERROR(ParseModel(spec));
      } else {
        std::string_view span;
        RETURN_IF_ERROR(Wrap(scanner_.SkipValue(span)));
        RETURN_IF_ERROR(ParseJsonSpan(span, key, fields[key]));
      }
    } while (scanner_.Consume(','));
    RETURN_IF_ERROR(Wrap(scanner_.Expect('}')));
  }
  RETURN_IF_ERROR(Wrap(scanner_.ExpectEnd()));
  if (!saw_model) return Error("no \"model\"");
  const auto get = [&](const char* name) -> const json& {
    static const json* null_json = new json(nullptr);
    auto it = fields.find(name);
    return it == fields.end() ? *null_json : it->second;
  };
  if (const json& n = get("normalizer"); !n.is_null()) {
    const std::string type =
        n.is_object() && n.contains("type") && n["type"].is_string() ? n["type"].get<std::string>() : "?";
    return Error(Cat("normalizer '", type, "' is not supported"));
  }
  RETURN_IF_ERROR(ParseAddedTokens(get("added_tokens"), spec));
  RETURN_IF_ERROR(ParsePreTokenizer(get("pre_tokenizer"), spec));
  RETURN_IF_ERROR(ParsePostProcessor(get("post_processor"), spec));
  RETURN_IF_ERROR(ParseDecoder(get("decoder"), spec));
  return spec;
}

absl::Status Parser::ParseModel(TokenizerSpec& spec) {
  std::map<std::string, json> fields;
  RETURN_IF_ERROR(Wrap(scanner_.Expect('{')));
  if (!scanner_.Consume('}')) {
    do {
      std::string key;
      RETURN_IF_ERROR(Wrap(scanner_.ReadString(key)));
      RETURN_IF_ERROR(Wrap(scanner_.Expect(':')));
      if (key == "vocab" && scanner_.Peek() == '{') {
        RETURN_IF_ERROR(ParseVocab(spec));
      } else if (key == "merges" && scanner_.Peek() == '[') {
        RETURN_IF_ERROR(ParseMerges(spec));
      } else {
        std::string_view span;
        RETURN_IF_ERROR(Wrap(scanner_.SkipValue(span)));
        RETURN_IF_ERROR(ParseJsonSpan(span, Cat("model.", key), fields[key]));
      }
    } while (scanner_.Consume(','));
    RETURN_IF_ERROR(Wrap(scanner_.Expect('}')));
  }
  return ApplyModelFields(fields, spec);
}

absl::Status Parser::ParseVocab(TokenizerSpec& spec) {
  saw_vocab_ = true;
  spec.vocab.reserve(1 << 17);
  RETURN_IF_ERROR(Wrap(scanner_.Expect('{')));
  if (scanner_.Consume('}')) return absl::OkStatus();
  do {
    std::string token;
    int64_t id = 0;
    RETURN_IF_ERROR(Wrap(scanner_.ReadString(token)));
    RETURN_IF_ERROR(Wrap(scanner_.Expect(':')));
    RETURN_IF_ERROR(Wrap(scanner_.ReadInt(id)));
    if (id < 0 || id > INT32_MAX)
      return Error(Cat("model.vocab: id ", id, " of \"", token, "\" is out of range"));
    spec.vocab.emplace_back(std::move(token), static_cast<int32_t>(id));
  } while (scanner_.Consume(','));
  return Wrap(scanner_.Expect('}'));
}

absl::Status Parser::ParseMerges(TokenizerSpec& spec) {
  spec.merges.reserve(1 << 18);
  RETURN_IF_ERROR(Wrap(scanner_.Expect('[')));
  if (scanner_.Consume(']')) return absl::OkStatus();
  std::string text;
  do {
    const size_t index = spec.merges.size();
    if (scanner_.Peek() == '[') {  // ["a", "b"]
      std::string a, b;
      RETURN_IF_ERROR(Wrap(scanner_.Expect('[')));
      RETURN_IF_ERROR(Wrap(scanner_.ReadString(a)));
      RETURN_IF_ERROR(Wrap(scanner_.Expect(',')));
      RETURN_IF_ERROR(Wrap(scanner_.ReadString(b)));
      if (!scanner_.Consume(']')) return Error(Cat("model.merges[", index, "] is not a pair of strings"));
      spec.merges.emplace_back(std::move(a), std::move(b));
    } else if (scanner_.Peek() == '"') {  // "a b"
      RETURN_IF_ERROR(Wrap(scanner_.ReadString(text)));
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
        return Error(
            Cat("model.merges[", index, "] \"", text, "\" is not two tokens separated by one space"));
      }
      spec.merges.emplace_back(text.substr(0, space), text.substr(space + 1));
    } else {
      return Error(Cat("model.merges[", index, "] is neither \"a b\" nor [\"a\", \"b\"]"));
    }
  } while (scanner_.Consume(','));
  return Wrap(scanner_.Expect(']'));
}

absl::Status Parser::ApplyModelFields(const std::map<std::string, json>& fields, TokenizerSpec& spec) const {
  const auto field = [&](const char* name) -> const json* {
    auto it = fields.find(name);
    return it == fields.end() || it->second.is_null() ? nullptr : &it->second;
  };
  if (const json* type = field("type")) {
    if (!type->is_string()) return Error("model.type is not a string");
    if (type->get<std::string>() != "BPE") {
      return Error(
          Cat("model type '", type->get<std::string>(), "' is not BPE (only BPE models are supported)"));
    }
  }
  if (!saw_vocab_) return Error("model has no \"vocab\" object");
  if (fields.count("merges")) return Error("model.merges is not an array");
  try {
    if (const json* v = field("ignore_merges")) spec.ignore_merges = v->get<bool>();
    if (const json* v = field("unk_token")) spec.unk_token = v->get<std::string>();
    if (const json* v = field("fuse_unk")) spec.fuse_unk = v->get<bool>();
    if (const json* v = field("byte_fallback"); v && v->get<bool>()) {
      return Error("model.byte_fallback is not supported");
    }
    if (const json* v = field("dropout"); v && v->get<double>() != 0.0)
      return Error("model.dropout is not supported");
    for (const char* name : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (const json* v = field(name); v && !v->get<std::string>().empty()) {
        return Error(Cat("model.", name, " is not supported"));
      }
    }
  } catch (const json::exception& e) {
    return Error(Cat("bad model field: ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseAddedTokens(const json& j, TokenizerSpec& spec) const {
  if (j.is_null()) return absl::OkStatus();
  if (!j.is_array()) return Error("added_tokens is not an array");
  try {
    for (const json& t : j) {
      AddedTokenSpec a;
      a.id = t.at("id").get<int32_t>();
      a.content = t.at("content").get<std::string>();
      a.single_word = t.value("single_word", false);
      a.lstrip = t.value("lstrip", false);
      a.rstrip = t.value("rstrip", false);
      a.normalized = t.value("normalized", true);
      a.special = t.value("special", false);
      if (a.id < 0) return Error(Cat("added token \"", a.content, "\" has a negative id"));
      spec.added_tokens.push_back(std::move(a));
    }
  } catch (const json::exception& e) {
    return Error(Cat("bad added_tokens entry: ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status Parser::ParsePreTokenizer(const json& j, TokenizerSpec& spec) const {
  if (j.is_null()) return absl::OkStatus();
  try {
    const std::string type = j.at("type").get<std::string>();
    if (type == "Sequence") {
      for (const json& step : j.at("pretokenizers")) RETURN_IF_ERROR(ParsePreTokenizer(step, spec));
      return absl::OkStatus();
    }
    PreTokenizerStep step;
    if (type == "ByteLevel") {
      step.kind = PreTokenizerStep::Kind::kByteLevel;
      step.add_prefix_space = j.value("add_prefix_space", true);
      step.use_regex = j.value("use_regex", true);
    } else if (type == "Split") {
      const json& pattern = j.at("pattern");
      if (pattern.contains("Regex")) {
        step.pattern = pattern.at("Regex").get<std::string>();
      } else {
        step.pattern = pattern.at("String").get<std::string>();
        step.literal = true;
      }
      static const std::map<std::string, SplitBehavior> kBehaviors = {
          {"Removed", SplitBehavior::kRemoved},
          {"Isolated", SplitBehavior::kIsolated},
          {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
          {"MergedWithNext", SplitBehavior::kMergedWithNext},
          {"Contiguous", SplitBehavior::kContiguous}};
      const std::string behavior = j.at("behavior").get<std::string>();
      auto it = kBehaviors.find(behavior);
      if (it == kBehaviors.end())
        return Error(Cat("pre_tokenizer Split behavior '", behavior, "' is unknown"));
      step.behavior = it->second;
      step.invert = j.value("invert", false);
    } else if (type == "Digits") {
      // HF splits off every char::is_numeric() character (Unicode Nd, Nl, No = \p{N}), one by one or in runs.
      step.pattern = "\\p{N}";
      step.behavior =
          j.value("individual_digits", false) ? SplitBehavior::kIsolated : SplitBehavior::kContiguous;
    } else {
      return Error(
          Cat("pre_tokenizer type '", type, "' is not supported (only Sequence, Split, Digits, ByteLevel)"));
    }
    spec.pre_tokenizer.push_back(std::move(step));
  } catch (const json::exception& e) {
    return Error(Cat("bad pre_tokenizer: ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status Parser::ParsePostProcessor(const json& j, TokenizerSpec& spec) const {
  if (j.is_null()) return absl::OkStatus();
  try {
    const std::string type = j.at("type").get<std::string>();
    if (type == "Sequence") {
      for (const json& p : j.at("processors")) RETURN_IF_ERROR(ParsePostProcessor(p, spec));
    } else if (type == "TemplateProcessing") {
      if (spec.single_template) return Error("post_processor has two TemplateProcessing steps");
      std::vector<TemplatePiece> pieces;
      const json& specials = j.value("special_tokens", json::object());
      for (const json& item : j.at("single")) {
        TemplatePiece piece;
        if (item.contains("Sequence")) {
          piece.is_sequence = true;
        } else {
          const std::string name = item.at("SpecialToken").at("id").get<std::string>();
          if (!specials.contains(name)) {
            return Error(
                Cat("post_processor template names special token '", name, "' not in special_tokens"));
          }
          piece.ids = specials.at(name).at("ids").get<std::vector<int32_t>>();
        }
        pieces.push_back(std::move(piece));
      }
      spec.single_template = std::move(pieces);
    } else if (type != "ByteLevel") {  // ByteLevel only trims offsets, which Tessera does not report
      return Error(Cat("post_processor type '", type, "' is not supported"));
    }
  } catch (const json::exception& e) {
    return Error(Cat("bad post_processor: ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseDecoder(const json& j, TokenizerSpec&) const {
  const std::string type = j.is_object() ? j.value("type", std::string()) : std::string();
  if (type != "ByteLevel") return Error(Cat("decoder type '", type, "' is not supported (only ByteLevel)"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TokenizerSpec> ParseTokenizerJson(std::string_view text, std::string_view source_name) {
  Parser parser(text, source_name);
  return parser.Parse();
}

}  // namespace tessera::tokenizer_internal
