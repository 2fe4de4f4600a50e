"""Pipeline stage utilisation under load: SmolLM2-135M-Instruct served at tp 1 and pp = 1, 2, 3 on this machine,
`tessera bench` at a fixed concurrency, and each rank's compute time from `tessera:worker_busy_seconds` (the
workers' heartbeats) before and after: utilisation = compute seconds / the run's duration. With pp > 1 the
scheduler keeps pp micro-batches in flight so that every stage has work; a stage's utilisation says how much of
the run it computed rather than waited. Not run by CI.

usage: .venv/bin/python bench/stage_utilization.py --build build [--pp 1,2,3] [--concurrency 16]
           [--num-prompts 48] [--input-len 64] [--output-len 64]
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import harness  # noqa: E402
from smollm2_sweep import smollm2_model  # noqa: E402


def busy(server):
    text = urllib.request.urlopen("http://%s/metrics" % server.http_address, timeout=30).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("tessera:worker_busy_seconds{"):
            rank = int(line.split('rank="')[1].split('"')[0])
            out[rank] = float(line.rsplit(" ", 1)[1])
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default="build")
    parser.add_argument("--pp", default="1,2,3")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--num-prompts", type=int, default=48)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    args = parser.parse_args()
    tessera = os.path.join(args.build, "tessera")
    model = smollm2_model(tessera, os.path.join(ROOT, "out", "bench-sweep"))
    work = os.path.join(ROOT, "out", "bench-stages")
    os.makedirs(work, exist_ok=True)
    print("SmolLM2-135M-Instruct, tp 1, %d prompts of %d tokens -> %d, concurrency %d (2 cores shared by all ranks)"
          % (args.num_prompts, args.input_len, args.output_len, args.concurrency))
    print("%3s %10s %10s   %s" % ("pp", "out tok/s", "steps", "utilisation by stage (compute s / run s)"))
    for pp in [int(p) for p in args.pp.split(",")]:
        server = harness.Server(tessera, model, 1, pp, ["--http-port", "0", "--kv-cache-memory", "256MiB",
                                                         "--max-num-seqs", str(args.concurrency)]).start(timeout=600)
        try:
            time.sleep(1.5)  # a heartbeat after load
            before = busy(server)
            out = os.path.join(work, "pp%d.json" % pp)
            subprocess.run([tessera, "bench", "--server", server.address, "--grpc", "--random-input-len",
                            str(args.input_len), "--random-output-len", str(args.output_len), "--num-prompts",
                            str(args.num_prompts), "--max-concurrency", str(args.concurrency), "--seed", "1",
                            "--out", out], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=3600)
            time.sleep(1.5)  # every rank's last heartbeat carries the run's work
            after = busy(server)
        finally:
            server.stop()
        stats = [e for e in server.events if e.get("event") == "stats"]
        with open(out) as f:
            report = json.load(f)
        duration = report["duration_s"]
        stages = ["stage %d: %.0f%%" % (r, 100 * (after[r] - before.get(r, 0)) / duration) for r in sorted(after)]
        print("%3d %10.1f %10s   %s" % (pp, report["output_throughput"], stats[0]["steps"] if stats else "?",
                                        ", ".join(stages)))


if __name__ == "__main__":
    main()
