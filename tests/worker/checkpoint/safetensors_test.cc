// Tests for the safetensors reader (header validation, mapping) and writer (round trips, padding).
#include "worker/checkpoint/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "tests/util/status_matchers.h"
#include "tests/worker/checkpoint/test_files.h"
#include "worker/checkpoint/safetensors_writer.h"

namespace tessera {
namespace {

using ::tessera::testing::LengthPrefix;
using ::tessera::testing::RawSafetensors;
using ::tessera::testing::ScopedTempDir;
using ::tessera::testing::StatusIs;
using ::tessera::testing::WriteFile;
using ::testing::AllOf;
using ::testing::HasSubstr;

template <typename T>
std::string Bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// Opens a file holding `bytes` and returns the status of SafetensorsFile::Open.
absl::Status OpenBytes(const ScopedTempDir& dir, const std::string& bytes) {
  const std::string path = dir.File("bad.safetensors");
  WriteFile(path, bytes);
  return SafetensorsFile::Open(path).status();
}

// Expects INVALID_ARGUMENT naming the file and every string in `culprits`.
void ExpectMalformed(const std::string& header, uint64_t data_bytes, std::vector<std::string> culprits) {
  ScopedTempDir dir;
  absl::Status status = OpenBytes(dir, RawSafetensors(header, data_bytes));
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad.safetensors")));
  for (const std::string& c : culprits) EXPECT_THAT(std::string(status.message()), HasSubstr(c));
}

TEST(SafetensorsTest, RoundTripsBf16F16F32AndI32) {
  ScopedTempDir dir;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> bf16(3 * 5), f16(7);
  std::vector<float> f32(2 * 3 * 4);
  std::vector<int32_t> i32 = {1, -2, 3};
  for (auto& v : bf16) v = F32ToBf16(normal(rng));
  for (auto& v : f16) v = F32ToF16(normal(rng));
  for (auto& v : f32) v = normal(rng);
  const std::string path = dir.File("model.safetensors");
  ASSERT_OK(WriteSafetensors(path,
                             {{"b", DType::kBF16, {3, 5}, Bytes(bf16)},
                              {"a", DType::kF16, {7}, Bytes(f16)},
                              {"c.f32", DType::kF32, {2, 3, 4}, Bytes(f32)},
                              {"ids", DType::kI32, {3}, Bytes(i32)},
                              {"empty", DType::kF32, {0, 4}, ""}},
                             {{"format", "pt"}}));
  ASSERT_OK_AND_ASSIGN(SafetensorsFile file, SafetensorsFile::Open(path));
  ASSERT_EQ(file.tensors().size(), 5u);
  EXPECT_EQ(file.tensors()[0].name, "a");  // sorted by name
  EXPECT_EQ(file.data_offset() % 8, 0u);

  auto check = [&](const std::string& name, DType dtype, std::vector<int64_t> shape,
                   const std::string& bytes) {
    const TensorInfo* info = file.Find(name);
    ASSERT_NE(info, nullptr) << name;
    EXPECT_EQ(info->dtype, dtype) << name;
    EXPECT_EQ(info->shape, shape) << name;
    ASSERT_EQ(info->nbytes(), bytes.size()) << name;
    EXPECT_EQ(std::memcmp(file.data() + info->data_begin, bytes.data(), bytes.size()), 0) << name;
  };
  check("b", DType::kBF16, {3, 5}, Bytes(bf16));
  check("a", DType::kF16, {7}, Bytes(f16));
  check("c.f32", DType::kF32, {2, 3, 4}, Bytes(f32));
  check("ids", DType::kI32, {3}, Bytes(i32));
  check("empty", DType::kF32, {0, 4}, "");
  EXPECT_EQ(file.Find("missing"), nullptr);
}

TEST(SafetensorsTest, QuantizedTensorsAreU8RowsNamedInMetadataAndReadBackWithTheirBlockType) {
  ScopedTempDir dir;
  std::string q8(3 * 2 * 34, '\0'), q4(5 * 18, '\0'), q41(2 * 3 * 20, '\0');
  for (size_t i = 0; i < q8.size(); ++i) q8[i] = static_cast<char>(i * 7);
  for (size_t i = 0; i < q4.size(); ++i) q4[i] = static_cast<char>(i * 5);
  for (size_t i = 0; i < q41.size(); ++i) q41[i] = static_cast<char>(i * 3);
  std::vector<float> f32 = {1, 2};
  const std::string path = dir.File("model.safetensors");
  ASSERT_OK(WriteSafetensors(path,
                             {{"w.q8", DType::kQ8_0, {3, 64}, q8},
                              {"w.q4", DType::kQ4_0, {5, 32}, q4},
                              {"w.q41", DType::kQ4_1, {2, 96}, q41},
                              {"n", DType::kF32, {2}, Bytes(f32)}},
                             {{"format", "pt"}}));
  // What any safetensors reader sees: U8 bytes, and the block type in __metadata__.
  const std::string raw = testing::ReadFile(path);
  uint64_t len = 0;
  std::memcpy(&len, raw.data(), 8);
  const std::string header = raw.substr(8, len);
  EXPECT_THAT(header, HasSubstr(R"("w.q8":{"data_offsets":[0,204],"dtype":"U8","shape":[3,68]})"));
  EXPECT_THAT(header, HasSubstr(R"("tessera.quantized.w.q8":"Q8_0")"));
  EXPECT_THAT(header, HasSubstr(R"("tessera.quantized.w.q41":"Q4_1")"));
  EXPECT_THAT(header, HasSubstr(R"("format":"pt")"));

  ASSERT_OK_AND_ASSIGN(SafetensorsFile file, SafetensorsFile::Open(path));
  auto check = [&](const std::string& name, DType dtype, std::vector<int64_t> shape,
                   const std::string& bytes) {
    const TensorInfo* info = file.Find(name);
    ASSERT_NE(info, nullptr) << name;
    EXPECT_EQ(info->dtype, dtype) << name;
    EXPECT_EQ(info->shape, shape) << name;
    ASSERT_EQ(info->nbytes(), bytes.size()) << name;
    EXPECT_EQ(std::memcmp(file.data() + info->data_begin, bytes.data(), bytes.size()), 0) << name;
  };
  check("w.q8", DType::kQ8_0, {3, 64}, q8);
  check("w.q4", DType::kQ4_0, {5, 32}, q4);
  check("w.q41", DType::kQ4_1, {2, 96}, q41);
  check("n", DType::kF32, {2}, Bytes(f32));
}

TEST(SafetensorsTest, WriterRejectsQuantizedRowsThatAreNotWholeBlocks) {
  ScopedTempDir dir;
  EXPECT_THAT(
      WriteSafetensors(dir.File("w.safetensors"), {{"t", DType::kQ8_0, {2, 40}, std::string(160, 0)}}),
      StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr("w.safetensors"), HasSubstr("t"))));
}

