// BpeModel: vocabulary and merge tables, and the merge loop (a scan for short words, a heap for long ones).
#include "coordinator/tokenizer/bpe_model.h"

#include <algorithm>
#include <functional>

#include "coordinator/tokenizer/utf8.h"
#include "core/status_macros.h"

namespace tessera::tokenizer_internal {
namespace {
// Words up to this many symbols merge by scanning all pairs each step (O(n^2), fast for short words); longer
// ones use a heap (O(n log n)). Both merge the lowest-rank pair, leftmost on ties, so they agree exactly.
constexpr size_t kSmallWord = 48;
constexpr uint64_t kNoMerge = UINT64_MAX;
}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Build(TokenizerSpec& spec, std::string_view source_name) {
  std::unique_ptr<BpeModel> model(new BpeModel());
  model->ignore_merges_ = spec.ignore_merges;
  model->fuse_unk_ = spec.fuse_unk;
  std::fill(std::begin(model->byte_id_), std::end(model->byte_id_), -1);
  int32_t max_id = -1;
  for (const auto& [token, id] : spec.vocab) max_id = std::max(max_id, id);
  model->id_to_token_.resize(static_cast<size_t>(max_id + 1));
  model->has_id_.assign(static_cast<size_t>(max_id + 1), false);
  model->raw_to_id_.reserve(spec.vocab.size());
  std::string raw;
  for (auto& [token, id] : spec.vocab) {
    if (model->has_id_[id]) {
      return absl::InvalidArgumentError(Cat(source_name, ": model.vocab: id ", id, " is used by both \"",
                                            model->id_to_token_[id], "\" and \"", token, "\""));
    }
    model->has_id_[id] = true;
    if (ByteLevelToBytes(token, raw)) {
      if (raw.size() == 1) model->byte_id_[static_cast<uint8_t>(raw[0])] = id;
      model->raw_to_id_.emplace(raw, id);
    } else {
      model->other_to_id_.emplace(token, id);
    }
    model->id_to_token_[id] = std::move(token);
  }
  spec.vocab.clear();
  spec.vocab.shrink_to_fit();

  if (spec.unk_token) {
    auto id = model->SpellingToId(*spec.unk_token);
    if (!id) {
      return absl::InvalidArgumentError(
          Cat(source_name, ": model.unk_token \"", *spec.unk_token, "\" is not in the vocabulary"));
    }
    model->unk_id_ = *id;
  }

  model->merges_.reserve(spec.merges.size());
  std::string joined;
  for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
    const std::string& a = spec.merges[rank].first;   // not a structured binding: the lambda below captures
    const std::string& b = spec.merges[rank].second;  // them, which clang accepts only from version 16
    const auto unknown = [&](std::string_view token) {
      return absl::InvalidArgumentError(Cat(source_name, ": model.merges[", rank, "] \"", a, " ", b,
                                            "\" names token \"", token,
                                            "\", which is not in the vocabulary"));
    };
    const std::optional<int32_t> ida = model->SpellingToId(a);
    if (!ida) return unknown(a);
    const std::optional<int32_t> idb = model->SpellingToId(b);
    if (!idb) return unknown(b);
    joined.assign(a).append(b);
    const std::optional<int32_t> idm = model->SpellingToId(joined);
    if (!idm) return unknown(joined);
    model->merges_.insert_or_assign(PairKey(*ida, *idb), Merge{static_cast<uint32_t>(rank), *idm});
  }
  spec.merges.clear();
  spec.merges.shrink_to_fit();
  return model;
}

std::optional<int32_t> BpeModel::RawToId(std::string_view raw) const {
  auto it = raw_to_id_.find(absl::string_view(raw.data(), raw.size()));
  if (it == raw_to_id_.end()) return std::nullopt;
  return it->second;
}

