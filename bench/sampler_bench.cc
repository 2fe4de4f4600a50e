// sampler_bench: milliseconds per step of CpuBackend::Sample over a Llama 3 vocabulary (128,256) of flat
// random-weight logits (normal, stddev 1: the nucleus holds most of the vocabulary, the sampler's worst
// case), for batches of 1, 8 and 64 rows and each kind of request, next to the physical limit measured in the
// same run: the time to read the same logits once (a vectorised sum over them).
//
//   sampler_bench [--threads N] [--vocab V] [--iters N]
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which -Wuninitialized flags once inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/cpu_backend.h"

namespace tessera::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// CPU time of the whole process (every thread), in ms.
double CpuMs() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// n pseudo-random token ids below vocab, the same for a seed.
std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    ids[i] = static_cast<int32_t>((seed >> 8) % static_cast<uint32_t>(vocab));
  }
  return ids;
}

struct Kind {
  const char* name;
  SamplingRow row;
};

// One pass over the logits: the sum of every value (AVX-512 where the CPU has it, else scalar).
__attribute__((target("avx512f"))) float SumAvx512(const float* x, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_loadu_ps(x + i));
    a1 = _mm512_add_ps(a1, _mm512_loadu_ps(x + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_loadu_ps(x + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_loadu_ps(x + i + 48));
  }
  float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  for (; i < n; ++i) s += x[i];
  return s;
}

float SumScalar(const float* x, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}

int Main(int argc, char** argv) {
  int threads = 0;
  int64_t vocab = 128256;
  int iters = 30;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--vocab" && i + 1 < argc) {
      vocab = std::atoll(argv[++i]);
    } else if (a == "--iters" && i + 1 < argc) {
      iters = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: sampler_bench [--threads N] [--vocab V] [--iters N]\n");
      return 2;
    }
  }
  CpuBackendOptions options;
  options.num_threads = threads;
  absl::StatusOr<std::unique_ptr<CpuBackend>> created = CpuBackend::Create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "sampler_bench: %s\n", created.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<CpuBackend> backend = std::move(created).value();
  const bool avx512 = __builtin_cpu_supports("avx512f");

  const int64_t max_rows = 64;
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> logits(static_cast<size_t>(max_rows * vocab));
  for (float& x : logits) x = normal(rng);
  // Penalty inputs: a 1,000-token prompt and 200 generated tokens per row.
  std::vector<int32_t> history = RandomTokens(1200, static_cast<int>(vocab), 7);
  std::vector<LogitBias> bias = {{10, 2.0f}, {20, -1.5f}, {30, 5.0f}};
  std::vector<int32_t> banned = {static_cast<int32_t>(vocab - 1), static_cast<int32_t>(vocab - 2)};

  SamplingRow base;
  base.seed = 42;
  std::vector<Kind> kinds;
  {
    Kind k{"greedy", base};
    kinds.push_back(k);
    k = {"temperature 0.6", base};
    k.row.temperature = 0.6f;
    kinds.push_back(k);
    k.name = "top-p 0.9 (T 0.6)";
    k.row.top_p = 0.9f;
    kinds.push_back(k);
    k = {"top-k 50 (T 0.6)", base};
    k.row.temperature = 0.6f;
    k.row.top_k = 50;
    kinds.push_back(k);
    k = {"min-p 0.05 (T 0.6)", base};
    k.row.temperature = 0.6f;
    k.row.min_p = 0.05f;
    kinds.push_back(k);
    k = {"penalties+bias (T 0.6, p 0.9)", base};
    k.row.temperature = 0.6f;
    k.row.top_p = 0.9f;
    k.row.repetition_penalty = 1.1f;
    k.row.presence_penalty = 0.5f;
    k.row.frequency_penalty = 0.3f;
    k.row.tokens = history.data();
    k.row.num_tokens = static_cast<int64_t>(history.size());
    k.row.num_prompt_tokens = 1000;
    k.row.logit_bias = bias.data();
    k.row.num_logit_bias = static_cast<int64_t>(bias.size());
    k.row.banned_ids = banned.data();
    k.row.num_banned_ids = static_cast<int64_t>(banned.size());
    kinds.push_back(k);
    k = {"logprobs 20 (T 0.6, p 0.9)", base};
    k.row.temperature = 0.6f;
    k.row.top_p = 0.9f;
    k.row.top_logprobs = 20;
    kinds.push_back(k);
  }

  std::vector<int32_t> ids(max_rows);
  std::vector<SampleLogprobs> lps(max_rows);
  std::vector<SamplingRow> rows(max_rows);
  std::printf("sampler_bench: vocab %lld, %d threads, %s, median of %d steps\n",
              static_cast<long long>(vocab), backend->num_threads(), avx512 ? "AVX-512" : "scalar", iters);
  // The physical limit: one read of the same logits (64 rows), split over the same threads.
  std::vector<double> read_ms, read_cpu;
  volatile float sink = 0;
  for (int it = 0; it < iters; ++it) {
    const Clock::time_point t0 = Clock::now();
    const double c0 = CpuMs();
    const int64_t total = max_rows * vocab;
    std::vector<std::thread> pool;
    const int nt = backend->num_threads();
    std::vector<float> sums(nt);
    for (int t = 0; t < nt; ++t) {
      pool.emplace_back([&, t] {
        const int64_t b = total * t / nt, e = total * (t + 1) / nt;
        sums[t] = avx512 ? SumAvx512(logits.data() + b, e - b) : SumScalar(logits.data() + b, e - b);
      });
    }
    for (std::thread& th : pool) th.join();
    read_ms.push_back(1e3 * Seconds(t0, Clock::now()));
    read_cpu.push_back((CpuMs() - c0) / nt);
    for (float s : sums) sink = sink + s;
  }
  const double read = Median(read_ms);
  std::printf(
      "read limit (64 rows, %.1f MB, once, thread start included): %.3f ms (%.1f GB/s), cpu/thread %.3f "
      "ms\n\n",
      max_rows * vocab * 4.0 / 1e6, read, max_rows * vocab * 4.0 / 1e6 / read, Median(read_cpu));
  // The last column: the process's CPU time per batch-64 step over the threads, what the step would take on
  // otherwise idle cores (this machine is often shared).
  std::printf("%-32s %10s %10s %10s %14s %13s\n", "ms per step", "batch 1", "batch 8", "batch 64",
              "64 / read", "64 cpu/thread");
  for (const Kind& kind : kinds) {
    std::printf("%-32s", kind.name);
    double last = 0, last_cpu = 0;
    for (int64_t batch : {1, 8, 64}) {
      for (int64_t r = 0; r < batch; ++r) {
        rows[r] = kind.row;
        rows[r].seed = 1000 + r;
      }
      Tensor t(logits.data(), DType::kF32, {batch, vocab});
      std::vector<double> ms, cpu;
      for (int it = 0; it < iters + 2; ++it) {
        for (int64_t r = 0; r < batch; ++r) rows[r].step = static_cast<uint64_t>(it);
        const Clock::time_point t0 = Clock::now();
        const double c0 = CpuMs();
        if (absl::Status s = backend->Sample(t, rows.data(), ids.data(), lps.data()); !s.ok()) {
          std::fprintf(stderr, "sampler_bench: %s\n", std::string(s.message()).c_str());
          return 1;
        }
        if (it >= 2) {  // two warm-up steps
          ms.push_back(1e3 * Seconds(t0, Clock::now()));
          cpu.push_back(CpuMs() - c0);
        }
      }
      last = Median(ms);
      last_cpu = Median(cpu) / backend->num_threads();
      std::printf(" %10.3f", last);
    }
    std::printf(" %13.2fx %13.3f\n", last / read, last_cpu);
  }
  return sink == 12345.0f ? 1 : 0;
}

}  // namespace
}  // namespace tessera::bench

int main(int argc, char** argv) { return tessera::bench::Main(argc, argv); }
