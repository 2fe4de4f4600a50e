// kernels_bench: prints the machine's ceilings (read bandwidth, oneDNN bf16 GEMM peak), then times Linear on
// the Llama 3.2 1B shapes at M = 1, 8, 32, 512, reporting GB/s of weights streamed and GFLOP/s.
//   kernels_bench                       the default path (what CpuBackend::Linear picks)
//   kernels_bench --crossover           also each path forced (GEMV; oneDNN with split or plain bf16
//                                       activations) at M = 1..512, for the crossover
//   kernels_bench --quant-crossover     also quantized Linear (CpuLinear::ForwardQuant) with Q8_0 and Q4_0
//                                       weights on q/o, gate/up and down, each path forced (quantized GEMV;
//                                       bf16-dequantized tiles into oneDNN, split or plain bf16
//                                       activations) at M = 1..512, for the quantized crossover
//   kernels_bench --threads=N           threads (default: all cores)
// Also the GEMV kernels alone at M = 1 on the 8192x2048 gate/up matrix in bf16 and in the quantized block
// types (Q8_0, Q4_0, Q4_1) on 1 and 2 threads, as GB/s of weight bytes and % of the read bandwidth measured
// at that thread count (GemvQuant/...); the quantized ones also with int8 activations (.../int8_activations,
// where the CPU has AVX-512 VNNI). Google Benchmark flags (--benchmark_filter=...,
// --benchmark_min_time=...) pass through.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/roofline.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/gemv.h"
#include "kernels/cpu/gemv_quant.h"
#include "kernels/cpu/gemv_quant_int8.h"
#include "kernels/cpu/thread_pool.h"

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

// GEMV kernels alone at M = 1 on one matrix, bf16 against the quantized block types, on 1 and 2 threads.
constexpr int64_t kQuantN = 8192, kQuantK = 2048;
enum class WeightKind { kBf16, kQ8_0, kQ4_0, kQ4_1 };
constexpr WeightKind kWeightKinds[] = {WeightKind::kBf16, WeightKind::kQ8_0, WeightKind::kQ4_0,
                                       WeightKind::kQ4_1};

QuantType ToQuantType(WeightKind kind) {
  return kind == WeightKind::kQ8_0   ? QuantType::kQ8_0
         : kind == WeightKind::kQ4_0 ? QuantType::kQ4_0
                                     : QuantType::kQ4_1;
}

const char* WeightKindName(WeightKind kind) {
  return kind == WeightKind::kBf16 ? "bf16" : QuantTypeName(ToQuantType(kind));
}

int64_t WeightBytes(WeightKind kind) {
  return kind == WeightKind::kBf16 ? kQuantN * kQuantK * 2
                                   : kQuantN * QuantRowBytes(ToQuantType(kind), kQuantK);
}

// Random blocks with fp16 scales (and Q4_1 mins) of about 0.01, both signs.
std::vector<uint8_t> RandomQuantWeights(QuantType type, uint64_t seed) {
  std::vector<uint8_t> w(kQuantN * QuantRowBytes(type, kQuantK));
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
  for (uint8_t& b : w) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    b = static_cast<uint8_t>(s >> 56);
  }
  const int64_t block_bytes = QuantBlockBytes(type);
  for (size_t b = 0; b < w.size(); b += block_bytes) {
    const uint16_t scale = static_cast<uint16_t>(0x2000 | (w[b] & 0x03) << 8 | (w[b + 1] & 0x80) << 8);
    std::memcpy(&w[b], &scale, 2);
    if (type == QuantType::kQ4_1) std::memcpy(&w[b + 2], &scale, 2);
  }
  return w;
}

struct QuantContext {
  std::unique_ptr<ThreadPool> pools[2];  // 1 and 2 threads
  double bandwidth_gbps[2] = {};         // read bandwidth on 1 and 2 threads
  // Per kind, copies of the weights exceeding the L3 cache (>= 128 MiB), used in turn (see Context).
  std::vector<std::vector<uint8_t>> weights[4];
  std::vector<float> x, y;
};

QuantContext* g_quant = nullptr;

