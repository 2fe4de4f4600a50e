// End-to-end CPU benchmark of the Llama forward: measures this machine's ceilings (memory read bandwidth and
// oneDNN's bf16 GEMM peak) in the same run, then times decode at batch 1, 8 and 32 and a 512-token prefill of
// a model (default: the `small` preset, the shape of Llama 3.2 1B, made on first use) and prints a table;
// with
// --json, also one JSON line per case with the median (for tables next to other engines' medians).
//
//   model_bench [--model DIR] [--threads N] [--steps N] [--json 1] [--cases decode_b1,decode_b8,...]
//               [--isa avx512|avx2|scalar] [--quant-activations fp32|int8]
//
// --isa forces the GEMV kernels' instruction set (default: the best this CPU has); --quant-activations is the
// serving flag of that name (decode against quantized weights).
// --cases picks some of decode_b1, decode_b8, decode_b32, prefill_512, prefill_512_bf16 (default: all).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "bench/roofline.h"
#include "kernels/cpu/cpu_backend.h"
#include "worker/checkpoint/make_model.h"
#include "worker/model_runner.h"

namespace tessera {
namespace {

using bench::Clock;
using bench::Cover;
using bench::Die;
using bench::OrDie;
using bench::RandomPrompt;
using bench::Release;
using bench::Seconds;

struct Timing {
  double best = 1e30;
  double median = 0;
};

Timing Summarize(std::vector<double> samples) {
  std::sort(samples.begin(), samples.end());
  return {samples.front(), samples[samples.size() / 2]};
}

// Seconds per decode step for `batch` sequences with a 32-token context, over `steps` steps.
Timing DecodeStepSeconds(ModelRunner& runner, BlockAllocator& blocks, int batch, int steps) {
  std::vector<Sequence> seqs(batch);
  std::vector<Sequence*> ptrs;
  for (int i = 0; i < batch; ++i) {
    seqs[i].tokens = RandomPrompt(32, runner.config().vocab_size, 17 + i);
    seqs[i].num_prompt_tokens = 32;
    ptrs.push_back(&seqs[i]);
  }
  Cover(blocks, ptrs);
  Tensor logits = OrDie(runner.Forward(ptrs));
  OrDie(runner.SampleAndAppend(logits, ptrs));
  std::vector<double> samples;
  for (int s = 0; s < steps; ++s) {
    auto t0 = Clock::now();
    Cover(blocks, ptrs);
    logits = OrDie(runner.Forward(ptrs));
    OrDie(runner.SampleAndAppend(logits, ptrs));
    samples.push_back(Seconds(t0, Clock::now()));
  }
  for (Sequence& s : seqs) Release(blocks, s);
  return Summarize(std::move(samples));
}

Timing PrefillSeconds(ModelRunner& runner, BlockAllocator& blocks, int tokens, int repeats) {
  std::vector<double> samples;
  for (int r = 0; r < repeats; ++r) {
    Sequence seq;
    seq.tokens = RandomPrompt(tokens, runner.config().vocab_size, 99 + r);
    seq.num_prompt_tokens = tokens;
    Cover(blocks, {&seq});
    auto t0 = Clock::now();
    OrDie(runner.Forward({&seq}));
    OrDie(runner.backend().Synchronize());
    samples.push_back(Seconds(t0, Clock::now()));
    Release(blocks, seq);
  }
  return Summarize(std::move(samples));
}

// {"engine":"tessera","weights":"BF16","measure":NAME,"tokens_per_s":MEDIAN,"runs":N}; weights: the dtype of
// the projections (BF16, Q8_0, ...).
void PrintJsonLine(bool json, const std::string& weights, const char* measure, double tokens_per_s,
                   int runs) {
  if (!json) return;
  std::printf(
      "{\"engine\":\"tessera\",\"weights\":\"%s\",\"measure\":\"%s\",\"tokens_per_s\":%.2f,\"runs\":%d}\n",
      weights.c_str(), measure, tokens_per_s, runs);
}

// The JSON lines of every measured case; returns the exit status 0.
int PrintJsonLines(bool json, const std::string& weights,
                   const std::vector<std::pair<std::string, double>>& medians, int steps) {
  for (const auto& [measure, tokens_per_s] : medians) {
    PrintJsonLine(json, weights, measure.c_str(), tokens_per_s, measure.rfind("decode", 0) == 0 ? steps : 5);
  }
  return 0;
}

// Bytes one decode step streams as the checkpoint stores them (BF16 or quantized blocks): every weight
// matrix once; the embedding lookup reads a few rows only, but a tied lm_head reads the whole table.
double StepBytes(const Checkpoint& checkpoint) {
  double bytes = 0;
  for (const TensorSpec& spec : LlamaTensorSpecs(checkpoint.config())) {
    if (spec.shape.size() != 2) continue;
    if (spec.name == "model.embed_tokens.weight" && !checkpoint.config().tie_word_embeddings) continue;
    bytes += static_cast<double>(OrDie(checkpoint.Info(spec.name)).nbytes());
  }
  return bytes;
}

int Main(int argc, char** argv) {
  std::string model_dir;
  int threads = 0, steps = 8, json = 0;
  std::string isa_name = GemvIsaName(BestGemvIsa());
  QuantActivations quant_activations = QuantActivations::kFp32;
  std::string cases = "decode_b1,decode_b8,decode_b32,prefill_512,prefill_512_bf16";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--model")
      model_dir = argv[i + 1];
    else if (flag == "--threads")
      threads = std::atoi(argv[i + 1]);
    else if (flag == "--steps")
      steps = std::atoi(argv[i + 1]);
    else if (flag == "--json")
      json = std::atoi(argv[i + 1]);
    else if (flag == "--cases")
      cases = argv[i + 1];
    else if (flag == "--isa")
      isa_name = argv[i + 1];
    else if (flag == "--quant-activations")
      OrDie(ParseQuantActivations(argv[i + 1], quant_activations));
    else
      Die(absl::InvalidArgumentError(
          "unknown flag " + flag +
          " (use --model DIR --threads N --steps N --json 1 --cases LIST --isa NAME "
          "--quant-activations fp32|int8)"));
  }
  const std::vector<std::string> wanted = absl::StrSplit(cases, ',');
  for (const std::string& name : wanted) {
    if (name != "decode_b1" && name != "decode_b8" && name != "decode_b32" && name != "prefill_512" &&
        name != "prefill_512_bf16") {
      Die(absl::InvalidArgumentError("unknown case " + name +
                                     " in --cases (decode_b1, decode_b8, decode_b32, prefill_512, "
                                     "prefill_512_bf16)"));
    }
  }
  auto want = [&](const std::string& name) {
    return std::find(wanted.begin(), wanted.end(), name) != wanted.end();
  };
  if (model_dir.empty()) {
    model_dir = (std::filesystem::temp_directory_path() / "tessera-bench-small").string();
    if (!std::filesystem::exists(model_dir + "/config.json")) {
      std::fprintf(stderr, "model_bench: writing the small preset to %s\n", model_dir.c_str());
      MakeModelOptions make;
      make.preset = "small";
      make.out_dir = model_dir;
      if (absl::Status s = MakeModel(make); !s.ok()) Die(s);
    }
  }
  CpuBackendOptions backend_options;
  backend_options.num_threads = threads;
  bool isa_found = false;
  for (GemvIsa isa : {GemvIsa::kAvx512, GemvIsa::kAvx2, GemvIsa::kScalar}) {
    if (isa_name == GemvIsaName(isa)) {
      backend_options.linear.gemv_isa = isa;
      isa_found = true;
    }
  }
  backend_options.linear.quant_activations = quant_activations;
  if (!isa_found) Die(absl::InvalidArgumentError("--isa " + isa_name + " is not avx512, avx2 or scalar"));
  auto backend = OrDie(CpuBackend::Create(backend_options));
  threads = backend->num_threads();

