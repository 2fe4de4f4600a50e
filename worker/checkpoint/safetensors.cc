#include "worker/checkpoint/safetensors.h"

#include <algorithm>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "core/str_cat.h"

namespace tessera {

namespace {

using Json = nlohmann::json;

template <typename... Args>
absl::Status Malformed(std::string_view file, const Args&... args) {
  return absl::InvalidArgumentError(Cat(file, ": ", args...));
}

uint64_t ReadLittleEndian64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// Reads a JSON array of non-negative integers that fit in int64.
absl::Status ReadIntArray(const Json& j, std::string_view file, std::string_view tensor,
                          std::string_view field, std::vector<int64_t>& out) {
  if (!j.is_array()) return Malformed(file, "tensor ", tensor, ": ", field, " is not an array");
  out.clear();
  for (const Json& e : j) {
    if (e.is_number_unsigned()) {
      uint64_t v = e.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Malformed(file, "tensor ", tensor, ": ", field, " value ", v, " is too large");
      }
      out.push_back(static_cast<int64_t>(v));
    } else if (e.is_number_integer()) {
      return Malformed(file, "tensor ", tensor, ": ", field, " has negative value ", e.get<int64_t>());
    } else {
      return Malformed(file, "tensor ", tensor, ": ", field, " has non-integer element ", e.dump());
    }
  }
  return absl::OkStatus();
}

// The block type of a "Q8_0" / "Q4_0" / "Q4_1" metadata value.
absl::StatusOr<DType> ParseQuantizedDType(std::string_view name) {
  for (DType t : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1}) {
    if (name == DTypeName(t)) return t;
  }
  return absl::InvalidArgumentError(
      Cat("unsupported quantized dtype ", name, " (expected Q8_0, Q4_0 or Q4_1)"));
}