// int8: the quantized kinds with --quant-activations int8 (activations quantized once per call, then the VNNI
// kernel), as CpuLinear runs them.
void BM_GemvQuant(benchmark::State& state, WeightKind kind, int threads, bool int8) {
  const auto& copies = g_quant->weights[static_cast<int>(kind)];
  ThreadPool& pool = *g_quant->pools[threads - 1];
  const GemvIsa isa = BestGemvIsa();
  const GemvFn bf16_fn = GemvForIsa(isa);
  const GemvQuantFn quant_fn = GemvQuantForIsa(isa);
  std::vector<int8_t> xq(kQuantK);
  std::vector<float> xd(kQuantK / kQuantBlockSize);
  std::vector<int32_t> xsum(kQuantK / kQuantBlockSize);
  size_t copy = 0;
  for (auto _ : state) {
    const uint8_t* w = copies[copy].data();
    copy = (copy + 1) % copies.size();
    if (kind == WeightKind::kBf16) {
      const GemvArgs args{
          g_quant->x.data(), reinterpret_cast<const uint16_t*>(w), g_quant->y.data(), 1, kQuantN, kQuantK};
      pool.ParallelForStatic(kQuantN, kGemvRowBlock, [&](int64_t b, int64_t e) { bf16_fn(args, b, e); });
    } else if (int8) {
      QuantizeActivationsInt8(g_quant->x.data(), 1, kQuantK, xq.data(), xd.data(), xsum.data());
      const GemvQuantInt8Args args{xq.data(), xd.data(), xsum.data(),      w, g_quant->y.data(), 1,
                                   kQuantN,   kQuantK,   ToQuantType(kind)};
      pool.ParallelForStatic(kQuantN, kGemvRowBlock,
                             [&](int64_t b, int64_t e) { GemvQuantInt8Avx512Vnni(args, b, e); });
    } else {
      const GemvQuantArgs args{g_quant->x.data(), w,       g_quant->y.data(), 1,
                               kQuantN,           kQuantK, ToQuantType(kind)};
      pool.ParallelForStatic(kQuantN, kGemvRowBlock, [&](int64_t b, int64_t e) { quant_fn(args, b, e); });
    }
    benchmark::DoNotOptimize(g_quant->y[0]);
  }
  const double gb = static_cast<double>(state.iterations()) * WeightBytes(kind) / 1e9;
  state.counters["GB/s"] = benchmark::Counter(gb, benchmark::Counter::kIsRate);
  state.counters["%BW"] =
      benchmark::Counter(gb * 100.0 / g_quant->bandwidth_gbps[threads - 1], benchmark::Counter::kIsRate);
  state.counters["weights/s"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * kQuantN * kQuantK, benchmark::Counter::kIsRate);
}

// Quantized Linear for the crossover (--quant-crossover): per type, one buffer of random blocks past twice
// the L3 cache, carved into consecutive matrices of the shape at hand and used in turn (see Context).
enum class QuantPath { kGemv, kOneDnnSplit, kOneDnnBf16 };
constexpr QuantType kCrossoverQuantTypes[] = {QuantType::kQ8_0, QuantType::kQ4_0};

struct QuantCrossoverContext {
  std::vector<uint8_t> stream[2];  // per kCrossoverQuantTypes entry
};

QuantCrossoverContext* g_quant_crossover = nullptr;

