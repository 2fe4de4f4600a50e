// The SVG chart of `tessera bench --chart`: p50 / p90 / p99 of TTFT and of E2E latency per time window of the
// run, two panels stacked, written by hand (no plotting library).
#pragma once

#include <string>
#include <vector>

#include "tools/bench/stats.h"

namespace tessera::tools::bench {

// A standalone SVG document (XML) plotting `windows` (as WindowedLatencies returns them, `width_s` wide)
// against the time in the run; `title` is escaped. With no windows the panels are drawn empty with a note.
std::string LatencyChartSvg(const std::vector<LatencyWindow>& windows, double width_s,
                            const std::string& title);

}  // namespace tessera::tools::bench
