"""A request-rate sweep of `tessera bench` against SmolLM2-135M-Instruct served by `tessera serve` at tp = 1 on
this machine: one run per rate (Poisson arrivals, the same seed), a table of throughput and latency percentiles
per rate, each run's JSON and latency-against-time chart under --workdir, and an SVG of TTFT, TPOT and ITL against the
offered rate (--chart). Not run by CI.

usage: .venv/bin/python bench/smollm2_sweep.py --build build [--rates 0.5,1,2,4,8,inf] [--num-prompts 40]
           [--input-len 128] [--output-len 64] [--backend grpc|http] [--chart docs/bench-smollm2-sweep.svg]
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"]


def smollm2_model(tessera, workdir):
    """The demo's bf16 import of the SmolLM2 GGUF that scripts/setup.sh installs."""
    model = os.path.join(workdir, "smollm2")
    if not os.path.exists(os.path.join(model, "config.json")):
        gguf = subprocess.run([os.path.join(ROOT, "scripts", "smollm2-gguf.sh")], capture_output=True, text=True,
                              check=True).stdout.strip()
        subprocess.run([tessera, "import-gguf", "--gguf", gguf, "--out", model, "--dtype", "bf16"], check=True,
                       stdout=subprocess.DEVNULL)
    return model


def svg_chart(points, series, title, x_label, y_label):
    """A line chart (log-scaled y) of series [(name, key)] against the points' "x" values."""
    import math
    width, height, left, right, top, bottom = 720, 420, 70, 190, 40, 50
    xs = list(range(len(points)))  # offered rates, evenly spaced (the last may be inf)
    ys = [p[key] for p in points for _, key in series if p[key] > 0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = math.log10(min(ys)) - 0.1, math.log10(max(ys)) + 0.1

    def px(x):
        return left + (x - x0) / ((x1 - x0) or 1) * (width - left - right)

    def py(y):
        return top + (1 - (math.log10(y) - y0) / ((y1 - y0) or 1)) * (height - top - bottom)

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
           'font-size="12">' % (width, height),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="14">%s</text>' % (left, title),
           '<text x="%d" y="%d" text-anchor="middle">%s</text>' % ((left + width - right) / 2, height - 10, x_label),
           '<text x="16" y="%d" transform="rotate(-90 16 %d)" text-anchor="middle">%s</text>' % (
               (top + height - bottom) / 2, (top + height - bottom) / 2, y_label),
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (left, height - bottom, width - right,
                                                                      height - bottom),
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (left, top, left, height - bottom)]
    for e in range(math.floor(y0), math.ceil(y1) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if y0 <= math.log10(v) <= y1:
                out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (left, py(v), width - right,
                                                                                        py(v)))
                out.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (left - 5, py(v) + 4, v))
    for x, p in zip(xs, points):
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (px(x), height - bottom + 16, p["rate"]))
    for i, (name, key) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        pts = [(px(x), py(p[key])) for x, p in zip(xs, points) if p[key] > 0]
        out.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (
            color, " ".join("%.1f,%.1f" % xy for xy in pts)))
        for x, y in pts:
            out.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (x, y, color))
        out.append('<text x="%d" y="%d" fill="%s">%s</text>' % (width - right + 10, top + 16 * (i + 1), color, name))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default="build")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "out", "bench-sweep"))
    parser.add_argument("--rates", default="0.5,1,2,4,8,inf")
    parser.add_argument("--num-prompts", type=int, default=40)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--backend", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--chart", default=None)
    args = parser.parse_args()
    tessera = os.path.join(args.build, "tessera")
    os.makedirs(args.workdir, exist_ok=True)
    model = smollm2_model(tessera, args.workdir)
    server = harness.Server(tessera, model, 1, 1, ["--http-port", "0", "--kv-cache-memory", "256MiB"]).start()
    address = server.address if args.backend == "grpc" else server.http_address
    points = []
    try:
        for rate in args.rates.split(","):
            out = os.path.join(args.workdir, "rate-%s.json" % rate)
            subprocess.run([tessera, "bench", "--server", address, "--" + args.backend, "--random-input-len",
                            str(args.input_len), "--random-output-len", str(args.output_len), "--num-prompts",
                            str(args.num_prompts), "--request-rate", rate, "--seed", "1", "--out", out, "--chart",
                            os.path.join(args.workdir, "rate-%s.svg" % rate)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
            with open(out) as f:
                r = json.load(f)
            points.append({"rate": rate, "x": r["request_throughput"], "completed": r["completed"],
                           "failed": r["failed"], "out_tps": r["output_throughput"],
                           "ttft_p50": r["ttft_ms"]["p50"], "ttft_p99": r["ttft_ms"]["p99"],
                           "tpot_p50": r["tpot_ms"]["p50"], "itl_p99": r["itl_ms"]["p99"],
                           "e2e_p50": r["e2e_ms"]["p50"]})
    finally:
        server.stop()
    print("SmolLM2-135M-Instruct, tp 1, %s, %d prompts of %d tokens -> %d tokens per rate" % (
        args.backend, args.num_prompts, args.input_len, args.output_len))
    print("%8s %8s %6s %9s %9s %9s %9s %9s %9s" % ("rate/s", "req/s", "failed", "out tok/s", "TTFT p50",
                                                   "TTFT p99", "TPOT p50", "ITL p99", "E2E p50"))
    for p in points:
        print("%8s %8.2f %6d %9.1f %9.1f %9.1f %9.2f %9.2f %9.1f" % (
            p["rate"], p["x"], p["failed"], p["out_tps"], p["ttft_p50"], p["ttft_p99"], p["tpot_p50"],
            p["itl_p99"], p["e2e_p50"]))
    print("(latencies in ms)")
    if args.chart:
        with open(args.chart, "w") as f:
            f.write(svg_chart(points, [("TTFT p50", "ttft_p50"), ("TTFT p99", "ttft_p99"), ("TPOT p50", "tpot_p50"),
                                       ("ITL p99", "itl_p99")],
                              "SmolLM2-135M-Instruct, tp 1, 2 CPU cores: latency against offered rate",
                              "offered request rate (req/s, Poisson)", "latency (ms, log scale)"))
        print("chart:", args.chart)


if __name__ == "__main__":
    main()
