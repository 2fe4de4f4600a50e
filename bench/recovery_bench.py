"""The time from a worker's death to the next token, split into its phases: `tessera serve` with 8 concurrent
greedy streams, one worker SIGKILLed mid-stream, repeated; prints the median and range of each phase.

Phases (from the coordinator's and launcher's log lines, which carry wall-clock timestamps like time.time()):
  detection        kill -> the coordinator reports the failure ("re-forming the group")
  replacement      -> the lost rank's new process is started ("restarted worker rank")
  reset + join     -> survivors reset into the new epoch and the replacement has registered
  load + comm      -> the replacement loaded its shard, every rank joined the new groups ("re-formed in")
  re-prefill       -> the group is whole ("whole again") -> the next token of any stream
  total            kill -> next token

usage: .venv/bin/python bench/recovery_bench.py --tessera build/tessera [--model tiny|smollm2] [--runs 5]
"""
import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import harness  # noqa: E402
import recovery_test  # noqa: E402  (Stream, rank_pids)

ROOT = harness.REPO
PROMPT = [1, 504, 3158, 282, 4649, 314]  # SmolLM2's ids for "The capital of France is" after bos


def model_dir(args, work):
    if args.model == "tiny":
        out = os.path.join(work, "tiny")
        subprocess.run([args.tessera, "make-model", "--preset", "tiny", "--out", out, "--seed", "3"], check=True,
                       capture_output=True)
        return out, (2, 2)
    gguf = subprocess.run([os.path.join(ROOT, "scripts", "smollm2-gguf.sh")], capture_output=True, text=True,
                          check=True).stdout.strip()
    out = os.path.join(work, "smollm2")
    subprocess.run([args.tessera, "import-gguf", "--gguf", gguf, "--out", out], check=True, capture_output=True)
    return out, (3, 2)  # 9 heads over 3 KV heads: tp 3 (the demo's split), not 2


def ts(line):
    event = json.loads(line)
    return datetime.datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp(), event["msg"]


def recovery_marks(lines):
    """The wall-clock times of a recovery's phases in the coordinator's log lines: detected, restarted,
    reformed, whole (the last attempt's), first_detected, and the seconds of loading and joining it reports."""
    marks = {}
    for line in lines:
        try:
            t, msg = ts(line)
        except (ValueError, KeyError):
            continue
        for key, text in (("detected", "re-forming the group"), ("restarted", "restarted worker rank"),
                          ("reformed", "re-formed in"), ("whole", "whole again")):
            if text in msg:
                marks[key] = t  # the last attempt's
                if key == "detected":
                    marks.setdefault("first_detected", t)
        if "re-formed in" in msg and "of which loading" in msg:
            marks["loading"] = float(msg.split("of which loading ")[1].split(" s")[0])
            marks["joined"] = float(msg.split("replacements joined ")[1].split(" s")[0])
    return marks


def one_run(args, model, split):
    server = harness.Server(args.tessera, model, split[0], split[1], ["--kv-cache-memory", "256MiB"]).start()
    try:
        pb, _ = recovery_test.stub(server.address)
        reqs = [pb.CompleteRequest(token_ids=pb.TokenIds(ids=PROMPT), max_tokens=args.max_tokens, ignore_eos=True,
                                   temperature=0.0) for _ in range(8)]
        streams = [recovery_test.Stream(server.address, r) for r in reqs]
        for s in streams:
            s.start()
        while min(len(s.tokens) for s in streams) < 8:
            time.sleep(0.002)
        logged = len(server.stderr)
        os.kill(recovery_test.rank_pids(server)[1], signal.SIGKILL)
        killed = time.time()
        for s in streams:
            s.join(300)
        if any(s.error is not None for s in streams):
            with open(os.path.join(tempfile.gettempdir(), "recovery_bench_failure.log"), "w") as f:
                f.writelines(server.stderr)
            raise RuntimeError("a stream failed (server log in %s/recovery_bench_failure.log): %s" % (
                tempfile.gettempdir(), [str(s.error) for s in streams if s.error][0]))
        marks = recovery_marks(server.stderr[logged:])
        # The first token the re-formed group produced (a step that finished just before the kill may still
        # deliver one earlier).
        next_token = min(t for s in streams for t in s.times if t > marks["whole"])
        return {
            "detection": marks["first_detected"] - killed,
            "replacement": marks["restarted"] - marks["first_detected"],
            "reset + join": marks["reformed"] - marks["restarted"] - marks["loading"],
            "load + comm": marks["loading"],
            "re-prefill": next_token - marks["whole"],
            "total": next_token - killed,
        }
    finally:
        server.stop(signal.SIGTERM, timeout=60)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="tessera_recovery_bench_")
    model, split = model_dir(args, work)
    runs = [one_run(args, model, split) for _ in range(args.runs)]
    print("%s at tp %d x pp %d, 8 streams, rank 1 SIGKILLed, %d runs (ms: median [min, max])" % (
        args.model, split[0], split[1], args.runs))
    for phase in runs[0]:
        values = [1e3 * r[phase] for r in runs]
        print("  %-13s %8.1f  [%.1f, %.1f]" % (phase, statistics.median(values), min(values), max(values)))


if __name__ == "__main__":
    main()
