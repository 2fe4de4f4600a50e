// StreamJournalStore: resumable streams by id, expired a window after their client left or their end.
#include "coordinator/stream_journal_store.h"

#include <vector>

#include "absl/time/clock.h"
#include "core/str_cat.h"

namespace tessera {

StreamJournalStore::StreamJournalStore(Engine& engine, StreamJournalStoreOptions options)
    : engine_(engine), options_(std::move(options)) {
  if (options_.sweep_interval > absl::ZeroDuration()) {
    sweeper_ = std::thread([this] {
      while (true) {
        {
          absl::MutexLock lock(&mu_);
          if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.sweep_interval)) return;
        }
        Sweep(options_.clock());
      }
    });
  }
}

StreamJournalStore::~StreamJournalStore() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (sweeper_.joinable()) sweeper_.join();
}

absl::StatusOr<std::shared_ptr<StreamJournal>> StreamJournalStore::Create(
    std::shared_ptr<const Tokenizer> tokenizer, StreamInfo info) {
  const std::string id = info.prepared.request.id;
  auto journal = std::make_shared<StreamJournal>(std::move(tokenizer), std::move(info), options_.clock);
  absl::MutexLock lock(&mu_);
  if (!journals_.emplace(id, journal).second) {
    return absl::AlreadyExistsError(Cat("request_id ", id, " belongs to a resumable stream kept for ",
                                        absl::FormatDuration(options_.window), " after its end"));
  }
  return journal;
}

void StreamJournalStore::Remove(const std::string& id) {
  absl::MutexLock lock(&mu_);
  journals_.erase(id);
}

absl::StatusOr<std::shared_ptr<StreamJournal>> StreamJournalStore::Find(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = journals_.find(id);
  if (it == journals_.end()) {
    return absl::NotFoundError(
        Cat("request_id ", id, " is not a resumable stream kept here (unknown, or its --resume-window of ",
            absl::FormatDuration(options_.window), " passed)"));
  }
  return it->second;
}

int StreamJournalStore::Sweep(absl::Time now) {
  std::vector<std::shared_ptr<StreamJournal>> expired;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = journals_.begin(); it != journals_.end();) {
      const std::optional<absl::Time> at = it->second->ExpiresAt(options_.window);
      if (at.has_value() && *at <= now) {
        expired.push_back(std::move(it->second));
        it = journals_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const std::shared_ptr<StreamJournal>& journal : expired) {
    if (!journal->done()) (void)engine_.Cancel(journal->id());  // NOT_FOUND: it ended meanwhile
  }
  return static_cast<int>(expired.size());
}

size_t StreamJournalStore::size() const {
  absl::MutexLock lock(&mu_);
  return journals_.size();
}

size_t StreamJournalStore::MemoryBytes() const {
  absl::MutexLock lock(&mu_);
  size_t bytes = 0;
  for (const auto& [id, journal] : journals_) bytes += journal->MemoryBytes();
  return bytes;
}

}  // namespace tessera
