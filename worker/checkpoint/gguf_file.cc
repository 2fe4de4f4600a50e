// GgufFile: parsing and validation of the GGUF layout (ggml's docs/gguf.md): header (magic, version, tensor
// and metadata counts), metadata key/value pairs, tensor infos, padding to general.alignment, tensor data.
#include "worker/checkpoint/gguf_file.h"

#include <cstring>
#include <limits>

#include "core/status_macros.h"
#include "core/str_cat.h"

namespace tessera {
namespace {

constexpr uint64_t kMaxTensors = uint64_t{1} << 20;
constexpr uint64_t kMaxMetadata = uint64_t{1} << 20;
constexpr uint64_t kMaxLength = uint64_t{1} << 32;  // of a string or an array; more is corruption, not data
constexpr uint64_t kMaxDim = uint64_t{1} << 40;
constexpr uint64_t kMaxElements = uint64_t{1} << 50;
constexpr int kMaxArrayDepth = 8;
constexpr uint32_t kMaxDims = 4;

// Bytes of a scalar value type; 0 for strings and arrays.
uint64_t ScalarSize(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return 0;
  }
  return 0;
}

template <typename T>
T Load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// An integer scalar stored in `p` as type t, when it fits int64_t.
std::optional<int64_t> LoadInt(GgufValueType t, const char* p) {
  switch (t) {
    case GgufValueType::kUint8:
      return Load<uint8_t>(p);
    case GgufValueType::kInt8:
      return Load<int8_t>(p);
    case GgufValueType::kUint16:
      return Load<uint16_t>(p);
    case GgufValueType::kInt16:
      return Load<int16_t>(p);
    case GgufValueType::kUint32:
      return Load<uint32_t>(p);
    case GgufValueType::kInt32:
      return Load<int32_t>(p);
    case GgufValueType::kInt64:
      return Load<int64_t>(p);
    case GgufValueType::kUint64: {
      const uint64_t v = Load<uint64_t>(p);
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
      return static_cast<int64_t>(v);
    }
    default:
      return std::nullopt;
  }
}

}  // namespace

