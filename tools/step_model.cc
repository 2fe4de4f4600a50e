#include "tools/step_model.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/check.h"
#include "core/status_macros.h"
#include "core/str_cat.h"
#include "parallel/all_reduce_choice.h"
#include "worker/model_split.h"

namespace tessera::tools {
namespace {

constexpr int64_t kKiB = 1024;
constexpr int64_t kBf16 = 2;  // weights
constexpr int64_t kF32 = 4;   // logits

// ModelRunner's GraphBatchSizes: 1, 2, 4, multiples of 8 and max_batch; the smallest that holds `batch`.
int64_t GraphRows(int64_t batch, int64_t max_batch) {
  for (int64_t b : {1, 2, 4}) {
    if (b >= batch && b <= max_batch) return b;
  }
  for (int64_t b = 8; b <= max_batch; b += 8) {
    if (b >= batch) return b;
  }
  return max_batch;
}

// Adds up one stage's step, op by op, in the order LlamaModel::Forward issues them.
class Tally {
 public:
  Tally(const StepHardware& hw, StepCost& cost) : hw_(hw), cost_(cost) {}

  // One kernel or device copy: `weights` bytes of weights read, `activations` bytes of activations (or
  // logits) read and written, `flops` of arithmetic; the KV and embedding bytes the caller adds itself.
  void Kernel(LaunchKind kind, int64_t weights, int64_t activations, double flops, int64_t other = 0) {
    ++cost_.launches[kind];
    cost_.weight_bytes += weights;
    cost_.activation_bytes += activations;
    cost_.flops += flops;
    const double memory_s = static_cast<double>(weights + activations + other) / hw_.hbm_bytes_per_s;
    const double compute_s = flops / hw_.bf16_flops;
    if (memory_s >= compute_s) {
      cost_.hbm_us += memory_s * 1e6;
    } else {
      cost_.compute_us += compute_s * 1e6;
    }
    cost_.launch_us += hw_.kernel_launch_s * 1e6;
  }
  // y[rows, n] = x[rows, k] @ w[n, k]^T with bf16 weights; `out_bytes` per output element.
  void Gemm(int64_t rows, int64_t n, int64_t k, int64_t out_bytes) {
    Kernel(LaunchKind::kGemm, n * k * kBf16, rows * k * hw_.activation_bytes + rows * n * out_bytes,
           2.0 * static_cast<double>(rows) * n * k);
  }
  // A TP collective: `nvlink` bytes received by this rank, `latency_s` + nvlink / bandwidth; in the old
  // design each also costs a host round trip (the backend is synchronized first, the next work relaunched).
  void Collective(double nvlink, double latency_s, StepDesign design) {
    ++cost_.launches[LaunchKind::kCollective];
    cost_.nvlink_bytes += static_cast<int64_t>(nvlink);
    cost_.collective_us += (latency_s + nvlink / hw_.nvlink_bytes_per_s) * 1e6;
    if (design == StepDesign::kBefore) ++cost_.host_round_trips;
  }
  // An all-reduce of `bytes` over `tp` ranks: one-shot (each rank reads every peer's whole buffer) when the
  // new design's group takes it, NCCL's ring (2 (tp - 1) / tp x bytes each way) otherwise.
  void AllReduce(int64_t bytes, int tp, StepDesign design) {
    const AllReduceTopology node{tp, /*same_host=*/true, /*all_peer_access=*/true, /*enabled=*/true};
    const bool one_shot = design == StepDesign::kAfter &&
                          ChooseAllReduce(node, bytes, DType::kBF16, OneShotMaxBytes(hw_, tp)) ==
                              AllReduceAlgorithm::kOneShot;
    if (one_shot) {
      Collective(static_cast<double>(tp - 1) * bytes, hw_.one_shot_latency_s, design);
    } else {
      Collective(2.0 * (tp - 1) / tp * static_cast<double>(bytes), hw_.nccl_latency_s, design);
    }
  }

