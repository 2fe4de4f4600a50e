#include "tools/planner.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/status_macros.h"
#include "core/str_cat.h"
#include "worker/kv_cache.h"
#include "worker/model_split.h"

namespace tessera::tools {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int64_t kBf16 = 2;
constexpr int64_t kCublasWorkspaceBytes = 32 * kMiB;  // CudaBackendOptions::cublas_workspace_bytes
constexpr int kGraphMaxBatch = 256;                   // ModelRunner's default on CUDA

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows and widths of one rank's slices (as LlamaModel::LoadWeights takes them).
struct RankShape {
  int pp_rank = 0;
  bool first = false;
  bool last = false;
  int64_t layers = 0;
  int64_t q_width = 0;       // local query heads x head_dim
  int64_t kv_width = 0;      // local KV heads x head_dim
  int64_t intermediate = 0;  // local MLP columns
  int64_t vocab_rows = 0;    // this rank's vocabulary slice
  bool vocab_split = false;  // the embedding carries one zero row
  int64_t vocab_max = 0;     // the largest slice over the TP group (the lm_head's gather blocks)
};

RankShape ShapeOf(const ModelConfig& m, const ParallelConfig& p, int rank) {
  const int t = p.TpRank(rank);
  RankShape s;
  s.pp_rank = p.PpRank(rank);
  s.first = p.IsFirstStage(s.pp_rank);
  s.last = p.IsLastStage(s.pp_rank);
  s.layers = p.StageLayers(s.pp_rank).size();
  s.q_width = p.QueryHeads(t).size() * m.head_dim;
  s.kv_width = p.KvHeads(t).size() * m.head_dim;
  s.intermediate = p.IntermediateShard(t).size();
  s.vocab_rows = p.VocabShard(t).size();
  s.vocab_split = s.vocab_rows != m.vocab_size;
  s.vocab_max = p.VocabShard(0).size();
  return s;
}

// Elements of one decoder layer's matrices on a rank: q, k, v, o, gate, up, down.
int64_t LayerMatrixElements(const ModelConfig& m, const RankShape& s) {
  const int64_t h = m.hidden_size;
  return (s.q_width + 2 * s.kv_width) * h + h * s.q_width + 3 * s.intermediate * h;
}

int64_t EmbeddingRows(const RankShape& s) { return s.vocab_rows + (s.vocab_split ? 1 : 0); }

ParallelConfig SplitOf(const ModelConfig& model, const Layout& layout) {
  absl::StatusOr<ParallelConfig> p = SplitModel(model, layout.tp, layout.pp, layout.stage_layers);
  TESSERA_CHECK(p.ok());
  return *std::move(p);
}

double AllGatherSeconds(int64_t total_bytes, int tp, const PlanOptions& o) {
  if (tp <= 1) return 0;
  return o.collective_latency_s +
         static_cast<double>(tp - 1) / tp * static_cast<double>(total_bytes) / o.gpu.nvlink_bytes_per_s;
}

// The node a pipeline stage runs on.
int NodeOfStage(const Layout& layout, int pp_rank) { return pp_rank * layout.tp / layout.ranks_per_node; }

// Seconds of `tokens` new tokens (with `context` tokens before them, per sequence, over `seqs` sequences)
// through one stage, counted on its TP rank 0 (the largest vocabulary slice), plus the send to the next
// stage.
double StageSeconds(const ModelConfig& m, const Layout& layout, const ParallelConfig& p, int pp_rank,
                    int64_t seqs, int64_t tokens, double attention_pairs, int64_t kv_tokens_read,
                    const PlanOptions& o) {
  const int rank = p.Rank(pp_rank, 0);
  const RankShape s = ShapeOf(m, p, rank);
  const int64_t h = m.hidden_size;
  const int64_t kv_per_token = RankKvBytesPerToken(m, p, rank, o.kv_cache_dtype);
  // Bytes read from HBM: every layer's weights once, the lm_head slice, the embedding rows looked up, the
  // KV cache read by attention and written for the new tokens.
  double bytes = static_cast<double>(s.layers * (LayerMatrixElements(m, s) + 2 * h) * kBf16);
  double flops = 2.0 * tokens * s.layers * LayerMatrixElements(m, s);
  // Attention: QK^T and PV, 2 FLOPs per multiply-add, over every (query, key) pair of every local head.
  flops += 4.0 * attention_pairs * static_cast<double>(s.q_width) * s.layers;
  bytes += static_cast<double>(kv_tokens_read + tokens) * kv_per_token;
  if (s.first) bytes += static_cast<double>(tokens * h * kBf16);
  if (s.last) {
    bytes += static_cast<double>((h + s.vocab_rows * h) * kBf16);
    flops += 2.0 * seqs * s.vocab_rows * h;  // logits of each sequence's last token
  }
  double seconds = std::max(bytes / o.gpu.hbm_bytes_per_s, flops / o.gpu.bf16_flops);
  if (layout.tp > 1) {
    const int64_t hidden_bytes = tokens * h * kBf16;
    seconds += 2.0 * s.layers * AllReduceSeconds(hidden_bytes, layout.tp, o);  // o_proj and down_proj
    if (s.first && s.vocab_split) seconds += AllReduceSeconds(hidden_bytes, layout.tp, o);
    if (s.last) seconds += AllGatherSeconds(int64_t{layout.tp} * seqs * s.vocab_max * 4, layout.tp, o);
  }
  if (!s.last) {
    const bool crosses = NodeOfStage(layout, pp_rank) != NodeOfStage(layout, pp_rank + 1);
    const double link = crosses ? o.network_bytes_per_s : o.gpu.nvlink_bytes_per_s;
    seconds += o.collective_latency_s + static_cast<double>(tokens * h * kBf16) / link;
  }
  return seconds;
}

std::string FormatGiB(int64_t bytes) {
  return absl::StrFormat("%.1f GiB", static_cast<double>(bytes) / (1 << 30));
}

}  // namespace

