// Tests for GgufFile: GGUF bytes written by GgufBuilder round-trip through the reader (every metadata type,
// versions 2 and 3, alignment), and every malformed input gives its error code and names the culprit.
#include "worker/checkpoint/gguf_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "core/str_cat.h"
#include "tests/util/status_matchers.h"
#include "tests/worker/checkpoint/gguf_test_builder.h"
#include "tests/worker/checkpoint/test_files.h"

namespace tessera {
namespace {

using ::tessera::testing::GgufBuilder;
using ::tessera::testing::GgufString;
using ::tessera::testing::Pod;
using ::tessera::testing::ScopedTempDir;
using ::tessera::testing::StatusIs;
using ::tessera::testing::WriteFile;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

using Code = absl::StatusCode;

absl::StatusOr<GgufFile> OpenBytes(const ScopedTempDir& dir, const std::string& bytes) {
  const std::string path = dir.File("model.gguf");
  WriteFile(path, bytes);
  return GgufFile::Open(path);
}

// Expects `bytes` to fail with `code`, naming the file and every string in `culprits`.
void ExpectBroken(const std::string& bytes, Code code, const std::vector<std::string>& culprits) {
  ScopedTempDir dir;
  absl::StatusOr<GgufFile> file = OpenBytes(dir, bytes);
  ASSERT_THAT(file, StatusIs(code, HasSubstr("model.gguf: ")));
  for (const std::string& c : culprits) EXPECT_THAT(std::string(file.status().message()), HasSubstr(c));
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng() & 0xff);
  return out;
}

// A valid file with two tensors and a few keys, for truncation and offset tests.
GgufBuilder SmallFile() {
  GgufBuilder b;
  b.Str("general.architecture", "llama").U32("llama.block_count", 2).StrArray("names", {"a", "bc"});
  b.Tensor("t.f32", 0, {3, 2}, RandomBytes(24, 1)).Tensor("t.q8", 8, {64}, RandomBytes(68, 2));
  return b;
}

TEST(GgufFileTest, ReadsEveryMetadataTypeAndTensorOfVersions2And3) {
  for (uint32_t version : {2u, 3u}) {
    ScopedTempDir dir;
    const std::string f32 = RandomBytes(5 * 3 * 4, 3), q4k = RandomBytes(2 * 144, 4),
                      bf16 = RandomBytes(6, 5);
    GgufBuilder b;
    b.Version(version)
        .Raw("u8", 0, Pod<uint8_t>(200))
        .Raw("i8", 1, Pod<int8_t>(-100))
        .Raw("u16", 2, Pod<uint16_t>(60000))
        .Raw("i16", 3, Pod<int16_t>(-30000))
        .U32("u32", 4000000000u)
        .I32("i32", -2000000000)
        .F32("f32", 1e-5f)
        .Bool("bool", true)
        .Str("str", "héllo")
        .U64("u64", uint64_t{1} << 62)
        .Raw("i64", 11, Pod<int64_t>(-(int64_t{1} << 60)))
        .F64("f64", 0.1)
        .StrArray("strs", {"", "x y", "<|im_start|>"})
        .I32Array("ints", {-1, 0, 7})
        .Raw("nested", 9,
             Pod<uint32_t>(9) + Pod<uint64_t>(2) + Pod<uint32_t>(4) + Pod<uint64_t>(1) + Pod<uint32_t>(5) +
                 Pod<uint32_t>(8) + Pod<uint64_t>(1) + GgufString("z"))
        .Alignment(64)
        .Tensor("w", 0, {3, 5}, f32)
        .Tensor("blk.0.q4k", 12, {256, 2}, q4k)
        .Tensor("norm", 30, {3}, bf16);
    ASSERT_OK_AND_ASSIGN(GgufFile file, OpenBytes(dir, b.Build()));
    EXPECT_EQ(file.version(), version);
    EXPECT_EQ(file.alignment(), 64u);
    EXPECT_EQ(file.metadata().size(), 16u);
    EXPECT_EQ(*file.Int("u8"), 200);
    EXPECT_EQ(*file.Int("i8"), -100);
    EXPECT_EQ(*file.Int("u16"), 60000);
    EXPECT_EQ(*file.Int("i16"), -30000);
    EXPECT_EQ(*file.Int("u32"), 4000000000);
    EXPECT_EQ(*file.Int("i32"), -2000000000);
    EXPECT_EQ(*file.Float("f32"), static_cast<double>(1e-5f));
    EXPECT_EQ(*file.Bool("bool"), true);
    EXPECT_EQ(*file.String("str"), "héllo");
    EXPECT_EQ(*file.Int("u64"), int64_t{1} << 62);
    EXPECT_EQ(*file.Int("i64"), -(int64_t{1} << 60));
    EXPECT_EQ(*file.Float("f64"), 0.1);
    EXPECT_THAT(*file.StringArray("strs"), ElementsAre("", "x y", "<|im_start|>"));
    EXPECT_THAT(*file.IntArray("ints"), ElementsAre(-1, 0, 7));
    const GgufValue* nested = file.Find("nested");
    ASSERT_NE(nested, nullptr);
    EXPECT_EQ(nested->TypeName(), "array of array of uint32");
    ASSERT_EQ(nested->arrays.size(), 2u);
    EXPECT_EQ(nested->arrays[0].IntAt(0), 5);
    EXPECT_THAT(nested->arrays[1].strings, ElementsAre("z"));

    ASSERT_EQ(file.tensors().size(), 3u);
    const GgufTensorInfo* w = file.FindTensor("w");
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->type, GgmlType::kF32);
    EXPECT_THAT(w->dims, ElementsAre(3, 5));
    EXPECT_EQ(w->num_elements, 15);
    EXPECT_EQ(file.TensorData(*w), f32);
    const GgufTensorInfo* q = file.FindTensor("blk.0.q4k");
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(q->num_bytes, 288u);
    EXPECT_EQ(q->offset % 64, 0u);
    EXPECT_EQ(file.TensorData(*q), q4k);
    EXPECT_EQ(file.TensorData(*file.FindTensor("norm")), bf16);
    EXPECT_EQ(file.FindTensor("absent"), nullptr);
  }
}

