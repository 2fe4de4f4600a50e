#include "core/plugin.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <map>
#include <mutex>

#include "core/str_cat.h"

namespace tessera {

std::string ExecutablePath() {
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  return n > 0 ? std::string(path, n) : std::string();
}

absl::StatusOr<void*> LoadPlugin(const char* env_var, const char* file_name, const char* build_path) {
  static std::mutex mu;
  static std::map<std::string, absl::StatusOr<void*>> loaded;  // by file name
  std::lock_guard<std::mutex> lock(mu);
  auto it = loaded.find(file_name);
  if (it != loaded.end()) return it->second;
  std::string path = build_path;
  if (const char* env = std::getenv(env_var); env != nullptr && *env != 0) {
    path = env;
  } else if (std::string exe = ExecutablePath(); !exe.empty()) {
    const std::string beside = exe.substr(0, exe.rfind('/') + 1) + file_name;
    if (access(beside.c_str(), R_OK) == 0) path = beside;
  }
  absl::StatusOr<void*> handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (*handle == nullptr) handle = absl::UnavailableError(Cat("cannot load ", path, ": ", dlerror()));
  loaded.emplace(file_name, handle);
  return handle;
}

absl::StatusOr<void*> PluginSymbol(void* handle, const char* name) {
  void* symbol = dlsym(handle, name);
  if (symbol == nullptr) return absl::UnavailableError(Cat("the plugin has no entry point ", name));
  return symbol;
}

}  // namespace tessera
