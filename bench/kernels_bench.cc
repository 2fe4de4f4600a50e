// kernels_bench: prints the machine's ceilings (read bandwidth, oneDNN bf16 GEMM peak), then times Linear on
// the Llama 3.2 1B shapes at M = 1, 8, 32, 512, reporting GB/s of weights streamed and GFLOP/s.
//   kernels_bench                       the default path (what CpuBackend::Linear picks)
//   kernels_bench --crossover           also each path forced (GEMV; oneDNN with split or plain bf16
//                                       activations) at M = 1..512, for the crossover
//   kernels_bench --threads=N           threads (default: all cores)
// Google Benchmark flags (--benchmark_filter=..., --benchmark_min_time=...) pass through.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/roofline.h"
#include "kernels/cpu/cpu_backend.h"

namespace tessera {
namespace {

struct Shape {
  const char* name;
  int64_t n, k;  // w: [n, k]
};

// Llama 3.2 1B: q/o (2048 -> 2048), k/v (2048 -> 512), gate/up (2048 -> 8192), down (8192 -> 2048),
// lm_head (2048 -> 128256).
constexpr Shape kShapes[] = {{"q_o_2048x2048", 2048, 2048},
                             {"kv_512x2048", 512, 2048},
                             {"gate_up_8192x2048", 8192, 2048},
                             {"down_2048x8192", 2048, 8192},
                             {"lm_head_128256x2048", 128256, 2048}};

enum class Path { kAuto, kGemv, kOneDnn, kOneDnnBf16 };

struct Context {
  std::unique_ptr<CpuBackend> backend;
  std::unique_ptr<CpuBackend> backend_bf16;  // oneDNN path with activations rounded to bf16 (one matmul)
  // Per shape, enough copies of the weights to exceed the L3 cache (>= 128 MiB), used in turn, so that every
  // iteration streams its weights from memory as a real forward pass does.
  std::vector<std::vector<std::vector<uint16_t>>> weights;
  std::vector<float> x, y;
};

Context* g_ctx = nullptr;
double g_bandwidth_gbps = 0;  // ceilings measured at start-up
double g_peak_gflops = 0;

std::vector<uint16_t> RandomBf16Weights(int64_t count, uint64_t seed) {
  std::vector<uint16_t> w(count);
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
  for (int64_t i = 0; i < count; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    // ~N(0, 0.02)-sized values: exponent around 2^-6, random mantissa and sign.
    w[i] = static_cast<uint16_t>(0x3c00 + ((s >> 33) & 0x00ff) + ((s >> 40) & 0x8000));
  }
  return w;
}

void BM_Linear(benchmark::State& state, int shape_index, int64_t m, Path path) {
  const Shape& shape = kShapes[shape_index];
  const auto& copies = g_ctx->weights[shape_index];
  size_t copy = 0;
  float* x = g_ctx->x.data();
  float* y = g_ctx->y.data();
  CpuLinear& linear = g_ctx->backend->linear();
  for (auto _ : state) {
    const uint16_t* w = copies[copy].data();
    copy = (copy + 1) % copies.size();
    switch (path) {
      case Path::kAuto:
        linear.Forward(x, w, y, m, shape.n, shape.k);
        break;
      case Path::kGemv:
        linear.ForwardGemv(x, w, y, m, shape.n, shape.k);
        break;
      case Path::kOneDnn:
        if (!linear.ForwardOneDnn(x, w, y, m, shape.n, shape.k).ok()) state.SkipWithError("oneDNN failed");
        break;
      case Path::kOneDnnBf16:
        if (!g_ctx->backend_bf16->linear().ForwardOneDnn(x, w, y, m, shape.n, shape.k).ok()) {
          state.SkipWithError("oneDNN failed");
        }
        break;
    }
    benchmark::DoNotOptimize(y[0]);
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["GB/s"] =
      benchmark::Counter(iters * shape.n * shape.k * 2 / 1e9, benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(iters * 2.0 * m * shape.n * shape.k / 1e9, benchmark::Counter::kIsRate);
  // Percent of the ceilings (rates, like the two counters above).
  state.counters["%BW"] = benchmark::Counter(iters * 100.0 * shape.n * shape.k * 2 / 1e9 / g_bandwidth_gbps,
                                             benchmark::Counter::kIsRate);
  state.counters["%peak"] = benchmark::Counter(
      iters * 100.0 * 2.0 * m * shape.n * shape.k / 1e9 / g_peak_gflops, benchmark::Counter::kIsRate);
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  using namespace tessera;
  int threads = 0;
  bool crossover = false;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
    } else if (std::strcmp(argv[i], "--crossover") == 0) {
      crossover = true;
    } else {
      args.push_back(argv[i]);
    }
  }
  int bench_argc = static_cast<int>(args.size());
  benchmark::Initialize(&bench_argc, args.data());

  CpuBackendOptions options;
  options.num_threads = threads;
  auto backend = CpuBackend::Create(options);
  if (!backend.ok()) {
    std::fprintf(stderr, "kernels_bench: %s\n", backend.status().ToString().c_str());
    return 1;
  }
  Context ctx;
  ctx.backend = std::move(backend).value();
  options.linear.prefill_precision = PrefillPrecision::kBf16;
  ctx.backend_bf16 = std::move(CpuBackend::Create(options)).value();
  const int n_threads = ctx.backend->num_threads();
  std::printf("threads: %d, GEMV kernel: %s, GEMV up to M = %lld, then oneDNN\n", n_threads,
              GemvIsaName(ctx.backend->linear().gemv_isa()),
              static_cast<long long>(ctx.backend->linear().gemv_max_m()));
  g_bandwidth_gbps = MeasureReadBandwidthGBps(n_threads);
  g_peak_gflops = MeasureBf16GemmPeakGflops(n_threads);
  std::printf("ceiling: read bandwidth %.1f GB/s\n", g_bandwidth_gbps);
  std::printf("ceiling: oneDNN bf16 GEMM peak %.0f GFLOP/s\n", g_peak_gflops);
  std::fflush(stdout);

  int64_t max_n = 0, max_k = 0;
  for (int i = 0; i < 5; ++i) {
    const int64_t count = kShapes[i].n * kShapes[i].k;
    const int64_t copies = std::max<int64_t>(1, ((int64_t{128} << 20) + 2 * count - 1) / (2 * count));
    ctx.weights.emplace_back();
    for (int64_t c = 0; c < copies; ++c)
      ctx.weights.back().push_back(RandomBf16Weights(count, i * 1000 + c + 1));
    max_n = std::max(max_n, kShapes[i].n);
    max_k = std::max(max_k, kShapes[i].k);
  }
  ctx.x.assign(512 * max_k, 0.5f);
  ctx.y.assign(512 * max_n, 0.0f);
  g_ctx = &ctx;

  for (int s = 0; s < 5; ++s) {
    for (int64_t m : {1, 8, 32, 512}) {
      const std::string name = std::string("Linear/") + kShapes[s].name + "/M=" + std::to_string(m);
      benchmark::RegisterBenchmark(name.c_str(), BM_Linear, s, m, Path::kAuto)->UseRealTime();
    }
    if (crossover) {
      for (int64_t m : {1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512}) {
        for (Path p : {Path::kGemv, Path::kOneDnn, Path::kOneDnnBf16}) {
          const char* path_name = p == Path::kGemv     ? "/gemv"
                                  : p == Path::kOneDnn ? "/onednn_split"
                                                       : "/onednn_bf16";
          const std::string name =
              std::string("Crossover/") + kShapes[s].name + "/M=" + std::to_string(m) + path_name;
          benchmark::RegisterBenchmark(name.c_str(), BM_Linear, s, m, p)->UseRealTime();
        }
      }
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  g_ctx = nullptr;
  return 0;
}