TEST(SafetensorsTest, RejectsMalformedQuantizedTensors) {
  const std::string u8 = R"("w":{"dtype":"U8","shape":[2,34],"data_offsets":[0,68]})";
  // Metadata naming an unknown block type, a missing tensor, a non-string value.
  ExpectMalformed(R"({"__metadata__":{"tessera.quantized.w":"Q5_0"},)" + u8 + "}", 68,
                  {"tessera.quantized.w", "Q5_0", "Q8_0, Q4_0 or Q4_1"});
  ExpectMalformed(R"({"__metadata__":{"tessera.quantized.v":"Q8_0"},)" + u8 + "}", 68,
                  {"tessera.quantized.v", "names no tensor"});
  ExpectMalformed(R"({"__metadata__":{"tessera.quantized.__metadata__":"Q8_0"},)" + u8 + "}", 68,
                  {"names no tensor"});
  ExpectMalformed(R"({"__metadata__":{"tessera.quantized.w":8},)" + u8 + "}", 68,
                  {"tessera.quantized.w", "not a string"});
  // A quantized tensor stored as another dtype, or rows that are not whole blocks.
  ExpectMalformed(
      R"({"__metadata__":{"tessera.quantized.w":"Q8_0"},"w":{"dtype":"F32","shape":[17],"data_offsets":[0,68]}})",
      68, {"tensor w", "Q8_0", "F32", "not U8"});
  ExpectMalformed(
      R"({"__metadata__":{"tessera.quantized.w":"Q4_0"},"w":{"dtype":"U8","shape":[2,34],"data_offsets":[0,68]}})",
      68, {"tensor w", "18-byte blocks", "[2, 34]"});
  ExpectMalformed(
      R"({"__metadata__":{"tessera.quantized.w":"Q8_0"},"w":{"dtype":"U8","shape":[],"data_offsets":[0,1]}})",
      1, {"tensor w", "34-byte blocks"});
  // The byte count is checked on the stored U8 shape.
  ExpectMalformed(R"({"__metadata__":{"tessera.quantized.w":"Q8_0"},"w":{"dtype":"U8","shape":[2,34],)"
                  R"("data_offsets":[0,64]}})",
                  64, {"tensor w", "needs 68 bytes"});
  // U8 without metadata stays unsupported.
  ExpectMalformed("{" + u8 + "}", 68, {"tensor w", "unsupported dtype U8"});
}

