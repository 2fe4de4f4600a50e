#include "coordinator/chat_template/json_dump.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "coordinator/chat_template/py_text.h"
#include "core/status_macros.h"

namespace tessera::jinja {
namespace {

void AppendJsonString(const std::string& text, bool ensure_ascii, std::string& out) {
  out += '"';
  char buf[16];
  for (char32_t c : DecodeUtf8(text)) {
    switch (c) {
      case '"':
        out += "\\\"";
        continue;
      case '\\':
        out += "\\\\";
        continue;
      case '\n':
        out += "\\n";
        continue;
      case '\r':
        out += "\\r";
        continue;
      case '\t':
        out += "\\t";
        continue;
      case '\b':
        out += "\\b";
        continue;
      case '\f':
        out += "\\f";
        continue;
      default:
        break;
    }
    if (c < 0x20 || (ensure_ascii && c >= 0x7F)) {
      if (c >= 0x10000) {
        const char32_t v = c - 0x10000;
        std::snprintf(buf, sizeof(buf), "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 | (v >> 10)),
                      static_cast<unsigned>(0xDC00 | (v & 0x3FF)));
      } else {
        std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
      }
      out += buf;
    } else {
      AppendUtf8(c, out);
    }
  }
  out += '"';
}

class Dumper {
 public:
  explicit Dumper(const JsonDumpOptions& options)
      : options_(options),
        item_separator_(options.item_separator ? *options.item_separator : (options.indent ? "," : ", ")) {}

  absl::Status Dump(const Value& v, int level, std::string& out) {
    switch (v.kind()) {
      case Value::Kind::kNone:
        out += "null";
        return absl::OkStatus();
      case Value::Kind::kBool:
        out += v.as_bool() ? "true" : "false";
        return absl::OkStatus();
      case Value::Kind::kInt:
        out += std::to_string(v.as_int());
        return absl::OkStatus();
      case Value::Kind::kFloat: {
        const double d = v.as_number();
        if (std::isnan(d)) {
          out += "NaN";
        } else if (std::isinf(d)) {
          out += d < 0 ? "-Infinity" : "Infinity";
        } else {
          out += PyFloatRepr(d);
        }
        return absl::OkStatus();
      }
      case Value::Kind::kString:
        AppendJsonString(v.as_string(), options_.ensure_ascii, out);
        return absl::OkStatus();
      case Value::Kind::kList:
        if (!v.list().is_iterator) return DumpList(v.list(), level, out);
        break;
      case Value::Kind::kDict:
        return DumpDict(v.dict(), level, out);
      default:
        break;
    }
    return absl::InvalidArgumentError(
        absl::StrCat("Object of type ", TypeName(v), " is not JSON serializable"));
  }

 private:
  void NewLine(int level, std::string& out) {
    out += '\n';
    for (int i = 0; i < level; ++i) out += *options_.indent;
  }

  absl::Status DumpList(const ListData& list, int level, std::string& out) {
    if (list.items.empty()) {
      out += "[]";
      return absl::OkStatus();
    }
    out += '[';
    for (size_t i = 0; i < list.items.size(); ++i) {
      if (i > 0) out += item_separator_;
      if (options_.indent) NewLine(level + 1, out);
      RETURN_IF_ERROR(Dump(list.items[i], level + 1, out));
    }
    if (options_.indent) NewLine(level, out);
    out += ']';
    return absl::OkStatus();
  }

  absl::Status DumpDict(const DictData& dict, int level, std::string& out) {
    if (dict.items.empty()) {
      out += "{}";
      return absl::OkStatus();
    }
    std::vector<const std::pair<std::string, Value>*> items;
    for (const auto& item : dict.items) items.push_back(&item);
    if (options_.sort_keys) {
      std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
    }
    out += '{';
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0) out += item_separator_;
      if (options_.indent) NewLine(level + 1, out);
      AppendJsonString(items[i]->first, options_.ensure_ascii, out);
      out += options_.key_separator;
      RETURN_IF_ERROR(Dump(items[i]->second, level + 1, out));
    }
    if (options_.indent) NewLine(level, out);
    out += '}';
    return absl::OkStatus();
  }

  const JsonDumpOptions& options_;
  std::string item_separator_;
};

}  // namespace

absl::StatusOr<std::string> JsonDumps(const Value& value, const JsonDumpOptions& options) {
  std::string out;
  Dumper dumper(options);
  RETURN_IF_ERROR(dumper.Dump(value, 0, out));
  return out;
}

}  // namespace tessera::jinja