  const double bandwidth = MeasureReadBandwidthGBps(threads);
  const bool any_prefill = want("prefill_512") || want("prefill_512_bf16");
  const double gemm_peak = any_prefill ? MeasureBf16GemmPeakGflops(threads) : 0;

  Checkpoint checkpoint = OrDie(Checkpoint::Open(model_dir));
  const ModelConfig& c = checkpoint.config();
  ModelRunnerOptions options;
  options.model.max_num_tokens = 32 * 32;  // the batch-32 prefill of 32-token contexts
  options.model.max_num_seqs = 32;
  const int num_blocks = 32 * 4 + 64;
  auto runner = OrDie(ModelRunner::Create(checkpoint, *backend, options));
  if (absl::Status s = runner->AllocateKvCache(num_blocks); !s.ok()) Die(s);
  BlockAllocator blocks(num_blocks);

  const double step_bytes = StepBytes(checkpoint);
  const std::string weights(DTypeName(OrDie(checkpoint.Info("model.layers.0.mlp.up_proj.weight")).dtype));
  const int64_t h = c.hidden_size, kv = int64_t{c.num_key_value_heads} * c.head_dim;
  const int64_t q = int64_t{c.num_attention_heads} * c.head_dim;
  const int64_t layer_params = h * q + 2 * h * kv + q * h + 3 * h * c.intermediate_size + 2 * h;
  const int64_t matmul_params = c.num_hidden_layers * layer_params + int64_t{c.vocab_size} * h;

