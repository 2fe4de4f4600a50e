#include "worker/checkpoint/make_model.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/status_macros.h"
#include "core/str_cat.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/checkpoint/json_fields.h"
#include "worker/checkpoint/model_config.h"
#include "worker/checkpoint/model_presets.h"
#include "worker/checkpoint/safetensors_writer.h"

namespace tessera {

namespace {

namespace fs = std::filesystem;

constexpr int64_t kChunkElems = int64_t{1} << 20;  // each chunk has its own seed: results ignore threading
constexpr int64_t kBatchChunks = 16;               // chunks generated between two writes (32 MiB of BF16)
constexpr int64_t kDefaultMaxShardBytes = 5'000'000'000;
constexpr float kInitStd = 0.02f;

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// xoshiro256+ (Blackman & Vigna), seeded through SplitMix64.
class Xoshiro256 {
 public:
  explicit Xoshiro256(uint64_t seed) {
    for (uint64_t& w : s_) w = seed = SplitMix64(seed);
  }
  uint64_t Next() {
    const uint64_t result = s_[0] + s_[3];
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = (s_[3] << 45) | (s_[3] >> 19);
    return result;
  }

 private:
  uint64_t s_[4];
};

// Fills out[0, n) with BF16 samples of mean + std * N(0, 1) (Marsaglia's polar method).
void FillNormalBf16(uint64_t seed, float mean, float std, uint16_t* out, int64_t n) {
  Xoshiro256 rng(seed);
  constexpr float kScale = 1.0f / 16777216.0f;  // 2^-24
  int64_t i = 0;
  while (i < n) {
    const uint64_t r = rng.Next();
    const float u = static_cast<float>(r >> 40) * kScale * 2.0f - 1.0f;
    const float v = static_cast<float>((r >> 16) & 0xffffff) * kScale * 2.0f - 1.0f;
    const float s = u * u + v * v;
    if (s >= 1.0f || s == 0.0f) continue;
    const float m = std * std::sqrt(-2.0f * std::log(s) / s);
    out[i++] = F32ToBf16(mean + u * m);
    if (i < n) out[i++] = F32ToBf16(mean + v * m);
  }
}

bool IsNormWeight(std::string_view name) {
  return name.ends_with("layernorm.weight") || name == "model.norm.weight";
}

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Generates one tensor's BF16 values chunk by chunk on `threads` threads and appends them to `writer`.
absl::Status WriteRandomTensor(const TensorSpec& spec, uint64_t seed, int threads,
                               std::vector<uint16_t>& buffer, SafetensorsWriter& writer) {
  const uint64_t tensor_seed = SplitMix64(seed ^ SplitMix64(Fnv1a(spec.name)));
  const float mean = IsNormWeight(spec.name) ? 1.0f : 0.0f;
  const int64_t n = Numel(spec.shape);
  const int64_t num_chunks = (n + kChunkElems - 1) / kChunkElems;
  for (int64_t first = 0; first < num_chunks; first += kBatchChunks) {
    const int64_t last = std::min(num_chunks, first + kBatchChunks);
    auto work = [&](int t) {
      for (int64_t c = first + t; c < last; c += threads) {
        const int64_t begin = c * kChunkElems, count = std::min(kChunkElems, n - begin);
        FillNormalBf16(SplitMix64(tensor_seed + static_cast<uint64_t>(c)), mean, kInitStd,
                       buffer.data() + (c - first) * kChunkElems, count);
      }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < std::min<int64_t>(threads, last - first); ++t) pool.emplace_back(work, t);
    work(0);
    for (std::thread& th : pool) th.join();
    const int64_t elems = std::min(n, last * kChunkElems) - first * kChunkElems;
    RETURN_IF_ERROR(writer.Append(
        std::string_view(reinterpret_cast<const char*>(buffer.data()), static_cast<size_t>(elems) * 2)));
  }
  return absl::OkStatus();
}

using json_internal::WriteTextFile;

absl::StatusOr<ModelConfig> ResolveConfig(const MakeModelOptions& options) {
  if (options.preset.empty() == options.config_path.empty()) {
    return absl::InvalidArgumentError("make-model: give exactly one of preset and config_path");
  }
  if (!options.preset.empty()) return PresetConfig(options.preset);
  return ModelConfig::Load(options.config_path);
}

// Copies tokenizer.json and tokenizer_config.json (both required) and the licence files that must travel with
// them (NOTICE, LICENSE, USE_POLICY.md, when present).
absl::Status CopyTokenizer(const std::string& from, const fs::path& to) {
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "NOTICE", "LICENSE", "USE_POLICY.md"}) {
    const fs::path src = fs::path(from) / name;
    const bool required = std::string_view(name).starts_with("tokenizer");
    std::error_code ec;
    if (!fs::exists(src, ec)) {
      if (!required) continue;
      return absl::NotFoundError(Cat(src.string(), ": tokenizer file not found"));
    }
    fs::copy_file(src, to / name, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      return absl::ErrnoToStatus(ec.value(), Cat(src.string(), ": cannot copy to ", to.string()));
    }
  }
  return absl::OkStatus();
}

