#include "core/plugin.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "core/str_cat.h"

namespace tessera {
namespace {

// The plugins this process has loaded (or failed to load), by file name. Never destroyed.
struct LoadedPlugins {
  absl::Mutex mu;
  std::map<std::string, absl::StatusOr<void*>> by_file_name ABSL_GUARDED_BY(mu);
};

LoadedPlugins& Loaded() {
  static LoadedPlugins* loaded = new LoadedPlugins;
  return *loaded;
}

}  // namespace

std::string ExecutablePath() {
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  return n > 0 ? std::string(path, n) : std::string();
}

absl::StatusOr<void*> LoadPlugin(const char* env_var, const char* file_name, const char* build_path) {
  LoadedPlugins& loaded = Loaded();
  {
    absl::MutexLock lock(&loaded.mu);
    auto it = loaded.by_file_name.find(file_name);
    if (it != loaded.by_file_name.end()) return it->second;
  }
  // dlopen runs the plugin's initializers: not under the lock. Two threads racing here both dlopen the same
  // file, which gives both the same handle; the first answer recorded is the one every later call gets.
  std::string path = build_path;
  if (const char* env = std::getenv(env_var); env != nullptr && *env != 0) {
    path = env;
  } else if (std::string exe = ExecutablePath(); !exe.empty()) {
    const std::string beside = exe.substr(0, exe.rfind('/') + 1) + file_name;
    if (access(beside.c_str(), R_OK) == 0) path = beside;
  }
  absl::StatusOr<void*> handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (*handle == nullptr) handle = absl::UnavailableError(Cat("cannot load ", path, ": ", dlerror()));
  absl::MutexLock lock(&loaded.mu);
  return loaded.by_file_name.emplace(file_name, std::move(handle)).first->second;
}

absl::StatusOr<void*> PluginSymbol(void* handle, const char* name) {
  void* symbol = dlsym(handle, name);
  if (symbol == nullptr) return absl::UnavailableError(Cat("the plugin has no entry point ", name));
  return symbol;
}

}  // namespace tessera
