// Tests for DequantizeRow: blocks packed here from chosen scales and quants (following ggml-common.h's
// layouts), several blocks per row, compared bit for bit with the values computed by hand, plus a few literal
// values.
#include "worker/checkpoint/gguf_dequant.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace tessera {
namespace {

constexpr float kPoison = -12345.0f;

void PutHalf(std::string& out, float v) {
  const uint16_t h = F32ToF16(v);
  out.append(reinterpret_cast<const char*>(&h), 2);
}

// Dequantizes `blocks` (n values) into a poisoned buffer with one extra element that must stay untouched.
std::vector<float> Dequantize(GgmlType type, const std::string& blocks, int64_t n) {
  EXPECT_EQ(static_cast<int64_t>(blocks.size()),
            n / BlockLayout(type).block_size * BlockLayout(type).type_size);
  std::vector<float> out(n + 1, kPoison);
  // Copy to an odd address: DequantizeRow must not assume alignment.
  std::string shifted = " " + blocks;
  DequantizeRow(type, shifted.data() + 1, n, out.data());
  EXPECT_EQ(out[n], kPoison);
  out.pop_back();
  return out;
}

void ExpectBitEqual(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &got[i], 4);
    std::memcpy(&b, &want[i], 4);
    ASSERT_EQ(a, b) << "value " << i << ": got " << got[i] << ", want " << want[i];
  }
}

// Scales that are exact halves, a few of them subnormal in f16.
float RandomScale(std::mt19937& rng) {
  const float v = std::ldexp(static_cast<float>(rng() % 2000 + 1), -static_cast<int>(rng() % 30) - 4);
  return F16ToF32(F32ToF16((rng() & 1) ? v : -v));
}

TEST(GgufDequantTest, BlockLayoutsMatchGgml) {
  EXPECT_EQ(BlockLayout(GgmlType::kQ4_0).type_size, 18);
  EXPECT_EQ(BlockLayout(GgmlType::kQ4_1).type_size, 20);
  EXPECT_EQ(BlockLayout(GgmlType::kQ8_0).type_size, 34);
  EXPECT_EQ(BlockLayout(GgmlType::kQ4_K).type_size, 144);
  EXPECT_EQ(BlockLayout(GgmlType::kQ5_K).type_size, 176);
  EXPECT_EQ(BlockLayout(GgmlType::kQ6_K).type_size, 210);
  EXPECT_EQ(BlockLayout(GgmlType::kQ6_K).block_size, 256);
  EXPECT_EQ(GgmlTypeName(9), "Q8_1");
  EXPECT_EQ(GgmlTypeName(30), "BF16");
  EXPECT_EQ(GgmlTypeName(999), "unknown");
  EXPECT_FALSE(GgmlTypeFromCode(9).has_value());
  EXPECT_EQ(GgmlTypeFromCode(14), GgmlType::kQ6_K);
}

TEST(GgufDequantTest, Q8_0IsSignedBytesTimesTheScale) {
  std::string block;
  PutHalf(block, 0.125f);
  for (int j = 0; j < 32; ++j) block += static_cast<char>(static_cast<int8_t>(j * 8 - 128));
  const std::vector<float> out = Dequantize(GgmlType::kQ8_0, block, 32);
  EXPECT_EQ(out[0], -16.0f);  // -128 * 0.125
  EXPECT_EQ(out[17], 1.0f);   // 8 * 0.125
  EXPECT_EQ(out[31], 15.0f);  // 120 * 0.125
}

TEST(GgufDequantTest, Q4_0AndQ4_1MatchHandComputedValues) {
  std::mt19937 rng(11);
  for (GgmlType type : {GgmlType::kQ4_0, GgmlType::kQ4_1}) {
    const int blocks = 3;
    std::string bytes;
    std::vector<float> want;
    for (int b = 0; b < blocks; ++b) {
      const float d = RandomScale(rng), m = RandomScale(rng);
      int q[32];
      for (int& v : q) v = static_cast<int>(rng() % 16);
      PutHalf(bytes, d);
      if (type == GgmlType::kQ4_1) PutHalf(bytes, m);
      for (int j = 0; j < 16; ++j) bytes += static_cast<char>(q[j] | (q[j + 16] << 4));
      for (int j = 0; j < 32; ++j) {
        if (type == GgmlType::kQ4_0) {
          want.push_back(d * static_cast<float>(q[j] - 8));
        } else {
          const float product = d * static_cast<float>(q[j]);
          want.push_back(product + m);
        }
      }
    }
    ExpectBitEqual(Dequantize(type, bytes, 32 * blocks), want);
  }
  std::string literal;
  PutHalf(literal, 0.5f);
  PutHalf(literal, -1.0f);
  literal += static_cast<char>(0xF3);  // weight 0: 3, weight 16: 15
  literal += std::string(15, '\0');
  const std::vector<float> q4_1 = Dequantize(GgmlType::kQ4_1, literal, 32);
  EXPECT_EQ(q4_1[0], 0.5f);   // 0.5 * 3 - 1
  EXPECT_EQ(q4_1[16], 6.5f);  // 0.5 * 15 - 1
  EXPECT_EQ(q4_1[1], -1.0f);
}

