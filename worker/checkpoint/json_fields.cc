#include "worker/checkpoint/json_fields.h"

#include <cerrno>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/status_macros.h"
#include "core/str_cat.h"

namespace tessera::json_internal {

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::ErrnoToStatus(errno, Cat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(Cat(path, ": read failed"));
  return std::move(ss).str();
}

absl::Status WriteTextFile(const std::string& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::ErrnoToStatus(errno, Cat(path, ": cannot create"));
  out << text;
  out.close();
  if (!out) return absl::ErrnoToStatus(errno, Cat(path, ": write failed"));
  return absl::OkStatus();
}

absl::StatusOr<Json> ParseJson(std::string_view text, std::string_view source) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(Cat(source, ": not valid JSON: ", e.what()));
  }
}

bool JsonFields::Has(std::string_view field) const { return Find(field) != nullptr; }

const Json* JsonFields::Find(std::string_view field) const {
  auto it = object_.find(field);
  if (it == object_.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::Status JsonFields::Error(std::string_view message) const {
  return absl::InvalidArgumentError(Cat(source_, ": ", message));
}

absl::Status JsonFields::WrongType(std::string_view field, std::string_view expected,
                                   const Json& value) const {
  return Error(Cat(prefix_, field, " must be ", expected, ", got ", value.dump()));
}

absl::StatusOr<int> JsonFields::ToInt(std::string_view field, const Json& value) const {
  if (!value.is_number_integer()) return WrongType(field, "an integer", value);
  if (value.is_number_unsigned()) {
    if (value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
      return Error(Cat(prefix_, field, "=", value.dump(), " is out of range"));
    }
    return static_cast<int>(value.get<uint64_t>());
  }
  int64_t v = value.get<int64_t>();
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) {
    return Error(Cat(prefix_, field, "=", v, " is out of range"));
  }
  return static_cast<int>(v);
}

absl::Status JsonFields::Int(std::string_view field, int& out, bool required) const {
  const Json* v = Find(field);
  if (v == nullptr)
    return required ? Error(Cat("missing required field ", prefix_, field)) : absl::OkStatus();
  ASSIGN_OR_RETURN(out, ToInt(field, *v));
  return absl::OkStatus();
}

absl::Status JsonFields::OptionalInt(std::string_view field, std::optional<int>& out) const {
  const Json* v = Find(field);
  if (v == nullptr) return absl::OkStatus();
  ASSIGN_OR_RETURN(out, ToInt(field, *v));
  return absl::OkStatus();
}

absl::Status JsonFields::Double(std::string_view field, double& out, bool required) const {
  const Json* v = Find(field);
  if (v == nullptr)
    return required ? Error(Cat("missing required field ", prefix_, field)) : absl::OkStatus();
  if (!v->is_number()) return WrongType(field, "a number", *v);
  out = v->get<double>();
  return absl::OkStatus();
}

absl::Status JsonFields::OptionalFloat(std::string_view field, std::optional<float>& out) const {
  const Json* v = Find(field);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_number()) return WrongType(field, "a number", *v);
  out = static_cast<float>(v->get<double>());
  return absl::OkStatus();
}

absl::Status JsonFields::Bool(std::string_view field, bool& out) const {
  const Json* v = Find(field);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_boolean()) return WrongType(field, "a boolean", *v);
  out = v->get<bool>();
  return absl::OkStatus();
}

absl::Status JsonFields::String(std::string_view field, std::string& out, bool required) const {
  const Json* v = Find(field);
  if (v == nullptr)
    return required ? Error(Cat("missing required field ", prefix_, field)) : absl::OkStatus();
  if (!v->is_string()) return WrongType(field, "a string", *v);
  out = v->get<std::string>();
  return absl::OkStatus();
}

absl::Status JsonFields::IntOrIntList(std::string_view field, std::vector<int>& out) const {
  const Json* v = Find(field);
  if (v == nullptr) return absl::OkStatus();
  out.clear();
  if (v->is_array()) {
    for (const Json& e : *v) {
      ASSIGN_OR_RETURN(int id, ToInt(field, e));
      out.push_back(id);
    }
    return absl::OkStatus();
  }
  if (!v->is_number_integer()) return WrongType(field, "an integer or a list of integers", *v);
  ASSIGN_OR_RETURN(int id, ToInt(field, *v));
  out.push_back(id);
  return absl::OkStatus();
}

}  // namespace tessera::json_internal
