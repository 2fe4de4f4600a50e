// libFuzzer target for the GGUF reader (worker/checkpoint/gguf_file.h): any bytes, written to a file and
// opened, must give a GgufFile or an error status, never a crash, an out-of-bounds read or undefined
// behaviour. An opened file is walked whole: every metadata value through every accessor and typed lookup,
// every tensor's data (which must lie inside the file) dequantized.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "worker/checkpoint/gguf_file.h"

namespace tessera {
namespace {

void Fail(const std::string& what) {
  std::fprintf(stderr, "gguf_reader_fuzz: %s\n", what.c_str());
  std::abort();
}

// Touches every byte a value's views cover, so that ASan sees a view past the mapping.
uint64_t Touch(std::string_view bytes) {
  uint64_t sum = 0;
  for (char c : bytes) sum += static_cast<uint8_t>(c);
  return sum;
}

uint64_t WalkValue(const GgufValue& v, int depth) {
  if (depth > 16) Fail("arrays nested deeper than the reader allows");
  uint64_t sum = Touch(v.bytes) + v.TypeName().size();
  (void)v.AsInt();
  (void)v.AsFloat();
  (void)v.AsBool();
  (void)v.AsString();
  if (v.type == GgufValueType::kArray) {
    for (uint64_t i = 0; i < v.size && i < 4096; ++i) (void)v.IntAt(i);
    (void)v.IntAt(v.size);  // one past the end: nullopt
    if (v.element_type == GgufValueType::kString && v.strings.size() != v.size) Fail("string array size");
    if (v.element_type == GgufValueType::kArray && v.arrays.size() != v.size) Fail("nested array size");
    for (std::string_view s : v.strings) sum += Touch(s);
    for (const GgufValue& a : v.arrays) sum += WalkValue(a, depth + 1);
  }
  return sum;
}

void Walk(const GgufFile& file, uint64_t file_size) {
  uint64_t sum = 0;
  for (const auto& [key, value] : file.metadata()) {
    sum += WalkValue(value, 0);
    if (file.Find(key) != &value) Fail("Find does not find a key");
    (void)file.Int(key);
    (void)file.Float(key);
    (void)file.Bool(key);
    (void)file.String(key);
    (void)file.StringArray(key);
    (void)file.IntArray(key);
  }
  (void)file.Int("missing.key");
  std::vector<float> values;
  for (const GgufTensorInfo& t : file.tensors()) {
    if (file.FindTensor(t.name) != &t) Fail("FindTensor does not find " + t.name);
    const std::string_view data = file.TensorData(t);
    if (data.size() != t.num_bytes || t.num_bytes > file_size) Fail("tensor " + t.name + " data size");
    const GgmlBlockLayout layout = BlockLayout(t.type);
    if (t.dims.empty() || t.dims.size() > 4 || t.dims[0] % layout.block_size != 0)
      Fail("tensor " + t.name + " dims");
    int64_t elements = 1;
    for (int64_t d : t.dims) elements *= d;
    if (elements != t.num_elements ||
        static_cast<uint64_t>(elements / layout.block_size * layout.type_size) != t.num_bytes) {
      Fail("tensor " + t.name + " sizes");
    }
    sum += Touch(data);
    // Dequantize up to the first 64 K values, whole rows of blocks.
    const int64_t n =
        std::min<int64_t>(t.num_elements, int64_t{1} << 16) / layout.block_size * layout.block_size;
    values.resize(static_cast<size_t>(n));
    DequantizeRow(t.type, data.data(), n, values.data());
  }
  if (sum == 1) std::fprintf(stderr, " ");  // keeps the touches
}

}  // namespace
}  // namespace tessera

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = [] {
    std::string p = "/tmp/gguf_reader_fuzz." + std::to_string(getpid()) + ".gguf";
    std::atexit([] { unlink(("/tmp/gguf_reader_fuzz." + std::to_string(getpid()) + ".gguf").c_str()); });
    return p;
  }();
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || write(fd, data, size) != static_cast<ssize_t>(size) || close(fd) != 0) {
    std::perror(path.c_str());
    std::abort();
  }
  absl::StatusOr<tessera::GgufFile> file = tessera::GgufFile::Open(path);
  if (file.ok()) {
    tessera::Walk(*file, size);
  } else if (file.status().message().find(path) == std::string::npos) {
    std::fprintf(stderr, "an error that does not name the file: %s\n",
                 std::string(file.status().message()).c_str());
    std::abort();
  }
  return 0;
}
