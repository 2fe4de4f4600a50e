// The tokenizer files of a snapshot imported from GGUF: tokenizer.json (byte-level BPE, the pre-tokenizer
// that tokenizer.ggml.pre names) and tokenizer_config.json (special tokens, chat template), as Hugging Face
// writes them.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "worker/checkpoint/gguf_file.h"

namespace tessera {

struct GgufTokenizerFiles {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
};

// Builds both files from tokenizer.ggml.* and tokenizer.chat_template*. Only tokenizer.ggml.model "gpt2" is
// converted: every token goes into the BPE vocab (the first of duplicate spellings keeps it), tokens of type
// 3 (control) and 4 (user-defined) also become added_tokens (special for control), merges are kept in order.
// tokenizer.ggml.pre picks the pre-tokenizer: "llama-bpe" (Llama 3's Split regex then ByteLevel;
// ignore_merges), "smollm" (Digits, then ByteLevel with the GPT-2 regex), "gpt2" or absent (ByteLevel with
// the GPT-2 regex). add_bos_token (default true for llama-bpe, else false) and add_eos_token give a
// TemplateProcessing post-processor. model_max_length goes into tokenizer_config.json. Errors name the file
// and key: NOT_FOUND for missing tokenizer metadata (or a bos / eos id that add_*_token needs);
// INVALID_ARGUMENT for another tokenizer model, an unknown pre value, token types or ids out of range, a
// merge that is not two tokens separated by one space, or a string that is not valid UTF-8.
[[nodiscard]] absl::StatusOr<GgufTokenizerFiles> TokenizerFilesFromGguf(const GgufFile& file,
                                                                        int model_max_length);

}  // namespace tessera
