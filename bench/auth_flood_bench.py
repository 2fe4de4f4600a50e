"""Keyed clients' latency while keyless clients flood the port: does refusing requests without an API key cost the
clients that have one? One `tessera serve` of the tiny preset (tp = 1, CPU) with --api-key-file, both ports.

For each transport (gRPC through grpcio, HTTP through http.client with keep-alive), --keyed-clients keyed clients
each send sequential small completions (4 prompt tokens, max_tokens 4, greedy, ignore_eos) and their latencies
are taken in phases: unloaded, flooded, unloaded, ... (--rounds flooded phases, each between two unloaded ones,
so that both kinds see the same machine state). In a flooded phase --flood-clients keyless clients (spread over
--flood-processes processes, each an asyncio loop, so that the Python GIL does not throttle the flood; one
connection each) hammer the same port as fast as they can. Every flood answer must be UNAUTHENTICATED / 401:
a success or any other answer is counted and fails the run.

Printed per phase, then pooled over every phase of a kind ("flooded, all": the figure the ctest bounds): keyed
requests, p50 / p99 / max latency, the flood's refusals per second and the coordinator's CPU per refusal (above
the unloaded phases'), p99 over the unloaded p99 of that transport, the coordinator's and the workers' CPU time
(user + system, /proc), the flood's, and the coordinator's largest thread count. --json FILE writes the same
figures for tests/integration/security_load_test.py. --quick: 4 s phases (default 10 s).

The flood runs at SCHED_IDLE (--flood-policy idle): on a small machine the flood's own Python processes would
otherwise take the CPU from the worker, which measures the load generator rather than the server (a remote flood
costs the server only its answers). --burn-control adds a control phase in which the flood's processes only spin,
sending nothing: what the load generator's own CPU costs the keyed clients. Each phase's row also gives the
engine's own mean request latency and decode step (from /metrics), which tell the engine's share of a slowdown
from the front ends'.

usage: .venv/bin/python bench/auth_flood_bench.py --tessera build/tessera [--workdir DIR] [--duration 10]
                                                  [--flood-clients 200] [--quick] [--json FILE]
"""
import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402

