// The model behind `tessera plan`: which tp x pp layouts of a Llama model fit a type of GPU, how much memory
// each rank needs (weights exactly as the loader slices them, activations as the runner allocates them, the
// KV cache in the rest), and a roofline of decode and prefill time from the GPU's published figures.
// Pure functions of their arguments: no files, no devices.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/parallel_config.h"
#include "worker/checkpoint/model_config.h"

namespace tessera::tools {

// Published figures of one GPU (SXM module, as in an HGX / DGX node); sources in planner.cc.
struct GpuSpec {
  std::string name;               // "h100-80gb"
  std::string description;        // "NVIDIA H100 SXM5 80GB"
  int64_t memory_bytes = 0;       // total device memory the CUDA driver reports
  double hbm_bytes_per_s = 0;     // HBM bandwidth
  double bf16_flops = 0;          // dense BF16 tensor-core peak (no sparsity)
  double nvlink_bytes_per_s = 0;  // NVLink bandwidth of one GPU, one direction
};

// h100-80gb, h200-141gb, a100-80gb, b200-180gb.
const std::vector<GpuSpec>& KnownGpus();
// NOT_FOUND naming `name` and listing the known GPUs.
[[nodiscard]] absl::StatusOr<GpuSpec> FindGpu(std::string_view name);

enum class KvCacheDtype { kBf16, kFp8 };
// "bf16" or "fp8"; INVALID_ARGUMENT otherwise.
[[nodiscard]] absl::StatusOr<KvCacheDtype> ParseKvCacheDtype(std::string_view text);
int KvDtypeBytes(KvCacheDtype dtype);

// Everything the plan depends on besides the model.
struct PlanOptions {
  GpuSpec gpu;
  int gpus_per_node = 8;
  int nodes = 0;          // the most nodes a layout may use; 0: the fewest on which some layout fits
  int max_model_len = 0;  // 0: the model's max_position_embeddings
  KvCacheDtype kv_cache_dtype = KvCacheDtype::kBf16;
  double gpu_memory_utilization = 0.90;  // the share of memory_bytes the process may use (vLLM's meaning)
  double network_bytes_per_s = 50e9;     // between nodes, per GPU (one 400 Gb/s NIC per GPU)
  int max_num_batched_tokens =
      2048;                // tokens in one step (serve's default): activation buffers, prefill chunks
  int max_num_seqs = 256;  // sequences in one step: logits buffers
  int prompt_len = 2048;   // the prefill figure's prompt, and each sequence's context in decode
  std::vector<int> batch_sizes = {1, 8, 32, 128};  // decode batch sizes (capped at what the KV cache holds)
  double collective_latency_s = 10e-6;             // fixed cost of every all-reduce, all-gather and send
};

// The nodes looked at when PlanOptions::nodes is 0.
inline constexpr int kMaxAutoNodes = 16;

// Memory of one rank, bytes.
struct RankMemory {
  int rank = 0;
  int64_t weight_bytes = 0;        // bf16 weights as the loader holds them on the GPU
  int64_t activation_bytes = 0;    // activation buffers, logits, workspaces, runtime reserve
  int64_t kv_bytes_per_token = 0;  // 2 x stage layers x local KV heads x head_dim x dtype bytes
  int64_t kv_budget_bytes = 0;     // capacity x utilization - weights - activations (may be negative)
};

// One decode batch size of a layout.
struct DecodePoint {
  int batch = 0;               // sequences in the running batch (split into up to pp micro-batches)
  double token_latency_s = 0;  // time between two tokens of one sequence
  double tokens_per_s = 0;     // batch / token_latency_s
};

struct Layout {
  int tp = 1;
  int pp = 1;
  int nodes = 1;
  int ranks_per_node = 1;          // ranks (GPUs) each node runs: TESSERA_LOCAL_RANKS
  std::vector<int> stage_layers;   // layers of each stage, as ParallelConfig splits them
  std::vector<RankMemory> ranks;   // every rank
  int64_t weight_bytes = 0;        // the largest over ranks
  int64_t activation_bytes = 0;    // the largest over ranks
  int64_t kv_cache_bytes = 0;      // the smallest budget over ranks: what --kv-cache-memory gets
  int64_t kv_bytes_per_token = 0;  // the largest over ranks
  int64_t kv_tokens = 0;           // tokens every rank's cache holds (whole 16-token blocks)
  int64_t max_batch = 0;           // sequences of max_model_len tokens the cache holds
  bool fits = false;               // the KV cache holds at least one sequence of max_model_len tokens
  std::vector<DecodePoint> decode;
  double prefill_s = 0;  // one prompt of prompt_len tokens, pure roofline
};

struct Plan {
  ModelConfig model;
  PlanOptions options;  // with max_model_len and nodes resolved
  int64_t num_parameters = 0;
  // Every valid layout on up to options.nodes nodes, fitting or not, in the order of preference: the fewest
  // nodes, then the largest tp, then the fewest pipeline stages.
  std::vector<Layout> layouts;
  int recommended = -1;  // index into layouts; -1 when none fits
};

// Bytes of one rank's bf16 weights as LlamaModel::LoadWeights slices them: the stage's layers (q/k/v and
// gate/up row slices, o/down column slices, both norms), the vocabulary slice of the embedding (plus its zero
// row when the vocabulary is split) on the first stage, and on the last the final norm and the lm_head slice
// (a second copy of the embedding slice when tied and pp > 1).
int64_t RankWeightBytes(const ModelConfig& model, const ParallelConfig& parallel, int rank);
// Bytes of one rank's activation buffers (LlamaModel::AllocateActivations, bf16 on CUDA), step metadata
// (ModelRunner::AllocateKvCache), the cuBLASLt workspace and kRuntimeReserveBytes.
int64_t RankActivationBytes(const ModelConfig& model, const ParallelConfig& parallel, int rank,
                            const PlanOptions& options);
// Bytes of KV cache one token takes on a rank.
int64_t RankKvBytesPerToken(const ModelConfig& model, const ParallelConfig& parallel, int rank,
                            KvCacheDtype dtype);

// CUDA context, NCCL buffers, attention split workspace and graph pools: a reserve per GPU.
inline constexpr int64_t kRuntimeReserveBytes = int64_t{2} << 30;

// Time of one ring all-reduce of `bytes` over `tp` GPUs: latency + 2 (tp - 1) / tp x bytes / NVLink.
double AllReduceSeconds(int64_t bytes, int tp, const PlanOptions& options);

// The roofline time per token of a decode step at `batch` sequences of `context` tokens (see docs/plan.md).
DecodePoint DecodeRoofline(const ModelConfig& model, const Layout& layout, int batch, int64_t context,
                           const PlanOptions& options);
// The roofline time to prefill one prompt of `tokens` tokens, in chunks of max_num_batched_tokens.
double PrefillRoofline(const ModelConfig& model, const Layout& layout, int64_t tokens,
                       const PlanOptions& options);

// The layout tp x pp of `model` (memory, fit and roofline; max_model_len 0 is the model's). Errors:
// INVALID_ARGUMENT when the server would reject the split (ParallelConfig's message) or it cannot be placed
// on nodes of gpus_per_node GPUs with every TP group inside a node and whole stages per node.
[[nodiscard]] absl::StatusOr<Layout> EvaluateLayout(const ModelConfig& model, int tp, int pp,
                                                    const PlanOptions& options);

// Every valid layout, and the recommendation: the fewest nodes, then the largest tp, then the fewest pipeline
// stages. Errors: INVALID_ARGUMENT for bad options (gpus_per_node <= 0, ...); RESOURCE_EXHAUSTED when no
// layout fits, naming the model's size and the GPUs' memory.
[[nodiscard]] absl::StatusOr<Plan> MakePlan(const ModelConfig& model, const PlanOptions& options);

}  // namespace tessera::tools
