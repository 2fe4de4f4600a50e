// step_model_bench: the step model's figures (tools/step_model.h) for the decode step's two designs:
// Llama 3.3 70B at tp 8 pp 1 on H200 (decode at batch 1 and 64 with 1,024 tokens of context, a 2,048-token
// prefill), and Llama 3.1 8B at tp 1 for reference. A model, not a measurement: it needs no GPU
// (docs/plan.md, "The step model").
#include <cstdio>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "tools/planner.h"
#include "tools/step_model.h"
#include "worker/checkpoint/model_presets.h"

namespace tessera::tools {
namespace {

void PrintModel(const char* preset, int tp, const StepHardware& hw) {
  const ModelConfig model = bench::OrDie(PresetConfig(preset));
  std::printf(
      "\n%s (hidden %d, %d layers, %d heads, %d KV heads, head_dim %d, MLP %d, vocab %d), tp %d pp 1\n",
      preset, model.hidden_size, model.num_hidden_layers, model.num_attention_heads,
      model.num_key_value_heads, model.head_dim, model.intermediate_size, model.vocab_size, tp);
  const std::vector<StepShape> shapes = {
      {.tp = tp, .pp = 1, .batch = 1, .tokens = 1, .context = 1024},
      {.tp = tp, .pp = 1, .batch = 64, .tokens = 64, .context = 1024},
      {.tp = tp, .pp = 1, .batch = 1, .tokens = 2048, .context = 0},
  };
  std::printf("%s", StepTableHeader().c_str());
  for (const StepShape& shape : shapes) {
    double before_us = 0;
    for (StepDesign design : {StepDesign::kBefore, StepDesign::kAfter}) {
      const StepCost cost = bench::OrDie(ModelStep(model, shape, design, hw));
      std::printf("%s", StepTableRow(StepLabel(shape), cost).c_str());
      if (design == StepDesign::kBefore) {
        before_us = cost.estimated_us;
      } else {
        std::printf("%-26s speed-up %.2fx\n", "", before_us / cost.estimated_us);
      }
    }
  }
}

}  // namespace
}  // namespace tessera::tools

int main() {
  using namespace tessera::tools;
  const StepHardware hw = StepHardwareFor(*FindGpu("h200-141gb"));
  std::printf(
      "step model (per rank, TP rank 0; a model, not a measurement): H200 HBM %.1f TB/s, %.1f TFLOPS bf16, "
      "NVLink %.0f GB/s/direction; kernel in a graph %.0f us, host round trip %.0f us, NCCL latency %.0f us, "
      "one-shot latency %.0f us (up to %lld KiB at tp 8)\n",
      hw.hbm_bytes_per_s / 1e12, hw.bf16_flops / 1e12, hw.nvlink_bytes_per_s / 1e9, hw.kernel_launch_s * 1e6,
      hw.host_round_trip_s * 1e6, hw.nccl_latency_s * 1e6, hw.one_shot_latency_s * 1e6,
      static_cast<long long>(OneShotMaxBytes(hw, 8) / 1024));
  std::printf(
      "columns: launches = kernels, copies, uploads and collectives the device runs; segments = graphs "
      "replayed; trips = host round trips; est us = hbm + compute + launch + trips + collect + pp\n");
  PrintModel("llama3-70b", 8, hw);
  PrintModel("llama3-8b", 1, hw);
  return 0;
}
