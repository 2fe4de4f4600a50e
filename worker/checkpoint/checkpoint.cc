#include "worker/checkpoint/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <set>
#include <utility>
#include <vector>

#include "core/status_macros.h"
#include "core/str_cat.h"
#include "worker/checkpoint/gguf_dequant.h"
#include "worker/checkpoint/json_fields.h"

namespace tessera {

namespace {

using json_internal::Json;

bool IsFloat(DType t) { return t == DType::kBF16 || t == DType::kF16 || t == DType::kF32; }

// Whether ReadRows / ReadColumns convert `from` into `to`.
bool CanConvert(DType from, DType to) {
  return from == to || (IsFloat(to) && (IsFloat(from) || IsQuantized(from)));
}

float LoadAsFloat(const char* p, DType t) {
  uint16_t h;
  float f;
  switch (t) {
    case DType::kBF16:
      std::memcpy(&h, p, 2);
      return Bf16ToF32(h);
    case DType::kF16:
      std::memcpy(&h, p, 2);
      return F16ToF32(h);
    default:
      std::memcpy(&f, p, 4);
      return f;
  }
}

void StoreFloat(float f, DType t, char* p) {
  uint16_t h;
  switch (t) {
    case DType::kBF16:
      h = F32ToBf16(f);
      std::memcpy(p, &h, 2);
      return;
    case DType::kF16:
      h = F32ToF16(f);
      std::memcpy(p, &h, 2);
      return;
    default:
      std::memcpy(p, &f, 4);
      return;
  }
}

// Converts n contiguous elements (a whole number of blocks for a quantized src); the caller has checked that
// the pair of dtypes is supported: the same dtype (a copy), float to float, or quantized to float (exact
// dequantization, then rounding to dst_dtype).
void Convert(const char* src, DType src_dtype, char* dst, DType dst_dtype, int64_t n) {
  if (src_dtype == dst_dtype) {
    std::memcpy(dst, src, static_cast<size_t>(DTypeBytes(src_dtype, n)));
    return;
  }
  if (IsQuantized(src_dtype)) {
    std::vector<float> values(static_cast<size_t>(n));
    DequantizeRow(GgmlTypeOfBlockDType(src_dtype), src, n, values.data());
    Convert(reinterpret_cast<const char*>(values.data()), DType::kF32, dst, dst_dtype, n);
    return;
  }
  const int64_t ss = DTypeSize(src_dtype), ds = DTypeSize(dst_dtype);
  for (int64_t i = 0; i < n; ++i) StoreFloat(LoadAsFloat(src + i * ss, src_dtype), dst_dtype, dst + i * ds);
}

absl::StatusOr<Tensor> MakeTensor(const char* data, DType dtype, const std::vector<int64_t>& s,
                                  std::string_view name) {
  // The mapping is PROT_READ; Tensor has no const flavour, so the contract comment forbids writes instead.
  void* p = const_cast<char*>(data);
  switch (s.size()) {
    case 0:
      return Tensor(p, dtype, {});
    case 1:
      return Tensor(p, dtype, {s[0]});
    case 2:
      return Tensor(p, dtype, {s[0], s[1]});
    case 3:
      return Tensor(p, dtype, {s[0], s[1], s[2]});
    case 4:
      return Tensor(p, dtype, {s[0], s[1], s[2], s[3]});
    default:
      return absl::InvalidArgumentError(
          Cat("tensor ", name, " has ", s.size(), " dims; at most ", Tensor::kMaxDims, " are supported"));
  }
}

// Checks 0 <= begin, 0 <= count, begin + count <= size.
absl::Status CheckRange(std::string_view name, std::string_view what, int64_t begin, int64_t count,
                        int64_t size, const std::vector<int64_t>& shape) {
  if (begin < 0 || count < 0 || begin > size || count > size - begin) {
    return absl::InvalidArgumentError(Cat("tensor ", name, ": ", what, " [", begin, ", ", begin + count,
                                          ") out of range for shape ", ShapeToString(shape)));
  }
  return absl::OkStatus();
}

absl::Status CheckDestination(std::string_view name, const TensorInfo& info, const Tensor& dst,
                              const std::vector<int64_t>& expected) {
  if (!CanConvert(info.dtype, dst.dtype())) {
    return absl::InvalidArgumentError(
        Cat("tensor ", name, ": cannot convert ", DTypeName(info.dtype), " to ", DTypeName(dst.dtype())));
  }
  bool same = dst.ndim() == static_cast<int>(expected.size()) && !dst.empty();
  for (int i = 0; same && i < dst.ndim(); ++i) same = dst.dim(i) == expected[i];
  if (!same) {
    return absl::InvalidArgumentError(Cat("tensor ", name, ": destination has shape ", dst.ShapeString(),
                                          " but the slice needs ", ShapeToString(expected)));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<TensorSpec> LlamaTensorSpecs(const ModelConfig& c) {
  const int64_t h = c.hidden_size, inter = c.intermediate_size, v = c.vocab_size;
  const int64_t q = int64_t{c.num_attention_heads} * c.head_dim,
                kv = int64_t{c.num_key_value_heads} * c.head_dim;
  std::vector<TensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {v, h}});
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = Cat("model.layers.", i, ".");
    specs.push_back({p + "input_layernorm.weight", {h}});
    specs.push_back({p + "self_attn.q_proj.weight", {q, h}});
    specs.push_back({p + "self_attn.k_proj.weight", {kv, h}});
    specs.push_back({p + "self_attn.v_proj.weight", {kv, h}});
    specs.push_back({p + "self_attn.o_proj.weight", {h, q}});
    specs.push_back({p + "post_attention_layernorm.weight", {h}});
    specs.push_back({p + "mlp.gate_proj.weight", {inter, h}});
    specs.push_back({p + "mlp.up_proj.weight", {inter, h}});
    specs.push_back({p + "mlp.down_proj.weight", {h, inter}});
  }
  specs.push_back({"model.norm.weight", {h}});
  if (!c.tie_word_embeddings) specs.push_back({"lm_head.weight", {v, h}});
  return specs;
}

absl::StatusOr<Checkpoint> Checkpoint::Open(const std::string& dir) {
  Checkpoint ckpt;
  ckpt.dir_ = dir;
  const std::filesystem::path base(dir);
  ASSIGN_OR_RETURN(ckpt.config_, ModelConfig::Load((base / "config.json").string()));
  ASSIGN_OR_RETURN(ckpt.generation_config_,
                   GenerationConfig::Load((base / "generation_config.json").string()));

  const std::string index_path = (base / "model.safetensors.index.json").string();
  const std::string single_path = (base / "model.safetensors").string();
  std::error_code ec;
  if (std::filesystem::exists(index_path, ec)) {
    ckpt.weights_source_ = index_path;
    RETURN_IF_ERROR(ckpt.OpenIndex(index_path));
  } else if (std::filesystem::exists(single_path, ec)) {
    ckpt.weights_source_ = single_path;
    ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(single_path));
    ckpt.shards_.push_back(std::move(file));
    RETURN_IF_ERROR(ckpt.AddShardTensors(0));
  } else {
    return absl::NotFoundError(
        Cat(dir, ": no model.safetensors or model.safetensors.index.json in the model directory"));
  }
  return ckpt;
}