// Sources (per GPU, SXM form factor). Memory is the total the CUDA driver reports (nvidia-smi memory.total),
// which is what a utilization fraction multiplies; the datasheets round it ("80GB", "141GB", "180GB").
// Tensor-core peaks are the datasheets' dense figures (their headline numbers assume 2:4 sparsity: half).
// NVLink figures are the datasheets' total bidirectional bandwidth, halved for one direction.
const std::vector<GpuSpec>& KnownGpus() {
  static const std::vector<GpuSpec> gpus = {
      // NVIDIA H100 Tensor Core GPU datasheet (H100 SXM): 80 GB HBM3, 3.35 TB/s, BF16 1,979 TFLOPS with
      // sparsity, NVLink 900 GB/s.
      // https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
      // nvidia-smi on an H100 80GB HBM3: 81559 MiB.
      {"h100-80gb", "NVIDIA H100 SXM5 80GB", 81559 * kMiB, 3.35e12, 989.5e12, 450e9},
      // NVIDIA H200 Tensor Core GPU datasheet (H200 SXM): 141 GB HBM3e, 4.8 TB/s, BF16 1,979 TFLOPS with
      // sparsity, NVLink 900 GB/s. https://www.nvidia.com/en-us/data-center/h200/
      // nvidia-smi on an H200: 143771 MiB.
      {"h200-141gb", "NVIDIA H200 SXM 141GB", 143771 * kMiB, 4.8e12, 989.5e12, 450e9},
      // NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM): 80 GB HBM2e, 2,039 GB/s, BF16 312 TFLOPS
      // dense, NVLink 600 GB/s.
      // https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
      // nvidia-smi on an A100-SXM4-80GB: 81920 MiB.
      {"a100-80gb", "NVIDIA A100 SXM4 80GB", 81920 * kMiB, 2.039e12, 312e12, 300e9},
      // NVIDIA HGX B200 specifications (per GPU of the 8): 180 GB HBM3e, 8 TB/s, FP16/BF16 4.5 PFLOPS with
      // sparsity, fifth-generation NVLink 1.8 TB/s. https://www.nvidia.com/en-us/data-center/hgx/
      // nvidia-smi on a B200: 183359 MiB.
      {"b200-180gb", "NVIDIA B200 180GB", 183359 * kMiB, 8.0e12, 2250e12, 900e9},
  };
  return gpus;
}

absl::StatusOr<GpuSpec> FindGpu(std::string_view name) {
  std::vector<std::string> names;
  for (const GpuSpec& gpu : KnownGpus()) {
    if (gpu.name == name) return gpu;
    names.push_back(gpu.name);
  }
  return absl::NotFoundError(Cat("unknown GPU \"", name, "\"; known GPUs are: ", absl::StrJoin(names, ", ")));
}

absl::StatusOr<KvCacheDtype> ParseKvCacheDtype(std::string_view text) {
  if (text == "bf16") return KvCacheDtype::kBf16;
  if (text == "fp8") return KvCacheDtype::kFp8;
  return absl::InvalidArgumentError(Cat("--kv-cache-dtype \"", text, "\" must be bf16 or fp8"));
}

int KvDtypeBytes(KvCacheDtype dtype) { return dtype == KvCacheDtype::kFp8 ? 1 : 2; }

