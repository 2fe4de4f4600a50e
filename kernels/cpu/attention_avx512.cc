// Paged attention, AVX-512 build of attention_impl.inc (compiled with -mavx512f -mavx512bw -mavx512vl
// -mavx512dq -mprefer-vector-width=512).
#define TESSERA_ATTENTION_FN AttentionAvx512
#include "kernels/cpu/attention_impl.inc"
