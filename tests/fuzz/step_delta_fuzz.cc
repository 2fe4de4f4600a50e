// libFuzzer target for the control plane's step deltas (worker/step_delta.h): a malicious coordinator's Step
// messages must not crash a worker nor let its forward pass read or write out of bounds. The input is a run
// of records [flags u8][length u16 LE][a serialized Step] applied in order to one SequenceTable (flags bit 0:
// the step's forward pass "runs", advancing num_computed_tokens as ModelRunner::Forward does; bit 1: then it
// "fails", and the step is undone). After every record the table must keep SequenceTable's invariants, a
// refused step or an undone one must leave it exactly as it was, and an accepted step's batch must pass every
// check of ModelRunner::Forward.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <tuple>
#include <vector>

#include "google/protobuf/stubs/logging.h"
#include "tessera/control/v1/control.pb.h"
#include "worker/step_delta.h"

namespace tessera {
namespace {

constexpr StepLimits kLimits{.vocab_size = 512,
                             .max_context = 256,
                             .num_kv_blocks = 64,
                             .block_size = kKvBlockSize,
                             .max_num_tokens = 512,
                             .max_num_seqs = 16};

void Fail(const char* what, uint64_t seq_id) {
  std::fprintf(stderr, "step_delta_fuzz: %s (sequence %llu)\n", what,
               static_cast<unsigned long long>(seq_id));
  std::abort();
}

// Everything a table entry holds, comparable.
using Snapshot = std::map<uint64_t, std::tuple<std::vector<int32_t>, std::vector<int32_t>, int, int, int, int,
                                               bool, std::vector<int32_t>, size_t, size_t>>;

Snapshot Take(const SequenceTable& table) {
  Snapshot out;
  for (const auto& [id, e] : table.sequences()) {
    const Sequence& s = e.seq;
    out[id] = {s.tokens,
               s.block_table,
               s.num_computed_tokens,
               s.num_prompt_tokens,
               s.min_tokens,
               e.prompt_logprobs,
               e.return_logits,
               e.prompt,
               s.logit_bias.size(),
               s.stop_token_ids.size()};
  }
  return out;
}

void CheckTable(const SequenceTable& table) {
  const int max_blocks =
      std::min(kLimits.num_kv_blocks, (kLimits.max_context + kLimits.block_size - 1) / kLimits.block_size);
  for (const auto& [id, e] : table.sequences()) {
    const Sequence& s = e.seq;
    if (s.id != id) Fail("an entry's id differs from its key", id);
    if (static_cast<int>(s.tokens.size()) > kLimits.max_context) Fail("more tokens than the context", id);
    if (s.num_computed_tokens < 0 || s.num_computed_tokens > static_cast<int>(s.tokens.size())) {
      Fail("num_computed_tokens outside [0, tokens]", id);
    }
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= kLimits.vocab_size) Fail("a token outside the vocabulary", id);
    }
    for (int32_t t : e.prompt) {
      if (t < 0 || t >= kLimits.vocab_size) Fail("a prompt token outside the vocabulary", id);
    }
    if (static_cast<int>(s.block_table.size()) > max_blocks) Fail("a block table longer than usable", id);
    for (int32_t b : s.block_table) {
      if (b < 0 || b >= kLimits.num_kv_blocks) Fail("a block id outside the KV cache", id);
    }
    if (e.seq.sampling.top_logprobs > kMaxTopLogprobs || e.prompt_logprobs > kMaxTopLogprobs) {
      Fail("top_logprobs above the maximum", id);
    }
  }
}

// ModelRunner::BuildBatch's checks, and the KV cache slots its slot_mapping would address.
void CheckBatch(const SequenceTable& table) {
  std::set<const Sequence*> seen;
  int64_t num_tokens = 0;
  for (const Sequence* s : table.batch()) {
    if (!seen.insert(s).second) Fail("a sequence twice in the batch", s->id);
    const int len = static_cast<int>(s->tokens.size());
    if (s->num_computed_tokens >= len) Fail("a scheduled sequence without a new token", s->id);
    if (static_cast<int64_t>(s->block_table.size()) * kLimits.block_size < len)
      Fail("a short block table", s->id);
    for (int p = s->num_computed_tokens; p < len; ++p) {
      const int64_t slot =
          int64_t{s->block_table[p / kLimits.block_size]} * kLimits.block_size + p % kLimits.block_size;
      if (slot < 0 || slot >= int64_t{kLimits.num_kv_blocks} * kLimits.block_size)
        Fail("a slot outside the cache", s->id);
    }
    num_tokens += len - s->num_computed_tokens;
  }
  if (num_tokens > kLimits.max_num_tokens || static_cast<int>(table.batch().size()) > kLimits.max_num_seqs) {
    Fail("a step over max_num_tokens / max_num_seqs", 0);
  }
  for (const auto& [src, dst] : table.copies()) {
    if (src < 0 || src >= kLimits.num_kv_blocks || dst < 0 || dst >= kLimits.num_kv_blocks || src == dst) {
      Fail("a bad block copy", 0);
    }
  }
}

}  // namespace
}  // namespace tessera

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  static const bool quiet = (google::protobuf::SetLogHandler(nullptr), true);  // parse errors are no news
  (void)quiet;
  SequenceTable table;
  control::v1::Step step;
  size_t pos = 0;
  while (size - pos >= 3) {
    const uint8_t flags = data[pos];
    const size_t length = std::min<size_t>(data[pos + 1] | (size_t{data[pos + 2]} << 8), size - pos - 3);
    pos += 3;
    const bool parsed = step.ParseFromArray(data + pos, static_cast<int>(length));
    pos += length;
    if (!parsed) continue;  // the worker refuses bytes that are not a Step before touching its table
    const Snapshot before = Take(table);
    const absl::Status status = table.Apply(step, kLimits);
    CheckTable(table);
    if (!status.ok()) {
      if (status.code() != absl::StatusCode::kInvalidArgument || status.message().empty()) {
        Fail("a refusal that is not INVALID_ARGUMENT with a message", 0);
      }
      if (Take(table) != before) Fail("a refused step changed the table", 0);
      continue;
    }
    CheckBatch(table);
    if ((flags & 1) == 0) continue;
    for (Sequence* s : table.batch()) s->num_computed_tokens = static_cast<int>(s->tokens.size());
    if ((flags & 2) != 0) {
      table.Undo();
      CheckTable(table);
      if (Take(table) != before) Fail("an undone step did not restore the table", 0);
    }
  }
  return 0;
}