std::optional<int32_t> BpeModel::SpellingToId(std::string_view spelling) const {
  std::string raw;
  if (ByteLevelToBytes(spelling, raw)) return RawToId(raw);
  auto it = other_to_id_.find(absl::string_view(spelling.data(), spelling.size()));
  if (it == other_to_id_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::MergeWord(std::string_view word, BpeScratch& s, std::vector<int32_t>& out) const {
  s.ids.clear();
  bool last_was_unk = false;
  for (char c : word) {
    const int32_t id = byte_id_[static_cast<uint8_t>(c)];
    if (id >= 0) {
      s.ids.push_back(id);
      last_was_unk = false;
    } else if (unk_id_ >= 0) {  // HF: an unknown character becomes unk; fuse_unk joins consecutive ones
      if (!(fuse_unk_ && last_was_unk)) s.ids.push_back(unk_id_);
      last_was_unk = true;
    }
  }
  if (s.ids.size() <= kSmallWord) {
    MergeSmall(s);
  } else {
    MergeLarge(s);
  }
  for (int32_t id : s.ids) {
    if (id >= 0) out.push_back(id);
  }
}

void BpeModel::MergeSmall(BpeScratch& s) const {
  std::vector<int32_t>& ids = s.ids;
  if (ids.size() < 2) return;
  // pair[i] = (rank << 32 | new id) of merging ids[i] and ids[i + 1], or kNoMerge.
  std::vector<uint64_t>& pair = s.heap;
  const auto merge_of = [&](int32_t a, int32_t b) {
    int32_t new_id = 0;
    const uint32_t rank = Rank(a, b, &new_id);
    return rank == UINT32_MAX ? kNoMerge
                              : (static_cast<uint64_t>(rank) << 32) | static_cast<uint32_t>(new_id);
  };
  pair.resize(ids.size() - 1);
  for (size_t i = 0; i + 1 < ids.size(); ++i) pair[i] = merge_of(ids[i], ids[i + 1]);
  while (!pair.empty()) {
    size_t best = 0;
    for (size_t i = 1; i < pair.size(); ++i) {
      if (pair[i] < pair[best]) best = i;
    }
    if (pair[best] == kNoMerge) break;
    ids[best] = static_cast<int32_t>(pair[best] & 0xFFFFFFFFu);
    ids.erase(ids.begin() + static_cast<ptrdiff_t>(best) + 1);
    pair.erase(pair.begin() + static_cast<ptrdiff_t>(best));
    if (best > 0) pair[best - 1] = merge_of(ids[best - 1], ids[best]);
    if (best < pair.size()) pair[best] = merge_of(ids[best], ids[best + 1]);
  }
}

void BpeModel::MergeLarge(BpeScratch& s) const {
  // One record per symbol, so that a merge touches few cache lines (the heap visits positions in rank order,
  // i.e. all over a long word).
  std::vector<BpeScratch::Symbol>& sym = s.symbols;
  const int32_t n = static_cast<int32_t>(s.ids.size());
  sym.resize(static_cast<size_t>(n));
  std::vector<uint64_t>& heap = s.heap;  // min-heap of (rank << 32 | left position); stale entries skipped
  heap.clear();
  const auto update = [&](int32_t pos) {  // recomputes the pair starting at pos; returns whether it merges
    BpeScratch::Symbol& x = sym[pos];
    x.rank = x.next < 0 ? UINT32_MAX : Rank(x.id, sym[x.next].id, &x.new_id);
    return x.rank != UINT32_MAX;
  };
  for (int32_t i = 0; i < n; ++i) sym[i] = {s.ids[i], i - 1, i + 1 < n ? i + 1 : -1, UINT32_MAX, -1};
  for (int32_t i = 0; i < n; ++i) {
    if (update(i)) heap.push_back((static_cast<uint64_t>(sym[i].rank) << 32) | static_cast<uint32_t>(i));
  }
  std::make_heap(heap.begin(), heap.end(), std::greater<>());
  const auto push = [&](int32_t pos) {
    if (!update(pos)) return;
    heap.push_back((static_cast<uint64_t>(sym[pos].rank) << 32) | static_cast<uint32_t>(pos));
    std::push_heap(heap.begin(), heap.end(), std::greater<>());
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const uint64_t top = heap.back();
    heap.pop_back();
    const int32_t pos = static_cast<int32_t>(top & 0xFFFFFFFFu);
    BpeScratch::Symbol& x = sym[pos];
    // Stale unless the symbol is alive and its pair still has this rank (a pair's rank changes whenever
    // either symbol changes, so an equal rank means the same merge).
    if (x.id < 0 || x.rank != static_cast<uint32_t>(top >> 32)) continue;
    BpeScratch::Symbol& right = sym[x.next];
    x.id = x.new_id;
    right.id = -1;
    x.next = right.next;
    if (x.next >= 0) sym[x.next].prev = pos;
    if (x.prev >= 0) push(x.prev);
    push(pos);
  }
  s.ids.clear();
  for (const BpeScratch::Symbol& x : sym) s.ids.push_back(x.id);  // merged-away symbols stay -1
}

}  // namespace tessera::tokenizer_internal