// Packs 8 six-bit scales and mins as ggml's get_scale_min_k4 reads them.
std::string PackScalesK4(const int* sc, const int* mn) {
  uint8_t s[12] = {};
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    s[j + 4] = static_cast<uint8_t>(mn[j] | ((mn[j + 4] >> 4) << 6));
    s[j + 8] = static_cast<uint8_t>((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
  return std::string(reinterpret_cast<const char*>(s), 12);
}

TEST(GgufDequantTest, Q4_KAndQ5_KMatchHandComputedValues) {
  std::mt19937 rng(12);
  for (GgmlType type : {GgmlType::kQ4_K, GgmlType::kQ5_K}) {
    const int blocks = 2;
    std::string bytes;
    std::vector<float> want;
    for (int b = 0; b < blocks; ++b) {
      const float d = RandomScale(rng), dmin = RandomScale(rng);
      int sc[8], mn[8], q[256];
      for (int j = 0; j < 8; ++j) sc[j] = static_cast<int>(rng() % 64), mn[j] = static_cast<int>(rng() % 64);
      sc[7] = 63, mn[4] = 63;  // all six bits
      const int levels = type == GgmlType::kQ4_K ? 16 : 32;
      for (int& v : q) v = static_cast<int>(rng() % levels);
      PutHalf(bytes, d);
      PutHalf(bytes, dmin);
      bytes += PackScalesK4(sc, mn);
      if (type == GgmlType::kQ5_K) {  // bit j of byte l: the fifth bit of weight l of sub-block j
        for (int l = 0; l < 32; ++l) {
          int h = 0;
          for (int j = 0; j < 8; ++j) h |= (q[j * 32 + l] >> 4) << j;
          bytes += static_cast<char>(h);
        }
      }
      for (int c = 0; c < 4; ++c) {  // byte c*32 + l: sub-block 2c (low nibble), 2c + 1 (high nibble)
        for (int l = 0; l < 32; ++l) {
          bytes += static_cast<char>((q[2 * c * 32 + l] & 15) | ((q[(2 * c + 1) * 32 + l] & 15) << 4));
        }
      }
      for (int i = 0; i < 256; ++i) {
        const float scale = d * static_cast<float>(sc[i / 32]), min = dmin * static_cast<float>(mn[i / 32]);
        const float product = scale * static_cast<float>(q[i]);
        want.push_back(product - min);
      }
    }
    ExpectBitEqual(Dequantize(type, bytes, 256 * blocks), want);
  }
}

TEST(GgufDequantTest, Q6_KMatchesHandComputedValues) {
  std::mt19937 rng(13);
  const int blocks = 2;
  std::string bytes;
  std::vector<float> want;
  for (int b = 0; b < blocks; ++b) {
    int q[256], scales[16];
    for (int& v : q) v = static_cast<int>(rng() % 64);
    for (int& s : scales) s = static_cast<int>(rng() % 256) - 128;
    const float d = RandomScale(rng);
    uint8_t ql[128] = {}, qh[64] = {};
    for (int i = 0; i < 256; ++i) {
      const int half = i / 128, s = (i % 128) / 32, l = i % 32;
      ql[half * 64 + (s % 2) * 32 + l] |= static_cast<uint8_t>((q[i] & 15) << (4 * (s / 2)));
      qh[half * 32 + l] |= static_cast<uint8_t>((q[i] >> 4) << (2 * s));
    }
    bytes.append(reinterpret_cast<const char*>(ql), 128);
    bytes.append(reinterpret_cast<const char*>(qh), 64);
    for (int s : scales) bytes += static_cast<char>(static_cast<int8_t>(s));
    PutHalf(bytes, d);
    for (int i = 0; i < 256; ++i) {
      const float scale = d * static_cast<float>(scales[i / 16]);
      want.push_back(scale * static_cast<float>(q[i] - 32));
    }
  }
  ExpectBitEqual(Dequantize(GgmlType::kQ6_K, bytes, 256 * blocks), want);
}

TEST(GgufDequantTest, FloatTypesWidenExactly) {
  const std::vector<float> values = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 5.960464477539063e-08f, 3.0e-5f};
  std::string f16, bf16, f32;
  std::vector<float> want_f16, want_bf16;
  for (float v : values) {
    PutHalf(f16, v);
    want_f16.push_back(F16ToF32(F32ToF16(v)));
    const uint16_t b = F32ToBf16(v);
    bf16.append(reinterpret_cast<const char*>(&b), 2);
    want_bf16.push_back(Bf16ToF32(b));
    f32.append(reinterpret_cast<const char*>(&v), 4);
  }
  const int64_t n = static_cast<int64_t>(values.size());
  ExpectBitEqual(Dequantize(GgmlType::kF16, f16, n), want_f16);
  ExpectBitEqual(Dequantize(GgmlType::kBF16, bf16, n), want_bf16);
  ExpectBitEqual(Dequantize(GgmlType::kF32, f32, n), values);
  EXPECT_EQ(Dequantize(GgmlType::kF16, f16, n)[5], 5.960464477539063e-08f);  // the smallest f16 subnormal
}

}  // namespace
}  // namespace tessera