TEST(GgufFileTest, TypedLookupsNameTheKeyAndTheTypes) {
  ScopedTempDir dir;
  GgufBuilder b;
  b.Str("name", "x").U64("huge", ~uint64_t{0}).F32("f", 1.5f).StrArray("strs", {"a"});
  ASSERT_OK_AND_ASSIGN(GgufFile file, OpenBytes(dir, b.Build()));
  EXPECT_THAT(file.Int("missing.key"),
              StatusIs(Code::kNotFound, HasSubstr("metadata key 'missing.key' is missing")));
  EXPECT_THAT(file.Int("name"), StatusIs(Code::kInvalidArgument, AllOf(HasSubstr("'name' is string"),
                                                                       HasSubstr("expected an integer"))));
  EXPECT_THAT(file.Int("huge"), StatusIs(Code::kInvalidArgument, HasSubstr("'huge' is uint64")));
  EXPECT_THAT(file.Float("name"), StatusIs(Code::kInvalidArgument, HasSubstr("expected float32 or float64")));
  EXPECT_THAT(file.String("f"),
              StatusIs(Code::kInvalidArgument, HasSubstr("'f' is float32, expected string")));
  EXPECT_THAT(file.Bool("f"), StatusIs(Code::kInvalidArgument, HasSubstr("expected bool")));
  EXPECT_THAT(file.IntArray("strs"),
              StatusIs(Code::kInvalidArgument, HasSubstr("'strs' is array of string")));
  EXPECT_THAT(file.StringArray("name"),
              StatusIs(Code::kInvalidArgument, HasSubstr("expected array of string")));
}

TEST(GgufFileTest, EveryTruncationIsDataLoss) {
  const std::string bytes = SmallFile().Build();
  ScopedTempDir dir;
  ASSERT_OK(OpenBytes(dir, bytes));
  for (size_t n = 0; n < bytes.size(); ++n) {
    absl::StatusOr<GgufFile> file = OpenBytes(dir, bytes.substr(0, n));
    EXPECT_THAT(file, StatusIs(Code::kDataLoss, HasSubstr("model.gguf: ")))
        << "truncated to " << n << " bytes";
  }
  EXPECT_THAT(OpenBytes(dir, bytes.substr(0, bytes.size() - 1)),
              StatusIs(Code::kDataLoss, HasSubstr("tensor 't.q8' data")));
  EXPECT_THAT(OpenBytes(dir, bytes.substr(0, 30)), StatusIs(Code::kDataLoss, HasSubstr("truncated")));
}

TEST(GgufFileTest, MissingFileIsNotFound) {
  ScopedTempDir dir;
  EXPECT_THAT(GgufFile::Open(dir.File("none.gguf")), StatusIs(Code::kNotFound, HasSubstr("none.gguf")));
}

TEST(GgufFileTest, RefusesBadMagicAndVersions) {
  ExpectBroken(SmallFile().Magic("GGML").Build(), Code::kInvalidArgument, {"bad magic", "47 47 4d 4c"});
  ExpectBroken(SmallFile().Version(1).Build(), Code::kInvalidArgument, {"version 1 is not supported"});
  ExpectBroken(SmallFile().Version(4).Build(), Code::kInvalidArgument, {"version 4"});
  ExpectBroken(SmallFile().Version(0x03000000).Build(), Code::kInvalidArgument, {"big-endian"});
}

TEST(GgufFileTest, RefusesAbsurdCountsAndLengths) {
  ExpectBroken(SmallFile().TensorCount(uint64_t{1} << 40).Build(), Code::kInvalidArgument,
               {"absurd tensor count 1099511627776"});
  GgufBuilder long_string;
  long_string.Raw("s", 8, Pod<uint64_t>(uint64_t{1} << 40) + "abc");
  ExpectBroken(long_string.Build(), Code::kInvalidArgument, {"metadata key 's'", "absurd length"});
  GgufBuilder long_array;
  long_array.Raw("a", 9, Pod<uint32_t>(4) + Pod<uint64_t>(uint64_t{1} << 60));
  ExpectBroken(long_array.Build(), Code::kInvalidArgument, {"'a'", "absurd array length"});
  GgufBuilder short_array;  // a sane count whose elements are not there
  short_array.Raw("a", 9, Pod<uint32_t>(4) + Pod<uint64_t>(1000) + Pod<uint32_t>(1));
  ExpectBroken(short_array.Build(), Code::kDataLoss, {"metadata key 'a'", "truncated"});
  GgufBuilder long_name;
  long_name.Tensor("x", 0, {1}, "abcd");
  std::string bytes = long_name.Build();
  const size_t at = bytes.find(GgufString("x"));
  bytes.replace(at, 8, Pod<uint64_t>(uint64_t{1} << 50));
  ExpectBroken(bytes, Code::kInvalidArgument, {"name of tensor 0", "absurd length"});
}

TEST(GgufFileTest, RefusesBadTensorDims) {
  GgufBuilder huge;
  huge.Tensor("big", 0, {uint64_t{1} << 41, 1}, "");
  ExpectBroken(huge.Build(), Code::kInvalidArgument, {"tensor 'big'", "absurd dimension 0"});
  GgufBuilder overflow;
  overflow.Tensor("many", 0, {uint64_t{1} << 30, uint64_t{1} << 30, uint64_t{1} << 30}, "");
  ExpectBroken(overflow.Build(), Code::kInvalidArgument, {"tensor 'many'", "absurd dimension 1"});
  GgufBuilder zero;
  zero.Tensor("empty", 0, {4, 0}, "");
  ExpectBroken(zero.Build(), Code::kInvalidArgument, {"tensor 'empty'", "dimension 1 of 0"});
  GgufBuilder five;
  five.Tensor("five", 0, {1, 1, 1, 1, 1}, "abcd");
  ExpectBroken(five.Build(), Code::kInvalidArgument, {"tensor 'five' has 5 dimensions"});
  GgufBuilder none;
  none.Tensor("scalar", 0, {}, "abcd");
  ExpectBroken(none.Build(), Code::kInvalidArgument, {"tensor 'scalar' has 0 dimensions"});
}

TEST(GgufFileTest, RefusesUnsupportedTensorTypesByName) {
  GgufBuilder q8_1;
  q8_1.Tensor("blk.0.attn_q.weight", 9, {32}, RandomBytes(40, 6));
  ExpectBroken(q8_1.Build(), Code::kInvalidArgument, {"tensor 'blk.0.attn_q.weight'", "Q8_1 (9)", "Q6_K"});
  GgufBuilder unknown;
  unknown.Tensor("w", 1234, {32}, RandomBytes(40, 6));
  ExpectBroken(unknown.Build(), Code::kInvalidArgument, {"tensor 'w'", "unknown (1234)"});
  GgufBuilder partial_block;
  partial_block.Tensor("w", 2, {48}, RandomBytes(36, 7));
  ExpectBroken(partial_block.Build(), Code::kInvalidArgument,
               {"tensor 'w' has rows of 48", "Q4_0 blocks of 32"});
}

TEST(GgufFileTest, RefusesMisplacedTensorData) {
  GgufBuilder misaligned;
  misaligned.Tensor("w", 0, {4}, RandomBytes(16, 8), /*offset=*/4);
  ExpectBroken(misaligned.Build(), Code::kInvalidArgument, {"tensor 'w' has data offset 4", "alignment 32"});
  GgufBuilder past_end;
  past_end.Tensor("a", 0, {4}, RandomBytes(16, 9)).Tensor("b", 0, {4}, RandomBytes(16, 9), /*offset=*/1024);
  ExpectBroken(past_end.Build(), Code::kDataLoss, {"tensor 'b' data", "runs past the end of the file"});
  GgufBuilder far;
  far.Tensor("far", 0, {4}, RandomBytes(16, 9), /*offset=*/~uint64_t{0} - 31);
  ExpectBroken(far.Build(), Code::kDataLoss, {"tensor 'far' data"});
}

TEST(GgufFileTest, RefusesDuplicatesAndBadValues) {
  GgufBuilder key_twice;
  key_twice.U32("k", 1).U32("k", 2);
  ExpectBroken(key_twice.Build(), Code::kInvalidArgument, {"metadata key 'k' appears twice"});
  GgufBuilder tensor_twice;
  tensor_twice.Tensor("w", 0, {1}, "abcd").Tensor("w", 0, {1}, "abcd");
  ExpectBroken(tensor_twice.Build(), Code::kInvalidArgument, {"tensor 'w' appears twice"});
  GgufBuilder bad_type;
  bad_type.Raw("weird", 13, Pod<uint32_t>(0));
  ExpectBroken(bad_type.Build(), Code::kInvalidArgument, {"metadata key 'weird' has unknown value type 13"});
  GgufBuilder bad_element;
  bad_element.Raw("arr", 9, Pod<uint32_t>(77) + Pod<uint64_t>(0));
  ExpectBroken(bad_element.Build(), Code::kInvalidArgument, {"'arr' is an array of unknown value type 77"});
  GgufBuilder bad_bool;
  bad_bool.Raw("flag", 7, Pod<uint8_t>(2));
  ExpectBroken(bad_bool.Build(), Code::kInvalidArgument, {"'flag' holds bool byte 2"});
  GgufBuilder deep;
  std::string nested = Pod<uint32_t>(4) + Pod<uint64_t>(0);
  for (int i = 0; i < 10; ++i) nested = Pod<uint32_t>(9) + Pod<uint64_t>(1) + nested;
  deep.Raw("deep", 9, nested);
  ExpectBroken(deep.Build(), Code::kInvalidArgument, {"'deep' nests arrays too deeply"});
  for (uint32_t alignment : {0u, 3u, 48u}) {
    GgufBuilder bad_alignment;
    bad_alignment.U32("general.alignment", alignment);
    ExpectBroken(bad_alignment.Build(), Code::kInvalidArgument,
                 {"'general.alignment' must be a power of two", Cat("got ", alignment)});
  }
  GgufBuilder string_alignment;
  string_alignment.Str("general.alignment", "32");
  ExpectBroken(string_alignment.Build(), Code::kInvalidArgument, {"general.alignment", "got string"});
}

}  // namespace
}  // namespace tessera
