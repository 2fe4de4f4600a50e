#include "worker/model/batch.h"

namespace tessera {

void HostBatch::Clear() {
  token_ids.clear();
  positions.clear();
  slot_mapping.clear();
  query_start.clear();
  seq_lens.clear();
  block_tables.clear();
  logit_rows.clear();
  max_blocks_per_seq = max_query_len = max_seq_len = 0;
}

}  // namespace tessera
