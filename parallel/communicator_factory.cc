#include "parallel/communicator_factory.h"

#include <cstdlib>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "core/plugin.h"
#include "parallel/gloo_communicator.h"
#include "parallel/nccl_communicator.h"

namespace tessera {

#if TESSERA_HAVE_CUDA
namespace {

using CreateNcclFn = Communicator* (*)(const NcclOptions*, absl::Status*);

// libtessera_nccl.so's entry point ($TESSERA_NCCL_PLUGIN, else next to this executable, else the build's).
absl::StatusOr<CreateNcclFn> LoadNcclPlugin() {
  absl::StatusOr<void*> handle = LoadPlugin("TESSERA_NCCL_PLUGIN", "libtessera_nccl.so", TESSERA_NCCL_PLUGIN);
  if (!handle.ok()) {
    return absl::UnavailableError(absl::StrCat("the NCCL communicator: ", handle.status().message()));
  }
  absl::StatusOr<void*> create = PluginSymbol(*handle, "TesseraCreateNcclCommunicator");
  if (!create.ok()) return create.status();
  return reinterpret_cast<CreateNcclFn>(*create);
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
    gloo.store_token = options.store_token;
    gloo.store_tls = options.store_tls;
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
  nccl.store_token = options.store_token;
  nccl.store_tls = options.store_tls;
  nccl.timeout = options.timeout;
  nccl.stream = options.cuda_stream;
  const char* custom = std::getenv("TESSERA_CUSTOM_ALL_REDUCE");
  nccl.custom_all_reduce = custom == nullptr || std::string_view(custom) != "off";
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
