#include "worker/checkpoint/safetensors_writer.h"

#include <cerrno>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "core/status_macros.h"
#include "core/str_cat.h"
#include "worker/checkpoint/safetensors.h"

namespace tessera {

namespace {

// The shape as stored: a block type's last dimension in bytes.
std::vector<int64_t> StoredShape(const TensorHeaderEntry& e) {
  std::vector<int64_t> shape = e.shape;
  if (IsQuantized(e.dtype) && !shape.empty()) shape.back() = DTypeBytes(e.dtype, shape.back());
  return shape;
}

uint64_t EntryBytes(const TensorHeaderEntry& e) {
  uint64_t n = IsQuantized(e.dtype) ? 1 : static_cast<uint64_t>(DTypeSize(e.dtype));
  for (int64_t d : StoredShape(e)) n *= static_cast<uint64_t>(d);
  return n;
}

absl::Status CheckEntries(const std::string& path, const std::vector<TensorHeaderEntry>& entries) {
  std::set<std::string_view> names;
  for (const TensorHeaderEntry& e : entries) {
    if (e.name == "__metadata__" || !names.insert(e.name).second) {
      return absl::InvalidArgumentError(Cat(path, ": tensor name ", e.name, " is reserved or repeated"));
    }
    for (int64_t d : e.shape) {
      if (d < 0) return absl::InvalidArgumentError(Cat(path, ": tensor ", e.name, " has a negative dim"));
    }
    if (IsQuantized(e.dtype) && (e.shape.empty() || e.shape.back() % DTypeBlockElems(e.dtype) != 0)) {
      return absl::InvalidArgumentError(Cat(path, ": tensor ", e.name, " of ", DTypeName(e.dtype),
                                            " has shape ", e.shape.empty() ? "[]" : "a last dim",
                                            " that is not whole blocks"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string SafetensorsHeaderBytes(const std::vector<TensorHeaderEntry>& entries,
                                   const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  std::map<std::string, std::string> all_metadata = metadata;
  uint64_t offset = 0;
  for (const TensorHeaderEntry& e : entries) {
    uint64_t end = offset + EntryBytes(e);
    const bool quantized = IsQuantized(e.dtype);
    header[e.name] = {{"dtype", quantized ? std::string("U8") : std::string(DTypeName(e.dtype))},
                      {"shape", StoredShape(e)},
                      {"data_offsets", {offset, end}}};
    if (quantized) all_metadata[Cat(kQuantizedMetadataPrefix, e.name)] = std::string(DTypeName(e.dtype));
    offset = end;
  }
  if (!all_metadata.empty()) header["__metadata__"] = all_metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  return out + text;
}

absl::StatusOr<SafetensorsWriter> SafetensorsWriter::Create(
    const std::string& path, std::vector<TensorHeaderEntry> entries,
    const std::map<std::string, std::string>& metadata) {
  RETURN_IF_ERROR(CheckEntries(path, entries));
  SafetensorsWriter w;
  w.path_ = path;
  for (const TensorHeaderEntry& e : entries) w.total_bytes_ += EntryBytes(e);
  w.file_.reset(std::fopen(path.c_str(), "wb"));
  if (!w.file_) return absl::ErrnoToStatus(errno, Cat(path, ": cannot create"));
  std::string header = SafetensorsHeaderBytes(entries, metadata);
  if (std::fwrite(header.data(), 1, header.size(), w.file_.get()) != header.size()) {
    return absl::ErrnoToStatus(errno, Cat(path, ": cannot write the header"));
  }
  return w;
}

absl::Status SafetensorsWriter::Append(std::string_view bytes) {
  if (!file_) return absl::FailedPreconditionError(Cat(path_, ": writer is closed"));
  if (bytes.size() > total_bytes_ - written_bytes_) {
    return absl::InvalidArgumentError(
        Cat(path_, ": appending ", bytes.size(), " bytes past the ", total_bytes_, " the header announced"));
  }
  if (std::fwrite(bytes.data(), 1, bytes.size(), file_.get()) != bytes.size()) {
    return absl::ErrnoToStatus(errno, Cat(path_, ": write failed"));
  }
  written_bytes_ += bytes.size();
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  if (!file_) return absl::FailedPreconditionError(Cat(path_, ": writer is closed"));
  if (written_bytes_ != total_bytes_) {
    return absl::InvalidArgumentError(
        Cat(path_, ": ", written_bytes_, " data bytes written but the header announced ", total_bytes_));
  }
  std::FILE* f = file_.release();
  if (std::fclose(f) != 0) return absl::ErrnoToStatus(errno, Cat(path_, ": close failed"));
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorData>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<TensorHeaderEntry> entries;
  for (const TensorData& t : tensors) {
    TensorHeaderEntry e{t.name, t.dtype, t.shape};
    if (!CheckEntries(path, {e}).ok() || EntryBytes(e) != t.bytes.size()) {
      return absl::InvalidArgumentError(Cat(path, ": tensor ", t.name, " has ", t.bytes.size(),
                                            " bytes, which does not match its shape and dtype"));
    }
    entries.push_back(std::move(e));
  }
  ASSIGN_OR_RETURN(SafetensorsWriter writer, SafetensorsWriter::Create(path, std::move(entries), metadata));
  for (const TensorData& t : tensors) RETURN_IF_ERROR(writer.Append(t.bytes));
  return writer.Finish();
}

}  // namespace tessera
