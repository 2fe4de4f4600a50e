#include "parallel/communicator_factory.h"

#include "parallel/gloo_communicator.h"
#if TESSERA_HAVE_CUDA
#include "parallel/nccl_communicator.h"
#endif

namespace tessera {

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
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm = NcclCommunicator::Create(nccl);
  if (!comm.ok()) return comm.status();
  return std::unique_ptr<Communicator>(std::move(comm).value());
#else
  return absl::UnavailableError("this build has no NCCL communicator (configure with -DTESSERA_CUDA=ON)");
#endif
}

}  // namespace tessera
