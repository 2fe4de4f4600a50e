// End-to-end GPU benchmark of the Llama forward on the CUDA backend. Measures the GPU's ceilings in the same
// run (device-to-device copy bandwidth, cuBLASLt bf16 GEMM rate), then loads the llama3-8b shape with random
// weights (written on first use) and times decode steps at batch 1, 8 and 64 (~128-token contexts) against
// the HBM roofline, and a 2048-token prefill against the GEMM ceiling. Prints a table last; writes the
// figures as JSON.
//
//   gpu_bench [--model-dir DIR] [--json-out PATH] [--steps N] [--context N] [--prefill-tokens N]
//             [--batches 1,8,64] [--device N]
//
// Exit status: 0 done, 1 error (one line on stderr, e.g. no GPU), 2 bad usage.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "bench/gpu_roofline.h"
#include "kernels/backend_factory.h"
#include "nlohmann/json.hpp"
#include "worker/checkpoint/checkpoint.h"
#include "worker/checkpoint/make_model.h"
#include "worker/model_runner.h"

namespace tessera {
namespace {

using bench::Clock;
using bench::Cover;
using bench::Die;
using bench::Median;
using bench::OrDie;
using bench::RandomPrompt;
using bench::Release;
using bench::Seconds;

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(
      stderr,
      "gpu_bench: %s (usage: gpu_bench [--model-dir DIR] [--json-out PATH] [--steps N] [--context N] "
      "[--prefill-tokens N] [--batches 1,8,64] [--device N])\n",
      why.c_str());
  std::exit(2);
}

struct Options {
  std::string model_dir = "/tmp/tessera-8b";
  std::string json_out;
  int steps = 20;
  int context = 128;
  int prefill_tokens = 2048;
  std::vector<int> batches = {1, 8, 64};
  int device = 0;
};

int PositiveInt(const std::string& flag, const std::string& value) {
  char* end = nullptr;
  long v = std::strtol(value.c_str(), &end, 10);
  if (end == value.c_str() || *end != '\0' || v <= 0 || v > 1000000) {
    Usage(flag + " must be a positive integer, not \"" + value + "\"");
  }
  return static_cast<int>(v);
}

Options ParseFlags(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) Usage(flag + " needs a value");
    const std::string value = argv[i + 1];
    if (flag == "--model-dir") {
      o.model_dir = value;
    } else if (flag == "--json-out") {
      o.json_out = value;
    } else if (flag == "--steps") {
      o.steps = PositiveInt(flag, value);
    } else if (flag == "--context") {
      o.context = PositiveInt(flag, value);
    } else if (flag == "--prefill-tokens") {
      o.prefill_tokens = PositiveInt(flag, value);
    } else if (flag == "--device") {
      o.device = std::atoi(value.c_str());
    } else if (flag == "--batches") {
      o.batches.clear();
      size_t start = 0;
      while (start <= value.size()) {
        size_t comma = value.find(',', start);
        if (comma == std::string::npos) comma = value.size();
        o.batches.push_back(PositiveInt(flag, value.substr(start, comma - start)));
        start = comma + 1;
      }
    } else {
      Usage("unknown flag " + flag);
    }
  }
  return o;
}

// Writes the llama3-8b preset to `dir` unless a complete checkpoint is there (the index is written last).
// Returns the seconds spent writing (0 when reused).
double EnsureCheckpoint(const std::string& dir) {
  namespace fs = std::filesystem;
  if (fs::exists(fs::path(dir) / "config.json") &&
      fs::exists(fs::path(dir) / "model.safetensors.index.json")) {
    std::fprintf(stderr, "gpu_bench: reusing the checkpoint in %s\n", dir.c_str());
    return 0;
  }
  std::fprintf(stderr, "gpu_bench: writing the llama3-8b preset (random weights, ~16 GB) to %s\n",
               dir.c_str());
  MakeModelOptions make;
  make.preset = "llama3-8b";
  make.out_dir = dir;
  auto t0 = Clock::now();
  if (absl::Status s = MakeModel(make); !s.ok()) Die(s);
  return Seconds(t0, Clock::now());
}

// Sizes of the model that the rooflines count.
struct ModelCounts {
  int64_t matmul_params = 0;  // every Linear weight of the layers plus lm_head (the embedding is a lookup)
  int64_t layer_matmul_params = 0;
  int64_t kv_bytes_per_token = 0;  // all layers, keys and values, bf16
};

