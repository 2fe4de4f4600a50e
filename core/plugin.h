// Shared libraries loaded at run time (the CUDA backend, the NCCL communicator) and where this executable is.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace tessera {

// The absolute path of the running executable (/proc/self/exe), or "" when it cannot be read.
std::string ExecutablePath();

// dlopens a plugin once per process and returns its handle (never closed). It is looked for at $`env_var`
// when set, else as `file_name` next to this executable, else at `build_path` (where the build wrote it).
// Errors: UNAVAILABLE naming the file and dlerror's reason. The first answer for a file name (handle or
// error) is the one every later call gets. Thread-safe.
[[nodiscard]] absl::StatusOr<void*> LoadPlugin(const char* env_var, const char* file_name,
                                               const char* build_path);

// The symbol `name` of a loaded plugin. Errors: UNAVAILABLE naming the symbol.
[[nodiscard]] absl::StatusOr<void*> PluginSymbol(void* handle, const char* name);

}  // namespace tessera
