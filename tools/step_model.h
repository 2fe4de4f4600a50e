// The step model behind `tessera plan --step` (issue 17): what one forward step of a Llama model costs on one
// rank of a tp x pp layout, counted op by op as LlamaModel::Forward and ModelRunner::Forward issue them, for
// the decode step's old design and its new one: launches by kind, graph segments, host round trips, HBM and
// NVLink bytes, FLOPs, and a time estimate. Pure functions of their arguments: no files, no devices.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "tools/planner.h"
#include "worker/checkpoint/model_config.h"

namespace tessera::tools {

// One step of the runner.
struct StepShape {
  int tp = 1;
  int pp = 1;
  int batch = 1;    // sequences in the step
  int tokens = 1;   // new tokens in the step: batch for a decode step, e.g. 2048 for a prefill
  int context = 0;  // KV positions each sequence holds before this step (its new tokens attend to them too)
  // ModelRunnerOptions::graph_max_batch as the runner resolves it (256 on CUDA): a decode step (tokens ==
  // batch) of at most this many sequences replays a captured graph, padded to the next captured size (1, 2,
  // 4, then multiples of 8, and this number). 0: every step runs eagerly (the CPU's default).
  int graph_max_batch = 256;
};

enum class StepDesign {
  // Separate q, k, v and gate, up GEMMs; Rope then WriteKvCache; every TP collective synchronizes the backend
  // and runs from the host (a captured step is cut into collectives + 1 graphs, one host round trip each);
  // the lm_head all-gathers the logits to every TP rank and places them with one copy per row per rank.
  kBefore,
  // Fused qkv_proj and gate_up_proj GEMMs; RopeQkvToCache (rope and cache write in one kernel); collectives
  // enqueued in stream order and captured in the graph (one-shot all-reduce up to a size, NCCL's ring above);
  // the lm_head gathers the logits to TP rank 0 only and places them with one strided copy (Copy2D) per rank.
  kAfter,
};
const char* StepDesignName(StepDesign design);  // "before", "after"

// What the model's time estimate assumes of one GPU and its software. The default is an H200 SXM in an HGX
// node; sources beside each default in step_model.cc.
struct StepHardware {
  double hbm_bytes_per_s = 4.8e12;    // HBM bandwidth
  double bf16_flops = 989.5e12;       // dense BF16 tensor-core peak
  double nvlink_bytes_per_s = 450e9;  // NVLink, one GPU, one direction
  double kernel_launch_s = 2e-6;      // each kernel or copy: its launch and tail inside a graph
  double host_round_trip_s = 20e-6;   // synchronize the stream, then launch the next work from the host
  double nccl_latency_s = 15e-6;      // fixed cost of one small NCCL collective (and a pipeline send)
  double one_shot_latency_s = 5e-6;   // fixed cost of one one-shot custom all-reduce
  int64_t one_shot_max_bytes = -1;    // the largest one-shot message; -1: by tp, as DefaultOneShotMaxBytes
  int activation_bytes = 2;           // bf16 activations (CudaBackend)
  int kv_bytes = 2;                   // bf16 KV cache (what the runner allocates)
};
// The published figures of `gpu` (bandwidth, peak, NVLink: the planner's) with the measured software costs of
// the defaults.
StepHardware StepHardwareFor(const GpuSpec& gpu);
// The one-shot threshold `hardware` gives a TP group of `tp`: parallel/all_reduce_choice.cc's
// DefaultOneShotMaxBytes (4 MiB up to 2 ranks, 1 MiB up to 4, 512 KiB up to 8) unless set; 0 above 8 ranks.
int64_t OneShotMaxBytes(const StepHardware& hardware, int tp);

// What the device runs in a step, by kind. Collectives and copies of both designs are counted where they run,
// whether launched from the host or replayed in a graph.
enum class LaunchKind {
  kGemm,         // Backend::Linear
  kAttention,    // PagedAttention
  kNorm,         // RmsNorm, AddRmsNorm
  kRopeCache,    // Rope, WriteKvCache (before); RopeQkvToCache (after)
  kActivation,   // SiluMul (before); SiluMulFused (after)
  kElementwise,  // Add (the stage's last residual)
  kGather,       // Embedding, GatherRows
  kCopy,         // device-to-device copies: Copy, Copy2D (the lm_head's logits)
  kUpload,       // host-to-device copies of the step's metadata: CopyToDevice, CopyRowsToDevice
  kCollective,   // all-reduce, all-gather, gather over the TP group
  kGraphLaunch,  // graph replays started from the host
};
inline constexpr int kNumLaunchKinds = 11;
const char* LaunchKindName(LaunchKind kind);  // "gemm", "attention", ...

struct LaunchCounts {
  std::array<int64_t, kNumLaunchKinds> count{};
  int64_t& operator[](LaunchKind kind) { return count[static_cast<int>(kind)]; }
  int64_t operator[](LaunchKind kind) const { return count[static_cast<int>(kind)]; }
  // Every kind but graph launches: the kernels, copies and collectives the device runs.
  int64_t DeviceOps() const;
  bool operator==(const LaunchCounts&) const = default;
};

// The cost of one step on one rank: TP rank 0 (the output rank's place: the largest vocabulary slice, the
// lm_head's gather root) of the slowest pipeline stage.
struct StepCost {
  StepDesign design = StepDesign::kAfter;
  int pp_rank = 0;      // the stage reported
  int64_t layers = 0;   // that stage's layers
  bool decode = false;  // one new token per sequence
  bool graph = false;   // the step replays a captured graph (a decode step within graph_max_batch)
  int64_t rows = 0;     // rows the kernels compute: tokens, or the graph's padded batch
  LaunchCounts launches;
  int64_t graph_segments = 0;    // graphs replayed (0 for an eager step)
  int64_t host_round_trips = 0;  // times the host waits for the device in the step
  // HBM traffic of the rank, bytes. weight_bytes: every matrix and norm of the stage and the lm_head slice,
  // read once (the embedding table only where looked up: embedding_bytes).
  int64_t weight_bytes = 0;
  int64_t embedding_bytes = 0;
  int64_t kv_read_bytes = 0;     // attention reading each sequence's context and new tokens
  int64_t kv_write_bytes = 0;    // the new tokens' keys and values
  int64_t activation_bytes = 0;  // activations (and logits) read and written by the kernels
  int64_t hbm_bytes = 0;         // the sum of the five
  int64_t nvlink_bytes = 0;      // received by the rank over NVLink in the TP collectives
  int64_t pp_send_bytes = 0;     // hidden states sent to the next stage (0 on the last)
  double flops = 0;
  // The estimate, microseconds: each kernel at its own roofline, max(bytes / HBM, FLOPs / peak), summed as
  // memory-bound (hbm_us) or compute-bound (compute_us); plus kernel_launch_s per kernel and copy, the host
  // round trips, the collectives (latency + bytes / NVLink) and the pipeline send.
  double hbm_us = 0;
  double compute_us = 0;
  double launch_us = 0;
  double round_trip_us = 0;
  double collective_us = 0;
  double pipeline_us = 0;
  double estimated_us = 0;
  double hbm_roofline_us = 0;  // hbm_bytes / HBM bandwidth: what no step can beat
  // hbm_roofline_us / estimated_us: how close a decode step comes to streaming its bytes at full bandwidth.
  double RooflineFraction() const { return estimated_us > 0 ? hbm_roofline_us / estimated_us : 0; }
};

// The cost of `shape` in `design`. Errors: INVALID_ARGUMENT naming the field for batch <= 0, tokens < batch,
// context < 0, graph_max_batch < 0, or a split the server rejects (SplitModel's message).
[[nodiscard]] absl::StatusOr<StepCost> ModelStep(const ModelConfig& model, const StepShape& shape,
                                                 StepDesign design, const StepHardware& hardware);

// The table `tessera plan --step` and bench/step_model_bench print: a header, then one row per cost.
std::string StepTableHeader();
std::string StepTableRow(const std::string& label, const StepCost& cost);
// "decode B=64 ctx=1024", "prefill 2048 tokens ctx=0".
std::string StepLabel(const StepShape& shape);

}  // namespace tessera::tools