TEST(SafetensorsTest, WriterPadsHeaderToEightBytesWithSpaces) {
  const std::string bytes = SafetensorsHeaderBytes({{"x", DType::kF32, {1}}});
  ASSERT_GE(bytes.size(), 8u);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data(), 8);
  EXPECT_EQ(len, bytes.size() - 8);
  EXPECT_EQ(len % 8, 0u);
  EXPECT_EQ(bytes.back() == ' ' || bytes.back() == '}', true);
}

TEST(SafetensorsTest, WriterRejectsBytesThatDoNotMatchTheShape) {
  ScopedTempDir dir;
  EXPECT_THAT(
      WriteSafetensors(dir.File("w.safetensors"), {{"t", DType::kF32, {2}, "abc"}}),
      StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr("w.safetensors"), HasSubstr("t"))));
}

TEST(SafetensorsTest, WriterRejectsFinishBeforeAllBytes) {
  ScopedTempDir dir;
  ASSERT_OK_AND_ASSIGN(SafetensorsWriter writer,
                       SafetensorsWriter::Create(dir.File("w.safetensors"), {{"t", DType::kF32, {2}}}));
  ASSERT_OK(writer.Append(std::string(4, '\0')));
  EXPECT_THAT(writer.Finish(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("w.safetensors")));
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  ScopedTempDir dir;
  EXPECT_THAT(SafetensorsFile::Open(dir.File("nope.safetensors")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope.safetensors")));
}

TEST(SafetensorsTest, AcceptsMetadata) {
  ScopedTempDir dir;
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_OK(OpenBytes(dir, RawSafetensors(header, 8)));
}

TEST(SafetensorsTest, RejectsFileShorterThanEightBytes) {
  ScopedTempDir dir;
  EXPECT_THAT(OpenBytes(dir, "abcde"), StatusIs(absl::StatusCode::kInvalidArgument,
                                                AllOf(HasSubstr("bad.safetensors"), HasSubstr("8-byte"))));
  EXPECT_THAT(OpenBytes(dir, ""), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad.safetensors")));
}

TEST(SafetensorsTest, RejectsHeaderLengthPastEndOfFile) {
  ScopedTempDir dir;
  EXPECT_THAT(OpenBytes(dir, LengthPrefix(100) + "{}"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("bad.safetensors"), HasSubstr("past the end of the file"))));
}

TEST(SafetensorsTest, RejectsAbsurdlyLargeHeaderLength) {
  ScopedTempDir dir;
  EXPECT_THAT(OpenBytes(dir, LengthPrefix(uint64_t{1} << 62) + "{}"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("bad.safetensors"), HasSubstr("exceeds the limit"))));
  EXPECT_THAT(OpenBytes(dir, LengthPrefix(~uint64_t{0}) + "{}"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad.safetensors")));
}

TEST(SafetensorsTest, RejectsHeaderThatIsNotJson) {
  ExpectMalformed(R"({"t": {"dtype": "F32",)", 0, {"not valid JSON", "column"});
}

TEST(SafetensorsTest, RejectsHeaderThatIsNotAnObject) {
  ExpectMalformed("[1, 2, 3]", 0, {"not a JSON object"});
}

TEST(SafetensorsTest, RejectsTensorEntryThatIsNotAnObject) {
  ExpectMalformed(R"({"w": [1, 2]})", 0, {"tensor w", "not a JSON object"});
}

TEST(SafetensorsTest, RejectsTensorWithoutDtype) {
  ExpectMalformed(R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", 8, {"tensor w", "missing dtype"});
}

TEST(SafetensorsTest, RejectsTensorWithoutShape) {
  ExpectMalformed(R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", 8, {"tensor w", "missing shape"});
}

TEST(SafetensorsTest, RejectsTensorWithoutDataOffsets) {
  ExpectMalformed(R"({"w": {"dtype": "F32", "shape": [2]}})", 8, {"tensor w", "missing data_offsets"});
}

TEST(SafetensorsTest, RejectsDtypeThatIsNotAString) {
  ExpectMalformed(R"({"w": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}})", 8, {"tensor w", "dtype"});
}

TEST(SafetensorsTest, RejectsShapeThatIsNotAnArray) {
  ExpectMalformed(R"({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}})", 8,
                  {"tensor w", "shape is not an array"});
}

TEST(SafetensorsTest, RejectsNonIntegerDim) {
  ExpectMalformed(R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})", 8,
                  {"tensor w", "non-integer"});
}

TEST(SafetensorsTest, RejectsNegativeDim) {
  ExpectMalformed(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8,
                  {"tensor w", "negative value -2"});
}

TEST(SafetensorsTest, RejectsDataOffsetsOfWrongLengthOrType) {
  ExpectMalformed(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}})", 8,
                  {"tensor w", "expected 2"});
  ExpectMalformed(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": {"a": 1}}})", 8,
                  {"tensor w", "data_offsets is not an array"});
  ExpectMalformed(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, "8"]}})", 8,
                  {"tensor w", "non-integer"});
}

