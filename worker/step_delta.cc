// SequenceTable: a Step delta applied field by field, every change recorded so that an error (or a failed
// forward pass) puts the table back as it was.
#include "worker/step_delta.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace tessera {
namespace {

namespace cv1 = control::v1;

int CeilDiv(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// The most blocks one sequence can use: as many as hold max_context tokens, and no more than the cache has.
int MaxBlocksPerSeq(const StepLimits& limits) {
  return std::min(limits.num_kv_blocks, CeilDiv(limits.max_context, limits.block_size));
}

// OK when every id of `tokens` is in [0, vocab_size); else INVALID_ARGUMENT "<who>: <what> T is outside ...".
template <typename Tokens>
absl::Status CheckVocab(const Tokens& tokens, int vocab_size, const std::string& who, const char* what) {
  for (int32_t token : tokens) {
    if (token < 0 || token >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, ": ", what, " ", token, " is outside the vocabulary [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

const SequenceEntry* SequenceTable::Find(uint64_t id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : &it->second;
}

void SequenceTable::Clear() {
  seqs_.clear();
  ForgetStep();
}

void SequenceTable::ForgetStep() {
  removed_.clear();
  added_.clear();
  appended_.clear();
  batch_.clear();
  copies_.clear();
  can_undo_ = false;
}

void SequenceTable::Rollback() {
  for (const Appended& a : appended_) {
    a.seq->tokens.resize(a.num_tokens);
    a.seq->block_table.resize(a.num_blocks);
    a.seq->num_computed_tokens = a.num_computed_tokens;
  }
  for (uint64_t id : added_) seqs_.erase(id);
  for (auto& [id, entry] : removed_) seqs_.emplace(id, std::move(entry));
  ForgetStep();
}

void SequenceTable::Undo() {
  if (!can_undo_) return;
  can_undo_ = false;
  Rollback();
}

absl::Status SequenceTable::Apply(const cv1::Step& step, const StepLimits& limits) {
  ForgetStep();
  const uint64_t mark = ++apply_counter_;
  auto fail = [&](absl::Status status) {
    Rollback();
    return status;
  };
  for (uint64_t id : step.finished()) {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) {
      return fail(absl::InvalidArgumentError(absl::StrCat("finished sequence ", id, " is unknown")));
    }
    removed_.emplace_back(id, std::move(it->second));
    seqs_.erase(it);
  }
  for (const cv1::NewSequence& n : step.new_sequences()) {
    if (absl::Status added = AddSequence(n, limits); !added.ok()) return fail(added);
  }
  for (const cv1::BlockCopy& c : step.copies()) {
    if (c.src() < 0 || c.src() >= limits.num_kv_blocks || c.dst() < 0 || c.dst() >= limits.num_kv_blocks ||
        c.src() == c.dst()) {
      return fail(absl::InvalidArgumentError(absl::StrCat("block copy ", c.src(), " -> ", c.dst(),
                                                          ": ids must differ and lie in [0, ",
                                                          limits.num_kv_blocks, ")")));
    }
    copies_.emplace_back(c.src(), c.dst());
  }
  int64_t num_tokens = 0;
  for (int row = 0; row < step.scheduled_size(); ++row) {
    if (absl::Status scheduled = Schedule(step.scheduled(row), row, mark, limits, num_tokens);
        !scheduled.ok()) {
      return fail(scheduled);
    }
  }
  if (num_tokens > limits.max_num_tokens || static_cast<int>(batch_.size()) > limits.max_num_seqs) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "step of ", num_tokens, " tokens in ", batch_.size(), " sequences exceeds max_num_tokens=",
        limits.max_num_tokens, " / max_num_seqs=", limits.max_num_seqs)));
  }
  can_undo_ = true;
  return absl::OkStatus();
}

