#include "core/units.h"

#include <gtest/gtest.h>

#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

TEST(UnitsTest, ParsesSizesInBinaryUnitsAndPlainBytes) {
  EXPECT_EQ(*ParseByteSize("1048576"), 1048576);
  EXPECT_EQ(*ParseByteSize("64MiB"), 64 << 20);
  EXPECT_EQ(*ParseByteSize("2GiB"), int64_t{2} << 30);
  EXPECT_EQ(*ParseByteSize("3K"), 3072);
  EXPECT_EQ(*ParseByteSize("0"), 0);
}

TEST(UnitsTest, RejectsMalformedSizesNamingTheText) {
  for (const char* bad : {"", "MiB", "-1", "1.5GiB", "12 MiB", "7XB", "99999999999999999999", "9999999TiB"}) {
    EXPECT_THAT(ParseByteSize(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(std::string("'") + bad + "'")))
        << bad;
  }
}

TEST(UnitsTest, ParsesDurations) {
  EXPECT_EQ(ParseDuration("500ms")->count(), 500);
  EXPECT_EQ(ParseDuration("5s")->count(), 5000);
  EXPECT_EQ(ParseDuration("2m")->count(), 120000);
  EXPECT_EQ(ParseDuration("1h")->count(), 3600000);
}

TEST(UnitsTest, RejectsMalformedDurationsNamingTheText) {
  for (const char* bad : {"", "5", "s", "-1s", "1.5s", "5 s", "3d"}) {
    EXPECT_THAT(ParseDuration(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(std::string("'") + bad + "'")))
        << bad;
  }
}

}  // namespace
}  // namespace tessera
