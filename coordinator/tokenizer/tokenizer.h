// Tessera's tokenizer: Hugging Face byte-level BPE tokenizers (the Llama 3 family and others written the same
// way) loaded from tokenizer.json, encoding and decoding exactly as the `tokenizers` library does.
// Loading also reads tokenizer_config.json (bos / eos tokens, chat template) when it is present.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera {

namespace tokenizer_internal {
class AddedTokenSplitter;
class BpeModel;
class PreTokenizer;
struct TemplatePiece;
}  // namespace tokenizer_internal

// The parts of tokenizer_config.json that Tessera uses. Every field keeps its default when the file or the
// entry is absent.
struct TokenizerConfig {
  std::string bos_token, eos_token, pad_token;  // a string or {"content": ...} in the file
  // chat_template: a string, or the entry named "default" of a list of {name, template} (empty if it has
  // none).
  std::string chat_template;
  std::map<std::string, std::string> named_chat_templates;  // every entry of such a list, by name
  bool add_bos_token = true;
  bool add_eos_token = false;
  bool clean_up_tokenization_spaces = false;  // recorded only: Decode never applies it (as `tokenizers`)
};

class Tokenizer {
 public:
  // Loads DIR/tokenizer.json and, if present, DIR/tokenizer_config.json. Errors: NOT_FOUND when
  // tokenizer.json cannot be read; otherwise those of FromJson, naming the file.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir);

  // Builds a tokenizer from the text of a tokenizer.json and of a tokenizer_config.json (may be empty).
  // source_name names the files in errors. Errors: INVALID_ARGUMENT naming the file and the problem: bad JSON
  // (with the byte offset), no model, a model type other than BPE, no vocab, a merge naming a token outside
  // the vocabulary, a pre-tokenizer regex that does not compile (PCRE2's message and the offset), an
  // unsupported normalizer / pre-tokenizer / decoder / post-processor / model option.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view tokenizer_json,
                                                                           std::string_view config_json,
                                                                           std::string_view source_name);
  ~Tokenizer();

  // The ids of `text`, identical to HF tokenizers' encode(text, add_special_tokens).ids: added-token text in
  // the input (e.g. "<|eot_id|>") is always recognised; add_special_tokens applies the TemplateProcessing
  // post-processor (Llama 3.1: a leading <|begin_of_text|>). Errors: INVALID_ARGUMENT for text that is not
  // valid UTF-8, naming the byte offset of the first bad byte; INTERNAL if PCRE2 gives up on the input.
  // Thread-safe (const).
  [[nodiscard]] absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                                            bool add_special_tokens) const;

  // The text of `ids`, identical to HF tokenizers' decode(ids, skip_special_tokens) (with no
  // clean_up_tokenization_spaces, which is a transformers-level edit). Bytes that do not form valid UTF-8
  // become U+FFFD exactly as HF does. Errors: INVALID_ARGUMENT naming the first id outside the vocabulary (HF
  // drops such ids silently). Thread-safe (const).
  [[nodiscard]] absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids,
                                                   bool skip_special_tokens) const;

  // The raw bytes id adds to Decode's output before UTF-8 repair: empty for a special token when
  // skip_special_tokens. Errors: INVALID_ARGUMENT naming an id outside the vocabulary. For streaming
  // decoders.
  [[nodiscard]] absl::StatusOr<std::string_view> DecodedBytes(int32_t id, bool skip_special_tokens) const;

  // One more than the largest id, counting added tokens (Llama 3: 128256).
  int vocab_size() const;
  // The id of a token as spelled in tokenizer.json ("Ġthe", "<|eot_id|>"); added tokens first.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // Whether id is an added token marked special.
  bool IsSpecial(int32_t id) const;
  const TokenizerConfig& config() const { return config_; }

 private:
  Tokenizer();
  [[nodiscard]] absl::Status Build(std::string_view tokenizer_json, std::string_view config_json,
                                   std::string_view source_name);
  bool ValidId(int32_t id) const;

  TokenizerConfig config_;
  std::unique_ptr<tokenizer_internal::BpeModel> model_;
  std::unique_ptr<tokenizer_internal::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<tokenizer_internal::AddedTokenSplitter> added_splitter_;
  std::unique_ptr<std::vector<tokenizer_internal::TemplatePiece>> single_template_;
  std::map<std::string, int32_t, std::less<>> added_token_ids_;  // content -> id
  std::vector<uint8_t> id_flags_;                                // kKnown | kSpecial per id
  std::string decoded_;                                          // decoded bytes of all ids, concatenated
  std::vector<uint32_t> decoded_offsets_;                        // id -> [offsets[id], offsets[id + 1])
};

}  // namespace tessera
