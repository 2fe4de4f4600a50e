// StreamJournalStore: the coordinator's resumable streams by request id, for `--resume-window`. A journal is
// kept while a client reads it and for the window after its client went away or its request ended (whichever
// is later); then a request still running is cancelled in the engine and the journal is dropped.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/engine.h"
#include "coordinator/stream_journal.h"

namespace tessera {

struct StreamJournalStoreOptions {
  absl::Duration window = absl::Seconds(60);  // > 0
  std::function<absl::Time()> clock = absl::Now;
  // How often a background thread drops expired journals; zero: no thread (tests call Sweep).
  absl::Duration sweep_interval = absl::Seconds(1);
};

// Thread-safe. Lock order: the store's mutex, then a journal's.
class StreamJournalStore {
 public:
  // `engine` must outlive the store (expired running requests are cancelled in it).
  StreamJournalStore(Engine& engine, StreamJournalStoreOptions options);
  ~StreamJournalStore();  // stops the sweeping thread; running requests are left to the engine

  // A new journal for `info` (its request id set), kept under that id. ALREADY_EXISTS when a journal with
  // that id is kept (naming it and the window).
  [[nodiscard]] absl::StatusOr<std::shared_ptr<StreamJournal>> Create(
      std::shared_ptr<const Tokenizer> tokenizer, StreamInfo info);
  // Forgets a journal whose request could not be submitted.
  void Remove(const std::string& id);
  // The journal kept under `id`. NOT_FOUND (naming the id and the window) when none is: never made resumable,
  // or expired.
  [[nodiscard]] absl::StatusOr<std::shared_ptr<StreamJournal>> Find(const std::string& id) const;

  // Drops the journals expired at `now` and cancels their requests that still run. Returns how many it
  // dropped.
  int Sweep(absl::Time now);

  absl::Duration window() const { return options_.window; }
  // Journals kept, and the bytes they hold (StreamJournal::MemoryBytes).
  size_t size() const;
  size_t MemoryBytes() const;

 private:
  Engine& engine_;
  const StreamJournalStoreOptions options_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<StreamJournal>> journals_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread sweeper_;  // joinable when sweep_interval > 0
};

}  // namespace tessera