ModelCounts Count(const ModelConfig& c) {
  const int64_t h = c.hidden_size, q = int64_t{c.num_attention_heads} * c.head_dim;
  const int64_t kv = int64_t{c.num_key_value_heads} * c.head_dim;
  ModelCounts m;
  m.layer_matmul_params = c.num_hidden_layers * (h * q + 2 * h * kv + q * h + 3 * h * c.intermediate_size);
  m.matmul_params = m.layer_matmul_params + int64_t{c.vocab_size} * h;  // lm_head (tied or not)
  m.kv_bytes_per_token = 2 * 2 * c.num_hidden_layers * kv;
  return m;
}

struct DecodeResult {
  int batch = 0;
  double median_s = 0;
  double min_s = 0;
  int context_start = 0;
};

// Median seconds of one decode step (Forward + greedy SampleAndAppend, which waits for the device) for
// `batch` sequences whose prompts of `context` tokens are first prefilled in groups that fit max_num_tokens.
DecodeResult TimeDecode(ModelRunner& runner, BlockAllocator& blocks, int batch, int context, int max_tokens,
                        int warmup, int steps) {
  std::vector<Sequence> seqs(batch);
  std::vector<Sequence*> all;
  for (int i = 0; i < batch; ++i) {
    seqs[i].tokens = RandomPrompt(context, runner.config().vocab_size, 17 + 31 * i);
    seqs[i].num_prompt_tokens = context;
    all.push_back(&seqs[i]);
  }
  const int group = std::max(1, max_tokens / context);
  for (int first = 0; first < batch; first += group) {
    std::vector<Sequence*> part(all.begin() + first, all.begin() + std::min(batch, first + group));
    Cover(blocks, part);
    Tensor logits = OrDie(runner.Forward(part));
    OrDie(runner.SampleAndAppend(logits, part));
  }
  std::vector<double> times;
  for (int s = 0; s < warmup + steps; ++s) {
    auto t0 = Clock::now();
    Cover(blocks, all);
    Tensor logits = OrDie(runner.Forward(all));
    OrDie(runner.SampleAndAppend(logits, all));
    OrDie(runner.backend().Synchronize());
    if (s >= warmup) times.push_back(Seconds(t0, Clock::now()));
  }
  for (Sequence& s : seqs) Release(blocks, s);
  DecodeResult r;
  r.batch = batch;
  r.median_s = Median(times);
  r.min_s = *std::min_element(times.begin(), times.end());
  r.context_start = context;
  return r;
}

// Median seconds of one prefill of a `tokens`-token prompt (one warm-up first).
double TimePrefill(ModelRunner& runner, BlockAllocator& blocks, int tokens, int repeats) {
  std::vector<double> times;
  for (int r = 0; r < repeats + 1; ++r) {
    Sequence seq;
    seq.tokens = RandomPrompt(tokens, runner.config().vocab_size, 99 + r);
    seq.num_prompt_tokens = tokens;
    Cover(blocks, {&seq});
    auto t0 = Clock::now();
    OrDie(runner.Forward({&seq}));
    OrDie(runner.backend().Synchronize());
    if (r > 0) times.push_back(Seconds(t0, Clock::now()));
    Release(blocks, seq);
  }
  return Median(times);
}

