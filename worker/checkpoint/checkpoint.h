// Checkpoint: a Hugging Face Llama model directory (config.json, generation_config.json, model.safetensors or
// sharded files with model.safetensors.index.json), memory-mapped read-only and sliced in place, so each
// tensor-parallel rank touches only the bytes of its own shard.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "worker/checkpoint/model_config.h"
#include "worker/checkpoint/safetensors.h"

namespace tessera {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// Every tensor of LlamaForCausalLM in HF naming and order, with the shapes `config` implies:
// model.embed_tokens.weight [V, H]; per layer i, model.layers.{i}.input_layernorm.weight [H],
// self_attn.{q_proj [nq*hd, H], k_proj [nkv*hd, H], v_proj [nkv*hd, H], o_proj [H, nq*hd]}.weight,
// post_attention_layernorm.weight [H], mlp.{gate_proj [I, H], up_proj [I, H], down_proj [H, I]}.weight;
// model.norm.weight [H]; lm_head.weight [V, H] unless tie_word_embeddings.
std::vector<TensorSpec> LlamaTensorSpecs(const ModelConfig& config);

// Movable, not copyable. After Open every method is const and thread-safe.
class Checkpoint {
 public:
  // Opens `dir`: config.json (required), generation_config.json (optional), then model.safetensors.index.json
  // (weight_map: tensor -> shard file) and its shards, or else model.safetensors. Parses and validates every
  // header. Errors name the file (and tensor): NOT_FOUND for a missing config, weights or shard file (naming
  // the index too) or a tensor the index lists but its shard lacks; INVALID_ARGUMENT for malformed files, an
  // index without a weight_map object, or a tensor stored in two shards.
  [[nodiscard]] static absl::StatusOr<Checkpoint> Open(const std::string& dir);
  // The null device's checkpoint: config.json (required) and generation_config.json (optional) of `dir`, and
  // the tensors LlamaTensorSpecs(config) names, as BF16 of their shapes, without any weight file (a
  // `make-model --config-only` directory is enough; weight files that are there are not opened). ReadRows and
  // ReadColumns check their arguments as usual, then count the bytes as if read and leave dst untouched; Map
  // and MapRows are FAILED_PRECONDITION. Errors: as Open's for the config files.
  [[nodiscard]] static absl::StatusOr<Checkpoint> OpenShapes(const std::string& dir);

  Checkpoint(Checkpoint&&) noexcept = default;
  Checkpoint& operator=(Checkpoint&&) noexcept = default;
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  const ModelConfig& config() const { return config_; }
  const GenerationConfig& generation_config() const { return generation_config_; }
  const std::string& dir() const { return dir_; }

  // Whether this came from OpenShapes.
  bool shapes_only() const { return !shape_infos_.empty(); }
  bool Has(std::string_view name) const;
  // All tensor names, sorted.
  std::vector<std::string> TensorNames() const;
  // The tensor's header entry. NOT_FOUND naming the tensor and the index (or model.safetensors).
  [[nodiscard]] absl::StatusOr<TensorInfo> Info(std::string_view name) const;
  // The file that stores the tensor. NOT_FOUND as Info.
  [[nodiscard]] absl::StatusOr<std::string> FileOf(std::string_view name) const;

  // A view in place in the read-only mapping (file dtype) of the whole tensor, or of rows
  // [row_begin, row_begin + num_rows) along dim 0. The view's data must never be written (PROT_READ) and
  // lives as long as this Checkpoint. Errors: NOT_FOUND (no such tensor), INVALID_ARGUMENT naming the tensor
  // for an out-of-range slice, a 0-d tensor in MapRows, or more than Tensor::kMaxDims dims.
  [[nodiscard]] absl::StatusOr<Tensor> Map(std::string_view name) const;
  [[nodiscard]] absl::StatusOr<Tensor> MapRows(std::string_view name, int64_t row_begin,
                                               int64_t num_rows) const;

  // Copy rows (of a 1-D or 2-D tensor) or columns (of a 2-D tensor) [begin, begin + count) into host memory
  // `dst` of shape [count, cols] / [count] (rows) or [rows, count] (columns), converting from the file's
  // dtype (BF16, F16, F32) to dst.dtype() (BF16, F16 or F32; integer tensors only to the same dtype). A
  // block-quantized tensor (Q8_0, Q4_0, Q4_1) is copied as blocks into a dst of its own dtype, or
  // dequantized exactly (ggml's arithmetic) and rounded into a float dst; its column slices must fall on
  // 32-weight block boundaries. Reads only those bytes. Errors: NOT_FOUND (no such tensor),
  // INVALID_ARGUMENT naming the tensor for an out-of-range slice or one that splits blocks, a wrong rank, a
  // dst shape that does not match, or an unsupported conversion.
  [[nodiscard]] absl::Status ReadRows(std::string_view name, int64_t row_begin, int64_t num_rows,
                                      Tensor& dst) const;
  [[nodiscard]] absl::Status ReadColumns(std::string_view name, int64_t col_begin, int64_t num_cols,
                                         Tensor& dst) const;

  // Checks that every LlamaTensorSpecs(config()) tensor exists with exactly that shape and a float dtype (a
  // 2-D tensor may also be block-quantized).
  // Errors: NOT_FOUND naming a missing tensor; INVALID_ARGUMENT naming the tensor, its file, the expected and
  // found shapes ("<file>: tensor T has shape [64, 32] but config.json implies [64, 64]") or the dtype.
  [[nodiscard]] absl::Status ValidateForLlama() const;

  // Bytes of tensor data handed out by Map / MapRows / ReadRows / ReadColumns so far. Thread-safe.
  int64_t bytes_accessed() const { return bytes_accessed_->load(std::memory_order_relaxed); }

 private:
  struct Location {
    int shard = 0;     // kShapes: shape_infos_
    size_t index = 0;  // into shards_[shard].tensors()
  };
  static constexpr int kShapes = -1;

  Checkpoint() = default;
  [[nodiscard]] absl::Status AddShardTensors(int shard);
  [[nodiscard]] absl::Status OpenIndex(const std::string& index_path);
  [[nodiscard]] absl::StatusOr<Location> Find(std::string_view name) const;
  const TensorInfo& InfoAt(Location loc) const {
    return loc.shard == kShapes ? shape_infos_[loc.index] : shards_[loc.shard].tensors()[loc.index];
  }
  const std::string& PathAt(Location loc) const {
    return loc.shard == kShapes ? weights_source_ : shards_[loc.shard].path();
  }
  // FAILED_PRECONDITION for a tensor of a shapes-only checkpoint, which has no bytes to map.
  [[nodiscard]] absl::Status RequireBytes(std::string_view name, Location loc) const;
  const char* DataAt(Location loc) const { return shards_[loc.shard].data() + InfoAt(loc).data_begin; }
  void Count(int64_t bytes) const { bytes_accessed_->fetch_add(bytes, std::memory_order_relaxed); }

  std::string dir_;
  std::string weights_source_;  // the index or model.safetensors, for messages
  ModelConfig config_;
  GenerationConfig generation_config_;
  std::vector<SafetensorsFile> shards_;
  std::vector<TensorInfo> shape_infos_;  // OpenShapes: every tensor, data_begin 0 and data_end its BF16 bytes
  std::map<std::string, Location, std::less<>> tensors_;
  std::unique_ptr<std::atomic<int64_t>> bytes_accessed_ = std::make_unique<std::atomic<int64_t>>(0);
};

}  // namespace tessera
