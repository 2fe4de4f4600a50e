"""What the OpenAI HTTP front end adds over gRPC, per request and per streamed token, measured by `tessera bench`
against one `tessera serve` of the tiny preset (tp = 1) that listens on both ports.

The two front ends are run alternately, one request at a time (`--max-concurrency 1`), for --rounds rounds, so
that both see the same machine state; a round's figures are HTTP minus gRPC from the same round. Printed per
round and as the median (with min and max) over rounds:
  - added TTFT p50 / p99: the cost per request (parse, tokenize, first SSE chunk against the first gRPC message);
  - added ITL p50 / p99: the cost per streamed token as the client sees the gap between tokens;
  - added per token: (added E2E mean - added TTFT mean) / (output tokens - 1), the time every further token costs;
  - added server CPU per token: the `tessera serve` process's user + system CPU time over a run (from /proc)
    divided by the tokens streamed, HTTP minus gRPC: the front end's own work per token, free of the timing
    noise of a shared two-core machine.
The ceiling next to them is the engine's own decode step (mean of `tessera:worker_step_seconds` and the
control-plane time from /metrics), which both front ends share.

usage: .venv/bin/python bench/frontend_bench.py --build build [--rounds 6] [--prompts 30] [--output-len 64]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402


def cpu_seconds(pid):
    """User + system CPU time of a process so far (all its threads, living and ended)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_bench(tessera, address, backend, args, out, server_pid):
    cpu0 = cpu_seconds(server_pid)
    subprocess.run([tessera, "bench", "--server", address, "--" + backend, "--random-input-len",
                    str(args.input_len), "--random-output-len", str(args.output_len), "--num-prompts",
                    str(args.prompts), "--max-concurrency", "1", "--seed", "1", "--out", out],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    with open(out) as f:
        report = json.load(f)
    report["server_cpu_us_per_token"] = (cpu_seconds(server_pid) - cpu0) * 1e6 / report["total_output_tokens"]
    if report["failed"]:
        raise RuntimeError("%s run failed %d requests: %s" % (backend, report["failed"], report["first_error"]))
    return report


def step_ms(http_base):
    """Mean worker step and control-plane time per step so far, in ms, from /metrics."""
    text = urllib.request.urlopen(http_base + "/metrics", timeout=30).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(("tessera:worker_step_seconds_", "tessera:control_plane_seconds_")):
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = float(value)
    worker = values["tessera:worker_step_seconds_sum"] / max(values["tessera:worker_step_seconds_count"], 1)
    control = values["tessera:control_plane_seconds_sum"] / max(values["tessera:control_plane_seconds_count"], 1)
    return worker * 1e3, control * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default="build")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--input-len", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=64)
    args = parser.parse_args()
    tessera = os.path.join(args.build, "tessera")
    work = tempfile.mkdtemp(prefix="tessera-frontend-bench-")
    model = os.path.join(work, "tiny")
    subprocess.run([tessera, "make-model", "--preset", "tiny", "--out", model, "--tokenizer",
                    os.path.join(ROOT, "tests", "data", "llama-3.1-tokenizer")], check=True,
                   stdout=subprocess.DEVNULL)
    server = harness.Server(tessera, model, 1, 1, ["--http-port", "0"]).start()
    try:
        http_base = "http://" + server.http_address
        # One warm-up run of each, not counted.
        for backend, address in (("grpc", server.address), ("http", server.http_address)):
            run_bench(tessera, address, backend, args, os.path.join(work, "warm.json"), server.proc.pid)
        rows = []
        print("round  TTFT p50 (ms) grpc/http  +p50   +p99 | ITL p50 (ms) grpc/http  +p50   +p99 | +per token"
              " | server CPU us/token grpc/http")
        for r in range(args.rounds):
            order = (("grpc", server.address), ("http", server.http_address))
            if r % 2:
                order = order[::-1]  # neither always runs first
            reports = {b: run_bench(tessera, a, b, args, os.path.join(work, "%s%d.json" % (b, r)), server.proc.pid) for b, a in order}
            g, h = reports["grpc"], reports["http"]
            tokens = g["total_output_tokens"] / g["completed"]
            row = {
                "ttft_p50": h["ttft_ms"]["p50"] - g["ttft_ms"]["p50"],
                "ttft_p99": h["ttft_ms"]["p99"] - g["ttft_ms"]["p99"],
                "itl_p50": h["itl_ms"]["p50"] - g["itl_ms"]["p50"],
                "itl_p99": h["itl_ms"]["p99"] - g["itl_ms"]["p99"],
                "per_token": ((h["e2e_ms"]["mean"] - g["e2e_ms"]["mean"]) - (h["ttft_ms"]["mean"] - g["ttft_ms"]["mean"]))
                / (tokens - 1),
                "cpu_per_token": (h["server_cpu_us_per_token"] - g["server_cpu_us_per_token"]) / 1e3,
            }
            rows.append(row)
            print("%5d  %8.3f / %8.3f %+6.3f %+6.3f | %7.3f / %7.3f %+6.3f %+6.3f | %+7.4f | %6.1f / %6.1f" % (
                r, g["ttft_ms"]["p50"], h["ttft_ms"]["p50"], row["ttft_p50"], row["ttft_p99"], g["itl_ms"]["p50"],
                h["itl_ms"]["p50"], row["itl_p50"], row["itl_p99"], row["per_token"],
                g["server_cpu_us_per_token"], h["server_cpu_us_per_token"]))
        worker, control = step_ms(http_base)
    finally:
        server.stop()
    print("\nHTTP minus gRPC over %d rounds of %d requests x %d tokens (median [min, max] of the rounds, ms):"
          % (args.rounds, args.prompts, args.output_len))
    summary = {}
    for key, label in (("ttft_p50", "added TTFT p50 (per request)"), ("ttft_p99", "added TTFT p99 (per request)"),
                       ("itl_p50", "added ITL p50 (per token)"), ("itl_p99", "added ITL p99 (per token)"),
                       ("per_token", "added time per further token"),
                       ("cpu_per_token", "added server CPU per token")):
        values = [row[key] for row in rows]
        summary[key] = statistics.median(values)
        print("  %-32s %+8.4f  [%+.4f, %+.4f]" % (label, summary[key], min(values), max(values)))
    print("  ceiling: the engine's decode step  worker %.3f ms + control plane %.3f ms" % (worker, control))
    print(json.dumps({"summary_ms": summary, "worker_step_ms": worker, "control_plane_ms": control}))


if __name__ == "__main__":
    main()