int64_t RankWeightBytes(const ModelConfig& m, const ParallelConfig& p, int rank) {
  const RankShape s = ShapeOf(m, p, rank);
  const int64_t h = m.hidden_size;
  int64_t elements = s.layers * (LayerMatrixElements(m, s) + 2 * h);  // + input and post-attention norms
  const bool loads_embedding = s.first || (s.last && m.tie_word_embeddings);
  if (loads_embedding) elements += EmbeddingRows(s) * h;
  if (s.last) {
    elements += h;                                             // final norm
    if (!m.tie_word_embeddings) elements += s.vocab_rows * h;  // lm_head slice (tied: the embedding's)
  }
  return elements * kBf16;
}

int64_t RankActivationBytes(const ModelConfig& m, const ParallelConfig& p, int rank, const PlanOptions& o) {
  const RankShape s = ShapeOf(m, p, rank);
  const int64_t t = o.max_num_batched_tokens, seqs = o.max_num_seqs, h = m.hidden_size;
  // [max_tokens, width] each, bf16 (LlamaModel::Activations): hidden, residual [h]; qkv [q + 2 kv];
  // q, attn [q]; gate_up [2 I]; mlp [I].
  int64_t bytes = t * (2 * h + 3 * s.q_width + 2 * s.kv_width + 3 * s.intermediate) * kBf16;
  if (s.last) {
    bytes += seqs * h * kBf16;         // last: [max_seqs, hidden]
    bytes += seqs * m.vocab_size * 4;  // logits: [max_seqs, vocab] f32
    if (p.tp_size() > 1) bytes += (1 + int64_t{p.tp_size()}) * seqs * s.vocab_max * 4;  // lm_head gather
  }
  // Step metadata (ModelRunner::AllocateKvCache): eager arrays and the decode graphs' arrays, int32.
  const int64_t blocks_per_seq = CeilDiv(m.max_position_embeddings, kKvBlockSize);
  const int64_t eager = CeilDiv(3 * t + (seqs + 1) + seqs + seqs * blocks_per_seq + seqs, 16) * 16;
  const int64_t rows = std::min<int64_t>({kGraphMaxBatch, seqs, t});
  const int64_t graph = CeilDiv(6 * rows + 1, 16) * 16 + rows * blocks_per_seq;
  bytes += (eager + graph) * 4;
  return bytes + kCublasWorkspaceBytes + kRuntimeReserveBytes;
}

int64_t RankKvBytesPerToken(const ModelConfig& m, const ParallelConfig& p, int rank, KvCacheDtype dtype) {
  const RankShape s = ShapeOf(m, p, rank);
  return 2 * s.layers * s.kv_width * KvDtypeBytes(dtype);
}

double AllReduceSeconds(int64_t bytes, int tp, const PlanOptions& o) {
  if (tp <= 1) return 0;
  return o.collective_latency_s + 2.0 * (tp - 1) / tp * static_cast<double>(bytes) / o.gpu.nvlink_bytes_per_s;
}

DecodePoint DecodeRoofline(const ModelConfig& model, const Layout& layout, int batch, int64_t context,
                           const PlanOptions& o) {
  const ParallelConfig p = SplitOf(model, layout);
  // The scheduler keeps up to pp micro-batches in flight: the batch splits into m of near-equal size.
  const int m = std::min(layout.pp, batch);
  std::vector<int64_t> sizes(m, batch / m);
  for (int i = 0; i < batch % m; ++i) sizes[i] += 1;
  double pipeline = 0;    // one micro-batch through every stage (the largest)
  double bottleneck = 0;  // the busiest stage's time for all micro-batches of one round
  for (int stage = 0; stage < layout.pp; ++stage) {
    double round = 0;
    for (int i = 0; i < m; ++i) {
      const int64_t b = sizes[i];
      // Each sequence's one new token attends to its context and to itself.
      const double seconds =
          StageSeconds(model, layout, p, stage, b, b, static_cast<double>(b) * (context + 1), b * context, o);
      round += seconds;
      if (i == 0) pipeline += seconds;
    }
    bottleneck = std::max(bottleneck, round);
  }
  DecodePoint point;
  point.batch = batch;
  point.token_latency_s = std::max(pipeline, bottleneck);
  point.tokens_per_s = batch / point.token_latency_s;
  return point;
}