std::string_view GgufValueTypeName(GgufValueType type) {
  static constexpr std::string_view kNames[] = {"uint8",  "int8",    "uint16", "int16",  "uint32",
                                                "int32",  "float32", "bool",   "string", "array",
                                                "uint64", "int64",   "float64"};
  const auto i = static_cast<uint32_t>(type);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

std::optional<int64_t> GgufValue::AsInt() const { return LoadInt(type, bytes.data()); }

std::optional<double> GgufValue::AsFloat() const {
  if (type == GgufValueType::kFloat32) return Load<float>(bytes.data());
  if (type == GgufValueType::kFloat64) return Load<double>(bytes.data());
  return std::nullopt;
}

std::optional<bool> GgufValue::AsBool() const {
  if (type != GgufValueType::kBool) return std::nullopt;
  return bytes[0] != 0;
}

std::optional<std::string_view> GgufValue::AsString() const {
  if (type != GgufValueType::kString) return std::nullopt;
  return bytes;
}

std::optional<int64_t> GgufValue::IntAt(uint64_t i) const {
  if (type != GgufValueType::kArray || i >= size) return std::nullopt;
  const uint64_t width = ScalarSize(element_type);
  if (width == 0) return std::nullopt;
  return LoadInt(element_type, bytes.data() + i * width);
}

std::string GgufValue::TypeName() const {
  if (type != GgufValueType::kArray) return std::string(GgufValueTypeName(type));
  if (element_type == GgufValueType::kArray && !arrays.empty()) return Cat("array of ", arrays[0].TypeName());
  return Cat("array of ", GgufValueTypeName(element_type));
}

// Reads the file front to back. Every error starts with the file name; `what` describes the field being read.
class GgufFile::Parser {
 public:
  Parser(std::string_view bytes, const std::string& path) : bytes_(bytes), path_(path) {}

  absl::Status Parse(GgufFile& out);

 private:
  absl::Status Invalid(std::string_view what) const {
    return absl::InvalidArgumentError(Cat(path_, ": ", what));
  }
  absl::Status Truncated(std::string_view what) const {
    return absl::DataLossError(Cat(path_, ": truncated: the file (", bytes_.size(), " bytes) ends inside ",
                                   what, " at byte ", pos_));
  }
  absl::StatusOr<std::string_view> Take(uint64_t n, std::string_view what) {
    if (n > bytes_.size() - pos_) return Truncated(what);
    std::string_view out = bytes_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  template <typename T>
  absl::StatusOr<T> Read(std::string_view what) {
    ASSIGN_OR_RETURN(std::string_view b, Take(sizeof(T), what));
    return Load<T>(b.data());
  }
  absl::StatusOr<std::string_view> ReadString(std::string_view what);
  absl::Status ReadValue(GgufValueType type, const std::string& key, int depth, GgufValue& out);
  absl::Status ReadHeader(GgufFile& out, uint64_t& tensor_count, uint64_t& metadata_count);
  absl::Status ReadTensorInfo(uint64_t index, GgufFile& out);
  absl::Status CheckTensorData(GgufFile& out);

  std::string_view bytes_;
  const std::string& path_;
  uint64_t pos_ = 0;
};

absl::StatusOr<std::string_view> GgufFile::Parser::ReadString(std::string_view what) {
  const uint64_t at = pos_;
  ASSIGN_OR_RETURN(const uint64_t length, Read<uint64_t>(Cat("the length of ", what)));
  if (length >= kMaxLength) return Invalid(Cat(what, " has an absurd length ", length, " at byte ", at));
  return Take(length, what);
}

absl::Status GgufFile::Parser::ReadValue(GgufValueType type, const std::string& key, int depth,
                                         GgufValue& out) {
  const std::string what = Cat("the value of metadata key '", key, "'");
  out.type = type;
  if (type == GgufValueType::kString) {
    ASSIGN_OR_RETURN(out.bytes, ReadString(what));
    return absl::OkStatus();
  }
  if (type != GgufValueType::kArray) {
    ASSIGN_OR_RETURN(out.bytes, Take(ScalarSize(type), what));
    if (type == GgufValueType::kBool && static_cast<uint8_t>(out.bytes[0]) > 1) {
      return Invalid(Cat("metadata key '", key, "' holds bool byte ", static_cast<int>(out.bytes[0]),
                         " (0 or 1 expected)"));
    }
    return absl::OkStatus();
  }
  if (depth >= kMaxArrayDepth) return Invalid(Cat("metadata key '", key, "' nests arrays too deeply"));
  ASSIGN_OR_RETURN(const uint32_t element, Read<uint32_t>(Cat("the element type of ", what)));
  if (element > static_cast<uint32_t>(GgufValueType::kFloat64)) {
    return Invalid(Cat("metadata key '", key, "' is an array of unknown value type ", element));
  }
  out.element_type = static_cast<GgufValueType>(element);
  ASSIGN_OR_RETURN(out.size, Read<uint64_t>(Cat("the element count of ", what)));
  // The smallest encoding of one element: its bytes, a string's length, an array's type and count.
  const uint64_t min_bytes = out.element_type == GgufValueType::kString  ? 8
                             : out.element_type == GgufValueType::kArray ? 12
                                                                         : ScalarSize(out.element_type);
  if (out.size >= kMaxLength) {
    return Invalid(Cat("metadata key '", key, "' has an absurd array length ", out.size));
  }
  if (out.size > (bytes_.size() - pos_) / min_bytes) {
    return Truncated(Cat(what, " (", out.size, " elements of at least ", min_bytes, " bytes)"));
  }
  if (out.element_type == GgufValueType::kString) {
    out.strings.reserve(out.size);
    for (uint64_t i = 0; i < out.size; ++i) {
      ASSIGN_OR_RETURN(std::string_view s, ReadString(Cat("element ", i, " of ", what)));
      out.strings.push_back(s);
    }
  } else if (out.element_type == GgufValueType::kArray) {  // each element: element type, count, elements
    out.arrays.resize(out.size);
    for (uint64_t i = 0; i < out.size; ++i) {
      RETURN_IF_ERROR(ReadValue(GgufValueType::kArray, key, depth + 1, out.arrays[i]));
    }
  } else {
    ASSIGN_OR_RETURN(out.bytes, Take(out.size * min_bytes, what));
  }
  return absl::OkStatus();
}

absl::Status GgufFile::Parser::ReadHeader(GgufFile& out, uint64_t& tensor_count, uint64_t& metadata_count) {
  if (bytes_.size() >= 4 && bytes_.substr(0, 4) != "GGUF") {
    std::string shown;
    for (char c : bytes_.substr(0, 4)) {
      shown += Cat(shown.empty() ? "" : " ", absl::Hex(static_cast<uint8_t>(c), absl::kZeroPad2));
    }
    return Invalid(Cat("bad magic (bytes ", shown, "; a GGUF file starts with \"GGUF\")"));
  }
  ASSIGN_OR_RETURN(std::string_view magic, Take(4, "the magic"));
  (void)magic;
  ASSIGN_OR_RETURN(out.version_, Read<uint32_t>("the version"));
  const uint32_t swapped = __builtin_bswap32(out.version_);
  if (out.version_ != 2 && out.version_ != 3) {
    if (swapped >= 1 && swapped <= 3)
      return Invalid(Cat("big-endian GGUF (version ", swapped, ") is not supported"));
    return Invalid(Cat("GGUF version ", out.version_, " is not supported (only 2 and 3)"));
  }
  ASSIGN_OR_RETURN(tensor_count, Read<uint64_t>("the tensor count"));
  ASSIGN_OR_RETURN(metadata_count, Read<uint64_t>("the metadata count"));
  if (tensor_count > kMaxTensors) return Invalid(Cat("absurd tensor count ", tensor_count));
  if (metadata_count > kMaxMetadata) return Invalid(Cat("absurd metadata count ", metadata_count));
  return absl::OkStatus();
}

absl::Status GgufFile::Parser::ReadTensorInfo(uint64_t index, GgufFile& out) {
  GgufTensorInfo t;
  ASSIGN_OR_RETURN(std::string_view name, ReadString(Cat("the name of tensor ", index)));
  t.name = std::string(name);
  const std::string what = Cat("tensor '", t.name, "'");
  ASSIGN_OR_RETURN(const uint32_t n_dims, Read<uint32_t>(Cat("the dimension count of ", what)));
  if (n_dims < 1 || n_dims > kMaxDims) {
    return Invalid(Cat(what, " has ", n_dims, " dimensions (1 to ", kMaxDims, " allowed)"));
  }
  uint64_t elements = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    ASSIGN_OR_RETURN(const uint64_t dim, Read<uint64_t>(Cat("the dimensions of ", what)));
    if (dim == 0 || dim > kMaxDim || elements > kMaxElements / dim) {
      return Invalid(Cat(what, " has an absurd dimension ", d, " of ", dim));
    }
    elements *= dim;
    t.dims.push_back(static_cast<int64_t>(dim));
  }
  t.num_elements = static_cast<int64_t>(elements);
  ASSIGN_OR_RETURN(const uint32_t code, Read<uint32_t>(Cat("the type of ", what)));
  const std::optional<GgmlType> type = GgmlTypeFromCode(code);
  if (!type) {
    return Invalid(Cat(what, " has tensor type ", GgmlTypeName(code), " (", code,
                       "), which import-gguf does not read (supported: ", SupportedGgmlTypeNames(), ")"));
  }
  t.type = *type;
  const GgmlBlockLayout layout = BlockLayout(t.type);
  if (t.dims[0] % layout.block_size != 0) {
    return Invalid(Cat(what, " has rows of ", t.dims[0], " values, not a whole number of ",
                       GgmlTypeName(code), " blocks of ", layout.block_size));
  }
  t.num_bytes = elements / layout.block_size * layout.type_size;
  ASSIGN_OR_RETURN(t.offset, Read<uint64_t>(Cat("the data offset of ", what)));
  if (t.offset % out.alignment_ != 0) {
    return Invalid(
        Cat(what, " has data offset ", t.offset, ", not a multiple of the alignment ", out.alignment_));
  }
  if (!out.tensor_index_.emplace(t.name, out.tensors_.size()).second) {
    return Invalid(Cat(what, " appears twice in the tensor directory"));
  }
  out.tensors_.push_back(std::move(t));
  return absl::OkStatus();
}

absl::Status GgufFile::Parser::CheckTensorData(GgufFile& out) {
  const uint64_t size = bytes_.size();
  out.data_start_ = (pos_ + out.alignment_ - 1) / out.alignment_ * out.alignment_;
  for (const GgufTensorInfo& t : out.tensors_) {
    const uint64_t begin = out.data_start_ + t.offset;
    if (t.offset > size || begin > size || t.num_bytes > size - begin) {
      return absl::DataLossError(Cat(path_, ": tensor '", t.name, "' data (", t.num_bytes,
                                     " bytes at offset ", t.offset, " of the data section at byte ",
                                     out.data_start_, ") runs past the end of the file (", size, " bytes)"));
    }
  }
  return absl::OkStatus();
}

absl::Status GgufFile::Parser::Parse(GgufFile& out) {
  uint64_t tensor_count = 0, metadata_count = 0;
  RETURN_IF_ERROR(ReadHeader(out, tensor_count, metadata_count));
  for (uint64_t i = 0; i < metadata_count; ++i) {
    ASSIGN_OR_RETURN(std::string_view key_view, ReadString(Cat("the key of metadata entry ", i)));
    std::string key(key_view);
    ASSIGN_OR_RETURN(const uint32_t type, Read<uint32_t>(Cat("the value type of metadata key '", key, "'")));
    if (type > static_cast<uint32_t>(GgufValueType::kFloat64)) {
      return Invalid(Cat("metadata key '", key, "' has unknown value type ", type));
    }
    GgufValue value;
    RETURN_IF_ERROR(ReadValue(static_cast<GgufValueType>(type), key, 0, value));
    if (!out.metadata_.emplace(key, std::move(value)).second) {
      return Invalid(Cat("metadata key '", key, "' appears twice"));
    }
  }
  if (const GgufValue* a = out.Find("general.alignment")) {
    const std::optional<int64_t> v = a->AsInt();
    if (!v || *v <= 0 || *v > (int64_t{1} << 30) || (*v & (*v - 1)) != 0) {
      return Invalid(Cat("metadata key 'general.alignment' must be a power of two (got ",
                         v ? Cat(*v) : a->TypeName(), ")"));
    }
    out.alignment_ = static_cast<uint64_t>(*v);
  }
  for (uint64_t i = 0; i < tensor_count; ++i) RETURN_IF_ERROR(ReadTensorInfo(i, out));
  return CheckTensorData(out);
}

absl::StatusOr<GgufFile> GgufFile::Open(const std::string& path) {
  GgufFile out;
  ASSIGN_OR_RETURN(out.file_, MappedFile::Open(path));
  Parser parser(out.file_.bytes(), out.file_.path());
  RETURN_IF_ERROR(parser.Parse(out));
  return out;
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

// The value of `key` in `file`, or NOT_FOUND naming it.
absl::StatusOr<const GgufValue*> Lookup(const GgufFile& file, std::string_view key) {
  const GgufValue* v = file.Find(key);
  if (v == nullptr) return absl::NotFoundError(Cat(file.path(), ": metadata key '", key, "' is missing"));
  return v;
}

absl::Status WrongType(const GgufFile& file, std::string_view key, const GgufValue& v,
                       std::string_view want) {
  return absl::InvalidArgumentError(
      Cat(file.path(), ": metadata key '", key, "' is ", v.TypeName(), ", expected ", want));
}

}  // namespace

absl::StatusOr<int64_t> GgufFile::Int(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  if (std::optional<int64_t> i = v->AsInt()) return *i;
  return WrongType(*this, key, *v, "an integer below 2^63");
}

absl::StatusOr<double> GgufFile::Float(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  if (std::optional<double> f = v->AsFloat()) return *f;
  return WrongType(*this, key, *v, "float32 or float64");
}

absl::StatusOr<bool> GgufFile::Bool(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  if (std::optional<bool> b = v->AsBool()) return *b;
  return WrongType(*this, key, *v, "bool");
}

absl::StatusOr<std::string_view> GgufFile::String(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  if (std::optional<std::string_view> s = v->AsString()) return *s;
  return WrongType(*this, key, *v, "string");
}

absl::StatusOr<std::vector<std::string_view>> GgufFile::StringArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  if (v->type != GgufValueType::kArray || v->element_type != GgufValueType::kString) {
    return WrongType(*this, key, *v, "array of string");
  }
  return v->strings;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::IntArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  if (v->type != GgufValueType::kArray || ScalarSize(v->element_type) == 0 ||
      v->element_type == GgufValueType::kBool || v->element_type == GgufValueType::kFloat32 ||
      v->element_type == GgufValueType::kFloat64) {
    return WrongType(*this, key, *v, "array of integers");
  }
  std::vector<int64_t> out(v->size);
  for (uint64_t i = 0; i < v->size; ++i) {
    std::optional<int64_t> e = v->IntAt(i);
    if (!e) {
      return absl::InvalidArgumentError(
          Cat(path(), ": metadata key '", key, "' element ", i, " does not fit a signed 64-bit integer"));
    }
    out[i] = *e;
  }
  return out;
}

}  // namespace tessera
