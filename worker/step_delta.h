// SequenceTable: the batch every worker keeps between steps (its sequences by id) and the coordinator's step
// deltas (control.proto's Step) applied to it, checked so that the forward pass that follows reads and writes
// only inside the KV cache, the vocabulary and the context, and undone exactly when the step fails. Pure host
// bookkeeping (no backend, no model), so that it can be fuzzed on its own (tests/fuzz/step_delta_fuzz.cc).
#pragma once

#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "tessera/control/v1/control.pb.h"
#include "worker/model_runner.h"

namespace tessera {

// What a step may ask of this worker: the model's and the KV cache's sizes and the step limits of its
// AssignShard.
struct StepLimits {
  int vocab_size = 0;
  int max_context = 0;    // max_position_embeddings: the most tokens a sequence may hold
  int num_kv_blocks = 0;  // block ids lie in [0, num_kv_blocks)
  int block_size = kKvBlockSize;
  int max_num_tokens = 0;  // new tokens in one step
  int max_num_seqs = 0;    // sequences in one step
};

// One sequence of the table, with what the output rank needs besides the runner's Sequence.
struct SequenceEntry {
  Sequence seq;
  uint64_t scheduled_mark = 0;  // the number of the last Apply that scheduled it
  bool return_logits = false;   // the output rank returns the rows its tokens are sampled from
  // The output rank returns the logprob of the prompt token after each prompt position computed (with this
  // many alternatives; -1: none). The coordinator computes such prompts one token a step.
  int prompt_logprobs = -1;
  std::vector<int32_t> prompt;  // with prompt_logprobs: the whole prompt
};

// Invariants after every Apply, successful or not (and after Undo): every token a sequence holds is in
// [0, vocab_size), no sequence holds more than max_context tokens, and every block id of a block table is in
// [0, num_kv_blocks), with at most min(num_kv_blocks, ceil(max_context / block_size)) blocks per table. After
// a successful Apply every sequence of batch() also has a new token to compute (num_computed_tokens <
// tokens.size()) and a block table that covers its tokens, and the batch holds at most max_num_seqs sequences
// and max_num_tokens new tokens: what ModelRunner::Forward checks. Not thread-safe.
class SequenceTable {
 public:
  SequenceTable() = default;
  SequenceTable(const SequenceTable&) = delete;
  SequenceTable& operator=(const SequenceTable&) = delete;

  // Applies `step` in the proto's order: forgets `finished`, adds `new_sequences`, checks `copies`, then
  // appends each scheduled sequence's tokens and new_block_ids. On success batch() holds the scheduled
  // sequences in step order and copies() the block copies; the step can be undone (Undo) until the next
  // Apply or Clear. Errors: INVALID_ARGUMENT naming the culprit (sequence id, row, token, block id, field)
  // for an unknown finished or scheduled sequence, a new sequence that exists already, bad sampling fields,
  // token ids outside the vocabulary, more tokens than the context, block ids outside the KV cache (copies
  // too: src != dst), a sequence scheduled twice or without a new token, a block table that does not cover
  // its sequence's tokens or is longer than a sequence can use, a step over max_num_tokens / max_num_seqs.
  // On error the table is as it was before the call.
  [[nodiscard]] absl::Status Apply(const control::v1::Step& step, const StepLimits& limits);
  // Undoes the last successful Apply (its forward pass failed): the table is exactly as before it, including
  // the num_computed_tokens that a forward pass advanced.
  void Undo();
  // Forgets every sequence (a Reset).
  void Clear();

  // The sequences the last successful Apply scheduled, in step order (pointers valid until the next Apply,
  // Undo or Clear).
  const std::vector<Sequence*>& batch() const { return batch_; }
  // The last successful Apply's block copies (src, dst), in step order.
  const std::vector<std::pair<int32_t, int32_t>>& copies() const { return copies_; }

  // The sequence `id`, or nullptr.
  const SequenceEntry* Find(uint64_t id) const;
  int size() const { return static_cast<int>(seqs_.size()); }
  const std::unordered_map<uint64_t, SequenceEntry>& sequences() const { return seqs_; }

 private:
  // A scheduled sequence's sizes before the step.
  struct Appended {
    Sequence* seq;
    size_t num_tokens;
    size_t num_blocks;
    int num_computed_tokens;
  };
  [[nodiscard]] absl::Status AddSequence(const control::v1::NewSequence& n, const StepLimits& limits);
  [[nodiscard]] absl::Status Schedule(const control::v1::ScheduledSequence& s, int row, uint64_t mark,
                                      const StepLimits& limits, int64_t& num_tokens);
  void Rollback();
  // Forgets the last step's undo record and batch (the sequences stay).
  void ForgetStep();

  std::unordered_map<uint64_t, SequenceEntry> seqs_;
  uint64_t apply_counter_ = 0;
  bool can_undo_ = false;
  // What the last Apply changed; kept to reuse their capacity.
  std::vector<std::pair<uint64_t, SequenceEntry>> removed_;
  std::vector<uint64_t> added_;
  std::vector<Appended> appended_;
  std::vector<Sequence*> batch_;
  std::vector<std::pair<int32_t, int32_t>> copies_;
};

}  // namespace tessera
