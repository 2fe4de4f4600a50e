"""The coordinator's costs at a real model's layout on one machine, with `tessera serve --device null` (workers run
the control and data plane at the model's shapes without arithmetic or weights; docs/null-device.md):
  a. at 16 ranks (llama3.1-405b, tp 8 x pp 2): the coordinator's CPU time per step and the control-plane bytes
     per step, with 1, 64 and 256 running sequences;
  b. at 16 ranks: start-up to ready, and a worker's SIGKILL to the next token (recovery, in phases);
  c. at 16 ranks: resident memory (VmRSS, VmHWM) of each null worker while serving 64 sequences;
  d. against rank count (2, 4, 8, 16, 32; tp = min(8, ranks), pp = ranks / tp) at 64 running sequences: CPU per
     step, bytes per step, start-up. llama3-70b, since 405B's weights (810 GB) exceed 2 or 4 H200s; printed and
     drawn to an SVG line plot (--svg).

How the CPU time per step is measured: the load (N greedy streaming gRPC requests, distinct prompts, ignore_eos)
runs until every stream has tokens (prefill done, all decoding); then the window opens: the serve process's CPU
time is read (utime + stime of /proc/PID/stat, all its threads, 10 ms ticks; and the sum of
/proc/PID/task/*/schedstat, ns, threads alive at both reads) together with the step count (the
tessera:iteration_tokens_total histogram's _count on /metrics, one observation per step result); after W steps
both are read again: CPU per step = delta CPU / delta steps. The coordinator's CPU includes its gRPC front end
streaming the tokens and the one /metrics scrape per second the window polls. Bytes per step come from the
"stats" event serve prints on SIGTERM (the streams are cancelled first, so the run is almost all decode steps):
step_bytes is one serialized Step (the group sends a copy to every rank: x ranks on the wire); result_bytes the
serialized StepResult from the output rank.

usage: .venv/bin/python bench/null_scale_bench.py [--tessera build/tessera] [--quick] [--svg docs/null-device-scaling.svg]
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "integration"))
import grpc  # noqa: E402
import harness  # noqa: E402
import recovery_bench  # noqa: E402  (recovery_marks)
import recovery_test  # noqa: E402  (rank_pids)

ROOT = harness.REPO
TOKENIZER = os.path.join(ROOT, "tests", "data", "llama-3.1-tokenizer")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def make_model(tessera, preset, work):
    out = os.path.join(work, preset)
    subprocess.run([tessera, "make-model", "--preset", preset, "--out", out, "--config-only", "--tokenizer",
                    TOKENIZER], check=True, capture_output=True, timeout=120)
    return out


def serve(tessera, model, tp, pp, max_num_seqs=256):
    """Starts serve on the null device; returns (server, seconds from process start to the ready event)."""
    start = time.time()
    server = harness.Server(tessera, model, tp, pp, [
        "--device", "null", "--kv-cache-memory", "0", "--max-num-seqs", str(max_num_seqs), "--http-port", "0",
        "--max-num-batched-tokens", "8192",
        # Null steps on shared cores take seconds (16-32 processes moving real-size buffers over TCP): timeouts
        # made for GPUs would declare a slow rank lost.
        "--step-timeout", "900s", "--comm-timeout", "600s", "--heartbeat-timeout", "30s"])
    try:
        server.start(timeout=600)
    except Exception:
        server.stop(signal.SIGKILL)
        raise
    return server, time.time() - start


def stop(server):
    """Cancels nothing itself: SIGTERM (drain), then returns the "stats" event ({} if none)."""
    server.stop(signal.SIGTERM, timeout=120)
    return next((e for e in server.events if e.get("event") == "stats"), {})


class Load:
    """`n` greedy streaming completions (distinct 4-token prompts, ignore_eos), each read on its own thread;
    counts tokens and records each stream's token arrival times."""

    def __init__(self, address, n, max_tokens=4096):
        pb, pb_grpc, _, _ = harness.stubs()
        self.channels = [grpc.insecure_channel(address) for _ in range((n + 15) // 16)]
        self.calls, self.threads = [], []
        self.tokens = [0] * n
        self.times = [[] for _ in range(n)]
        self.errors = []
        for i in range(n):
            stub = pb_grpc.InferenceServiceStub(self.channels[i // 16])
            req = pb.CompleteRequest(token_ids=pb.TokenIds(ids=[128000, 9906, 11, 1000 + i]), max_tokens=max_tokens,
                                     temperature=0.0, ignore_eos=True)
            call = stub.CompleteStream(req, timeout=900)
            self.calls.append(call)
            t = threading.Thread(target=self._read, args=(i, call), daemon=True)
            t.start()
            self.threads.append(t)

    def _read(self, i, call):
        try:
            for event in call:
                if event.HasField("delta"):
                    self.tokens[i] += len(event.delta.token_ids)
                    self.times[i].append(time.time())
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.errors.append(e)

    def wait_all(self, min_tokens, timeout=600):
        deadline = time.time() + timeout
        while min(self.tokens) < min_tokens:
            if self.errors:
                raise RuntimeError("a stream failed: %s" % self.errors[0])
            if time.time() > deadline:
                raise RuntimeError("streams did not reach %d tokens in %d s" % (min_tokens, timeout))
            time.sleep(0.05)

    def cancel(self):
        for call in self.calls:
            call.cancel()
        for t in self.threads:
            t.join(30)
        for c in self.channels:
            c.close()


def cpu_seconds(pid):
    """(utime + stime of the whole process from /proc/PID/stat, {tid: ns on CPU} from each thread's schedstat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = (int(fields[11]) + int(fields[12])) / CLK_TCK
    threads = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                threads[tid] = int(f.read().split()[0])
        except OSError:
            pass
    return ticks, threads


def steps_so_far(server):
    """(steps, tokens) so far: the count and sum of tessera:iteration_tokens_total on /metrics."""
    text = urllib.request.urlopen("http://%s/metrics" % server.http_address, timeout=30).read().decode()
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("tessera:iteration_tokens_total_count"):
            count += float(line.split()[-1])
        elif line.startswith("tessera:iteration_tokens_total_sum"):
            total += float(line.split()[-1])
    return count, total


def memory(pid):
    """{VmRSS, VmHWM} in MiB from /proc/PID/status."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) / 1024.0
    return out


def measure(server, world, n, window_steps, snapshot_memory=False):
    """Runs `n` streams, measures a window of `window_steps` steps; returns a dict of figures."""
    load = Load(server.address, n)
    try:
        load.wait_all(2)
        steps0, tokens0 = steps_so_far(server)
        ticks0, threads0 = cpu_seconds(server.proc.pid)
        t0 = time.time()
        steps1 = steps0
        while steps1 - steps0 < window_steps:
            time.sleep(1.0)
            if load.errors:
                raise RuntimeError("a stream failed: %s" % load.errors[0])
            steps1, tokens1 = steps_so_far(server)
        ticks1, threads1 = cpu_seconds(server.proc.pid)
        t1 = time.time()
        mem = {}
        if snapshot_memory:
            mem = {rank: memory(pid) for rank, pid in sorted(recovery_test.rank_pids(server).items())}
            mem["coordinator"] = memory(server.proc.pid)
    finally:
        load.cancel()
    stats = stop(server)
    steps = steps1 - steps0
    sched_ns = sum(threads1[t] - threads0[t] for t in threads1 if t in threads0)
    return {
        "seqs": n, "ranks": world, "steps": int(steps), "seconds": t1 - t0,
        "tokens_per_step": (tokens1 - tokens0) / steps,
        "cpu_us_stat": 1e6 * (ticks1 - ticks0) / steps,
        "cpu_us_sched": 1e-3 * sched_ns / steps,
        "cpu_share": 1e-9 * sched_ns / (t1 - t0),
        "step_ms": 1e3 * (t1 - t0) / steps,
        "step_bytes": stats.get("step_bytes", float("nan")),
        "result_bytes": stats.get("result_bytes", float("nan")),
        "control_plane_ms": stats.get("control_plane_ms", float("nan")),
        "schedule_us": stats.get("schedule_us", float("nan")),
        "memory": mem,
    }


def print_costs(rows, title):
    print(title)
    print("  %5s %5s %6s %9s %8s %12s %12s %6s %9s %11s %11s %11s" % (
        "ranks", "seqs", "steps", "tok/step", "step ms", "cpu us/step", "(stat tick)", "core", "sched us",
        "Step B", "to ranks B", "Result B"))
    for r in rows:
        print("  %5d %5d %6d %9.1f %8.1f %12.0f %12.0f %5.0f%% %9.1f %11.0f %11.0f %11.0f" % (
            r["ranks"], r["seqs"], r["steps"], r["tokens_per_step"], r["step_ms"], r["cpu_us_sched"],
            r["cpu_us_stat"], 100 * r["cpu_share"], r["schedule_us"], r["step_bytes"], r["step_bytes"] * r["ranks"], r["result_bytes"]))
    print("  cpu us/step: serve's CPU (all threads, schedstat) per step in the window; (stat tick): the same from\n"
          "  /proc/PID/stat utime+stime (10 ms ticks); core: that CPU over the window's wall time; sched us: forming a step (Scheduler::Stats); Step B: one\n"
          "  serialized Step; to ranks B: that times the ranks (each gets a copy); Result B: the StepResult back.")
    sys.stdout.flush()


def recovery(server, kill_rank):
    """SIGKILLs `kill_rank` under 8 running streams; returns {phase: seconds}."""
    load = Load(server.address, 8)
    try:
        load.wait_all(3)
        logged = len(server.stderr)
        pid = recovery_test.rank_pids(server)[kill_rank]
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        deadline = killed + 600
        while not any("whole again" in line for line in server.stderr[logged:]):
            if time.time() > deadline or server.proc.poll() is not None:
                raise RuntimeError("no recovery:\n" + "".join(server.stderr[logged:][-20:]))
            time.sleep(0.05)
        marks = recovery_bench.recovery_marks(server.stderr[logged:])
        while not any(t > marks["whole"] for times in load.times for t in times):
            if time.time() > deadline or load.errors:
                raise RuntimeError("no token after recovery: %s" % load.errors)
            time.sleep(0.01)
        next_token = min(t for times in load.times for t in times if t > marks["whole"])
    finally:
        load.cancel()
    return {
        "detection": marks["first_detected"] - killed,
        "replacement started": marks["restarted"] - marks["first_detected"],
        "group re-formed": marks["reformed"] - marks["restarted"],
        "whole again": marks["whole"] - marks["reformed"],
        "next token": next_token - marks["whole"],
        "total (kill -> token)": next_token - killed,
    }


def svg_plot(rows, path, cores):
    """Three small line charts (CPU us per step, bytes per step to the ranks, start-up s) against ranks."""
    panels = [("coordinator CPU per step (us)", [r["cpu_us_sched"] for r in rows]),
              ("Step bytes to all ranks per step", [r["step_bytes"] * r["ranks"] for r in rows]),
              ("start-up to ready (s)", [r["startup"] for r in rows])]
    ranks = [r["ranks"] for r in rows]
    w, h, pad_l, pad_r, pad_t, pad_b = 300, 220, 58, 14, 34, 40
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
             'font-size="11">' % (w * len(panels), h + 22),
             '<rect width="100%" height="100%" fill="white"/>',
             '<text x="8" y="%d" fill="#555">tessera serve --device null, llama3-70b, 64 running sequences, '
             'tp = min(8, ranks), pp = ranks / tp; one machine, %d cores</text>' % (h + 16, cores)]
    lo, hi = min(ranks), max(ranks)
    import math
    for k, (title, ys) in enumerate(panels):
        x0 = k * w
        top = max(ys) * 1.15 or 1.0
        px = lambda r: x0 + pad_l + (math.log2(r) - math.log2(lo)) / (math.log2(hi) - math.log2(lo)) * (
            w - pad_l - pad_r)
        py = lambda y: pad_t + (1 - y / top) * (h - pad_t - pad_b)
        parts.append('<text x="%d" y="18" font-weight="bold">%s</text>' % (x0 + pad_l - 30, title))
        parts.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000"/>' % (
            x0 + pad_l, py(0), x0 + w - pad_r, py(0)))
        parts.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000"/>' % (
            x0 + pad_l, py(0), x0 + pad_l, pad_t))
        for i in range(5):
            y = top * i / 4
            parts.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>' % (
                x0 + pad_l, py(y), x0 + w - pad_r, py(y)))
            parts.append('<text x="%.1f" y="%.1f" text-anchor="end">%s</text>' % (
                x0 + pad_l - 4, py(y) + 4, ("%.0f" % y) if top >= 10 else ("%.2f" % y)))
        for r in ranks:
            parts.append('<text x="%.1f" y="%.1f" text-anchor="middle">%d</text>' % (px(r), py(0) + 14, r))
        parts.append('<text x="%.1f" y="%.1f" text-anchor="middle">ranks</text>' % (
            x0 + (pad_l + w - pad_r) / 2, py(0) + 28))
        points = " ".join("%.1f,%.1f" % (px(r), py(y)) for r, y in zip(ranks, ys))
        parts.append('<polyline points="%s" fill="none" stroke="#1f77b4" stroke-width="2"/>' % points)
        for r, y in zip(ranks, ys):
            parts.append('<circle cx="%.1f" cy="%.1f" r="3" fill="#1f77b4"/>' % (px(r), py(y)))
    parts.append("</svg>")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", default=os.path.join(ROOT, "build", "tessera"))
    parser.add_argument("--quick", action="store_true", help="shorter windows (fewer steps)")
    parser.add_argument("--svg", default=os.path.join(ROOT, "docs", "null-device-scaling.svg"))
    parser.add_argument("--parts", default="abcd", help="which of the parts a, b, c, d to run")
    parser.add_argument("--seqs", default="1,64,256", help="running sequences measured in part a")
    args = parser.parse_args()
    window = 4 if args.quick else 20
    cores = os.cpu_count()
    print("machine: %d cores; window: %d steps per measurement" % (cores, window))
    sys.stdout.flush()
    work = tempfile.mkdtemp(prefix="tessera_null_scale_")
    m405 = make_model(args.tessera, "llama3.1-405b", work)

    if "a" in args.parts or "c" in args.parts:
        rows, mem = [], None
        for n in [int(x) for x in args.seqs.split(",")]:
            server, startup = serve(args.tessera, m405, 8, 2)
            r = measure(server, 16, n, window, snapshot_memory=(n == 64))
            rows.append(r)
            if n == 64:
                mem = r["memory"]
        if "a" in args.parts:
            print_costs(rows, "\na. llama3.1-405b at tp 8 x pp 2 (16 ranks): coordinator cost per step")
        if "c" in args.parts:
            if mem is None:
                raise RuntimeError("part c reads memory during the 64-sequence run: include 64 in --seqs")
            print("\nc. resident memory of each process at 16 ranks, serving 64 sequences (MiB)")
            print("  %-12s %9s %9s" % ("process", "VmRSS", "VmHWM"))
            for who, m in mem.items():
                print("  %-12s %9.1f %9.1f" % (who if who == "coordinator" else "rank %d" % who, m["VmRSS"],
                                                m["VmHWM"]))
            ws = [m for who, m in mem.items() if who != "coordinator"]
            print("  workers: VmRSS total %.0f MiB, max %.1f; VmHWM max %.1f" % (
                sum(m["VmRSS"] for m in ws), max(m["VmRSS"] for m in ws), max(m["VmHWM"] for m in ws)))
            sys.stdout.flush()

    if "b" in args.parts:
        startups = []
        for _ in range(1 if args.quick else 3):
            server, startup = serve(args.tessera, m405, 8, 2)
            startups.append(startup)
            server.stop(signal.SIGTERM, timeout=120)
        server, startup = serve(args.tessera, m405, 8, 2)
        startups.append(startup)
        try:
            phases = recovery(server, kill_rank=9)  # stage 1, tp rank 1: not the output rank
        finally:
            server.stop(signal.SIGTERM, timeout=120)
        print("\nb. llama3.1-405b at tp 8 x pp 2 (16 ranks): start-up and recovery")
        print("  start-up (process start -> ready event), %d runs: %s s" % (
            len(startups), ", ".join("%.2f" % s for s in startups)))
        print("  rank 9 SIGKILLed under 8 streams:")
        for phase, seconds in phases.items():
            print("    %-24s %8.1f ms" % (phase, 1e3 * seconds))
        sys.stdout.flush()

    if "d" in args.parts:
        m70 = make_model(args.tessera, "llama3-70b", work)
        rows = []
        for ranks in (2, 4, 8, 16, 32):
            tp = min(8, ranks)
            server, startup = serve(args.tessera, m70, tp, ranks // tp)
            r = measure(server, ranks, 64, window)
            r["startup"] = startup
            rows.append(r)
        print_costs(rows, "\nd. llama3-70b, 64 running sequences, tp = min(8, ranks), pp = ranks / tp")
        print("  start-up (s): " + ", ".join("%d ranks %.2f" % (r["ranks"], r["startup"]) for r in rows))
        svg_plot(rows, args.svg, cores)
        print("  plot: %s" % args.svg)


if __name__ == "__main__":
    main()