double PrefillRoofline(const ModelConfig& model, const Layout& layout, int64_t tokens, const PlanOptions& o) {
  const ParallelConfig p = SplitOf(model, layout);
  // finish[s]: when stage s finished the previous chunk; a chunk enters stage s once stage s - 1 is done with
  // it and stage s is done with the chunk before.
  std::vector<double> finish(layout.pp, 0);
  for (int64_t done = 0; done < tokens;) {
    const int64_t n = std::min<int64_t>(o.max_num_batched_tokens, tokens - done);
    // Causal attention: token i of the chunk sees the `done` tokens before the chunk and i + 1 of its own.
    const double pairs = static_cast<double>(n) * done + static_cast<double>(n) * (n + 1) / 2;
    double ready = 0;
    for (int stage = 0; stage < layout.pp; ++stage) {
      const double start = std::max(ready, finish[stage]);
      finish[stage] = start + StageSeconds(model, layout, p, stage, 1, n, pairs, done, o);
      ready = finish[stage];
    }
    done += n;
  }
  return finish.back();
}

absl::StatusOr<Layout> EvaluateLayout(const ModelConfig& model, int tp, int pp, const PlanOptions& o) {
  if (o.gpus_per_node <= 0) {
    return absl::InvalidArgumentError(Cat("--gpus-per-node ", o.gpus_per_node, " must be positive"));
  }
  ASSIGN_OR_RETURN(ParallelConfig p, SplitModel(model, tp, pp));
  Layout layout;
  layout.tp = tp;
  layout.pp = pp;
  const int world = tp * pp;
  if (tp > o.gpus_per_node) {
    return absl::InvalidArgumentError(
        Cat("tp=", tp, " is larger than --gpus-per-node ", o.gpus_per_node, " (TP stays inside a node)"));
  }
  layout.nodes = static_cast<int>(CeilDiv(world, o.gpus_per_node));
  if (world % layout.nodes != 0 || (world / layout.nodes) % tp != 0) {
    return absl::InvalidArgumentError(Cat("tp=", tp, " pp=", pp, " (", world, " GPUs) cannot be spread over ",
                                          layout.nodes, " nodes of ", o.gpus_per_node,
                                          " GPUs with whole pipeline stages on each"));
  }
  layout.ranks_per_node = world / layout.nodes;
  for (int s = 0; s < pp; ++s) layout.stage_layers.push_back(static_cast<int>(p.StageLayers(s).size()));

  const int64_t usable =
      static_cast<int64_t>(static_cast<double>(o.gpu.memory_bytes) * o.gpu_memory_utilization);
  int64_t min_blocks = -1;
  for (int rank = 0; rank < world; ++rank) {
    RankMemory r;
    r.rank = rank;
    r.weight_bytes = RankWeightBytes(model, p, rank);
    r.activation_bytes = RankActivationBytes(model, p, rank, o);
    r.kv_bytes_per_token = RankKvBytesPerToken(model, p, rank, o.kv_cache_dtype);
    r.kv_budget_bytes = usable - r.weight_bytes - r.activation_bytes;
    const int64_t blocks = std::max<int64_t>(0, r.kv_budget_bytes) / (r.kv_bytes_per_token * kKvBlockSize);
    min_blocks = min_blocks < 0 ? blocks : std::min(min_blocks, blocks);
    layout.weight_bytes = std::max(layout.weight_bytes, r.weight_bytes);
    layout.activation_bytes = std::max(layout.activation_bytes, r.activation_bytes);
    layout.kv_bytes_per_token = std::max(layout.kv_bytes_per_token, r.kv_bytes_per_token);
    layout.kv_cache_bytes =
        rank == 0 ? r.kv_budget_bytes : std::min(layout.kv_cache_bytes, r.kv_budget_bytes);
    layout.ranks.push_back(r);
  }
  layout.kv_cache_bytes = std::max<int64_t>(0, layout.kv_cache_bytes);
  layout.kv_tokens = min_blocks * kKvBlockSize;
  layout.max_batch =
      layout.kv_tokens / (o.max_model_len > 0 ? o.max_model_len : model.max_position_embeddings);
  layout.fits = layout.max_batch >= 1;
  if (!layout.fits) return layout;

  // Decode: the batch sizes asked for, capped at the sequences of prompt_len (+1 new) tokens the cache holds.
  const int64_t blocks_per_seq = CeilDiv(o.prompt_len + 1, kKvBlockSize);
  const int cap = static_cast<int>(std::min<int64_t>(o.max_num_seqs, min_blocks / blocks_per_seq));
  std::vector<int> batches;
  for (int b : o.batch_sizes) {
    if (b <= cap) batches.push_back(b);
  }
  const int largest = *std::max_element(o.batch_sizes.begin(), o.batch_sizes.end());
  if (cap >= 1 && cap < largest) batches.push_back(cap);
  std::sort(batches.begin(), batches.end());
  batches.erase(std::unique(batches.begin(), batches.end()), batches.end());
  for (int b : batches) layout.decode.push_back(DecodeRoofline(model, layout, b, o.prompt_len, o));
  layout.prefill_s = PrefillRoofline(model, layout, o.prompt_len, o);
  return layout;
}