TEST(SafetensorsTest, RejectsUnknownDtype) {
  ExpectMalformed(R"({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", 8,
                  {"tensor w", "unsupported dtype F64"});
}

TEST(SafetensorsTest, RejectsDataOffsetsOutsideDataArea) {
  ExpectMalformed(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8,
                  {"tensor w", "outside the data area of 8 bytes"});
}

TEST(SafetensorsTest, RejectsBeginAfterEnd) {
  ExpectMalformed(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 8,
                  {"tensor w", "begin 8 > end 4"});
}

TEST(SafetensorsTest, RejectsOverlappingTensors) {
  ExpectMalformed(
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
      12, {"tensor b", "overlap", "tensor a"});
}

TEST(SafetensorsTest, RejectsShapeThatDoesNotMatchByteRange) {
  ExpectMalformed(R"({"w": {"dtype": "BF16", "shape": [3, 2], "data_offsets": [0, 8]}})", 8,
                  {"tensor w", "needs 12 bytes but data_offsets span 8"});
}

TEST(SafetensorsTest, RejectsElementCountOverflow) {
  ExpectMalformed(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4], "data_offsets": [0, 0]}})",
                  0, {"tensor w", "overflows"});
  ExpectMalformed(R"({"w": {"dtype": "F32", "shape": [18446744073709551615], "data_offsets": [0, 0]}})", 0,
                  {"tensor w", "too large"});
}

TEST(SafetensorsTest, RejectsMetadataThatIsNotAnObject) {
  ExpectMalformed(R"({"__metadata__": [1]})", 0, {"__metadata__"});
}

TEST(SafetensorsTest, ParserRejectsPrefixShorterThanTheHeader) {
  const std::string header = R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})";
  const std::string bytes = RawSafetensors(header, 8);
  EXPECT_OK(ParseSafetensorsHeader(bytes, bytes.size(), "mem"));
  EXPECT_THAT(ParseSafetensorsHeader(std::string_view(bytes).substr(0, 20), bytes.size(), "mem"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mem")));
}

}  // namespace
}  // namespace tessera
