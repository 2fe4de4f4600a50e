#include "tools/bench/chart.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tessera::tools::bench {
namespace {

constexpr double kWidth = 800, kPanelHeight = 260, kLeft = 70, kRight = 110, kTop = 40, kGap = 50;
constexpr const char* kColors[] = {"#1f77b4", "#ff7f0e", "#d62728"};  // p50, p90, p99
constexpr const char* kNames[] = {"p50", "p90", "p99"};

std::string Escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// A "nice" axis maximum at or above `value`: 1, 2 or 5 times a power of ten.
double NiceCeiling(double value) {
  if (value <= 0) return 1;
  const double power = std::pow(10.0, std::floor(std::log10(value)));
  for (double step : {1.0, 2.0, 5.0, 10.0}) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

// One panel: axes, grid, and a polyline per percentile of the summary `pick` selects.
void DrawPanel(std::string& svg, double top, const std::string& label,
               const std::vector<LatencyWindow>& windows, double width_s,
               const std::function<const LatencySummary&(const LatencyWindow&)>& pick) {
  const double plot_w = kWidth - kLeft - kRight, plot_h = kPanelHeight;
  double max_ms = 0, max_t = width_s;
  for (const LatencyWindow& w : windows) {
    max_ms = std::max(max_ms, pick(w).p99);
    max_t = std::max(max_t, w.start_s + width_s);
  }
  const double y_max = NiceCeiling(max_ms), x_max = NiceCeiling(max_t);
  auto x = [&](double t) { return kLeft + t / x_max * plot_w; };
  auto y = [&](double ms) { return top + plot_h - ms / y_max * plot_h; };
  absl::StrAppendFormat(&svg, "<g class=\"panel\">\n<text x=\"%g\" y=\"%g\" font-size=\"14\">%s</text>\n",
                        kLeft, top - 8, Escape(label));
  for (int i = 0; i <= 4; ++i) {
    const double ms = y_max * i / 4, t = x_max * i / 4;
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                          "<text x=\"%g\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">%g</text>\n",
                          kLeft, y(ms), kLeft + plot_w, y(ms), kLeft - 6, y(ms) + 4, ms);
    absl::StrAppendFormat(&svg,
                          "<text x=\"%.1f\" y=\"%g\" font-size=\"11\" text-anchor=\"middle\">%g</text>\n",
                          x(t), top + plot_h + 16, t);
  }
  absl::StrAppendFormat(
      &svg,
      "<rect x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\" fill=\"none\" stroke=\"#333\"/>\n"
      "<text x=\"%g\" y=\"%g\" font-size=\"11\" text-anchor=\"middle\">time in run (s)</text>\n"
      "<text x=\"16\" y=\"%g\" font-size=\"11\" transform=\"rotate(-90 16 %g)\" "
      "text-anchor=\"middle\">ms</text>\n",
      kLeft, top, plot_w, plot_h, kLeft + plot_w / 2, top + plot_h + 32, top + plot_h / 2, top + plot_h / 2);
  if (windows.empty()) {
    absl::StrAppendFormat(&svg, "<text x=\"%g\" y=\"%g\" font-size=\"12\">no successful requests</text>\n",
                          kLeft + 10, top + plot_h / 2);
  }
  for (int p = 0; p < 3; ++p) {
    std::string points;
    for (const LatencyWindow& w : windows) {
      const LatencySummary& s = pick(w);
      const double value = p == 0 ? s.p50 : p == 1 ? s.p90 : s.p99;
      absl::StrAppendFormat(&points, "%.1f,%.1f ", x(w.start_s + width_s / 2), y(value));
    }
    absl::StrAppendFormat(&svg, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"%s\"/>\n",
                          kColors[p], points);
    for (const LatencyWindow& w : windows) {
      const LatencySummary& s = pick(w);
      const double value = p == 0 ? s.p50 : p == 1 ? s.p90 : s.p99;
      absl::StrAppendFormat(&svg, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>\n",
                            x(w.start_s + width_s / 2), y(value), kColors[p]);
    }
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"%s\" stroke-width=\"2\"/>"
                          "<text x=\"%g\" y=\"%g\" font-size=\"12\">%s</text>\n",
                          kLeft + plot_w + 12, top + 12 + 18 * p, kLeft + plot_w + 36, top + 12 + 18 * p,
                          kColors[p], kLeft + plot_w + 42, top + 16 + 18 * p, kNames[p]);
  }
  svg += "</g>\n";
}

}  // namespace

std::string LatencyChartSvg(const std::vector<LatencyWindow>& windows, double width_s,
                            const std::string& title) {
  const double height = kTop + 2 * kPanelHeight + kGap + 60;
  std::string svg = absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" viewBox=\"0 0 %g %g\" "
      "font-family=\"sans-serif\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%g\" y=\"20\" font-size=\"15\" font-weight=\"bold\">%s</text>\n",
      kWidth, height, kWidth, height, kLeft, Escape(title));
  const std::string per = absl::StrFormat(" per %gs window of request start", width_s);
  DrawPanel(svg, kTop + 20, "TTFT (ms)" + per, windows, width_s,
            [](const LatencyWindow& w) -> const LatencySummary& { return w.ttft_ms; });
  DrawPanel(svg, kTop + 20 + kPanelHeight + kGap, "E2E latency (ms)" + per, windows, width_s,
            [](const LatencyWindow& w) -> const LatencySummary& { return w.e2e_ms; });
  svg += "</svg>\n";
  return svg;
}

}  // namespace tessera::tools::bench