absl::StatusOr<Plan> MakePlan(const ModelConfig& model, const PlanOptions& options) {
  PlanOptions o = options;
  if (o.gpus_per_node <= 0)
    return absl::InvalidArgumentError(Cat("--gpus-per-node ", o.gpus_per_node, " must be positive"));
  if (o.nodes < 0) return absl::InvalidArgumentError(Cat("--nodes ", o.nodes, " must be positive"));
  if (!(o.gpu_memory_utilization > 0 && o.gpu_memory_utilization <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--gpu-memory-utilization %g must be in (0, 1]", o.gpu_memory_utilization));
  }
  if (!(o.network_bytes_per_s > 0)) return absl::InvalidArgumentError("--network-gbps must be positive");
  if (o.max_model_len < 0)
    return absl::InvalidArgumentError(Cat("--max-model-len ", o.max_model_len, " is negative"));
  if (o.max_model_len == 0) o.max_model_len = model.max_position_embeddings;
  if (o.max_model_len > model.max_position_embeddings) {
    return absl::InvalidArgumentError(Cat("--max-model-len ", o.max_model_len,
                                          " is longer than the model's max_position_embeddings ",
                                          model.max_position_embeddings));
  }
  if (o.prompt_len <= 0 || o.max_num_batched_tokens <= 0 || o.max_num_seqs <= 0) {
    return absl::InvalidArgumentError(Cat("--prompt-len ", o.prompt_len, ", --max-num-batched-tokens ",
                                          o.max_num_batched_tokens, " and --max-num-seqs ", o.max_num_seqs,
                                          " must be positive"));
  }
  if (o.batch_sizes.empty()) return absl::InvalidArgumentError("no decode batch sizes");
  for (int b : o.batch_sizes) {
    if (b <= 0) return absl::InvalidArgumentError(Cat("decode batch size ", b, " must be positive"));
  }

  auto layouts_on = [&](int nodes) {
    std::vector<Layout> out;
    for (int tp = 1; tp <= o.gpus_per_node; ++tp) {
      for (int pp = 1; pp <= model.num_hidden_layers && tp * pp <= nodes * o.gpus_per_node; ++pp) {
        absl::StatusOr<Layout> layout = EvaluateLayout(model, tp, pp, o);
        if (layout.ok()) out.push_back(*std::move(layout));
      }
    }
    return out;
  };
  auto any_fits = [](const std::vector<Layout>& layouts) {
    return std::any_of(layouts.begin(), layouts.end(), [](const Layout& l) { return l.fits; });
  };
  Plan plan;
  plan.model = model;
  plan.num_parameters = model.NumParameters();
  if (o.nodes > 0) {
    plan.layouts = layouts_on(o.nodes);
  } else {
    for (int nodes = 1; nodes <= kMaxAutoNodes; ++nodes) {
      plan.layouts = layouts_on(nodes);
      o.nodes = nodes;
      if (any_fits(plan.layouts)) break;
    }
  }
  plan.options = o;
  // In the order of preference; the recommendation is the first that fits.
  std::stable_sort(plan.layouts.begin(), plan.layouts.end(), [](const Layout& a, const Layout& b) {
    return std::make_tuple(a.nodes, -a.tp, a.pp) < std::make_tuple(b.nodes, -b.tp, b.pp);
  });
  for (int i = 0; i < static_cast<int>(plan.layouts.size()) && plan.recommended < 0; ++i) {
    if (plan.layouts[i].fits) plan.recommended = i;
  }
  if (plan.recommended < 0) {
    const int64_t weights = plan.num_parameters * kBf16;
    const int64_t usable =
        static_cast<int64_t>(static_cast<double>(o.gpu.memory_bytes) * o.gpu_memory_utilization);
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%.1f B parameters (%s of bf16 weights) fit no tp x pp layout on up to %d node(s) of %d x %s "
        "(%s each, %s usable at --gpu-memory-utilization %.2f) with a KV cache for one sequence of "
        "--max-model-len %d tokens",
        static_cast<double>(plan.num_parameters) / 1e9, FormatGiB(weights), o.nodes, o.gpus_per_node,
        o.gpu.name, FormatGiB(o.gpu.memory_bytes), FormatGiB(usable), o.gpu_memory_utilization,
        o.max_model_len));
  }
  return plan;
}

}  // namespace tessera::tools
