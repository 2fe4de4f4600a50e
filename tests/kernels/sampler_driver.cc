// sampler_driver: runs kernels/sampler.h on cases written by tests/reference/sampling_reference_test.py.
//
//   sampler_driver exp32 IN OUT    IN: float32 values; OUT: Exp32 of each (float32); fails when Exp32Row
//                                  (the vectorised one) differs from Exp32 anywhere
//   sampler_driver sample IN OUT   IN: cases (layout below); OUT: one text line per case:
//                                  "token rank num_top logprob id lp id lp ..." (logprobs only when asked)
//
// A case, little-endian: int64 vocab, num_tokens, num_prompt_tokens, num_bias, num_banned, top_logprobs;
// uint64 seed, step; float32 temperature, top_p, min_p, repetition_penalty, presence_penalty,
// frequency_penalty; int32 top_k, pad; float32 logits[vocab]; int32 tokens[num_tokens];
// int32 bias_ids[num_bias]; float32 biases[num_bias]; int32 banned[num_banned]. IN starts with int64 count.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "kernels/sampler.h"

namespace {

struct Reader {
  std::vector<char> bytes;
  size_t at = 0;
  template <typename T>
  T Get() {
    T v;
    if (at + sizeof(T) > bytes.size()) {
      std::fprintf(stderr, "sampler_driver: input ends early\n");
      std::exit(1);
    }
    std::memcpy(&v, bytes.data() + at, sizeof(T));
    at += sizeof(T);
    return v;
  }
  template <typename T>
  std::vector<T> Array(int64_t n) {
    std::vector<T> v(static_cast<size_t>(n));
    for (T& x : v) x = Get<T>();
    return v;
  }
};

int Main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: sampler_driver exp32|sample IN OUT\n");
    return 2;
  }
  const std::string mode = argv[1];
  std::ifstream in(argv[2], std::ios::binary);
  Reader r{std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>())};
  if (mode == "exp32") {
    const int64_t n = static_cast<int64_t>(r.bytes.size() / sizeof(float));
    const std::vector<float> x = r.Array<float>(n);
    std::vector<float> out(n), vectorised(n);
    for (int64_t i = 0; i < n; ++i) out[i] = tessera::Exp32(x[i]);
    tessera::Exp32Row(x.data(), n, vectorised.data());
    if (std::memcmp(out.data(), vectorised.data(), out.size() * sizeof(float)) != 0) {
      std::fprintf(stderr, "sampler_driver: Exp32Row differs from Exp32\n");
      return 1;
    }
    std::ofstream(argv[3], std::ios::binary)
        .write(reinterpret_cast<const char*>(out.data()),
               static_cast<std::streamsize>(out.size() * sizeof(float)));
    return 0;
  }
  if (mode != "sample") return 2;
  std::FILE* out = std::fopen(argv[3], "w");
  if (out == nullptr) return 1;
  tessera::SampleScratch scratch;
  const int64_t count = r.Get<int64_t>();
  for (int64_t c = 0; c < count; ++c) {
    const int64_t vocab = r.Get<int64_t>(), num_tokens = r.Get<int64_t>(), num_prompt = r.Get<int64_t>();
    const int64_t num_bias = r.Get<int64_t>(), num_banned = r.Get<int64_t>(), top_logprobs = r.Get<int64_t>();
    tessera::SamplingRow row;
    row.seed = r.Get<uint64_t>();
    row.step = r.Get<uint64_t>();
    row.temperature = r.Get<float>();
    row.top_p = r.Get<float>();
    row.min_p = r.Get<float>();
    row.repetition_penalty = r.Get<float>();
    row.presence_penalty = r.Get<float>();
    row.frequency_penalty = r.Get<float>();
    row.top_k = r.Get<int32_t>();
    r.Get<int32_t>();
    const std::vector<float> logits = r.Array<float>(vocab);
    const std::vector<int32_t> tokens = r.Array<int32_t>(num_tokens);
    const std::vector<int32_t> bias_ids = r.Array<int32_t>(num_bias);
    const std::vector<float> biases = r.Array<float>(num_bias);
    const std::vector<int32_t> banned = r.Array<int32_t>(num_banned);
    std::vector<tessera::LogitBias> bias;
    for (int64_t i = 0; i < num_bias; ++i) bias.push_back({bias_ids[i], biases[i]});
    row.tokens = tokens.data();
    row.num_tokens = num_tokens;
    row.num_prompt_tokens = num_prompt;
    row.logit_bias = bias.data();
    row.num_logit_bias = num_bias;
    row.banned_ids = banned.data();
    row.num_banned_ids = num_banned;
    row.top_logprobs = static_cast<int>(top_logprobs);
    tessera::SampleLogprobs lp;
    const int32_t token = tessera::SampleRow(logits.data(), vocab, row, scratch, &lp);
    std::fprintf(out, "%d", token);
    if (row.top_logprobs >= 0) {
      std::fprintf(out, " %lld %d %.17g", static_cast<long long>(lp.rank), lp.num_top, lp.logprob);
      for (int i = 0; i < lp.num_top; ++i) std::fprintf(out, " %d %.17g", lp.top_ids[i], lp.top_logprobs[i]);
    }
    std::fprintf(out, "\n");
  }
  std::fclose(out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
