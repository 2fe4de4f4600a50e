#include "parallel/store_exchange.h"

#include <gloo/rendezvous/file_store.h>

#include <exception>
#include <filesystem>
#include <memory>

#include "core/str_cat.h"
#include "parallel/grpc_store.h"
#include "parallel/timeout_error.h"

namespace tessera {

absl::Status UseStore(const StoreLocation& location, std::string_view what,
                      const std::function<absl::Status(gloo::rendezvous::Store&)>& use) {
  const auto start = std::chrono::steady_clock::now();
  try {
    std::unique_ptr<gloo::rendezvous::Store> store;
    if (!location.address.empty()) {
      store = std::make_unique<GrpcStore>(location.address, location.timeout, location.token, location.tls);
    } else {
      std::filesystem::create_directories(location.dir);
      store = std::make_unique<gloo::rendezvous::FileStore>(location.dir);
    }
    return use(*store);
  } catch (const TimeoutError& e) {  // the rendezvous store's deadline
    return absl::DeadlineExceededError(Cat(what, " failed: ", e.what()));
  } catch (const std::exception& e) {  // Gloo's FileStore signals its timeout untyped: judge by the clock
    const std::string message = Cat(what, " failed: ", e.what());
    return std::chrono::steady_clock::now() - start >= location.timeout ? absl::DeadlineExceededError(message)
                                                                        : absl::UnavailableError(message);
  }
}

absl::StatusOr<std::vector<std::string>> AllGatherThroughStore(const StoreLocation& location,
                                                               std::string_view what, const std::string& key,
                                                               int rank, int size, std::string_view mine) {
  std::vector<std::string> values(static_cast<size_t>(size));
  absl::Status s = UseStore(location, what, [&](gloo::rendezvous::Store& store) {
    store.set(Cat(key, "/", rank), std::vector<char>(mine.begin(), mine.end()));
    std::vector<std::string> keys;
    for (int r = 0; r < size; ++r) keys.push_back(Cat(key, "/", r));
    store.wait(keys, location.timeout);
    for (int r = 0; r < size; ++r) {
      const std::vector<char> value = store.get(keys[static_cast<size_t>(r)]);
      values[static_cast<size_t>(r)].assign(value.begin(), value.end());
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return values;
}

}  // namespace tessera
