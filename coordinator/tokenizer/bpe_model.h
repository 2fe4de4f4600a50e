// The BPE model of a byte-level tokenizer: vocabulary keyed by raw bytes, merges keyed by id pairs, and the
// merge loop (lowest rank first, leftmost on ties, exactly as Hugging Face's Word::merge_all).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "coordinator/tokenizer/tokenizer_json.h"

namespace tessera::tokenizer_internal {

// Working memory for BpeModel::EncodeWord; reuse it across words of one call. Not shared between threads.
struct BpeScratch {
  struct Symbol {
    int32_t id;  // -1 once merged into its left neighbour
    int32_t prev, next;
    uint32_t rank;   // of the pair (this, next), UINT32_MAX if none
    int32_t new_id;  // the pair's merged token
  };
  std::vector<int32_t> ids;
  std::vector<Symbol> symbols;
  std::vector<uint64_t> heap;
};

class BpeModel {
 public:
  // Builds the model from spec.vocab and spec.merges (which it consumes; spellings move into id_to_token).
  // Errors: INVALID_ARGUMENT naming source_name and the merge that names a token outside the vocabulary, or a
  // duplicate id.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<BpeModel>> Build(TokenizerSpec& spec,
                                                                       std::string_view source_name);

  // With ignore_merges, the id of a word (raw bytes) that is itself in the vocabulary; else nullopt.
  std::optional<int32_t> WholeWordId(std::string_view word) const {
    return ignore_merges_ ? RawToId(word) : std::nullopt;
  }
  // Appends the ids of one pre-tokenized word, given as raw bytes, found by merges (the caller has tried
  // WholeWordId first). Thread-safe (const) with one scratch per thread.
  void MergeWord(std::string_view word, BpeScratch& scratch, std::vector<int32_t>& out) const;

  // The id of a token given as raw bytes (only tokens written in the byte-level alphabet have one).
  std::optional<int32_t> RawToId(std::string_view raw) const;
  // The id of a token given as spelled in tokenizer.json ("Ġthe").
  std::optional<int32_t> SpellingToId(std::string_view spelling) const;

  // Spellings by id; empty strings for ids the vocabulary does not use. size() == 1 + the largest id.
  std::vector<std::string>& id_to_token() { return id_to_token_; }
  const std::vector<std::string>& id_to_token() const { return id_to_token_; }
  const std::vector<bool>& has_id() const { return has_id_; }

 private:
  struct Merge {
    uint32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  // Rank of the merge of (a, b), or UINT32_MAX.
  uint32_t Rank(int32_t a, int32_t b, int32_t* new_id) const {
    auto it = merges_.find(PairKey(a, b));
    if (it == merges_.end()) return UINT32_MAX;
    *new_id = it->second.new_id;
    return it->second.rank;
  }
  void MergeSmall(BpeScratch& s) const;
  void MergeLarge(BpeScratch& s) const;

  absl::flat_hash_map<std::string, int32_t> raw_to_id_;
  absl::flat_hash_map<std::string, int32_t> other_to_id_;  // tokens outside the byte-level alphabet
  absl::flat_hash_map<uint64_t, Merge> merges_;
  int32_t byte_id_[256];  // id of each single-byte token, or -1
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
};

}  // namespace tessera::tokenizer_internal
