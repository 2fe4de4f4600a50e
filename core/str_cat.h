// Cat(...) is absl::StrCat that also takes std::string_view. Debian builds
// Abseil 20220623 with its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0), which std::string_view
// does not convert to.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/str_cat.h"

namespace tessera {

template <typename T>
decltype(auto) ToAlphaNum(const T& value) {
  if constexpr (std::is_same_v<T, std::string_view>) {
    return absl::string_view(value.data(), value.size());
  } else {
    return (value);
  }
}

template <typename... Args>
std::string Cat(const Args&... args) {
  return absl::StrCat(ToAlphaNum(args)...);
}

}  // namespace tessera
