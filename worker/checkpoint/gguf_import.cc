// ImportGguf: the tensor plan (GGUF names -> HF names and shapes, checked against the config), the streaming
// dequantize / un-permute / round loop, and the staging directory that becomes the snapshot.
#include "worker/checkpoint/gguf_import.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "core/str_cat.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/checkpoint/gguf_config.h"
#include "worker/checkpoint/gguf_file.h"
#include "worker/checkpoint/gguf_tokenizer.h"
#include "worker/checkpoint/json_fields.h"
#include "worker/checkpoint/safetensors_writer.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kChunkValues = int64_t{1} << 21;  // values converted between two writes (8 MiB of floats)

struct NamePair {
  std::string_view gguf, hf;
};
constexpr NamePair kModelTensors[] = {{"token_embd.weight", "model.embed_tokens.weight"},
                                      {"output_norm.weight", "model.norm.weight"},
                                      {"output.weight", "lm_head.weight"}};
constexpr NamePair kLayerTensors[] = {
    {"attn_norm.weight", "input_layernorm.weight"},    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},      {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"}, {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},       {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"}};

// The GGUF name of an HF tensor name LlamaTensorSpecs produces (for messages).
std::string GgufTensorName(std::string_view hf) {
  for (const NamePair& p : kModelTensors) {
    if (p.hf == hf) return std::string(p.gguf);
  }
  const std::string_view prefix = "model.layers.";
  if (hf.starts_with(prefix)) {
    const size_t dot = hf.find('.', prefix.size());
    const std::string_view layer = hf.substr(prefix.size(), dot - prefix.size()), rest = hf.substr(dot + 1);
    for (const NamePair& p : kLayerTensors) {
      if (p.hf == rest) return Cat("blk.", layer, ".", p.gguf);
    }
  }
  return std::string(hf);
}

std::string ShapeText(const std::vector<int64_t>& shape) { return Cat("[", absl::StrJoin(shape, ", "), "]"); }

struct PlannedTensor {
  std::string hf_name;
  const GgufTensorInfo* source = nullptr;
  std::vector<int64_t> shape;  // HF order: the GGUF dims reversed
  int permute_heads = 0;       // q_proj: attention heads, k_proj: KV heads; 0: rows as stored
  DType dtype = DType::kBF16;  // as written: the options' dtype, or the GGUF block type when it is kept
};

// Every LlamaTensorSpecs(config) tensor with its GGUF source, in HF order.
absl::StatusOr<std::vector<PlannedTensor>> PlanTensors(const GgufFile& f, const ModelConfig& config,
                                                       const ImportGgufOptions& options) {
  std::map<std::string, const GgufTensorInfo*, std::less<>> by_hf;
  for (const GgufTensorInfo& t : f.tensors()) {
    if (t.name == "rope_freqs.weight") continue;  // folded into config.json's rope_scaling
    std::optional<std::string> hf = HfTensorName(t.name, config.num_hidden_layers);
    if (!hf) {
      return absl::InvalidArgumentError(Cat(f.path(), ": tensor '", t.name, "' is not a tensor of a ",
                                            config.num_hidden_layers, "-layer llama model"));
    }
    by_hf.emplace(*std::move(hf), &t);
  }
  std::vector<PlannedTensor> plan;
  for (TensorSpec& spec : LlamaTensorSpecs(config)) {
    auto it = by_hf.find(spec.name);
    if (it == by_hf.end()) {
      return absl::NotFoundError(
          Cat(f.path(), ": tensor '", GgufTensorName(spec.name), "' (", spec.name, ") is missing"));
    }
    PlannedTensor t{spec.name, it->second, {}, 0, options.dtype};
    t.shape.assign(t.source->dims.rbegin(), t.source->dims.rend());
    if (t.shape != spec.shape) {
      return absl::InvalidArgumentError(Cat(f.path(), ": tensor '", t.source->name, "' has GGUF dims ",
                                            ShapeText(t.source->dims), " (HF shape ", ShapeText(t.shape),
                                            ") but the metadata implies ", ShapeText(spec.shape)));
    }
    if (spec.name.ends_with("q_proj.weight")) t.permute_heads = config.num_attention_heads;
    if (spec.name.ends_with("k_proj.weight")) t.permute_heads = config.num_key_value_heads;
    if (options.keep_quantized && t.shape.size() == 2)
      t.dtype = BlockDTypeOfGgml(t.source->type).value_or(t.dtype);
    plan.push_back(std::move(t));
    by_hf.erase(it);
  }
  if (!by_hf.empty()) {  // e.g. output.weight next to tie_word_embeddings; cannot happen with
                         // ModelConfigFromGguf
    return absl::InvalidArgumentError(
        Cat(f.path(), ": tensor '", by_hf.begin()->second->name, "' is not part of the model's config"));
  }
  return plan;
}