absl::StatusOr<Checkpoint> Checkpoint::OpenShapes(const std::string& dir) {
  Checkpoint ckpt;
  ckpt.dir_ = dir;
  const std::filesystem::path base(dir);
  ckpt.weights_source_ = (base / "config.json").string();
  ASSIGN_OR_RETURN(ckpt.config_, ModelConfig::Load(ckpt.weights_source_));
  ASSIGN_OR_RETURN(ckpt.generation_config_,
                   GenerationConfig::Load((base / "generation_config.json").string()));
  for (const TensorSpec& spec : LlamaTensorSpecs(ckpt.config_)) {
    TensorInfo info;
    info.name = spec.name;
    info.dtype = DType::kBF16;
    info.shape = spec.shape;
    int64_t numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    info.data_end = static_cast<uint64_t>(numel * DTypeSize(DType::kBF16));
    ckpt.tensors_.emplace(info.name, Location{kShapes, ckpt.shape_infos_.size()});
    ckpt.shape_infos_.push_back(std::move(info));
  }
  return ckpt;
}

absl::Status Checkpoint::RequireBytes(std::string_view name, Location loc) const {
  if (loc.shard != kShapes) return absl::OkStatus();
  return absl::FailedPreconditionError(
      Cat(dir_, ": tensor ", name, " has no bytes: the checkpoint was opened for its shapes only (--device null)"));
}

