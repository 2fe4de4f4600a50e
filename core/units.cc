#include "core/units.h"

#include <cctype>
#include <limits>
#include <string>

#include "core/str_cat.h"

namespace tessera {
namespace {

// Splits "64MiB" into 64 and "MiB"; false when there is no leading integer.
bool SplitNumber(std::string_view text, int64_t& value, std::string_view& unit) {
  size_t i = 0;
  value = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    if (value > (std::numeric_limits<int64_t>::max() - 9) / 10) return false;
    value = value * 10 + (text[i] - '0');
    ++i;
  }
  unit = text.substr(i);
  return i > 0;
}

}  // namespace

absl::StatusOr<int64_t> ParseByteSize(std::string_view text) {
  int64_t value;
  std::string_view unit;
  if (SplitNumber(text, value, unit)) {
    int shift = -1;
    if (unit.empty() || unit == "B") shift = 0;
    if (unit == "KiB" || unit == "K") shift = 10;
    if (unit == "MiB" || unit == "M") shift = 20;
    if (unit == "GiB" || unit == "G") shift = 30;
    if (unit == "TiB" || unit == "T") shift = 40;
    if (shift >= 0 && value <= (std::numeric_limits<int64_t>::max() >> shift)) return value << shift;
  }
  return absl::InvalidArgumentError(
      Cat("size '", text, "' is not a non-negative integer with an optional unit (B, KiB, MiB, GiB, TiB)"));
}

absl::StatusOr<std::chrono::milliseconds> ParseDuration(std::string_view text) {
  int64_t value;
  std::string_view unit;
  if (SplitNumber(text, value, unit) && value < (int64_t{1} << 40)) {
    if (unit == "ms") return std::chrono::milliseconds(value);
    if (unit == "s") return std::chrono::milliseconds(value * 1000);
    if (unit == "m") return std::chrono::milliseconds(value * 60'000);
    if (unit == "h") return std::chrono::milliseconds(value * 3'600'000);
  }
  return absl::InvalidArgumentError(Cat("duration '", text, "' is not an integer with a unit (ms, s, m, h)"));
}

}  // namespace tessera
