// Paged attention, baseline-ISA build of attention_impl.inc, and the run-time kernel choice.
#define TESSERA_ATTENTION_FN AttentionGeneric
#include "kernels/cpu/attention_impl.inc"

namespace tessera {

AttentionFn BestAttentionFn() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
    return &AttentionAvx512;
  }
#endif
  return &AttentionGeneric;
}

}  // namespace tessera
