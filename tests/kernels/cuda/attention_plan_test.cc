// PlanAttention, the CUDA backend's host-side choice of attention kernel and context split: runs everywhere
// (no GPU needed), since a step's plan depends only on its shape.
#include "kernels/cuda/attention_plan.h"

#include <gtest/gtest.h>

namespace tessera {
namespace {

constexpr int kH200Sms = 132;

// The 8B model's attention on one GPU: 32 query heads over 8 KV heads, head_dim 128.
AttentionShape Llama8b(int num_seqs, int max_query_len, int max_seq_len) {
  return {.num_seqs = num_seqs,
          .num_tokens = num_seqs * max_query_len,
          .max_query_len = max_query_len,
          .max_seq_len = max_seq_len,
          .num_heads = 32,
          .num_kv_heads = 8,
          .head_dim = 128};
}

TEST(AttentionPlanTest, DecodeWithFewSequencesSplitsLongContexts) {
  // 1 sequence x 8 KV heads = 8 blocks for 132 SMs: ceil(264 / 8) = 33 parts, each >= 128 keys of 8000.
  AttentionPlan plan = PlanAttention(AttentionKernel::kAuto, Llama8b(1, 1, 8000), kH200Sms);
  EXPECT_FALSE(plan.mma);
  EXPECT_EQ(plan.num_parts, 33);
  EXPECT_EQ(plan.partial_bytes, int64_t{33} * 1 * 32 * 130 * 4);
  // A 1000-token context: no more parts than 128-key pieces (8).
  EXPECT_EQ(PlanAttention(AttentionKernel::kAuto, Llama8b(1, 1, 1000), kH200Sms).num_parts, 8);
  // A step graph states the longest context (128k): at most 64 parts, here 33 for the SMs.
  EXPECT_EQ(PlanAttention(AttentionKernel::kAuto, Llama8b(1, 1, 131072), kH200Sms).num_parts, 33);
  EXPECT_EQ(PlanAttention(AttentionKernel::kAuto, Llama8b(1, 1, 131072), 1000).num_parts, 64);
}

TEST(AttentionPlanTest, DecodeThatFillsTheGpuOrShortContextsIsNotSplit) {
  // 64 sequences x 8 KV heads = 512 blocks >= 264.
  AttentionPlan many = PlanAttention(AttentionKernel::kAuto, Llama8b(64, 1, 8000), kH200Sms);
  EXPECT_EQ(many.num_parts, 1);
  EXPECT_EQ(many.partial_bytes, 0);
  EXPECT_EQ(PlanAttention(AttentionKernel::kAuto, Llama8b(1, 1, 256), kH200Sms).num_parts, 1);
}

TEST(AttentionPlanTest, PrefillTakesTheTensorCoresWhenTheHeadDimAllows) {
  AttentionPlan prefill = PlanAttention(AttentionKernel::kAuto, Llama8b(1, 2048, 2048), kH200Sms);
  EXPECT_TRUE(prefill.mma);
  EXPECT_EQ(prefill.num_parts, 1);
  EXPECT_EQ(prefill.partial_bytes, 0);
  EXPECT_TRUE(PlanAttention(AttentionKernel::kAuto, Llama8b(4, 2, 200), kH200Sms).mma);  // a 2-token run
  AttentionShape hd32 = Llama8b(1, 2048, 2048);
  hd32.head_dim = 32;
  EXPECT_FALSE(PlanAttention(AttentionKernel::kAuto, hd32, kH200Sms).mma);
  EXPECT_FALSE(PlanAttention(AttentionKernel::kMma, hd32, kH200Sms).mma);
  // A short chunk after a long cached context, on few blocks: the split on CUDA cores wins under kAuto.
  AttentionPlan chunk = PlanAttention(AttentionKernel::kAuto, Llama8b(1, 4, 100000), kH200Sms);
  EXPECT_FALSE(chunk.mma);
  EXPECT_GT(chunk.num_parts, 1);
}

TEST(AttentionPlanTest, ForcedKernelsWin) {
  EXPECT_FALSE(PlanAttention(AttentionKernel::kSimt, Llama8b(1, 2048, 2048), kH200Sms).mma);
  AttentionPlan mma = PlanAttention(AttentionKernel::kMma, Llama8b(1, 1, 8000), kH200Sms);
  EXPECT_TRUE(mma.mma);  // whole contexts: no split, no workspace
  EXPECT_EQ(mma.num_parts, 1);
  EXPECT_EQ(mma.partial_bytes, 0);
}

}  // namespace
}  // namespace tessera
