// GgufBuilder: GGUF file bytes for tests, written independently of GgufFile: metadata of every value type,
// tensors with given bytes, and knobs that break the layout (magic, version, counts, offsets) on purpose.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace tessera::testing {

// Little-endian bytes of a trivially copyable value.
template <typename T>
std::string Pod(T v) {
  std::string out(sizeof(T), '\0');
  std::memcpy(out.data(), &v, sizeof(T));
  return out;
}

// A GGUF string: uint64 length, then the bytes.
inline std::string GgufString(const std::string& s) { return Pod<uint64_t>(s.size()) + s; }

// gguf_type codes.
enum GgufTypeCode : uint32_t {
  kGgufU8 = 0,
  kGgufI8 = 1,
  kGgufU16 = 2,
  kGgufI16 = 3,
  kGgufU32 = 4,
  kGgufI32 = 5,
  kGgufF32 = 6,
  kGgufBool = 7,
  kGgufString = 8,
  kGgufArray = 9,
  kGgufU64 = 10,
  kGgufI64 = 11,
  kGgufF64 = 12,
};

class GgufBuilder {
 public:
  // A metadata entry whose value (after the type) is `encoded`.
  GgufBuilder& Raw(const std::string& key, uint32_t type, const std::string& encoded) {
    kv_.push_back(GgufString(key) + Pod<uint32_t>(type) + encoded);
    ++kv_count_;
    return *this;
  }
  GgufBuilder& U32(const std::string& key, uint32_t v) { return Raw(key, kGgufU32, Pod(v)); }
  GgufBuilder& I32(const std::string& key, int32_t v) { return Raw(key, kGgufI32, Pod(v)); }
  GgufBuilder& U64(const std::string& key, uint64_t v) { return Raw(key, kGgufU64, Pod(v)); }
  GgufBuilder& F32(const std::string& key, float v) { return Raw(key, kGgufF32, Pod(v)); }
  GgufBuilder& F64(const std::string& key, double v) { return Raw(key, kGgufF64, Pod(v)); }
  GgufBuilder& Bool(const std::string& key, bool v) { return Raw(key, kGgufBool, Pod<uint8_t>(v ? 1 : 0)); }
  GgufBuilder& Str(const std::string& key, const std::string& v) {
    return Raw(key, kGgufString, GgufString(v));
  }
  GgufBuilder& StrArray(const std::string& key, const std::vector<std::string>& v) {
    std::string enc = Pod<uint32_t>(kGgufString) + Pod<uint64_t>(v.size());
    for (const std::string& s : v) enc += GgufString(s);
    return Raw(key, kGgufArray, enc);
  }
  GgufBuilder& I32Array(const std::string& key, const std::vector<int32_t>& v) {
    std::string enc = Pod<uint32_t>(kGgufI32) + Pod<uint64_t>(v.size());
    for (int32_t x : v) enc += Pod(x);
    return Raw(key, kGgufArray, enc);
  }

  // general.alignment (uint32), also used to lay out the data section.
  GgufBuilder& Alignment(uint32_t a) {
    alignment_ = a;
    return U32("general.alignment", a);
  }
  // A tensor: ggml type code, ne (innermost first) and its bytes. `offset` overrides the aligned offset.
  GgufBuilder& Tensor(const std::string& name, uint32_t type, const std::vector<uint64_t>& dims,
                      const std::string& data, std::optional<uint64_t> offset = std::nullopt) {
    tensors_.push_back({name, type, dims, data, offset});
    return *this;
  }

  GgufBuilder& Magic(const std::string& m) {
    magic_ = m;
    return *this;
  }
  GgufBuilder& Version(uint32_t v) {
    version_ = v;
    return *this;
  }
  GgufBuilder& TensorCount(uint64_t n) {
    tensor_count_ = n;
    return *this;
  }

  std::string Build() const {
    std::string out = magic_ + Pod(version_) + Pod<uint64_t>(tensor_count_.value_or(tensors_.size())) +
                      Pod<uint64_t>(kv_count_);
    for (const std::string& kv : kv_) out += kv;
    std::string data;
    for (const TensorEntry& t : tensors_) {
      while (data.size() % alignment_ != 0) data += '\0';
      out += GgufString(t.name) + Pod<uint32_t>(t.dims.size());
      for (uint64_t d : t.dims) out += Pod(d);
      out += Pod(t.type) + Pod<uint64_t>(t.offset.value_or(data.size()));
      data += t.data;
    }
    while (out.size() % alignment_ != 0) out += '\0';
    return out + data;
  }

 private:
  struct TensorEntry {
    std::string name;
    uint32_t type;
    std::vector<uint64_t> dims;
    std::string data;
    std::optional<uint64_t> offset;
  };
  std::string magic_ = "GGUF";
  uint32_t version_ = 3;
  uint64_t alignment_ = 32;
  std::optional<uint64_t> tensor_count_;
  uint64_t kv_count_ = 0;
  std::vector<std::string> kv_;
  std::vector<TensorEntry> tensors_;
};

}  // namespace tessera::testing
