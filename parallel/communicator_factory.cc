#include "parallel/communicator_factory.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "parallel/gloo_communicator.h"
#include "parallel/nccl_communicator.h"

namespace tessera {

#if TESSERA_HAVE_CUDA
namespace {

using CreateNcclFn = Communicator* (*)(const NcclOptions*, absl::Status*);

// libtessera_nccl.so: $TESSERA_NCCL_PLUGIN, else next to this executable, else where the build wrote it.
// Loaded once; errors: UNAVAILABLE naming the file and dlerror's reason.
absl::StatusOr<CreateNcclFn> LoadNcclPlugin() {
  static std::once_flag once;
  static absl::StatusOr<CreateNcclFn> create = absl::UnknownError("unset");
  std::call_once(once, [] {
    std::string path = TESSERA_NCCL_PLUGIN;
    if (const char* env = std::getenv("TESSERA_NCCL_PLUGIN"); env != nullptr && *env != 0) {
      path = env;
    } else {
      char exe[PATH_MAX];
      const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
      if (n > 0) {
        std::string beside(exe, n);
        beside = beside.substr(0, beside.rfind('/') + 1) + "libtessera_nccl.so";
        if (access(beside.c_str(), R_OK) == 0) path = beside;
      }
    }
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      create =
          absl::UnavailableError(absl::StrCat("cannot load the NCCL communicator ", path, ": ", dlerror()));
      return;
    }
    auto fn = reinterpret_cast<CreateNcclFn>(dlsym(handle, "TesseraCreateNcclCommunicator"));
    if (fn == nullptr) {
      create = absl::UnavailableError(absl::StrCat(path, " is not the NCCL plugin (no entry point)"));
      return;
    }
    create = fn;
  });
  return create;
}

}  // namespace
#endif

absl::StatusOr<std::unique_ptr<Communicator>> JoinGroup(CommunicatorKind kind, const GroupOptions& options) {
  if (kind == CommunicatorKind::kGloo) {
    GlooOptions gloo;
    gloo.group = options.group;
    gloo.rank = options.rank;
    gloo.size = options.size;
    gloo.store_address = options.store_address;
    gloo.hostname = options.hostname;
    gloo.timeout = options.timeout;
    absl::StatusOr<std::unique_ptr<GlooCommunicator>> comm = GlooCommunicator::Create(gloo);
    if (!comm.ok()) return comm.status();
    return std::unique_ptr<Communicator>(std::move(comm).value());
  }
#if TESSERA_HAVE_CUDA
  NcclOptions nccl;
  nccl.group = options.group;
  nccl.rank = options.rank;
  nccl.size = options.size;
  nccl.device = options.device_index;
  nccl.store_address = options.store_address;
  nccl.timeout = options.timeout;
  absl::StatusOr<CreateNcclFn> create = LoadNcclPlugin();
  if (!create.ok()) return create.status();
  absl::Status error;
  std::unique_ptr<Communicator> comm((*create)(&nccl, &error));
  if (comm == nullptr) return error;
  return comm;
#else
  return absl::UnavailableError("this build has no NCCL communicator (configure with -DTESSERA_CUDA=ON)");
#endif
}

}  // namespace tessera