absl::Status Checkpoint::OpenIndex(const std::string& index_path) {
  ASSIGN_OR_RETURN(std::string text, json_internal::ReadTextFile(index_path));
  ASSIGN_OR_RETURN(Json index, json_internal::ParseJson(text, index_path));
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return absl::InvalidArgumentError(Cat(index_path, ": weight_map is missing or not a JSON object"));
  }
  const Json& weight_map = index["weight_map"];
  std::map<std::string, std::string> listed;  // shard file -> a tensor listed for it
  for (const auto& [tensor, file] : weight_map.items()) {
    if (!file.is_string()) {
      return absl::InvalidArgumentError(
          Cat(index_path, ": weight_map entry for tensor ", tensor, " is not a file name: ", file.dump()));
    }
    const std::string& name = file.get_ref<const std::string&>();
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
      return absl::InvalidArgumentError(
          Cat(index_path, ": weight_map entry for tensor ", tensor, " names a path, not a file: ", name));
    }
    listed.emplace(name, tensor);
  }
  std::map<std::string, int> shard_of_file;
  for (const auto& [file, tensor] : listed) {
    const std::string path = (std::filesystem::path(dir_) / file).string();
    absl::StatusOr<SafetensorsFile> shard = SafetensorsFile::Open(path);
    if (absl::IsNotFound(shard.status())) {
      return absl::NotFoundError(Cat(index_path, ": shard file ", file, " (listed for tensor ", tensor,
                                     ") is missing: ", shard.status().message()));
    }
    if (!shard.ok()) return shard.status();
    shard_of_file[file] = static_cast<int>(shards_.size());
    shards_.push_back(*std::move(shard));
    RETURN_IF_ERROR(AddShardTensors(shard_of_file[file]));
  }
  for (const auto& [tensor, file] : weight_map.items()) {
    auto it = tensors_.find(tensor);
    const int shard = shard_of_file[file.get<std::string>()];
    if (it == tensors_.end() || it->second.shard != shard) {
      return absl::NotFoundError(Cat(index_path, ": tensor ", tensor, " is listed in weight_map for ",
                                     file.get<std::string>(), " but that file does not contain it"));
    }
  }
  return absl::OkStatus();
}

