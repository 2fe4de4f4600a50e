// ceilings: prints this machine's ceilings as one JSON line, for benchmarks written in Python
// (serve_bench.py) to set their figures against. usage: ceilings [--threads N] [--gemm]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "bench/roofline.h"

int main(int argc, char** argv) {
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  bool gemm = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = std::atoi(argv[++i]);
    if (std::strcmp(argv[i], "--gemm") == 0) gemm = true;
  }
  std::printf("{\"threads\": %d, \"read_bandwidth_gbps\": %.2f", threads,
              tessera::MeasureReadBandwidthGBps(threads));
  if (gemm) std::printf(", \"bf16_gemm_gflops\": %.1f", tessera::MeasureBf16GemmPeakGflops(threads));
  std::printf("}\n");
  return 0;
}