// Dequantizes, un-permutes and rounds one tensor (or un-permutes its kept blocks), appending it to `writer` a
// chunk of rows at a time.
absl::Status WriteTensor(const GgufFile& f, const PlannedTensor& t, std::vector<float>& values,
                         std::vector<uint16_t>& halves, SafetensorsWriter& writer) {
  const GgufTensorInfo& src = *t.source;
  const DType dtype = t.dtype;
  const int64_t cols = src.dims[0], rows = src.num_elements / cols;
  const std::string_view data = f.TensorData(src);
  const uint64_t row_bytes = data.size() / static_cast<uint64_t>(rows);
  const int64_t chunk_rows = std::max<int64_t>(1, kChunkValues / cols);
  for (int64_t first = 0; first < rows; first += chunk_rows) {
    const int64_t n = std::min(chunk_rows, rows - first);
    if (IsQuantized(dtype)) {  // the GGUF's own blocks, rows in HF order
      for (int64_t r = 0; r < n; ++r) {
        const int64_t src_row =
            t.permute_heads > 0 ? GgufRowOfHfRow(first + r, rows, t.permute_heads) : first + r;
        RETURN_IF_ERROR(writer.Append(data.substr(src_row * row_bytes, row_bytes)));
      }
      continue;
    }
    values.resize(static_cast<size_t>(n * cols));
    for (int64_t r = 0; r < n; ++r) {
      const int64_t src_row =
          t.permute_heads > 0 ? GgufRowOfHfRow(first + r, rows, t.permute_heads) : first + r;
      DequantizeRow(src.type, data.data() + src_row * row_bytes, cols, values.data() + r * cols);
    }
    if (dtype == DType::kF32) {
      RETURN_IF_ERROR(writer.Append(
          std::string_view(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float))));
    } else {
      halves.resize(values.size());
      for (size_t i = 0; i < values.size(); ++i) halves[i] = F32ToBf16(values[i]);
      RETURN_IF_ERROR(writer.Append(
          std::string_view(reinterpret_cast<const char*>(halves.data()), halves.size() * sizeof(uint16_t))));
    }
  }
  MappedFile::ReleasePages(data.data(), data.size());
  return absl::OkStatus();
}

using json_internal::WriteTextFile;

// config.json; with kept blocks, also a quantization_config naming them, so that a reader that does not know
// Tessera's blocks (transformers, for one) refuses the snapshot instead of loading bytes as weights.
std::string ConfigJson(const ModelConfig& config, const std::vector<PlannedTensor>& plan) {
  std::map<std::string, int> kept;
  for (const PlannedTensor& t : plan) {
    if (IsQuantized(t.dtype)) ++kept[std::string(DTypeName(t.dtype))];
  }
  if (kept.empty()) return config.ToJson();
  nlohmann::json json = nlohmann::json::parse(config.ToJson());
  json["quantization_config"] = {{"quant_method", "tessera_gguf_blocks"}, {"tensors_by_type", kept}};
  return json.dump(2) + "\n";
}

// Writes the safetensors file(s) and, when there are several, model.safetensors.index.json.
absl::StatusOr<ImportGgufResult> WriteWeights(const GgufFile& f, const std::vector<PlannedTensor>& plan,
                                              int64_t max_shard_bytes, const fs::path& dir) {
  std::vector<std::vector<const PlannedTensor*>> shards(1);
  int64_t shard_bytes = 0, total = 0;
  for (const PlannedTensor& t : plan) {
    const int64_t bytes = DTypeBytes(t.dtype, t.source->num_elements);
    if (!shards.back().empty() && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(&t);
    shard_bytes += bytes;
    total += bytes;
  }
  std::vector<float> values;
  std::vector<uint16_t> halves;
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string file = shards.size() == 1
                                 ? std::string("model.safetensors")
                                 : absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
    std::vector<TensorHeaderEntry> entries;
    for (const PlannedTensor* t : shards[i]) {
      entries.push_back({t->hf_name, t->dtype, t->shape});
      weight_map[t->hf_name] = file;
    }
    ASSIGN_OR_RETURN(
        SafetensorsWriter writer,
        SafetensorsWriter::Create((dir / file).string(), std::move(entries), {{"format", "pt"}}));
    for (const PlannedTensor* t : shards[i]) RETURN_IF_ERROR(WriteTensor(f, *t, values, halves, writer));
    RETURN_IF_ERROR(writer.Finish());
  }
  if (shards.size() > 1) {
    nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    RETURN_IF_ERROR(WriteTextFile(dir / "model.safetensors.index.json", index.dump(2) + "\n"));
  }
  return ImportGgufResult{static_cast<int64_t>(plan.size()), total, static_cast<int>(shards.size())};
}

// A temporary sibling of the output directory, removed on destruction unless Commit renamed it into place.
class StagingDir {
 public:
  explicit StagingDir(fs::path out) : out_(std::move(out)) {}
  ~StagingDir() {
    std::error_code ec;
    if (!staging_.empty() && !committed_) fs::remove_all(staging_, ec);
  }
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;

  // Checks that the output directory is absent or empty, then creates its parent and the staging directory.
  absl::Status Create() {
    std::error_code ec;
    if (fs::exists(out_, ec)) {
      if (!fs::is_directory(out_, ec) || !fs::is_empty(out_, ec)) {
        return absl::AlreadyExistsError(
            Cat(out_.string(), ": exists and is not an empty directory (import-gguf writes a new snapshot)"));
      }
    }
    const fs::path parent = out_.has_parent_path() ? out_.parent_path() : fs::path(".");
    fs::create_directories(parent, ec);
    if (ec) return absl::ErrnoToStatus(ec.value(), Cat(parent.string(), ": cannot create the directory"));
    staging_ = parent / Cat(out_.filename().string(), ".tmp-import-", ::getpid());
    fs::remove_all(staging_, ec);
    fs::create_directory(staging_, ec);
    if (ec) return absl::ErrnoToStatus(ec.value(), Cat(staging_.string(), ": cannot create the directory"));
    return absl::OkStatus();
  }

  // Renames the staging directory to the output directory (replacing it when it is empty).
  absl::Status Commit() {
    std::error_code ec;
    fs::rename(staging_, out_, ec);
    if (ec)
      return absl::ErrnoToStatus(ec.value(),
                                 Cat(out_.string(), ": cannot rename ", staging_.string(), " to it"));
    committed_ = true;
    return absl::OkStatus();
  }

  const fs::path& path() const { return staging_; }

 private:
  fs::path out_;
  fs::path staging_;
  bool committed_ = false;
};

}  // namespace

std::optional<std::string> HfTensorName(std::string_view gguf_name, int num_layers) {
  for (const NamePair& p : kModelTensors) {
    if (p.gguf == gguf_name) return std::string(p.hf);
  }
  const std::string_view prefix = "blk.";
  if (!gguf_name.starts_with(prefix)) return std::nullopt;
  const std::string_view rest = gguf_name.substr(prefix.size());
  const size_t dot = rest.find('.');
  if (dot == std::string_view::npos || dot == 0 || (dot > 1 && rest[0] == '0')) return std::nullopt;
  int layer = -1;
  const auto [end, ec] = std::from_chars(rest.data(), rest.data() + dot, layer);
  if (ec != std::errc() || end != rest.data() + dot || layer < 0 || layer >= num_layers) return std::nullopt;
  for (const NamePair& p : kLayerTensors) {
    if (p.gguf == rest.substr(dot + 1)) return Cat("model.layers.", layer, ".", p.hf);
  }
  return std::nullopt;
}

int64_t GgufRowOfHfRow(int64_t hf_row, int64_t rows, int num_heads) {
  const int64_t head_dim = rows / num_heads, half_dim = head_dim / 2;
  const int64_t head = hf_row / head_dim, within = hf_row % head_dim;
  return head * head_dim + 2 * (within % half_dim) + within / half_dim;
}

absl::StatusOr<ImportGgufResult> ImportGguf(const ImportGgufOptions& options) {
  if (options.dtype != DType::kBF16 && options.dtype != DType::kF32) {
    return absl::InvalidArgumentError(
        Cat("import-gguf: dtype ", DTypeName(options.dtype), " is not BF16 or F32"));
  }
  if (options.max_shard_bytes <= 0) {
    return absl::InvalidArgumentError(
        Cat("import-gguf: max_shard_bytes=", options.max_shard_bytes, " must be positive"));
  }
  if (options.out_dir.empty()) {
    return absl::InvalidArgumentError("import-gguf: the output directory is empty");
  }
  // Read and check everything before touching the file system.
  ASSIGN_OR_RETURN(const GgufFile file, GgufFile::Open(options.gguf_path));
  ASSIGN_OR_RETURN(const ModelConfig config,
                   ModelConfigFromGguf(file, options.dtype == DType::kF32 ? "float32" : "bfloat16"));
  ASSIGN_OR_RETURN(const GgufTokenizerFiles tokenizer,
                   TokenizerFilesFromGguf(file, config.max_position_embeddings));
  ASSIGN_OR_RETURN(const std::vector<PlannedTensor> plan, PlanTensors(file, config, options));

  fs::path out = fs::path(options.out_dir).lexically_normal();
  if (!out.has_filename()) out = out.parent_path();  // "dir/" -> "dir"
  StagingDir staging(out);
  RETURN_IF_ERROR(staging.Create());
  const fs::path& dir = staging.path();
  RETURN_IF_ERROR(WriteTextFile(dir / "config.json", ConfigJson(config, plan)));
  GenerationConfig generation;
  generation.bos_token_id = config.bos_token_id;
  generation.eos_token_ids = config.eos_token_ids;
  RETURN_IF_ERROR(WriteTextFile(dir / "generation_config.json", generation.ToJson()));
  RETURN_IF_ERROR(WriteTextFile(dir / "tokenizer.json", tokenizer.tokenizer_json));
  RETURN_IF_ERROR(WriteTextFile(dir / "tokenizer_config.json", tokenizer.tokenizer_config_json));
  ASSIGN_OR_RETURN(ImportGgufResult result, WriteWeights(file, plan, options.max_shard_bytes, dir));
  for (const PlannedTensor& t : plan) result.quantized += IsQuantized(t.dtype) ? 1 : 0;
  RETURN_IF_ERROR(staging.Commit());
  return result;
}

}  // namespace tessera