 private:
  const StepHardware& hw_;
  StepCost& cost_;
};

// The cost of stage `pp_rank` (its TP rank 0).
StepCost StageCost(const ModelConfig& m, const ParallelConfig& p, int pp_rank, const StepShape& shape,
                   StepDesign design, const StepHardware& hw) {
  StepCost c;
  c.design = design;
  c.pp_rank = pp_rank;
  const int tp = p.tp_size();
  const bool first = p.IsFirstStage(pp_rank), last = p.IsLastStage(pp_rank);
  const int64_t h = m.hidden_size, a = hw.activation_bytes, kvb = hw.kv_bytes;
  const int64_t qw = p.QueryHeads(0).size() * m.head_dim, kvw = p.KvHeads(0).size() * m.head_dim;
  const int64_t inter = p.IntermediateShard(0).size();
  const int64_t vocab_rows = p.VocabShard(0).size();  // rank 0's slice: the largest
  const bool vocab_split = vocab_rows != m.vocab_size;
  c.layers = p.StageLayers(pp_rank).size();

  c.decode = shape.tokens == shape.batch;
  c.graph = c.decode && shape.batch <= shape.graph_max_batch;
  const int64_t seqs = shape.batch, tokens = shape.tokens;
  // A graph computes its padded batch: padding rows run every kernel but attend to nothing and write no KV.
  c.rows = c.graph ? GraphRows(seqs, shape.graph_max_batch) : tokens;
  const int64_t rows = c.rows, out_rows = c.graph ? rows : seqs;  // rows of the step, rows of logits

  Tally t(hw, c);
  const int64_t hidden_bytes = rows * h * a;
  c.launches[LaunchKind::kUpload] = c.graph ? 2 : 1;  // the metadata (and, for a graph, the block tables)
  c.launch_us += static_cast<double>(c.launches[LaunchKind::kUpload]) * hw.kernel_launch_s * 1e6;
  if (first) {
    c.embedding_bytes += rows * h * kBf16;
    t.Kernel(LaunchKind::kGather, 0, rows * 4 + hidden_bytes, 0, rows * h * kBf16);
    if (tp > 1 && vocab_split) t.AllReduce(hidden_bytes, tp, design);
  }
  // Attention per layer: each sequence's n new tokens attend to its context and to the new tokens before
  // them.
  const double n = static_cast<double>(tokens) / seqs;
  const double pairs = static_cast<double>(seqs) * (n * shape.context + n * (n + 1) / 2);
  const int64_t kv_read = static_cast<int64_t>(seqs * (shape.context + n)) * 2 * kvw * kvb;
  const int64_t kv_write = tokens * 2 * kvw * kvb;
  for (int64_t layer = 0; layer < c.layers; ++layer) {
    // The stage's first layer normalizes its input; the others add the MLP's output to the residual first.
    if (layer == 0) {
      t.Kernel(LaunchKind::kNorm, h * kBf16, 2 * hidden_bytes, 4.0 * rows * h);
    } else {
      t.Kernel(LaunchKind::kNorm, h * kBf16, 4 * hidden_bytes, 5.0 * rows * h);
    }
    if (design == StepDesign::kBefore) {
      t.Gemm(rows, qw, h, a);
      t.Gemm(rows, kvw, h, a);
      t.Gemm(rows, kvw, h, a);
      t.Kernel(LaunchKind::kRopeCache, 0, 2 * rows * (qw + kvw) * a,
               6.0 * rows * (qw + kvw));                                     // q, k in place
      t.Kernel(LaunchKind::kRopeCache, 0, 2 * rows * kvw * a, 0, kv_write);  // read k, v; write the caches
    } else {
      t.Gemm(rows, qw + 2 * kvw, h, a);
      t.Kernel(LaunchKind::kRopeCache, 0, rows * (qw + 2 * kvw) * a + rows * qw * a, 6.0 * rows * (qw + kvw),
               kv_write);
    }
    c.kv_write_bytes += kv_write;
    t.Kernel(LaunchKind::kAttention, 0, 2 * rows * qw * a, 4.0 * pairs * qw, kv_read);
    c.kv_read_bytes += kv_read;
    t.Gemm(rows, h, qw, a);  // o_proj
    if (tp > 1) t.AllReduce(hidden_bytes, tp, design);
    t.Kernel(LaunchKind::kNorm, h * kBf16, 4 * hidden_bytes, 5.0 * rows * h);
    if (design == StepDesign::kBefore) {
      t.Gemm(rows, inter, h, a);  // gate_proj
      t.Gemm(rows, inter, h, a);  // up_proj
    } else {
      t.Gemm(rows, 2 * inter, h, a);  // gate_up_proj
    }
    t.Kernel(LaunchKind::kActivation, 0, 3 * rows * inter * a, 6.0 * rows * inter);
    t.Gemm(rows, h, inter, a);  // down_proj
    if (tp > 1) t.AllReduce(hidden_bytes, tp, design);
  }
  t.Kernel(LaunchKind::kElementwise, 0, 3 * hidden_bytes, 1.0 * rows * h);  // the last residual
  if (last) {
    const int64_t last_bytes = out_rows * h * a;
    t.Kernel(LaunchKind::kGather, 0, out_rows * 4 + 2 * last_bytes, 0);  // GatherRows
    t.Kernel(LaunchKind::kNorm, h * kBf16, 2 * last_bytes, 4.0 * out_rows * h);
    t.Gemm(out_rows, vocab_rows, h, kF32);  // lm_head: f32 logits of the slice
    if (tp > 1) {
      // Every rank's block [rows, vocab_rows] (the largest slice), gathered: rank 0 receives tp - 1 of them.
      const double received = static_cast<double>(tp - 1) * out_rows * vocab_rows * kF32;
      t.Collective(received, hw.nccl_latency_s, design);
      // Placing the blocks: one copy per row per rank (before), one strided copy per rank (after); either
      // reads and writes every logit once.
      const int64_t copies = design == StepDesign::kBefore ? tp * out_rows : tp;
      const int64_t logit_bytes = out_rows * m.vocab_size * kF32;
      for (int64_t i = 0; i < copies; ++i) t.Kernel(LaunchKind::kCopy, 0, 2 * logit_bytes / copies, 0);
    }
  }
  if (!last) {
    c.pp_send_bytes = tokens * h * a;  // the real rows of the hidden states
    c.pipeline_us = (hw.nccl_latency_s + static_cast<double>(c.pp_send_bytes) / hw.nvlink_bytes_per_s) * 1e6;
  }

  // Round trips: the step's one synchronization (ModelRunner::FinishStep), plus one per collective in the
  // old design (counted by Tally). Graphs: one per segment, the segments cut at the old design's collectives.
  c.host_round_trips += 1;
  if (c.graph) {
    c.graph_segments = design == StepDesign::kBefore ? c.launches[LaunchKind::kCollective] + 1 : 1;
    c.launches[LaunchKind::kGraphLaunch] = c.graph_segments;
  }
  c.round_trip_us = static_cast<double>(c.host_round_trips) * hw.host_round_trip_s * 1e6;
  c.hbm_bytes = c.weight_bytes + c.embedding_bytes + c.kv_read_bytes + c.kv_write_bytes + c.activation_bytes;
  c.hbm_roofline_us = static_cast<double>(c.hbm_bytes) / hw.hbm_bytes_per_s * 1e6;
  c.estimated_us = c.hbm_us + c.compute_us + c.launch_us + c.round_trip_us + c.collective_us + c.pipeline_us;
  return c;
}

}  // namespace

const char* StepDesignName(StepDesign design) { return design == StepDesign::kBefore ? "before" : "after"; }

// Sources of the defaults (H200 SXM, HGX H200 8-GPU node):
//  - HBM 4.8 TB/s, BF16 989.5 TFLOPS dense (1,979 with sparsity), NVLink 900 GB/s total = 450 GB/s per
//    direction: the NVIDIA H200 datasheet, https://www.nvidia.com/en-us/data-center/h200/ (as GpuSpec in
//    planner.cc).
//  - kernel_launch_s 2 us: typical measured time per kernel node of a replayed CUDA graph on Hopper, launch
//    plus tail of a short kernel (graph node launch ~1 us, plus the drain between dependent kernels).
//  - host_round_trip_s 20 us: typical measured cudaStreamSynchronize wake-up plus the next cudaGraphLaunch or
//    kernel launch reaching the GPU (5-10 us each way), plus the host's NCCL polling that the old design did.
//  - nccl_latency_s 15 us: NCCL's small-message all-reduce latency on 8 NVLink GPUs, as nccl-tests report
//    it (all_reduce_perf at 8 B to 64 KiB, ring / LL protocol: 10-20 us).
//  - one_shot_latency_s 5 us: the one-shot custom all-reduce of vLLM and TensorRT-LLM on 8 H100 / H200 at
//    small sizes (reported at 4-8 us), one kernel with a flag exchange.
//  - one_shot_max_bytes: parallel/all_reduce_choice.cc's DefaultOneShotMaxBytes (the crossover vLLM and
//    TensorRT-LLM measure: 512 KiB at 8 ranks).
StepHardware StepHardwareFor(const GpuSpec& gpu) {
  StepHardware hw;
  hw.hbm_bytes_per_s = gpu.hbm_bytes_per_s;
  hw.bf16_flops = gpu.bf16_flops;
  hw.nvlink_bytes_per_s = gpu.nvlink_bytes_per_s;
  return hw;
}

int64_t OneShotMaxBytes(const StepHardware& hardware, int tp) {
  if (tp < 2 || tp > kOneShotMaxWorld) return 0;
  if (hardware.one_shot_max_bytes >= 0) return hardware.one_shot_max_bytes;
  return DefaultOneShotMaxBytes(tp);
}

const char* LaunchKindName(LaunchKind kind) {
  static constexpr const char* kNames[kNumLaunchKinds] = {
      "gemm",   "attention", "norm",   "rope_cache", "activation",  "elementwise",
      "gather", "copy",      "upload", "collective", "graph_launch"};
  return kNames[static_cast<int>(kind)];
}

int64_t LaunchCounts::DeviceOps() const {
  int64_t n = 0;
  for (int k = 0; k < kNumLaunchKinds; ++k) {
    if (static_cast<LaunchKind>(k) != LaunchKind::kGraphLaunch) n += count[k];
  }
  return n;
}

absl::StatusOr<StepCost> ModelStep(const ModelConfig& model, const StepShape& shape, StepDesign design,
                                   const StepHardware& hardware) {
  if (shape.batch <= 0)
    return absl::InvalidArgumentError(Cat("step batch ", shape.batch, " must be positive"));
  if (shape.tokens < shape.batch) {
    return absl::InvalidArgumentError(Cat("step tokens ", shape.tokens, " must be at least the batch ",
                                          shape.batch, " (one per sequence)"));
  }
  if (shape.context < 0)
    return absl::InvalidArgumentError(Cat("step context ", shape.context, " is negative"));
  if (shape.graph_max_batch < 0) {
    return absl::InvalidArgumentError(Cat("step graph_max_batch ", shape.graph_max_batch, " is negative"));
  }
  ASSIGN_OR_RETURN(ParallelConfig p, SplitModel(model, shape.tp, shape.pp));
  StepCost slowest;
  for (int stage = 0; stage < shape.pp; ++stage) {
    StepCost c = StageCost(model, p, stage, shape, design, hardware);
    if (stage == 0 || c.estimated_us > slowest.estimated_us) slowest = c;
  }
  return slowest;
}

std::string StepLabel(const StepShape& s) {
  if (s.tokens == s.batch) return absl::StrFormat("decode B=%d ctx=%d", s.batch, s.context);
  return absl::StrFormat("prefill B=%d T=%d ctx=%d", s.batch, s.tokens, s.context);
}

std::string StepTableHeader() {
  return absl::StrFormat("%-26s %-6s %8s %6s %8s %6s %9s %9s %8s %10s | %8s %8s %8s %8s %8s %6s\n", "step",
                         "design", "launches", "gemm", "segments", "trips", "HBM MB", "NVLink MB", "est us",
                         "HBM roof", "hbm", "compute", "launch", "trips", "collect", "pp");
}

std::string StepTableRow(const std::string& label, const StepCost& c) {
  // The roofline fraction only for decode (a prefill is compute-bound).
  const std::string roof = c.decode ? absl::StrFormat("%.0f%%", 100 * c.RooflineFraction()) : "-";
  return absl::StrFormat(
      "%-26s %-6s %8d %6d %8d %6d %9.1f %9.2f %8.1f %10s | %8.1f %8.1f %8.1f %8.1f %8.1f %6.1f\n", label,
      StepDesignName(c.design), c.launches.DeviceOps(), c.launches[LaunchKind::kGemm], c.graph_segments,
      c.host_round_trips, static_cast<double>(c.hbm_bytes) / 1e6, static_cast<double>(c.nvlink_bytes) / 1e6,
      c.estimated_us, roof, c.hbm_us, c.compute_us, c.launch_us, c.round_trip_us, c.collective_us,
      c.pipeline_us);
}

}  // namespace tessera::tools