// `quant`: the block type the metadata gives this tensor, if any (then the entry stores U8 bytes).
absl::StatusOr<TensorInfo> ParseEntry(const std::string& name, const Json& entry, uint64_t data_size,
                                      std::string_view file, std::optional<DType> quant) {
  if (!entry.is_object()) return Malformed(file, "tensor ", name, ": entry is not a JSON object");
  TensorInfo info;
  info.name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) return Malformed(file, "tensor ", name, ": missing dtype");
  if (!dtype_it->is_string()) return Malformed(file, "tensor ", name, ": dtype is not a string");
  const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
  if (quant) {
    if (dtype_name != "U8") {
      return Malformed(file, "tensor ", name, ": __metadata__ marks it ", DTypeName(*quant),
                       " but its dtype is ", dtype_name, ", not U8");
    }
  } else {
    absl::StatusOr<DType> dtype = ParseSafetensorsDType(dtype_name);
    if (!dtype.ok()) return Malformed(file, "tensor ", name, ": ", dtype.status().message());
    info.dtype = *dtype;
  }

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) return Malformed(file, "tensor ", name, ": missing shape");
  RETURN_IF_ERROR(ReadIntArray(*shape_it, file, name, "shape", info.shape));

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) return Malformed(file, "tensor ", name, ": missing data_offsets");
  std::vector<int64_t> offsets;
  RETURN_IF_ERROR(ReadIntArray(*offsets_it, file, name, "data_offsets", offsets));
  if (offsets.size() != 2) {
    return Malformed(file, "tensor ", name, ": data_offsets has ", offsets.size(), " elements, expected 2");
  }
  info.data_begin = static_cast<uint64_t>(offsets[0]);
  info.data_end = static_cast<uint64_t>(offsets[1]);
  if (info.data_begin > info.data_end) {
    return Malformed(file, "tensor ", name, ": data_offsets begin ", info.data_begin, " > end ",
                     info.data_end);
  }
  if (info.data_end > data_size) {
    return Malformed(file, "tensor ", name, ": data_offsets [", info.data_begin, ", ", info.data_end,
                     ") lie outside the data area of ", data_size, " bytes");
  }

  uint64_t bytes = quant ? 1 : static_cast<uint64_t>(DTypeSize(info.dtype));
  for (int64_t d : info.shape) {
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes)) {
      return Malformed(file, "tensor ", name, ": shape ", ShapeToString(info.shape),
                       " overflows the element count");
    }
  }
  if (bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return Malformed(file, "tensor ", name, ": shape ", ShapeToString(info.shape),
                     " overflows the element count");
  }
  if (bytes != info.nbytes()) {
    return Malformed(file, "tensor ", name, ": shape ", ShapeToString(info.shape), " x ",
                     quant ? "U8" : DTypeName(info.dtype), " needs ", bytes, " bytes but data_offsets span ",
                     info.nbytes());
  }
  if (quant) {
    const int64_t block_bytes = DTypeBlockBytes(*quant);
    if (info.shape.empty() || info.shape.back() % block_bytes != 0) {
      return Malformed(file, "tensor ", name, ": ", DTypeName(*quant), " rows are whole ", block_bytes,
                       "-byte blocks, but its U8 shape is ", ShapeToString(info.shape));
    }
    info.dtype = *quant;
    info.shape.back() = info.shape.back() / block_bytes * DTypeBlockElems(*quant);
  }
  return info;
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeToString(const std::vector<int64_t>& shape) {
  return Cat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<DType> ParseSafetensorsDType(std::string_view name) {
  for (DType t : {DType::kBF16, DType::kF16, DType::kF32, DType::kI32, DType::kI64}) {
    if (name == DTypeName(t)) return t;
  }
  return absl::InvalidArgumentError(
      Cat("unsupported dtype ", name, " (expected BF16, F16, F32, I32 or I64)"));
}

absl::StatusOr<std::vector<TensorInfo>> ParseSafetensorsHeader(std::string_view file_bytes_prefix,
                                                               uint64_t file_size,
                                                               std::string_view file_name) {
  if (file_size < 8 || file_bytes_prefix.size() < 8) {
    return Malformed(file_name, "file is ", std::min<uint64_t>(file_size, file_bytes_prefix.size()),
                     " bytes, shorter than the 8-byte header length");
  }
  const uint64_t header_len = ReadLittleEndian64(file_bytes_prefix.data());
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return Malformed(file_name, "header length ", header_len, " exceeds the limit of ",
                     kMaxSafetensorsHeaderBytes, " bytes");
  }
  if (header_len > file_size - 8) {
    return Malformed(file_name, "header length ", header_len, " runs past the end of the file (", file_size,
                     " bytes)");
  }
  if (header_len > file_bytes_prefix.size() - 8) {
    return Malformed(file_name, "only ", file_bytes_prefix.size(), " bytes given of a header ending at byte ",
                     8 + header_len);
  }
  const std::string_view header_text = file_bytes_prefix.substr(8, header_len);
  const uint64_t data_size = file_size - 8 - header_len;

  Json header;
  try {
    header = Json::parse(header_text.begin(), header_text.end());
  } catch (const Json::exception& e) {
    return Malformed(file_name, "header is not valid JSON: ", e.what());
  }
  if (!header.is_object()) return Malformed(file_name, "header is not a JSON object");

  // Block-quantized tensors, from __metadata__.
  std::map<std::string, DType, std::less<>> quantized;
  if (auto meta = header.find("__metadata__"); meta != header.end()) {
    if (!meta->is_object() && !meta->is_null())
      return Malformed(file_name, "__metadata__ is not a JSON object");
    if (meta->is_object()) {
      for (const auto& [key, value] : meta->items()) {
        if (key.rfind(kQuantizedMetadataPrefix, 0) != 0) continue;
        const std::string tensor = key.substr(kQuantizedMetadataPrefix.size());
        if (!value.is_string()) return Malformed(file_name, "__metadata__ ", key, " is not a string");
        absl::StatusOr<DType> type = ParseQuantizedDType(value.get_ref<const std::string&>());
        if (!type.ok()) return Malformed(file_name, "__metadata__ ", key, ": ", type.status().message());
        if (tensor == "__metadata__" || !header.contains(tensor)) {
          return Malformed(file_name, "__metadata__ ", key, " names no tensor of the header");
        }
        quantized.emplace(tensor, *type);
      }
    }
  }

  std::vector<TensorInfo> tensors;
  tensors.reserve(header.size());
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    auto q = quantized.find(name);
    std::optional<DType> quant = q == quantized.end() ? std::nullopt : std::optional<DType>(q->second);
    ASSIGN_OR_RETURN(TensorInfo info, ParseEntry(name, entry, data_size, file_name, quant));
    tensors.push_back(std::move(info));
  }

  // Byte ranges must not overlap (empty tensors own no bytes).
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : tensors) {
    if (t.data_begin != t.data_end) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->data_begin < b->data_begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& prev = *by_offset[i - 1];
    const TensorInfo& cur = *by_offset[i];
    if (prev.data_end > cur.data_begin) {
      return Malformed(file_name, "tensor ", cur.name, ": data_offsets [", cur.data_begin, ", ", cur.data_end,
                       ") overlap those of tensor ", prev.name, " [", prev.data_begin, ", ", prev.data_end,
                       ")");
    }
  }
  std::sort(tensors.begin(), tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  return tensors;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  SafetensorsFile st;
  ASSIGN_OR_RETURN(st.file_, MappedFile::Open(path));
  ASSIGN_OR_RETURN(st.tensors_, ParseSafetensorsHeader(st.file_.bytes(), st.file_.size(), path));
  st.data_offset_ = 8 + ReadLittleEndian64(st.file_.data());
  return st;
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  if (it == tensors_.end() || it->name != name) return nullptr;
  return &*it;
}

}  // namespace tessera