absl::Status Checkpoint::AddShardTensors(int shard) {
  const std::vector<TensorInfo>& infos = shards_[shard].tensors();
  for (size_t i = 0; i < infos.size(); ++i) {
    auto [it, inserted] = tensors_.emplace(infos[i].name, Location{shard, i});
    if (!inserted) {
      return absl::InvalidArgumentError(Cat(dir_, ": tensor ", infos[i].name, " is stored in both ",
                                            shards_[it->second.shard].path(), " and ",
                                            shards_[shard].path()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Checkpoint::Location> Checkpoint::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return absl::NotFoundError(Cat(weights_source_, ": no tensor named ", name));
  return it->second;
}

bool Checkpoint::Has(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, loc] : tensors_) names.push_back(name);
  return names;
}

absl::StatusOr<TensorInfo> Checkpoint::Info(std::string_view name) const {
  ASSIGN_OR_RETURN(Location loc, Find(name));
  return InfoAt(loc);
}

absl::StatusOr<std::string> Checkpoint::FileOf(std::string_view name) const {
  ASSIGN_OR_RETURN(Location loc, Find(name));
  return PathAt(loc);
}

absl::StatusOr<Tensor> Checkpoint::Map(std::string_view name) const {
  ASSIGN_OR_RETURN(Location loc, Find(name));
  RETURN_IF_ERROR(RequireBytes(name, loc));
  const TensorInfo& info = InfoAt(loc);
  ASSIGN_OR_RETURN(Tensor t, MakeTensor(DataAt(loc), info.dtype, info.shape, name));
  Count(static_cast<int64_t>(info.nbytes()));
  return t;
}

absl::StatusOr<Tensor> Checkpoint::MapRows(std::string_view name, int64_t row_begin, int64_t num_rows) const {
  ASSIGN_OR_RETURN(Location loc, Find(name));
  RETURN_IF_ERROR(RequireBytes(name, loc));
  const TensorInfo& info = InfoAt(loc);
  if (info.shape.empty()) {
    return absl::InvalidArgumentError(Cat("tensor ", name, " is 0-d and has no rows"));
  }
  RETURN_IF_ERROR(CheckRange(name, "rows", row_begin, num_rows, info.shape[0], info.shape));
  std::vector<int64_t> shape = info.shape;
  shape[0] = num_rows;
  const int64_t row_bytes = info.shape[0] == 0 ? 0 : static_cast<int64_t>(info.nbytes()) / info.shape[0];
  ASSIGN_OR_RETURN(Tensor t, MakeTensor(DataAt(loc) + row_begin * row_bytes, info.dtype, shape, name));
  Count(num_rows * row_bytes);
  return t;
}

absl::Status Checkpoint::ReadRows(std::string_view name, int64_t row_begin, int64_t num_rows,
                                  Tensor& dst) const {
  ASSIGN_OR_RETURN(Location loc, Find(name));
  const TensorInfo& info = InfoAt(loc);
  if (info.shape.size() != 1 && info.shape.size() != 2) {
    return absl::InvalidArgumentError(
        Cat("tensor ", name, ": ReadRows needs a 1-D or 2-D tensor, not ", ShapeToString(info.shape)));
  }
  RETURN_IF_ERROR(CheckRange(name, "rows", row_begin, num_rows, info.shape[0], info.shape));
  std::vector<int64_t> expected = info.shape;
  expected[0] = num_rows;
  RETURN_IF_ERROR(CheckDestination(name, info, dst, expected));
  const int64_t cols = info.shape.size() == 2 ? info.shape[1] : 1;
  const int64_t row_bytes = DTypeBytes(info.dtype, cols), dst_row_bytes = DTypeBytes(dst.dtype(), cols);
  if (loc.shard == kShapes) {
    Count(num_rows * row_bytes);
    return absl::OkStatus();
  }
  const char* src = DataAt(loc) + row_begin * row_bytes;
  char* out = static_cast<char*>(dst.data());
  if (IsQuantized(info.dtype) && info.dtype != dst.dtype()) {
    for (int64_t r = 0; r < num_rows; ++r) {  // row by row: the dequantized values stay small
      Convert(src + r * row_bytes, info.dtype, out + r * dst_row_bytes, dst.dtype(), cols);
    }
  } else {
    Convert(src, info.dtype, out, dst.dtype(), num_rows * cols);
  }
  MappedFile::ReleasePages(src, num_rows * row_bytes);  // copied out
  Count(num_rows * row_bytes);
  return absl::OkStatus();
}

absl::Status Checkpoint::ReadColumns(std::string_view name, int64_t col_begin, int64_t num_cols,
                                     Tensor& dst) const {
  ASSIGN_OR_RETURN(Location loc, Find(name));
  const TensorInfo& info = InfoAt(loc);
  if (info.shape.size() != 2) {
    return absl::InvalidArgumentError(
        Cat("tensor ", name, ": ReadColumns needs a 2-D tensor, not ", ShapeToString(info.shape)));
  }
  RETURN_IF_ERROR(CheckRange(name, "columns", col_begin, num_cols, info.shape[1], info.shape));
  const int64_t rows = info.shape[0], cols = info.shape[1];
  const int64_t block = DTypeBlockElems(info.dtype);
  if (col_begin % block != 0 || num_cols % block != 0) {
    return absl::InvalidArgumentError(Cat("tensor ", name, ": columns [", col_begin, ", ",
                                          col_begin + num_cols, ") do not fall on the ", block,
                                          "-weight block boundaries of ", DTypeName(info.dtype)));
  }
  RETURN_IF_ERROR(CheckDestination(name, info, dst, {rows, num_cols}));
  const int64_t row_bytes = DTypeBytes(info.dtype, cols), slice_bytes = DTypeBytes(info.dtype, num_cols);
  const int64_t begin_bytes = DTypeBytes(info.dtype, col_begin),
                dst_row_bytes = DTypeBytes(dst.dtype(), num_cols);
  if (loc.shard == kShapes) {
    Count(rows * slice_bytes);
    return absl::OkStatus();
  }
  const char* src = DataAt(loc);
  char* out = static_cast<char*>(dst.data());
  for (int64_t r = 0; r < rows; ++r) {
    Convert(src + r * row_bytes + begin_bytes, info.dtype, out + r * dst_row_bytes, dst.dtype(), num_cols);
  }
  MappedFile::ReleasePages(src, rows * row_bytes);  // every row's page was touched; the slice is copied out
  Count(rows * slice_bytes);
  return absl::OkStatus();
}

absl::Status Checkpoint::ValidateForLlama() const {
  for (const TensorSpec& spec : LlamaTensorSpecs(config_)) {
    auto it = tensors_.find(spec.name);
    if (it == tensors_.end()) {
      return absl::NotFoundError(
          Cat(weights_source_, ": tensor ", spec.name, " required by config.json is missing"));
    }
    const TensorInfo& info = InfoAt(it->second);
    const std::string& file = PathAt(it->second);
    if (info.shape != spec.shape) {
      return absl::InvalidArgumentError(Cat(file, ": tensor ", spec.name, " has shape ",
                                            ShapeToString(info.shape), " but config.json implies ",
                                            ShapeToString(spec.shape)));
    }
    const bool matrix = spec.shape.size() == 2;  // weights and the embedding may be block-quantized
    if (!IsFloat(info.dtype) && !(matrix && IsQuantized(info.dtype))) {
      return absl::InvalidArgumentError(Cat(file, ": tensor ", spec.name, " has dtype ",
                                            DTypeName(info.dtype), "; expected BF16, F16 or F32",
                                            matrix ? " (or Q8_0, Q4_0, Q4_1)" : ""));
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera
