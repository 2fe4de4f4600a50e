// UTF-8 helpers: validation offsets, Rust-compatible lossy decoding, incomplete tails and the byte-level
// alphabet.
#include "coordinator/tokenizer/utf8.h"

#include <gtest/gtest.h>

namespace tessera::tokenizer_internal {
namespace {

std::string Lossy(std::string_view bytes) {
  std::string out;
  AppendUtf8Lossy(bytes, out);
  return out;
}

TEST(Utf8Test, FindsTheFirstInvalidByte) {
  EXPECT_EQ(FindInvalidUtf8("plain ascii"), std::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("é東😀"), std::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("ab\x80"), 2u);
  EXPECT_EQ(FindInvalidUtf8("é\xe0\x80\x80"), 2u);  // overlong
  EXPECT_EQ(FindInvalidUtf8("\xed\xbf\xbf"), 0u);   // surrogate
  EXPECT_EQ(FindInvalidUtf8("x\xf0\x9f\x98"), 1u);  // truncated
}

TEST(Utf8Test, ReplacesMaximalSubpartsLikeRust) {
  EXPECT_EQ(Lossy("a\xe2\x82"
                  "b"),
            "a\uFFFD"
            "b");                                          // one replacement for E2 82
  EXPECT_EQ(Lossy("\xf0\x9f\x98"), "\uFFFD");              // truncated at the end
  EXPECT_EQ(Lossy("\xc0\xaf"), "\uFFFD\uFFFD");            // C0 never starts a sequence
  EXPECT_EQ(Lossy("\xed\xa0\x80"), "\uFFFD\uFFFD\uFFFD");  // surrogates: ED then two lone continuations
  EXPECT_EQ(Lossy("\xf4\x90\x80\x80"), "\uFFFD\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(Lossy("\xe2\xe2\x82\xac"), "\uFFFD€");
  EXPECT_EQ(Lossy("ok"), "ok");
}

TEST(Utf8Test, MeasuresIncompleteTails) {
  EXPECT_EQ(IncompleteUtf8Suffix("ab"), 0u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\xe2"), 1u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\xe2\x82"), 2u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\xf0\x9f\x98"), 3u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\xe2\x82\xac"), 0u);  // complete
  EXPECT_EQ(IncompleteUtf8Suffix("\xe0\x80"), 0u);       // can never complete
  EXPECT_EQ(IncompleteUtf8Suffix("\x82"), 0u);
  EXPECT_EQ(IncompleteUtf8Suffix("\xf5"), 0u);
}

TEST(Utf8Test, MapsByteLevelCharacters) {
  std::string raw;
  ASSERT_TRUE(ByteLevelToBytes("Ġthe", raw));
  EXPECT_EQ(raw, " the");
  ASSERT_TRUE(ByteLevelToBytes("ĊĠĀ", raw));
  EXPECT_EQ(raw, std::string("\n \0", 3));
  EXPECT_FALSE(ByteLevelToBytes("a b", raw));  // a space is not a byte-level character
  EXPECT_FALSE(ByteLevelToBytes("東", raw));
  const ByteLevelTable& table = GetByteLevelTable();
  for (int b = 0; b < 256; ++b) EXPECT_EQ(table.char_to_byte[table.byte_to_char[b]], b);
}

}  // namespace
}  // namespace tessera::tokenizer_internal
