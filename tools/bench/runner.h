// The load loop of `tessera bench`: sends the requests at their arrival times with at most `max_concurrency`
// in flight, one thread per in-flight request.
#pragma once

#include <functional>
#include <vector>

#include "tools/bench/request.h"

namespace tessera::tools::bench {

struct RunResult {
  std::vector<RequestResult> results;  // in the order of the requests
  double duration_s = 0;               // from the start of the run to the last answer
};

// Sends requests[i] at arrivals_s[i] seconds after the start (or later, when `max_concurrency` requests are
// in flight then: a request waits, in order, for a slot). Starts min(max_concurrency, requests.size())
// threads, each taking the next request in arrival order, so a slot that waits for an arrival holds no
// request in flight. Calls `progress(done, total)` from the calling thread about every `progress_interval`
// and once at the end (none when it is empty). Requires arrivals_s.size() == requests.size(), non-decreasing,
// and max_concurrency >= 1. Thread-safe as far as `client` is.
RunResult RunRequests(BenchClient& client, const std::vector<BenchRequest>& requests,
                      const std::vector<double>& arrivals_s, int max_concurrency,
                      const std::function<void(int done, int total)>& progress,
                      std::chrono::milliseconds progress_interval = std::chrono::milliseconds(200));

}  // namespace tessera::tools::bench
