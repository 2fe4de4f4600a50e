"""Serving benchmarks, printed next to ceilings measured in the same run:
  1. the control plane's cost per decode step on the tiny preset at (tp, pp) = (2, 2): the coordinator's step
     round trip minus the output rank's time in the step (target <= 0.5 ms);
  2. decode tokens/s of the `small` preset (Llama 3.2 1B shape) at tp = 1 and tp = 2, threads split between
     ranks, against the memory-bandwidth ceiling;
  3. each rank's weight-load time against reading the same bytes from the page cache.

usage: .venv/bin/python bench/serve_bench.py --build build [--workdir DIR] [--tokens N] [--skip-small]
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "integration"))
import grpc  # noqa: E402
import harness  # noqa: E402


def stream_timings(address, prompt, max_tokens):
    """Streams one greedy request; returns the arrival time of each token."""
    pb, pb_grpc, _, _ = harness.stubs()
    stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(address))
    request = pb.CompleteRequest(token_ids=pb.TokenIds(ids=prompt), max_tokens=max_tokens, temperature=0.0,
                                 ignore_eos=True)
    times = []
    for event in stub.CompleteStream(request, timeout=600):
        if event.HasField("delta"):
            times.extend([time.perf_counter()] * len(event.delta.token_ids))
    return times


def serve(tessera, model, tp, pp, extra=()):
    return harness.Server(tessera, model, tp, pp, ["--kv-cache-memory", "256MiB", *extra]).start(timeout=600)


def stop(server):
    server.stop()
    stats = next((e for e in server.events if e.get("event") == "stats"), {})
    loads = [(int(m.group(1)), float(m.group(2)), int(m.group(3))) for line in server.stderr
             for m in [re.search(r"rank (\d+) loaded its shard in ([\d.e-]+) s \((\d+) bytes read", line)] if m]
    return stats, sorted(loads)


def page_cache_gbps(model):
    """Read rate of the model's safetensors files from the page cache (read once to warm, then timed)."""
    files = sorted(glob.glob(os.path.join(model, "*.safetensors")))
    buf = bytearray(64 << 20)
    for timed in (False, True):
        start, total = time.perf_counter(), 0
        for path in files:
            with open(path, "rb", buffering=0) as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    total += n
        if timed:
            return total / (time.perf_counter() - start) / 1e9


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default="build")
    parser.add_argument("--workdir", default="/tmp/tessera-serve-bench")
    parser.add_argument("--tokens", type=int, default=256, help="decode steps for the control-plane figure")
    parser.add_argument("--small-tokens", type=int, default=24)
    parser.add_argument("--skip-small", action="store_true")
    args = parser.parse_args()
    tessera = os.path.abspath(os.path.join(args.build, "tessera"))
    os.makedirs(args.workdir, exist_ok=True)
    ceilings = json.loads(subprocess.run([os.path.join(args.build, "bench", "ceilings"), "--threads",
                                          str(os.cpu_count())], capture_output=True, text=True).stdout)
    bandwidth = ceilings["read_bandwidth_gbps"]
    print(json.dumps({"ceiling": "read_bandwidth_gbps", "threads": ceilings["threads"], "value": bandwidth}))

    tiny = os.path.join(args.workdir, "tiny")
    if not os.path.exists(os.path.join(tiny, "config.json")):
        subprocess.run([tessera, "make-model", "--preset", "tiny", "--out", tiny], check=True)
    prompt = [128000, 9906, 11, 1917]
    for tp, pp in [(1, 1), (2, 2)]:
        server = serve(tessera, tiny, tp, pp)
        times = stream_timings(server.address, prompt, args.tokens)
        stats, _ = stop(server)
        itl = (times[-1] - times[0]) / (len(times) - 1) * 1e3
        print(json.dumps({"bench": "control_plane", "model": "tiny", "tp": tp, "pp": pp, "steps": stats.get("steps"),
                          "step_ms": round(stats.get("step_ms", 0), 3),
                          "output_rank_ms": round(stats.get("worker_ms", 0), 3),
                          "control_plane_ms": round(stats.get("control_plane_ms", 0), 3),
                          "of_which_sending_ms": round(stats.get("send_ms", 0), 3),
                          "client_inter_token_ms": round(itl, 3)}))

    if args.skip_small:
        return
    small = os.path.join(args.workdir, "small")
    if not os.path.exists(os.path.join(small, "config.json")):
        subprocess.run([tessera, "make-model", "--preset", "small", "--out", small], check=True)
    weight_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(small, "*.safetensors")))
    cache_gbps = page_cache_gbps(small)
    print(json.dumps({"ceiling": "page_cache_read_gbps", "value": round(cache_gbps, 2)}))
    cores = os.cpu_count()
    for tp in (1, 2):
        server = serve(tessera, small, tp, 1, ["--threads-per-worker", str(max(1, cores // tp))])
        times = stream_timings(server.address, prompt, args.small_tokens)
        _, loads = stop(server)
        tok_s = (len(times) - 1) / (times[-1] - times[0])
        streamed = weight_bytes * tok_s / 1e9  # every weight byte is read once per decode step, over all ranks
        print(json.dumps({"bench": "decode", "model": "small", "tp": tp, "threads_per_worker": max(1, cores // tp),
                          "tokens_per_s": round(tok_s, 2), "weights_gbps": round(streamed, 2),
                          "of_bandwidth": round(streamed / bandwidth, 3)}))
        for rank, seconds, nbytes in loads:
            print(json.dumps({"bench": "load", "model": "small", "tp": tp, "rank": rank, "load_s": round(seconds, 3),
                              "bytes_read": nbytes, "page_cache_s": round(nbytes / cache_gbps / 1e9, 3),
                              "load_vs_page_cache": round(seconds / (nbytes / cache_gbps / 1e9), 2)}))


if __name__ == "__main__":
    main()
