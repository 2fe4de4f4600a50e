// Tokenizer: loading (tokenizer.json + tokenizer_config.json), Encode with a per-call word cache, Decode.
#include "coordinator/tokenizer/tokenizer.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "coordinator/tokenizer/added_tokens.h"
#include "coordinator/tokenizer/bpe_model.h"
#include "coordinator/tokenizer/pre_tokenizer.h"
#include "coordinator/tokenizer/tokenizer_json.h"
#include "coordinator/tokenizer/utf8.h"
#include "core/status_macros.h"

namespace tessera {
namespace {

constexpr uint8_t kKnown = 1;
constexpr uint8_t kSpecial = 2;
// The word cache of one Encode call holds at most this many words of at most kMaxCachedWord bytes.
constexpr size_t kMaxCacheEntries = 1 << 16;
constexpr size_t kMaxCachedWord = 128;

absl::Status ReadFile(const std::string& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(Cat("cannot open ", path));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(Cat("cannot read ", path));
  out = std::move(buffer).str();
  return absl::OkStatus();
}

// Reads a token field that is either a string or {"content": ...}.
std::string TokenField(const nlohmann::json& config, const char* name) {
  auto it = config.find(name);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return "";
}

absl::Status ParseConfig(std::string_view text, std::string_view source_name, TokenizerConfig& config) {
  try {
    const nlohmann::json j = nlohmann::json::parse(text.begin(), text.end());
    if (!j.is_object()) return absl::InvalidArgumentError(Cat(source_name, ": not a JSON object"));
    config.bos_token = TokenField(j, "bos_token");
    config.eos_token = TokenField(j, "eos_token");
    config.pad_token = TokenField(j, "pad_token");
    if (auto it = j.find("chat_template"); it != j.end() && !it->is_null()) {
      if (it->is_string()) {
        config.chat_template = it->get<std::string>();
      } else if (it->is_array()) {
        for (const auto& entry : *it) {
          config.named_chat_templates[entry.at("name").get<std::string>()] =
              entry.at("template").get<std::string>();
        }
        if (auto d = config.named_chat_templates.find("default"); d != config.named_chat_templates.end()) {
          config.chat_template = d->second;
        }
      } else {
        return absl::InvalidArgumentError(Cat(source_name, ": chat_template is neither a string nor a list"));
      }
    }
    config.add_bos_token = j.value("add_bos_token", true);
    config.add_eos_token = j.value("add_eos_token", false);
    config.clean_up_tokenization_spaces = j.value("clean_up_tokenization_spaces", false);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(Cat(source_name, ": bad JSON: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir) {
  const std::string json_path = model_dir + "/tokenizer.json";
  const std::string config_path = model_dir + "/tokenizer_config.json";
  std::string json_text, config_text;
  RETURN_IF_ERROR(ReadFile(json_path, json_text));
  if (std::ifstream(config_path).good()) RETURN_IF_ERROR(ReadFile(config_path, config_text));
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer());
  RETURN_IF_ERROR(tokenizer->Build(json_text, "", json_path));
  if (!config_text.empty()) RETURN_IF_ERROR(ParseConfig(config_text, config_path, tokenizer->config_));
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view tokenizer_json,
                                                               std::string_view config_json,
                                                               std::string_view source_name) {
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer());
  RETURN_IF_ERROR(tokenizer->Build(tokenizer_json, config_json, source_name));
  return tokenizer;
}

absl::Status Tokenizer::Build(std::string_view tokenizer_json, std::string_view config_json,
                              std::string_view source_name) {
  using namespace tokenizer_internal;  // NOLINT(build/namespaces)
  ASSIGN_OR_RETURN(TokenizerSpec spec, ParseTokenizerJson(tokenizer_json, source_name));
  ASSIGN_OR_RETURN(pre_tokenizer_, PreTokenizer::Create(spec.pre_tokenizer, source_name));
  ASSIGN_OR_RETURN(added_splitter_, AddedTokenSplitter::Create(spec.added_tokens));
  ASSIGN_OR_RETURN(model_, BpeModel::Build(spec, source_name));
  if (spec.single_template) {
    single_template_ = std::make_unique<std::vector<TemplatePiece>>(std::move(*spec.single_template));
  }
  if (!config_json.empty()) RETURN_IF_ERROR(ParseConfig(config_json, Cat(source_name, " (config)"), config_));

  // Per-id flags and decoded bytes: the model's spellings, overridden by added tokens.
  std::vector<std::string>& spellings = model_->id_to_token();
  size_t size = spellings.size();
  for (const AddedTokenSpec& t : spec.added_tokens) size = std::max(size, static_cast<size_t>(t.id) + 1);
  id_flags_.assign(size, 0);
  for (size_t id = 0; id < spellings.size(); ++id) id_flags_[id] = model_->has_id()[id] ? kKnown : 0;
  std::vector<const std::string*> text_of(size, nullptr);
  for (size_t id = 0; id < spellings.size(); ++id) text_of[id] = &spellings[id];
  for (const AddedTokenSpec& t : spec.added_tokens) {
    id_flags_[t.id] = kKnown | (t.special ? kSpecial : 0);
    text_of[t.id] = &t.content;
    added_token_ids_[t.content] = t.id;
  }
  decoded_offsets_.assign(size + 1, 0);
  decoded_.reserve(size * 7);
  std::string raw;
  for (size_t id = 0; id < size; ++id) {
    decoded_offsets_[id] = static_cast<uint32_t>(decoded_.size());
    if (!(id_flags_[id] & kKnown)) continue;
    // HF's ByteLevel decoder: a token whose characters are all byte-level characters becomes those bytes;
    // any other token contributes its UTF-8 text unchanged.
    if (ByteLevelToBytes(*text_of[id], raw)) {
      decoded_ += raw;
    } else {
      decoded_ += *text_of[id];
    }
  }
  decoded_offsets_[size] = static_cast<uint32_t>(decoded_.size());
  return absl::OkStatus();
}

bool Tokenizer::ValidId(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < id_flags_.size() && (id_flags_[id] & kKnown);
}

int Tokenizer::vocab_size() const { return static_cast<int>(id_flags_.size()); }

bool Tokenizer::IsSpecial(int32_t id) const { return ValidId(id) && (id_flags_[id] & kSpecial); }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (auto it = added_token_ids_.find(token); it != added_token_ids_.end()) return it->second;
  return model_->SpellingToId(token);
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  using namespace tokenizer_internal;  // NOLINT(build/namespaces)
  if (const size_t bad = FindInvalidUtf8(text); bad != std::string_view::npos) {
    return absl::InvalidArgumentError(Cat("text is not valid UTF-8: byte 0x",
                                          absl::Hex(static_cast<uint8_t>(text[bad]), absl::kZeroPad2),
                                          " at byte offset ", bad));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 4 + 4);
  PreTokenizerScratch pre_scratch;
  BpeScratch bpe_scratch;
  // Words that needed merges, keyed by their bytes in `text` (or pre_scratch): start and count in cache_ids.
  absl::flat_hash_map<absl::string_view, uint64_t> cache;
  std::vector<int32_t> cache_ids;
  const auto encode_word = [&](std::string_view word) {
    if (auto id = model_->WholeWordId(word)) {
      ids.push_back(*id);
      return;
    }
    const absl::string_view key(word.data(), word.size());
    if (auto it = cache.find(key); it != cache.end()) {
      const size_t start = it->second >> 32, count = it->second & 0xFFFFFFFFu;
      ids.insert(ids.end(), cache_ids.begin() + start, cache_ids.begin() + start + count);
      return;
    }
    const size_t before = ids.size();
    model_->MergeWord(word, bpe_scratch, ids);
    if (word.size() <= kMaxCachedWord && cache.size() < kMaxCacheEntries) {
      cache.emplace(key, (static_cast<uint64_t>(cache_ids.size()) << 32) | (ids.size() - before));
      cache_ids.insert(cache_ids.end(), ids.begin() + before, ids.end());
    }
  };
  absl::Status status;
  added_splitter_->Split(
      text,
      [&](std::string_view piece) {
        if (status.ok()) status = pre_tokenizer_->Run(piece, pre_scratch, encode_word);
      },
      [&](int32_t id) { ids.push_back(id); });
  RETURN_IF_ERROR(status);
  if (add_special_tokens && single_template_) {
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const TemplatePiece& piece : *single_template_) {
      if (piece.is_sequence) {
        out.insert(out.end(), ids.begin(), ids.end());
      } else {
        out.insert(out.end(), piece.ids.begin(), piece.ids.end());
      }
    }
    return out;
  }
  return ids;
}

absl::StatusOr<std::string_view> Tokenizer::DecodedBytes(int32_t id, bool skip_special_tokens) const {
  if (!ValidId(id)) {
    return absl::InvalidArgumentError(
        Cat("token id ", id, " is outside the vocabulary (size ", vocab_size(), ")"));
  }
  if (skip_special_tokens && (id_flags_[id] & kSpecial)) return std::string_view();
  return std::string_view(decoded_).substr(decoded_offsets_[id],
                                           decoded_offsets_[id + 1] - decoded_offsets_[id]);
}

absl::StatusOr<std::string> Tokenizer::Decode(const std::vector<int32_t>& ids,
                                              bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    ASSIGN_OR_RETURN(std::string_view b, DecodedBytes(id, skip_special_tokens));
    bytes.append(b);
  }
  std::string text;
  text.reserve(bytes.size());
  tokenizer_internal::AppendUtf8Lossy(bytes, text);
  return text;
}

}  // namespace tessera
