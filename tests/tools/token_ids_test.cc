#include "tools/token_ids.h"

#include <gtest/gtest.h>

#include "tests/util/status_matchers.h"

namespace tessera::tools {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

TEST(ParseTokenIdsTest, ParsesCommaSeparatedIds) {
  std::vector<int32_t> ids;
  ASSERT_OK(ParseTokenIds("128000,9906,11", ids));
  EXPECT_EQ(ids, (std::vector<int32_t>{128000, 9906, 11}));
}

TEST(ParseTokenIdsTest, NamesTheBadElement) {
  std::vector<int32_t> ids;
  EXPECT_THAT(ParseTokenIds("1,x2,3", ids), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'x2'")));
  EXPECT_THAT(ParseTokenIds("1,-4", ids), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'-4'")));
  EXPECT_THAT(ParseTokenIds("1,,3", ids), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("''")));
  EXPECT_THAT(ParseTokenIds("99999999999", ids), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace tessera::tools