  std::printf("GEMV kernels: %s\n", isa_name.c_str());
  std::printf("ceilings (%d threads): read bandwidth %.1f GB/s, oneDNN bf16 GEMM %.1f GFLOP/s\n", threads,
              bandwidth, gemm_peak);
  std::printf("model %s: %.2f GB of %s weights streamed per decode step\n\n", model_dir.c_str(),
              step_bytes / 1e9, weights.c_str());
  std::printf("%-14s %10s %12s %12s %14s\n", "case", "ms/step", "tokens/s", "GB/s", "% of ceiling");
  std::printf("(decode: weight GB/s vs read bandwidth; prefill: GFLOP/s vs the bf16 GEMM peak)\n");
  std::vector<std::pair<std::string, double>> medians;  // printed as JSON lines after the table
  for (int batch : {1, 8, 32}) {
    if (!want("decode_b" + std::to_string(batch))) continue;
    const Timing t = DecodeStepSeconds(*runner, blocks, batch, steps);
    const double s = t.best;
    double gbps = step_bytes / s / 1e9;
    std::printf("decode b=%-5d %10.1f %12.1f %12.1f %13.0f%%\n", batch, s * 1e3, batch / s, gbps,
                100 * gbps / bandwidth);
    medians.emplace_back("decode_b" + std::to_string(batch), batch / t.median);
  }
  const int prefill = 512;
  // Linear layers (lm_head only for the last token) plus causal attention (QK^T and PV over half the square).
  const double flops = 2.0 * prefill * (matmul_params - int64_t{c.vocab_size} * h) + 2.0 * h * c.vocab_size +
                       2.0 * c.num_hidden_layers * q * prefill * prefill;
  auto report_prefill = [&](const char* name, const char* measure, ModelRunner& r, BlockAllocator& b) {
    const Timing t = PrefillSeconds(r, b, prefill, json ? 5 : 2);
    const double s = t.best;
    medians.emplace_back(measure, prefill / t.median);
    std::printf("%-14s %10.1f %12.1f %12s %13.0f%%   (%.1f GFLOP/s)\n", name, s * 1e3, prefill / s, "-",
                100 * flops / s / 1e9 / gemm_peak, flops / s / 1e9);
  };
  if (want("prefill_512")) report_prefill("prefill 512", "prefill_512", *runner, blocks);
  if (!want("prefill_512_bf16")) return PrintJsonLines(json, weights, medians, steps);
  // The same prefill with activations rounded to bf16 for the GEMMs (--prefill-precision bf16).
  CpuBackendOptions bf16_options = backend_options;
  bf16_options.num_threads = threads;
  bf16_options.linear.prefill_precision = PrefillPrecision::kBf16;
  auto bf16_backend = OrDie(CpuBackend::Create(bf16_options));
  auto bf16_runner = OrDie(ModelRunner::Create(checkpoint, *bf16_backend, options));
  if (absl::Status s = bf16_runner->AllocateKvCache(64); !s.ok()) Die(s);
  BlockAllocator bf16_blocks(64);
  report_prefill("prefill bf16", "prefill_512_bf16", *bf16_runner, bf16_blocks);
  return PrintJsonLines(json, weights, medians, steps);
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) { return tessera::Main(argc, argv); }
