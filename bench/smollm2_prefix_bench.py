"""Throughput and p99 inter-token latency of SmolLM2-135M-Instruct (tp 1, this machine) against concurrency (1,
4, 16, 64) with `tessera bench`, on a shared-prefix dataset (every prompt is one long shared prefix and a short
unique tail, as a system prompt or few-shot examples make them), with prefix caching on and off: the speed-up
is what caching the prefix buys. Not run by CI.

usage: .venv/bin/python bench/smollm2_prefix_bench.py --build build [--prefix-len 256] [--tail-len 16]
           [--output-len 32] [--concurrency 1,4,16,64]
"""
import argparse
import json
import os
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import harness  # noqa: E402
from smollm2_sweep import smollm2_model  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default="build")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "out", "bench-prefix"))
    parser.add_argument("--prefix-len", type=int, default=256)
    parser.add_argument("--tail-len", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--concurrency", default="1,4,16,64")
    args = parser.parse_args()
    tessera = os.path.join(args.build, "tessera")
    os.makedirs(args.workdir, exist_ok=True)
    model = smollm2_model(tessera, os.path.join(ROOT, "out", "bench-sweep"))
    rng = random.Random(1)
    prefix = [1] + [rng.randrange(1000, 40000) for _ in range(args.prefix_len - 1)]
    levels = [int(c) for c in args.concurrency.split(",")]
    num_prompts = {c: max(8, 2 * c) for c in levels}
    dataset = os.path.join(args.workdir, "shared_prefix.jsonl")
    with open(dataset, "w") as f:
        for _ in range(max(num_prompts.values())):
            tail = [rng.randrange(1000, 40000) for _ in range(args.tail_len)]
            f.write(json.dumps({"prompt_token_ids": prefix + tail, "max_tokens": args.output_len}) + "\n")
    rows = {}
    servers = {}
    try:
        # Both servers up at once; each level runs against both, in alternating order, so that they see the
        # same machine (this one is shared and noisy).
        for caching in (True, False):
            extra = ["--kv-cache-memory", "512MiB", "--max-num-seqs", str(max(levels))]
            if not caching:
                extra.append("--no-enable-prefix-caching")
            servers[caching] = harness.Server(tessera, model, 1, 1, extra).start(timeout=600)
        for k, c in enumerate(levels):
            for caching in ((True, False) if k % 2 == 0 else (False, True)):
                out = os.path.join(args.workdir, "c%d-%s.json" % (c, "on" if caching else "off"))
                subprocess.run([tessera, "bench", "--server", servers[caching].address, "--grpc", "--dataset",
                                dataset, "--num-prompts", str(num_prompts[c]), "--max-concurrency", str(c),
                                "--ignore-eos", "--out", out], check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=3600)
                with open(out) as f:
                    rows[(c, caching)] = json.load(f)
    finally:
        for server in servers.values():
            server.stop()
    print("SmolLM2-135M-Instruct, tp 1: prompts of a %d-token shared prefix + %d unique tokens -> %d tokens"
          % (args.prefix_len, args.tail_len, args.output_len))
    print("%5s | %10s %10s %8s | %10s %10s %8s | %8s %8s" % (
        "conc", "tok/s on", "ITL p99", "TTFT p50", "tok/s off", "ITL p99", "TTFT p50", "speed-up", "TTFT x"))
    for c in levels:
        on, off = rows[(c, True)], rows[(c, False)]
        print("%5d | %10.1f %10.1f %8.1f | %10.1f %10.1f %8.1f | %7.2fx %7.2fx" % (
            c, on["output_throughput"], on["itl_ms"]["p99"], on["ttft_ms"]["p50"], off["output_throughput"],
            off["itl_ms"]["p99"], off["ttft_ms"]["p50"], on["output_throughput"] / off["output_throughput"],
            off["ttft_ms"]["p50"] / on["ttft_ms"]["p50"]))
    print("(tok/s: output tokens per second; ITL and TTFT in ms; speed-up: output throughput with caching over "
          "without; TTFT x: TTFT p50 without over with)")


if __name__ == "__main__":
    main()