// Groups tensors (in model order) into shards of at most max_bytes (a larger tensor gets a shard of its own).
std::vector<std::vector<TensorSpec>> PlanShards(const std::vector<TensorSpec>& specs, int64_t max_bytes) {
  std::vector<std::vector<TensorSpec>> shards(1);
  int64_t bytes = 0;
  for (const TensorSpec& spec : specs) {
    const int64_t size = Numel(spec.shape) * 2;
    if (!shards.back().empty() && bytes + size > max_bytes) {
      shards.emplace_back();
      bytes = 0;
    }
    shards.back().push_back(spec);
    bytes += size;
  }
  return shards;
}

absl::Status WriteWeights(const ModelConfig& config, const MakeModelOptions& options, const fs::path& dir) {
  const std::vector<TensorSpec> specs = LlamaTensorSpecs(config);
  int64_t total = 0;
  for (const TensorSpec& s : specs) total += Numel(s.shape) * 2;
  const int64_t max_bytes = options.max_shard_bytes > 0 ? options.max_shard_bytes
                                                        : std::min(kDefaultMaxShardBytes, (total + 1) / 2);
  const std::vector<std::vector<TensorSpec>> shards = PlanShards(specs, max_bytes);

  const int threads = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u));
  std::vector<uint16_t> buffer(static_cast<size_t>(kChunkElems * kBatchChunks));
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string file = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
    std::vector<TensorHeaderEntry> entries;
    for (const TensorSpec& s : shards[i]) {
      entries.push_back({s.name, DType::kBF16, s.shape});
      weight_map[s.name] = file;
    }
    ASSIGN_OR_RETURN(
        SafetensorsWriter writer,
        SafetensorsWriter::Create((dir / file).string(), std::move(entries), {{"format", "pt"}}));
    for (const TensorSpec& s : shards[i]) {
      RETURN_IF_ERROR(WriteRandomTensor(s, options.seed, threads, buffer, writer));
    }
    RETURN_IF_ERROR(writer.Finish());
  }
  nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  return WriteTextFile(dir / "model.safetensors.index.json", index.dump(2) + "\n");
}

}  // namespace

absl::Status MakeModel(const MakeModelOptions& options) {
  if (options.out_dir.empty()) return absl::InvalidArgumentError("make-model: out_dir is empty");
  if (options.max_shard_bytes < 0) {
    return absl::InvalidArgumentError(
        Cat("make-model: max_shard_bytes=", options.max_shard_bytes, " must not be negative"));
  }
  ASSIGN_OR_RETURN(ModelConfig config, ResolveConfig(options));
  const fs::path dir(options.out_dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::ErrnoToStatus(ec.value(), Cat(options.out_dir, ": cannot create the directory"));

  RETURN_IF_ERROR(WriteTextFile(dir / "config.json", config.ToJson()));
  GenerationConfig generation;
  generation.bos_token_id = config.bos_token_id;
  generation.eos_token_ids = config.eos_token_ids;
  generation.temperature = 0.6f;
  generation.top_p = 0.9f;
  RETURN_IF_ERROR(WriteTextFile(dir / "generation_config.json", generation.ToJson()));
  if (!options.tokenizer_dir.empty()) RETURN_IF_ERROR(CopyTokenizer(options.tokenizer_dir, dir));
  if (options.config_only) return absl::OkStatus();
  return WriteWeights(config, options, dir);
}

}  // namespace tessera