void BM_LinearQuant(benchmark::State& state, int shape_index, int type_index, int64_t m, QuantPath path) {
  const Shape& shape = kShapes[shape_index];
  const QuantType type = kCrossoverQuantTypes[type_index];
  const std::vector<uint8_t>& stream = g_quant_crossover->stream[type_index];
  const int64_t matrix_bytes = shape.n * QuantRowBytes(type, shape.k);
  const int64_t copies = static_cast<int64_t>(stream.size()) / matrix_bytes;
  int64_t copy = 0;
  float* x = g_ctx->x.data();
  float* y = g_ctx->y.data();
  CpuLinear& linear =
      path == QuantPath::kOneDnnBf16 ? g_ctx->backend_bf16->linear() : g_ctx->backend->linear();
  for (auto _ : state) {
    const uint8_t* w = stream.data() + copy * matrix_bytes;
    copy = (copy + 1) % copies;
    if (path == QuantPath::kGemv) {
      linear.ForwardGemvQuant(x, w, type, y, m, shape.n, shape.k);
    } else if (!linear.ForwardOneDnnQuant(x, w, type, y, m, shape.n, shape.k).ok()) {
      state.SkipWithError("oneDNN failed");
    }
    benchmark::DoNotOptimize(y[0]);
  }
  const double iters = static_cast<double>(state.iterations());
  const double gb = iters * matrix_bytes / 1e9;
  const double gflop = iters * 2.0 * m * shape.n * shape.k / 1e9;
  state.counters["GB/s"] = benchmark::Counter(gb, benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] = benchmark::Counter(gflop, benchmark::Counter::kIsRate);
  state.counters["%BW"] = benchmark::Counter(gb * 100.0 / g_bandwidth_gbps, benchmark::Counter::kIsRate);
  state.counters["%peak"] = benchmark::Counter(gflop * 100.0 / g_peak_gflops, benchmark::Counter::kIsRate);
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  using namespace tessera;
  int threads = 0;
  bool crossover = false;
  bool quant_crossover = false;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
    } else if (std::strcmp(argv[i], "--crossover") == 0) {
      crossover = true;
    } else if (std::strcmp(argv[i], "--quant-crossover") == 0) {
      quant_crossover = true;
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

  QuantContext quant;
  for (int t = 1; t <= 2; ++t) {
    quant.pools[t - 1] = std::make_unique<ThreadPool>(t);
    quant.bandwidth_gbps[t - 1] = t == n_threads ? g_bandwidth_gbps : MeasureReadBandwidthGBps(t);
    std::printf("ceiling: read bandwidth on %d thread%s %.1f GB/s\n", t, t == 1 ? "" : "s",
                quant.bandwidth_gbps[t - 1]);
  }
  std::printf("GemvQuant kernels: %s\n", GemvIsaName(BestGemvIsa()));
  std::fflush(stdout);
  // Copies of each matrix past twice the L3 cache (some server L3s exceed 128 MiB), so every call streams
  // from memory; the copies share one random content.
  const int64_t stream_bytes = std::max<int64_t>(int64_t{128} << 20, 2 * sysconf(_SC_LEVEL3_CACHE_SIZE));
  for (WeightKind kind : kWeightKinds) {
    const int64_t bytes = WeightBytes(kind);
    std::vector<uint8_t> w;
    if (kind == WeightKind::kBf16) {
      const std::vector<uint16_t> bf16 = RandomBf16Weights(kQuantN * kQuantK, 7000);
      w.assign(reinterpret_cast<const uint8_t*>(bf16.data()),
               reinterpret_cast<const uint8_t*>(bf16.data()) + bytes);
    } else {
      w = RandomQuantWeights(ToQuantType(kind), 8000);
    }
    const int64_t copies = (stream_bytes + 2 * bytes - 1) / bytes;
    for (int64_t c = 0; c < copies; ++c) quant.weights[static_cast<int>(kind)].push_back(w);
  }
  quant.x.assign(kQuantK, 0.5f);
  quant.y.assign(kQuantN, 0.0f);
  g_quant = &quant;

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
  for (WeightKind kind : kWeightKinds) {
    for (int t : {1, 2}) {
      const std::string name =
          std::string("GemvQuant/8192x2048/M=1/") + WeightKindName(kind) + "/threads=" + std::to_string(t);
      benchmark::RegisterBenchmark(name.c_str(), BM_GemvQuant, kind, t, false)->UseRealTime();
      if (kind != WeightKind::kBf16 && Int8VnniSupported()) {
        benchmark::RegisterBenchmark((name + "/int8_activations").c_str(), BM_GemvQuant, kind, t, true)
            ->UseRealTime();
      }
    }
  }
  QuantCrossoverContext quant_crossover_ctx;
  if (quant_crossover) {
    std::printf("quantized GEMV up to M = %lld (exact) / %lld (bf16), then oneDNN on tiles of %lld rows\n",
                static_cast<long long>(ctx.backend->linear().quant_gemv_max_m()),
                static_cast<long long>(ctx.backend_bf16->linear().quant_gemv_max_m()),
                static_cast<long long>(ctx.backend->linear().quant_tile_rows()));
    std::fflush(stdout);
    for (int t = 0; t < 2; ++t) {
      const std::vector<uint8_t> w = RandomQuantWeights(kCrossoverQuantTypes[t], 9000 + t);
      std::vector<uint8_t>& out = quant_crossover_ctx.stream[t];
      out.resize(static_cast<size_t>((stream_bytes + w.size() - 1) / w.size() * w.size()));
      // Whole copies of a whole number of blocks: every matrix carved from it starts on a block.
      for (size_t offset = 0; offset < out.size(); offset += w.size()) {
        std::memcpy(out.data() + offset, w.data(), w.size());
      }
    }
    g_quant_crossover = &quant_crossover_ctx;
    for (int s : {0, 2, 3}) {
      for (int t = 0; t < 2; ++t) {
        for (int64_t m : {1, 8, 16, 32, 64, 128, 256, 512}) {
          for (QuantPath p : {QuantPath::kGemv, QuantPath::kOneDnnSplit, QuantPath::kOneDnnBf16}) {
            const char* path_name = p == QuantPath::kGemv          ? "/gemv"
                                    : p == QuantPath::kOneDnnSplit ? "/onednn_split"
                                                                   : "/onednn_bf16";
            const std::string name = std::string("QuantCrossover/") + kShapes[s].name + "/" +
                                     QuantTypeName(kCrossoverQuantTypes[t]) + "/M=" + std::to_string(m) +
                                     path_name;
            benchmark::RegisterBenchmark(name.c_str(), BM_LinearQuant, s, t, m, p)->UseRealTime();
          }
        }
      }
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  g_ctx = nullptr;
  g_quant = nullptr;
  g_quant_crossover = nullptr;
  return 0;
}