absl::Status SequenceTable::AddSequence(const cv1::NewSequence& n, const StepLimits& limits) {
  const cv1::SamplingParams& sp = n.sampling();
  const std::string who = absl::StrCat("new sequence ", n.seq_id());
  if (n.num_prompt_tokens() < 0 || sp.temperature() < 0 || sp.top_k() < 0 || sp.top_p() < 0 ||
      sp.top_p() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, ": num_prompt_tokens=", n.num_prompt_tokens(), ", temperature=", sp.temperature(),
                     ", top_k=", sp.top_k(), ", top_p=", sp.top_p(),
                     " (want num_prompt_tokens, temperature, top_k >= 0 and top_p in [0, 1])"));
  }
  for (const auto& [field, size] : {std::pair<const char*, int>{"cached_tokens", n.cached_tokens_size()},
                                    std::pair<const char*, int>{"prompt_tokens", n.prompt_tokens_size()}}) {
    if (size > limits.max_context) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, ": ", size, " ", field, ", more than max_position_embeddings=", limits.max_context));
    }
  }
  // Checked before the sequence exists, so that a failed check leaves nothing to undo here.
  RETURN_IF_ERROR(CheckVocab(n.prompt_tokens(), limits.vocab_size, who, "prompt token"));
  RETURN_IF_ERROR(CheckVocab(n.cached_tokens(), limits.vocab_size, who, "cached token"));
  auto [it, inserted] = seqs_.try_emplace(n.seq_id());
  if (!inserted) return absl::InvalidArgumentError(absl::StrCat(who, " already exists"));
  added_.push_back(n.seq_id());
  SequenceEntry& entry = it->second;
  Sequence& seq = entry.seq;
  seq.id = n.seq_id();
  seq.num_prompt_tokens = n.num_prompt_tokens();
  seq.sampling.temperature = sp.temperature();
  seq.sampling.top_k = sp.top_k();
  seq.sampling.top_p = sp.top_p() > 0 ? sp.top_p() : 1.0f;  // proto3's unset 0 means off, like 1
  seq.sampling.seed = sp.seed();
  seq.sampling.min_p = sp.min_p();
  seq.sampling.repetition_penalty = sp.repetition_penalty() > 0 ? sp.repetition_penalty() : 1.0f;  // 0: off
  seq.sampling.presence_penalty = sp.presence_penalty();
  seq.sampling.frequency_penalty = sp.frequency_penalty();
  seq.sampling.top_logprobs = sp.logprobs() ? std::clamp(sp.top_logprobs(), 0, kMaxTopLogprobs) : -1;
  for (const auto& [token, bias] : sp.logit_bias()) seq.logit_bias.push_back({token, bias});
  std::sort(seq.logit_bias.begin(), seq.logit_bias.end(),  // the map's order is unspecified
            [](const LogitBias& a, const LogitBias& b) { return a.token < b.token; });
  seq.stop_token_ids.assign(sp.stop_token_ids().begin(), sp.stop_token_ids().end());
  seq.min_tokens = sp.min_tokens();
  entry.return_logits = n.return_logits();
  entry.prompt_logprobs = sp.prompt_logprobs() ? std::clamp(sp.top_logprobs(), 0, kMaxTopLogprobs) : -1;
  entry.prompt.assign(n.prompt_tokens().begin(), n.prompt_tokens().end());
  // A cached or shared prefix: in the blocks the first scheduled entry brings, computed already.
  seq.tokens.assign(n.cached_tokens().begin(), n.cached_tokens().end());
  seq.num_computed_tokens = n.cached_tokens_size();
  return absl::OkStatus();
}

absl::Status SequenceTable::Schedule(const cv1::ScheduledSequence& s, int row, uint64_t mark,
                                     const StepLimits& limits, int64_t& num_tokens) {
  auto it = seqs_.find(s.seq_id());
  if (it == seqs_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("scheduled sequence ", s.seq_id(), " is unknown"));
  }
  if (it->second.scheduled_mark == mark) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", s.seq_id(), " is scheduled twice"));
  }
  const std::string who = absl::StrCat("sequence ", s.seq_id(), " (row ", row, " of the step)");
  Sequence& seq = it->second.seq;
  // Checked before anything is appended: a sequence never holds a token or block id out of range.
  const int64_t len = static_cast<int64_t>(seq.tokens.size()) + s.tokens_size();
  if (len > limits.max_context) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, " has ", len, " tokens, more than max_position_embeddings=", limits.max_context));
  }
  for (int i = 0; i < s.tokens_size(); ++i) {
    const int32_t token = s.tokens(i);
    if (token < 0 || token >= limits.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, ": token id ", token, " at position ", seq.tokens.size() + static_cast<size_t>(i),
                       " is outside the vocabulary [0, ", limits.vocab_size, ")"));
    }
  }
  for (int i = 0; i < s.new_block_ids_size(); ++i) {
    const int32_t block = s.new_block_ids(i);
    if (block < 0 || block >= limits.num_kv_blocks) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, ": block id ", block, " at index ", seq.block_table.size() + static_cast<size_t>(i),
          " of its block table is outside [0, ", limits.num_kv_blocks, ")"));
    }
  }
  const int64_t num_blocks = static_cast<int64_t>(seq.block_table.size()) + s.new_block_ids_size();
  if (num_blocks > MaxBlocksPerSeq(limits)) {
    return absl::InvalidArgumentError(absl::StrCat(who, " has a block table of ", num_blocks,
                                                   " blocks, more than the ", MaxBlocksPerSeq(limits),
                                                   " a sequence can use"));
  }
  if (len <= seq.num_computed_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(who, " has no new token to compute"));
  }
  const int needed = CeilDiv(len, limits.block_size);
  if (num_blocks < needed) {
    return absl::InvalidArgumentError(absl::StrCat(who, " has ", len, " tokens but a block table of ",
                                                   num_blocks, " blocks (", needed, " needed)"));
  }
  it->second.scheduled_mark = mark;
  appended_.push_back({&seq, seq.tokens.size(), seq.block_table.size(), seq.num_computed_tokens});
  seq.tokens.insert(seq.tokens.end(), s.tokens().begin(), s.tokens().end());
  seq.block_table.insert(seq.block_table.end(), s.new_block_ids().begin(), s.new_block_ids().end());
  batch_.push_back(&seq);
  num_tokens += len - seq.num_computed_tokens;
  return absl::OkStatus();
}

}  // namespace tessera
