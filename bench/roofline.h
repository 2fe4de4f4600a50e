// Machine ceilings that the benchmarks print next to their figures: streaming read bandwidth and the bf16
// GEMM peak of oneDNN on this CPU.
#pragma once

namespace tessera {

// Read bandwidth in GB/s (1e9 bytes/s) of num_threads threads summing a 1 GiB buffer with the widest vector
// loads the CPU has (AVX-512 where present); best of a few runs.
double MeasureReadBandwidthGBps(int num_threads);

// GFLOP/s of oneDNN's bf16 matmul (bf16 inputs, f32 output) at large square-ish shapes on num_threads
// threads; best over a few shapes and runs.
double MeasureBf16GemmPeakGflops(int num_threads);

}  // namespace tessera
