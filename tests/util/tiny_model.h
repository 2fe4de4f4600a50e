// The random "tiny" model that worker tests share: made once per test suite (SetUpTestSuite) in the test temp
// directory and removed after it (TearDownTestSuite).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "worker/checkpoint/make_model.h"

namespace tessera::testing {

// Makes the tiny preset with `seed` in a directory named after `suite` and this process; returns its path (the
// test fails when it cannot be made).
inline std::string MakeTinyModel(const std::string& suite, uint64_t seed) {
  const std::string dir = ::testing::TempDir() + "/" + suite + "_tiny_" + std::to_string(getpid());
  MakeModelOptions options;
  options.preset = "tiny";
  options.out_dir = dir;
  options.seed = seed;
  const absl::Status s = MakeModel(options);
  EXPECT_TRUE(s.ok()) << s;
  return dir;
}

inline void RemoveTinyModel(const std::string& dir) { std::filesystem::remove_all(dir); }

}  // namespace tessera::testing
