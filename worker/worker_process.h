// The worker process's transport (`tessera worker --coordinator HOST:PORT`): registers with the coordinator
// (retrying until it answers), holds the Session stream, feeds each coordinator message to a WorkerShard in
// order and writes its replies, and sends heartbeats.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tls.h"
#include "kernels/backend.h"

namespace tessera {

struct WorkerOptions {
  std::string coordinator;  // HOST:PORT of the coordinator's Control service
  int requested_rank = -1;  // -1: any free rank (see RequestedRankFromFlagOrEnv)
  DeviceKind device = DeviceKind::kCpu;
  int device_index = -1;                  // CUDA: the GPU; -1 = the rank modulo the GPUs this process sees
  std::string listen_host = "127.0.0.1";  // the address this worker's Gloo connections listen on
  // The coordinator's --join-token (sent as metadata kJoinTokenMetadata on Register and Session); empty: none.
  std::string join_token;
  // Mutual TLS with the coordinator's control port (--control-ca / --control-cert / --control-key): this
  // worker's certificate and key, and the CA the coordinator's certificate must chain to; also the rendezvous
  // store's channel. Empty: plaintext.
  TlsFiles control_tls;
  // How long to keep trying to register while the coordinator is unreachable (UNAVAILABLE).
  std::chrono::milliseconds connect_timeout{300000};
  std::ostream* log =
      nullptr;  // one line per event (registered, each setup phase, lost coordinator) when set
  // Whether the process may end itself with _exit(1) when the coordinator is lost and the current message
  // (e.g. a step stuck in a collective whose peer is gone) has not finished within another heartbeat timeout.
  // Tests that run RunWorker in-process turn it off.
  bool exit_when_stuck = true;
  // The most coordinator messages waiting to be handled (>= 1). When that many wait, the reader stops reading
  // the stream until the handling thread takes one (gRPC's flow control then holds the coordinator back);
  // heartbeats are never queued.
  int max_queued_messages = 64;

  // For tests. When set, the deepest the queue has been (raised by the reader thread).
  std::atomic<int>* max_queue_depth_seen = nullptr;
  // For tests. When set, runs on the handling thread, holding no lock, before each message is handled.
  std::function<void()> before_handle;
};

// Runs one worker until the coordinator says shutdown (OK) or is lost. Behaviour:
// - Register, retrying with exponential backoff (100 ms doubling to 2 s) while the coordinator is
// UNAVAILABLE,
//   for at most connect_timeout; then UNAVAILABLE naming the address. Any other Register error
//   (ALREADY_EXISTS, OUT_OF_RANGE, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ...) is returned at once with its
//   code.
// - Open the Session stream with `open` (hostname, pid); a reader thread queues coordinator messages (at most
//   max_queued_messages; when full it reads no more until one is taken), this thread handles them in order
//   (WorkerShard) and writes the replies, a heartbeat thread sends a Heartbeat every heartbeat_interval_ms
//   (RegisterResponse; 1000 when 0).
// - Shutdown: closes the stream (WritesDone, then waits at most 2 s for the coordinator to end it before
//   cancelling) and returns OK.
// - The stream ending, a failed write, or nothing heard from the coordinator (messages or heartbeats) for
//   heartbeat_timeout_ms (RegisterResponse; 10 intervals when 0): returns UNAVAILABLE "lost the coordinator
//   at ADDR (...)" as soon as the message being handled is done. If that message is still running another
//   heartbeat_timeout later (stuck in a collective with a dead peer), and exit_when_stuck is set, the
//   watchdog logs one line and calls _exit(1), so that a worker never outlives its coordinator. While the
//   queue is full and the connection is up, the coordinator counts as heard (this worker is busy, not the
//   coordinator silent).
// - INVALID_ARGUMENT, before anything else, for an empty coordinator or max_queued_messages < 1.
// Installs no signal handlers. Thread-safe to call from one thread at a time.
[[nodiscard]] absl::Status RunWorker(const WorkerOptions& options);

// The rank to request: `flag_rank` when >= 0 (the --rank flag), else the LeaderWorkerSet index in
// `lws_worker_index` (the LWS_WORKER_INDEX variable; null or empty = unset), else -1 (any). Errors:
// INVALID_ARGUMENT naming LWS_WORKER_INDEX and its value when it is not a non-negative integer.
[[nodiscard]] absl::StatusOr<int> RequestedRankFromFlagOrEnv(int flag_rank, const char* lws_worker_index);
// The same with the process's LWS_WORKER_INDEX.
[[nodiscard]] absl::StatusOr<int> RequestedRankFromFlagOrEnv(int flag_rank);

}  // namespace tessera