int Main(int argc, char** argv) {
  const Options o = ParseFlags(argc, argv);
  // The backend first: on a machine with no GPU this is where the one-line UNAVAILABLE error comes from.
  std::unique_ptr<Backend> backend =
      OrDie(CreateBackend({.device = DeviceKind::kCuda, .device_index = o.device}));
  const GpuInfo gpu = OrDie(QueryGpu(o.device));
  std::fprintf(stderr, "gpu_bench: %s (compute %d.%d, %d SMs, %.1f GiB)\n", gpu.name.c_str(),
               gpu.compute_major, gpu.compute_minor, gpu.sm_count, gpu.total_bytes / double(1 << 30));

  // Ceilings, before the model takes the memory.
  const CopyCeiling copy = OrDie(MeasureCopyBandwidth(o.device, int64_t{4} << 30, 10));
  std::vector<GemmCeiling> gemms;
  for (GemmShape shape : {GemmShape{8192, 8192, 8192}, GemmShape{16384, 16384, 8192}}) {
    gemms.push_back(OrDie(MeasureBf16Gemm(o.device, shape, 10)));
  }
  const GemmCeiling& gemm =
      *std::max_element(gemms.begin(), gemms.end(), [](auto& a, auto& b) { return a.tflops < b.tflops; });
  std::printf(
      "ceilings: device-to-device copy %.0f GB/s (read + write, %.1f GiB copies); cuBLASLt bf16 GEMM "
      "%.0f TFLOP/s (%lldx%lldx%lld)\n",
      copy.gbps, copy.bytes / double(1 << 30), gemm.tflops, static_cast<long long>(gemm.shape.m),
      static_cast<long long>(gemm.shape.n), static_cast<long long>(gemm.shape.k));
  std::fflush(stdout);

  const double make_seconds = EnsureCheckpoint(o.model_dir);
  Checkpoint checkpoint = OrDie(Checkpoint::Open(o.model_dir));
  const ModelConfig& c = checkpoint.config();
  const int max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  const int warmup = 3;
  ModelRunnerOptions options;
  options.model.max_num_tokens = std::max(o.prefill_tokens, o.context);
  options.model.max_num_seqs = max_batch;
  const int blocks_per_seq = (o.context + 1 + warmup + o.steps + 15) / 16 + 1;
  const int num_blocks = max_batch * blocks_per_seq + (o.prefill_tokens + 15) / 16 + 8;
  auto t_load = Clock::now();
  std::unique_ptr<ModelRunner> runner = OrDie(ModelRunner::Create(checkpoint, *backend, options));
  if (absl::Status s = runner->AllocateKvCache(num_blocks); !s.ok()) Die(s);
  BlockAllocator blocks(num_blocks);
  OrDie(backend->Synchronize());
  const double load_seconds = Seconds(t_load, Clock::now());

  const ModelCounts counts = Count(c);
  const double step_bytes = 2.0 * static_cast<double>(counts.matmul_params);
  const double roofline_s = step_bytes / (copy.gbps * 1e9);
  std::printf(
      "model llama3-8b shape (%s): %.2f GB of weights per decode step -> HBM roofline %.2f ms/step; "
      "load %.1f s\n",
      o.model_dir.c_str(), step_bytes / 1e9, roofline_s * 1e3, load_seconds);
  std::fflush(stdout);

  nlohmann::json out;
  out["device"] = {
      {"name", gpu.name},
      {"compute_capability", std::to_string(gpu.compute_major) + "." + std::to_string(gpu.compute_minor)},
      {"sm_count", gpu.sm_count},
      {"memory_bytes", gpu.total_bytes},
      {"l2_bytes", gpu.l2_bytes}};
  out["ceilings"]["copy"] = {
      {"gbps", copy.gbps}, {"bytes_per_copy", copy.bytes}, {"median_ms", copy.median_ms}};
  for (const GemmCeiling& g : gemms) {
    out["ceilings"]["gemm_shapes"].push_back({{"m", g.shape.m},
                                              {"n", g.shape.n},
                                              {"k", g.shape.k},
                                              {"median_ms", g.median_ms},
                                              {"tflops", g.tflops}});
  }
  out["ceilings"]["gemm_tflops"] = gemm.tflops;
  out["model"] = {{"preset", "llama3-8b"},
                  {"dir", o.model_dir},
                  {"parameters", c.NumParameters()},
                  {"matmul_parameters", counts.matmul_params},
                  {"weight_bytes_per_decode_step", step_bytes},
                  {"make_model_seconds", make_seconds},
                  {"load_seconds", load_seconds}};

  // Decode: first every batch eagerly (one launch per kernel), then the same after CaptureGraphs (what
  // serving runs: one CUDA graph per step).
  auto decode_json = [&](const DecodeResult& d) {
    return nlohmann::json{
        {"batch", d.batch},
        {"context", o.context},
        {"steps", o.steps},
        {"ms_per_step", d.median_s * 1e3},
        {"min_ms_per_step", d.min_s * 1e3},
        {"tokens_per_s", d.batch / d.median_s},
        {"roofline_ms", roofline_s * 1e3},
        {"pct_of_roofline", 100 * roofline_s / d.median_s},
        // Not in the roofline: the KV cache read per step (context * batch tokens).
        {"kv_bytes_read_per_step", double(counts.kv_bytes_per_token) * o.context * d.batch}};
  };
  std::vector<DecodeResult> eager_decodes, decodes;
  for (int batch : o.batches) {
    eager_decodes.push_back(
        TimeDecode(*runner, blocks, batch, o.context, options.model.max_num_tokens, warmup, o.steps));
    const DecodeResult& d = eager_decodes.back();
    std::fprintf(stderr, "gpu_bench: eager decode batch %d: %.3f ms/step (median of %d), min %.3f ms\n",
                 batch, d.median_s * 1e3, o.steps, d.min_s * 1e3);
    out["decode_eager"].push_back(decode_json(d));
  }
  const auto t_capture = Clock::now();
  if (absl::Status s = runner->CaptureGraphs(); !s.ok()) Die(s);
  OrDie(backend->Synchronize());
  const double capture_seconds = Seconds(t_capture, Clock::now());
  std::fprintf(stderr, "gpu_bench: captured %d decode graphs (batch up to %d) in %.2f s\n",
               runner->num_graphs(),
               runner->graph_batch_sizes().empty() ? 0 : runner->graph_batch_sizes().back(), capture_seconds);
  out["graphs"] = {{"count", runner->num_graphs()}, {"capture_seconds", capture_seconds}};
  for (int batch : o.batches) {
    const int64_t replays = runner->graph_steps();
    decodes.push_back(
        TimeDecode(*runner, blocks, batch, o.context, options.model.max_num_tokens, warmup, o.steps));
    const DecodeResult& d = decodes.back();
    if (runner->graph_steps() - replays < warmup + o.steps) {
      Die(absl::InternalError(absl::StrCat("decode of batch ", batch, " did not replay graphs")));
    }
    std::fprintf(stderr, "gpu_bench: graph decode batch %d: %.3f ms/step (median of %d), min %.3f ms\n",
                 batch, d.median_s * 1e3, o.steps, d.min_s * 1e3);
    out["decode"].push_back(decode_json(d));
  }

  const int64_t t = o.prefill_tokens, q = int64_t{c.num_attention_heads} * c.head_dim;
  // Linear layers for every token, lm_head for the last one, causal attention (QK^T and PV over half the
  // square).
  const double prefill_flops = 2.0 * t * counts.layer_matmul_params + 2.0 * c.hidden_size * c.vocab_size +
                               2.0 * c.num_hidden_layers * q * double(t) * double(t);
  const double prefill_s = TimePrefill(*runner, blocks, o.prefill_tokens, 3);
  const double prefill_tflops = prefill_flops / prefill_s / 1e12;
  out["prefill"] = {{"tokens", o.prefill_tokens},
                    {"ms", prefill_s * 1e3},
                    {"tokens_per_s", o.prefill_tokens / prefill_s},
                    {"flops", prefill_flops},
                    {"tflops", prefill_tflops},
                    {"pct_of_gemm_ceiling", 100 * prefill_tflops / gemm.tflops}};

  if (!o.json_out.empty()) {
    std::ofstream f(o.json_out);
    f << out.dump(2) << "\n";
    if (!f) Die(absl::UnavailableError("cannot write " + o.json_out));
  }

  std::printf("\n%-16s %10s %12s %14s\n", "case", "ms", "tokens/s", "% of ceiling");
  std::printf(
      "(decode: ms/step vs the HBM roofline %.2f ms; prefill: FLOP/s vs the GEMM ceiling %.0f TFLOP/s)\n",
      roofline_s * 1e3, gemm.tflops);
  for (size_t i = 0; i < decodes.size(); ++i) {
    const DecodeResult& d = decodes[i];
    std::printf("decode b=%-7d %10.2f %12.0f %13.0f%%   (eager %.2f ms)\n", d.batch, d.median_s * 1e3,
                d.batch / d.median_s, 100 * roofline_s / d.median_s, eager_decodes[i].median_s * 1e3);
  }
  std::printf("prefill %-8d %10.1f %12.0f %13.0f%%   (%.0f TFLOP/s)\n", o.prefill_tokens, prefill_s * 1e3,
              o.prefill_tokens / prefill_s, 100 * prefill_tflops / gemm.tflops, prefill_tflops);
  return 0;
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) { return tessera::Main(argc, argv); }
