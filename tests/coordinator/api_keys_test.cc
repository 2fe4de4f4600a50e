// ApiKeys: the --api-key-file parser on good and malformed files, and admission: bearer keys, the request
// rate, the token rate and requests in flight, on a fake clock.
#include "coordinator/api_keys.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

TEST(ApiKeysTest, ParsesKeysWithTheirLimitsSkippingCommentsAndBlankLines) {
  ASSERT_OK_AND_ASSIGN(
      auto keys, ApiKeys::Parse("# keys\n\nsk-alpha\nsk-beta rpm=2 tpm=100\tstreams=1\r\n  \n", "keys.txt"));
  EXPECT_EQ(keys->size(), 2u);
  EXPECT_OK(keys->Admit("Bearer sk-alpha", kT0).status());
  ASSERT_OK_AND_ASSIGN(auto beta, keys->Admit("Bearer sk-beta", kT0));
  EXPECT_EQ(beta->line(), 4);
}

TEST(ApiKeysTest, MalformedFilesAreRefusedNamingTheLine) {
  struct Case {
    const char* text;
    const char* message;
  };
  for (const Case& c :
       {Case{"", "keys.txt: holds no API key"}, Case{"# only a comment\n", "holds no API key"},
        Case{"k1 rpm\n", "keys.txt:1: field 'rpm' is not rpm=N, tpm=N or streams=N"},
        Case{"k1\nk2 burst=3\n", "keys.txt:2: field 'burst'"},
        Case{"k1 rpm=ten\n", "keys.txt:1: rpm='ten' is not a non-negative integer"},
        Case{"k1 rpm=-1\n", "rpm='-1' is not a non-negative integer"}, Case{"k1 tpm=\n", "tpm='' is not"},
        Case{"k1 rpm=99999999999999999999\n", "is not a non-negative integer"},
        Case{"k1 rpm=1 rpm=2\n", "keys.txt:1: rpm is given twice"},
        Case{"k1\nk2\nk1\n", "keys.txt:3: the key of line 1 again"}}) {
    EXPECT_THAT(ApiKeys::Parse(c.text, "keys.txt"),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)))
        << c.text;
  }
  EXPECT_THAT(ApiKeys::Load("/nonexistent/keys.txt"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/keys.txt")));
}

TEST(ApiKeysTest, OnlyABearerKeyFromTheFileIsAdmittedAndTheMessageNeverRepeatsIt) {
  ASSERT_OK_AND_ASSIGN(auto keys, ApiKeys::Parse("sk-alpha\n", "k"));
  EXPECT_THAT(keys->Admit("", kT0),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("API key is required")));
  EXPECT_THAT(keys->Admit("sk-alpha", kT0),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("Bearer")));
  EXPECT_THAT(keys->Admit("Bearer sk-alph", kT0),
              StatusIs(absl::StatusCode::kUnauthenticated, Not(HasSubstr("sk-alph"))));
  EXPECT_THAT(keys->Admit("Bearer sk-alphaa", kT0), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(keys->Admit("Bearer ", kT0), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_OK(keys->Admit("Bearer sk-alpha", kT0).status());
}

TEST(ApiKeysTest, TheRequestRateIsAPerKeySlidingMinute) {
  ASSERT_OK_AND_ASSIGN(auto keys, ApiKeys::Parse("a rpm=2\nb\n", "k"));
  EXPECT_OK(keys->Admit("Bearer a", kT0).status());
  EXPECT_OK(keys->Admit("Bearer a", kT0 + absl::Seconds(10)).status());
  EXPECT_THAT(keys->Admit("Bearer a", kT0 + absl::Seconds(20)),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("(rpm=2)")));
  EXPECT_OK(keys->Admit("Bearer b", kT0 + absl::Seconds(20)).status());  // another key is not affected
  EXPECT_OK(keys->Admit("Bearer a", kT0 + absl::Seconds(61)).status());  // the first has left the minute
}

TEST(ApiKeysTest, StreamsCountRequestsInFlightAndTokensAreChargedWhenTheyEnd) {
  ASSERT_OK_AND_ASSIGN(auto keys, ApiKeys::Parse("a streams=1 tpm=100\n", "k"));
  {
    ASSERT_OK_AND_ASSIGN(auto first, keys->Admit("Bearer a", kT0));
    EXPECT_THAT(keys->Admit("Bearer a", kT0),
                StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("(streams=1)")));
    first->Charge(60, kT0);
  }
  {
    ASSERT_OK_AND_ASSIGN(auto second, keys->Admit("Bearer a", kT0 + absl::Seconds(1)));
    second->Charge(40, kT0 + absl::Seconds(1));
  }
  EXPECT_THAT(keys->Admit("Bearer a", kT0 + absl::Seconds(2)),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("used 100 tokens within the last minute, its limit (tpm=100)")));
  EXPECT_OK(keys->Admit("Bearer a", kT0 + absl::Seconds(61)).status());  // 60 left the minute
}

}  // namespace
}  // namespace tessera
