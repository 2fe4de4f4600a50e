#include "core/log.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <vector>

#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

TEST(LogTest, ALineIsOneJsonObjectWithTheContextsFields) {
  const std::string line =
      FormatLogLine(LogLevel::kWarning, {.component = "worker", .rank = 3, .request_id = "r-1"},
                    "a \"quoted\"\nmessage\x01");
  ASSERT_EQ(line.back(), '\n');
  ASSERT_EQ(line.find('\n'), line.size() - 1);  // one line: the message's newline is escaped
  const nlohmann::json j = nlohmann::json::parse(line);
  EXPECT_EQ(j["level"], "warning");
  EXPECT_EQ(j["component"], "worker");
  EXPECT_EQ(j["rank"], 3);
  EXPECT_EQ(j["request_id"], "r-1");
  EXPECT_EQ(j["msg"], "a \"quoted\"\nmessage\x01");
  EXPECT_THAT(j["ts"].get<std::string>(), ::testing::MatchesRegex("....-..-..T..:..:..\\....Z"));
}

TEST(LogTest, FieldsThatAreUnsetAreLeftOut) {
  const nlohmann::json j = nlohmann::json::parse(FormatLogLine(LogLevel::kInfo, {}, "x"));
  EXPECT_FALSE(j.contains("component"));
  EXPECT_FALSE(j.contains("rank"));
  EXPECT_FALSE(j.contains("request_id"));
}

TEST(LogTest, LevelsBelowTheProcessLevelAreDropped) {
  std::ostringstream out;
  SetLogLevel(LogLevel::kWarning);
  WriteLog(out, LogLevel::kInfo, {}, "dropped");
  WriteLog(out, LogLevel::kError, {}, "kept");
  SetLogLevel(LogLevel::kInfo);
  EXPECT_THAT(out.str(), ::testing::Not(HasSubstr("dropped")));
  EXPECT_THAT(out.str(), HasSubstr("kept"));
}

TEST(LogTest, ParsesLevelsAndNamesABadOne) {
  EXPECT_EQ(*ParseLogLevel("DEBUG"), LogLevel::kDebug);
  EXPECT_EQ(*ParseLogLevel("warn"), LogLevel::kWarning);
  EXPECT_THAT(ParseLogLevel("loud"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'loud'")));
}

TEST(LogTest, LinesFromManyThreadsDoNotInterleave) {
  std::ostringstream out;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&out, t] {
      for (int i = 0; i < 200; ++i) WriteLog(out, LogLevel::kInfo, {.component = "t", .rank = t, .request_id = ""}, std::string(100, 'a' + t));
    });
  }
  for (auto& thread : threads) thread.join();
  std::istringstream lines(out.str());
  int count = 0;
  for (std::string line; std::getline(lines, line); ++count) {
    const nlohmann::json j = nlohmann::json::parse(line);
    EXPECT_EQ(j["msg"], std::string(100, 'a' + j["rank"].get<int>()));
  }
  EXPECT_EQ(count, 1600);
}

}  // namespace
}  // namespace tessera
