// Test helpers for absl::Status: EXPECT_OK, ASSERT_OK, ASSERT_OK_AND_ASSIGN and the StatusIs matcher.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/status_macros.h"

namespace tessera::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

// Matches a Status or StatusOr whose code equals (or matches) `code` and whose message matches
// `message_matcher`.
MATCHER_P2(StatusIs, code, message_matcher,
           "has status code " + ::testing::PrintToString(code) + " and a matching message") {
  const absl::Status& s = ::tessera::testing::GetStatus(arg);
  *result_listener << "status is " << s.ToString();
  return ::testing::Matches(::testing::MatcherCast<absl::StatusCode>(code))(s.code()) &&
         ::testing::Matches(::testing::MatcherCast<std::string>(message_matcher))(std::string(s.message()));
}

// Matches a Status or StatusOr whose code equals `code`, whatever its message.
inline auto StatusIs(absl::StatusCode code) { return StatusIs(code, ::testing::_); }

// Success for an OK Status / StatusOr, else a failure that prints the status. EXPECT_OK / ASSERT_OK use it so
// that their argument is evaluated once.
inline ::testing::AssertionResult IsOk(const absl::Status& s) {
  if (s.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << s;
}
template <typename T>
::testing::AssertionResult IsOk(const absl::StatusOr<T>& s) {
  return IsOk(s.status());
}

}  // namespace tessera::testing

#define EXPECT_OK(expr) EXPECT_TRUE(::tessera::testing::IsOk(expr))
#define ASSERT_OK(expr) ASSERT_TRUE(::tessera::testing::IsOk(expr))
#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  TESSERA_ASSERT_OK_AND_ASSIGN_IMPL(TESSERA_CONCAT(tessera_assert_statusor_, __LINE__), lhs, expr)
#define TESSERA_ASSERT_OK_AND_ASSIGN_IMPL(statusor, lhs, expr) \
  auto statusor = (expr);                                      \
  ASSERT_TRUE(statusor.ok()) << statusor.status();             \
  lhs = std::move(statusor).value()