KEYS = ("sk-bench-keyed-0001", "sk-bench-keyed-0002")
PROMPT = [1, 2, 3, 4]
MAX_TOKENS = 4
COMPLETE_METHOD = "/tessera.v1.InferenceService/Complete"
HTTP_BODY = json.dumps({"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}).encode()


def proc_stat(pid):
    """(user + system CPU seconds so far, thread count) of a process."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[17])


def server_cpu(server):
    """CPU seconds so far of the coordinator (the `tessera serve` process) and of its workers together."""
    return proc_stat(server.proc.pid)[0], sum(proc_stat(w)[0] for w in server.worker_pids)


ENGINE_HISTOGRAMS = ("tessera:worker_step_seconds", "tessera:control_plane_seconds",
                     "tessera:e2e_request_latency_seconds")


def engine_snapshot(server):
    """(sum, count) of each of ENGINE_HISTOGRAMS so far, from the open /metrics."""
    host, port = server.http_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    values = {}
    for line in text.splitlines():
        if line.startswith(ENGINE_HISTOGRAMS) and ("_sum" in line or "_count" in line):
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = values.get(name.split("{")[0], 0.0) + float(value)
    return {h: (values.get(h + "_sum", 0.0), values.get(h + "_count", 0.0)) for h in ENGINE_HISTOGRAMS}


def mean_ms(before, after, histogram):
    (s0, n0), (s1, n1) = before[histogram], after[histogram]
    return (s1 - s0) * 1e3 / (n1 - n0) if n1 > n0 else float("nan")


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * (len(sorted_values) - 1)))))
    return sorted_values[i]


# --- keyed clients (threads of this process) ---------------------------------------------------------------

class GrpcKeyed:
    def __init__(self, address, key):
        import grpc
        pb, pb_grpc, _, _ = harness.stubs()
        self.channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        self.stub = pb_grpc.InferenceServiceStub(self.channel)
        self.request = pb.CompleteRequest(token_ids=pb.TokenIds(ids=PROMPT), max_tokens=MAX_TOKENS,
                                          temperature=0.0, ignore_eos=True)
        self.metadata = (("authorization", "Bearer " + key),)

    def call(self):
        reply = self.stub.Complete(self.request, metadata=self.metadata, timeout=60)
        if len(reply.choices[0].token_ids) != MAX_TOKENS:
            raise RuntimeError("a keyed gRPC completion came back with %d tokens" % len(reply.choices[0].token_ids))

    def close(self):
        self.channel.close()


class HttpKeyed:
    def __init__(self, host, port, key):
        self.host, self.port = host, port
        self.headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key}
        self.connection = http.client.HTTPConnection(host, port, timeout=60)

    def call(self):
        self.connection.request("POST", "/v1/completions", HTTP_BODY, self.headers)
        response = self.connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError("a keyed HTTP completion got %d: %s" % (response.status, body[:200]))
        if json.loads(body)["usage"]["completion_tokens"] != MAX_TOKENS:
            raise RuntimeError("a keyed HTTP completion came back short: %s" % body[:200])

    def close(self):
        self.connection.close()


def run_keyed(clients, duration):
    """Each client calls in a loop for `duration` seconds; returns (sorted latencies in s, errors)."""
    latencies, errors = [], []
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def loop(client):
        mine = []
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                client.call()
                mine.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 -- reported, fails the run
            with lock:
                errors.append(repr(e))
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(latencies), errors


# --- the flood (separate processes, one asyncio loop each) -------------------------------------------------

async def grpc_flood_client(address, request, state, counts):
    import grpc
    async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        complete = channel.unary_unary(COMPLETE_METHOD)  # raw bytes both ways: no stubs needed here
        await channel.channel_ready()
        state["connected"] += 1
        await state["go"].wait()
        while not state["stop"]:
            try:
                await complete(request, timeout=30)
                counts["success"] += 1
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    counts["refused"] += 1
                else:
                    counts["other"] += 1
                    counts.setdefault("first_other", "%s: %s" % (e.code(), e.details()))


async def http_flood_client(host, port, state, counts):
    request = (b"POST /v1/completions HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % (host.encode(), port, len(HTTP_BODY))) + HTTP_BODY
    reader, writer = await asyncio.open_connection(host, port)
    state["connected"] += 1
    await state["go"].wait()
    while not state["stop"]:
        writer.write(request)
        status_line = await reader.readline()
        if not status_line:  # the server closed the connection: count it and connect again
            counts["other"] += 1
            counts.setdefault("first_other", "connection closed by the server")
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
            continue
        length, close = 0, False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"connection" and value.strip().lower() == b"close":
                close = True
        await reader.readexactly(length)
        status = int(status_line.split()[1])
        if status == 401:
            counts["refused"] += 1
        elif 200 <= status < 300:
            counts["success"] += 1
        else:
            counts["other"] += 1
            counts.setdefault("first_other", status_line.decode().strip())
        if close:
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
    writer.close()


async def flood(transport, address, clients, ready, go, stop):
    state = {"connected": 0, "stop": False, "go": asyncio.Event()}
    counts = {"success": 0, "refused": 0, "other": 0}
    if transport == "grpc":
        tasks = [asyncio.ensure_future(grpc_flood_client(address, FLOOD_GRPC_REQUEST, state, counts))
                 for _ in range(clients)]
    else:
        host, port = address.rsplit(":", 1)
        tasks = [asyncio.ensure_future(http_flood_client(host, int(port), state, counts)) for _ in range(clients)]
    while state["connected"] < clients:
        await asyncio.sleep(0.01)
        for t in tasks:
            if t.done() and t.exception() is not None:
                raise t.exception()
    ready.put("ready")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, go.wait)
    start, cpu0 = time.perf_counter(), sum(os.times()[:2])
    state["go"].set()
    await loop.run_in_executor(None, stop.wait)
    state["stop"] = True
    elapsed, cpu = time.perf_counter() - start, sum(os.times()[:2]) - cpu0
    counts_at_stop = dict(counts)
    await asyncio.gather(*tasks, return_exceptions=True)
    counts_at_stop.update(seconds=elapsed, cpu_s=cpu)
    return counts_at_stop


FLOOD_GRPC_REQUEST = b""


def burn(ready, go, stop):
    """The control: spin as a flood process would, without sending anything."""
    ready.put("ready")
    go.wait()
    start, cpu0 = time.perf_counter(), sum(os.times()[:2])
    while not stop.is_set():
        deadline = time.perf_counter() + 0.01
        while time.perf_counter() < deadline:
            pass
    return {"success": 0, "refused": 0, "other": 0, "seconds": time.perf_counter() - start,
            "cpu_s": sum(os.times()[:2]) - cpu0}


def flood_process(transport, address, clients, policy, nice, request, ready, go, stop, results):
    global FLOOD_GRPC_REQUEST
    FLOOD_GRPC_REQUEST = request
    if policy == "idle":  # before any thread starts, so grpc's threads inherit it
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    os.nice(nice)
    if transport == "burn":
        results.put(burn(ready, go, stop))
        return
    try:
        results.put(asyncio.run(flood(transport, address, clients, ready, go, stop)))
    except Exception as e:  # noqa: BLE001 -- handed to the parent, which fails the run
        ready.put("failed")
        results.put({"error": repr(e)})


class Flood:
    """--flood-clients keyless clients over --flood-processes processes, connected, then released together."""

    def __init__(self, ctx, transport, address, args, request):
        self.ready, self.results = ctx.Queue(), ctx.Queue()
        self.go, self.stop_event = ctx.Event(), ctx.Event()
        n = args.flood_processes
        per = [args.flood_clients // n + (1 if i < args.flood_clients % n else 0) for i in range(n)]
        self.processes = [ctx.Process(target=flood_process, daemon=True,
                                      args=(transport, address, c, args.flood_policy, args.flood_nice, request,
                                            self.ready, self.go, self.stop_event, self.results))
                          for c in per if c > 0]
        for p in self.processes:
            p.start()
        for _ in self.processes:
            if self.ready.get(timeout=120) != "ready":
                raise RuntimeError("a flood process failed: %s" % self.results.get(timeout=10))
        self.go.set()

    def stop(self):
        """Stops the flood; returns the summed counts (success, refused, other, seconds = the longest run)."""
        self.stop_event.set()
        total = {"success": 0, "refused": 0, "other": 0, "seconds": 0.0, "cpu_s": 0.0}
        for _ in self.processes:
            counts = self.results.get(timeout=120)
            if "error" in counts:
                raise RuntimeError("a flood process failed: %s" % counts["error"])
            for k in ("success", "refused", "other", "cpu_s"):
                total[k] += counts[k]
            total["seconds"] = max(total["seconds"], counts["seconds"])
            if "first_other" in counts:
                total.setdefault("first_other", counts["first_other"])
        for p in self.processes:
            p.join(30)
        return total


# --- phases ------------------------------------------------------------------------------------------------

def run_phase(transport, phase, keyed, server, args, ctx, flood_address, flood_request):
    server_pid = server.proc.pid
    flood = None
    if phase != "unloaded":
        flood = Flood(ctx, "burn" if phase == "burn" else transport, flood_address, args, flood_request)
    if flood is not None:
        time.sleep(args.ramp)  # let the flood reach its pace before timing
    threads_max = [proc_stat(server_pid)[1]]
    sampling = threading.Event()

    def sample():
        while not sampling.wait(0.1):
            threads_max[0] = max(threads_max[0], proc_stat(server_pid)[1])

    sampler = threading.Thread(target=sample)
    sampler.start()
    engine0, (cpu0, workers0), t0 = engine_snapshot(server), server_cpu(server), time.perf_counter()
    latencies, errors = run_keyed(keyed, args.duration)
    (cpu1, workers1), t1, engine1 = server_cpu(server), time.perf_counter(), engine_snapshot(server)
    sampling.set()
    sampler.join()
    counts = flood.stop() if flood is not None else None
    row = {"transport": transport, "phase": phase, "keyed_requests": len(latencies), "latencies": latencies,
           "p50_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3,
           "max_ms": (latencies[-1] if latencies else float("nan")) * 1e3, "keyed_errors": errors,
           "coordinator_cpu_s": cpu1 - cpu0, "worker_cpu_s": workers1 - workers0, "wall_s": t1 - t0,
           "coordinator_threads_max": threads_max[0],
           "engine_e2e_ms": mean_ms(engine0, engine1, "tessera:e2e_request_latency_seconds"),
           "step_ms": mean_ms(engine0, engine1, "tessera:worker_step_seconds"),
           "control_plane_ms": mean_ms(engine0, engine1, "tessera:control_plane_seconds")}
    if counts is not None:
        row.update(flood_refused=counts["refused"], flood_success=counts["success"], flood_other=counts["other"],
                   flood_first_other=counts.get("first_other"),

                   flood_cpu_s=counts["cpu_s"] * (t1 - t0) / max(counts["seconds"], 1e-9))
        if phase == "flooded":
            row["flood_refusals_per_s"] = counts["refused"] / max(counts["seconds"], 1e-9)
    return row


def summarize(rows):
    """Each phase's ratio against the mean unloaded p99, its coordinator CPU per refusal above the unloaded phases'
    mean, and one pooled row per kind of phase (all its latencies together) with the pooled ratio."""
    unloaded = [r for r in rows if r["phase"] == "unloaded"]
    unloaded_p99 = sum(r["p99_ms"] for r in unloaded) / len(unloaded)
    unloaded_cpu = sum(r["coordinator_cpu_s"] / r["wall_s"] for r in unloaded) / len(unloaded)
    for r in rows:
        if r["phase"] != "unloaded":
            r["p99_ratio"] = r["p99_ms"] / unloaded_p99
        if r["phase"] == "flooded" and r["flood_refused"]:
            r["coordinator_us_per_refusal"] = ((r["coordinator_cpu_s"] / r["wall_s"] - unloaded_cpu) * 1e6 /
                                               r["flood_refusals_per_s"])
    pooled = []
    for phase in ("unloaded", "flooded", "burn"):
        mine = [r for r in rows if r["phase"] == phase]
        if not mine:
            continue
        latencies = sorted(x for r in mine for x in r["latencies"])
        row = {"transport": rows[0]["transport"], "phase": phase + ", all", "keyed_requests": len(latencies),
               "p50_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3,
               "max_ms": latencies[-1] * 1e3, "keyed_errors": [], "latencies": latencies}
        for key in ("coordinator_cpu_s", "worker_cpu_s", "wall_s", "flood_cpu_s", "flood_refused", "flood_success",
                    "flood_other"):
            if key in mine[0]:
                row[key] = sum(r[key] for r in mine)
        row["coordinator_threads_max"] = max(r["coordinator_threads_max"] for r in mine)
        for key in ("engine_e2e_ms", "step_ms", "flood_refusals_per_s", "coordinator_us_per_refusal"):
            if key in mine[0]:
                row[key] = sum(r[key] for r in mine) / len(mine)
        pooled.append(row)
    for row in pooled[1:]:
        row["p99_ratio"] = row["p99_ms"] / pooled[0]["p99_ms"]
    return pooled


def print_table(rows):
    header = ("transport", "phase", "keyed reqs", "p50 ms", "p99 ms", "max ms", "engine mean ms", "step ms",
              "flood refusals/s", "coord us/refusal",
              "p99 / unloaded p99", "coord CPU s", "worker CPU s", "flood CPU s", "coord threads")
    lines = [header]
    for r in rows:
        lines.append((r["transport"], r["phase"], str(r["keyed_requests"]), "%.2f" % r["p50_ms"],
                      "%.2f" % r["p99_ms"], "%.2f" % r["max_ms"], "%.2f" % r["engine_e2e_ms"],
                      "%.2f" % r["step_ms"],
                      "%.0f" % r["flood_refusals_per_s"] if "flood_refusals_per_s" in r else "-",
                      "%.1f" % r["coordinator_us_per_refusal"] if "coordinator_us_per_refusal" in r else "-",
                      "%.2f" % r["p99_ratio"] if "p99_ratio" in r else "-",
                      "%.2f / %.1f s" % (r["coordinator_cpu_s"], r["wall_s"]), "%.2f" % r["worker_cpu_s"],
                      "%.2f" % r["flood_cpu_s"] if "flood_cpu_s" in r else "-", str(r["coordinator_threads_max"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        print("  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tessera", default=os.path.join(ROOT, "build", "tessera"))
    parser.add_argument("--workdir", default=None, help="where the tiny model and the key file go (default: a "
                                                        "fresh temporary directory)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each phase")
    parser.add_argument("--rounds", type=int, default=2, help="flooded phases per transport, each between two "
                                                               "unloaded ones")
    parser.add_argument("--flood-clients", type=int, default=200)
    parser.add_argument("--flood-processes", type=int, default=4)
    parser.add_argument("--flood-policy", choices=("idle", "normal"), default="idle",
                        help="the flood processes' scheduling policy: SCHED_IDLE (they get only the CPU time nothing "
                             "else wants, as if they ran on another machine) or SCHED_OTHER at --flood-nice")
    parser.add_argument("--flood-nice", type=int, default=0, help="niceness of the flood's processes")
    parser.add_argument("--burn-control", action="store_true",
                        help="also a control phase: the flood's processes spin at the same niceness without sending "
                             "anything (what the load generator's own CPU costs the keyed clients)")
    parser.add_argument("--keyed-clients", type=int, default=4)
    parser.add_argument("--transports", default="grpc,http")
    parser.add_argument("--ramp", type=float, default=0.5, help="seconds the flood runs before timing starts")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="one more argument for `tessera serve` (repeat: --serve-arg=--threads-per-worker "
                             "--serve-arg=1)")
    parser.add_argument("--quick", action="store_true", help="4 s phases (the ctest)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if args.quick:
        args.duration = 4.0

    workdir = args.workdir or tempfile.mkdtemp(prefix="tessera-auth-flood-")
    os.makedirs(workdir, exist_ok=True)
    model = harness.make_tiny(args.tessera, workdir)
    key_file = os.path.join(workdir, "keys.txt")
    with open(key_file, "w") as f:
        f.write("# auth_flood_bench: keyed clients alternate between the two\n%s\n%s\n" % KEYS)
    pb, _, _, _ = harness.stubs()
    flood_request = pb.CompleteRequest(token_ids=pb.TokenIds(ids=PROMPT), max_tokens=MAX_TOKENS, temperature=0.0,
                                       ignore_eos=True).SerializeToString()
    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds grpc channels

    server = harness.Server(args.tessera, model, 1, 1,
                            extra=["--api-key-file", key_file, "--http-port", "0"] + args.serve_arg).start()
    rows = []
    try:
        policy = "SCHED_IDLE" if args.flood_policy == "idle" else "nice %d" % args.flood_nice
        print("tessera serve (tiny, tp 1, CPU) pid %d; %d keyed clients per transport; flood: %d keyless clients "
              "in %d processes at %s; %.0f s phases" % (server.proc.pid, args.keyed_clients, args.flood_clients,
                                                         args.flood_processes, policy, args.duration))
        for transport in args.transports.split(","):
            if transport == "grpc":
                address = server.address
                keyed = [GrpcKeyed(address, KEYS[i % 2]) for i in range(args.keyed_clients)]
            else:
                address = server.http_address
                host, port = address.rsplit(":", 1)
                keyed = [HttpKeyed(host, int(port), KEYS[i % 2]) for i in range(args.keyed_clients)]
            for client in keyed:  # connect and warm up
                for _ in range(3):
                    client.call()
            mine = []
            phases = ["unloaded"] + ["flooded", "unloaded"] * args.rounds + ["burn", "unloaded"] * args.burn_control
            for phase in phases:
                mine.append(run_phase(transport, phase, keyed, server, args, ctx, address, flood_request))
            for client in keyed:
                client.close()
            rows += mine + summarize(mine)
    finally:
        code = server.stop()
    print_table(rows)
    problems = []
    for r in rows:
        if r["keyed_errors"]:
            problems.append("%s %s: keyed errors: %s" % (r["transport"], r["phase"], r["keyed_errors"][:3]))
        if r.get("flood_success") or r.get("flood_other"):
            problems.append("%s flooded: %d flood requests succeeded, %d got another answer (%s)" % (
                r["transport"], r["flood_success"], r["flood_other"], r["flood_first_other"]))
    if code != 0:
        problems.append("tessera serve exited with %s" % code)
    for p in problems:
        print("PROBLEM:", p)
    if args.json:
        for r in rows:
            del r["latencies"]
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "problems": problems, "args": vars(args)}, f, indent=1)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
