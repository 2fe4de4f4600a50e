"""API-key refusals under load (issue 19): while 200 keyless clients flood the gRPC port, then the HTTP port, keyed
clients' p99 latency stays within 2x of an unloaded run, and every flood request is refused (UNAUTHENTICATED /
401), never served. Runs bench/auth_flood_bench.py --quick (unloaded and flooded phases of 4 s, alternated:
unloaded, flooded, unloaded, flooded, unloaded) and compares the p99 of all flooded phases' latencies with that
of all unloaded ones. The flood runs at SCHED_IDLE, standing in for clients on other machines (the bench's
docstring and docs/security.md say why).

This test asserts on time, which tests otherwise never do: the issue asks for exactly this bound. It runs alone
(ctest RUN_SERIAL), and a measurement that misses the bound is repeated, up to ATTEMPTS in all: on a shared
2-core machine one run can miss for reasons outside the server (the bench's table, printed here, tells which:
step ms and engine mean ms against the client's p99), while a server whose refusals cost keyed clients misses
every time. A flood request that is served, or answered anything but a refusal, fails at once.

usage: security_load_test.py --tessera build/tessera --workdir DIR [unittest args]
"""
import argparse
import json
import os
import subprocess
import sys
import unittest

import harness

ARGS = None
BOUND = 2.0
ATTEMPTS = 3


class RefusalsUnderLoadTest(unittest.TestCase):
    def measure(self, attempt):
        """One bench run; returns {transport: ratio} after checking that every flood request was refused."""
        out = os.path.join(ARGS.workdir, "auth_flood-%d.json" % attempt)
        argv = [sys.executable, os.path.join(harness.REPO, "bench", "auth_flood_bench.py"), "--tessera",
                ARGS.tessera, "--workdir", ARGS.workdir, "--quick", "--json", out]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=280)
        print(result.stdout, result.stderr[-4000:], sep="\n", flush=True)
        self.assertEqual(result.returncode, 0, "the bench failed or found problems:\n" + result.stderr[-4000:])
        with open(out) as f:
            report = json.load(f)
        self.assertEqual(report["problems"], [])
        pooled = {r["transport"]: r for r in report["rows"] if r["phase"] == "flooded, all"}
        self.assertEqual(sorted(pooled), ["grpc", "http"])
        for transport, row in pooled.items():
            self.assertGreater(row["flood_refused"], 0, transport)
            self.assertEqual(row["flood_success"], 0, transport)
            self.assertEqual(row["flood_other"], 0, transport)
        return {transport: row["p99_ratio"] for transport, row in pooled.items()}

    def test_keyed_p99_stays_within_twice_unloaded_and_no_flood_request_is_served(self):
        missed = {"grpc", "http"}
        history = []
        for attempt in range(ATTEMPTS):
            ratios = self.measure(attempt)
            history.append(ratios)
            missed = {t for t in missed if ratios[t] > BOUND}
            if not missed:
                return
        self.fail("keyed p99 flooded / unloaded over %.1fx on %s in all %d attempts: %s" % (
            BOUND, sorted(missed), ATTEMPTS, history))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--workdir", required=True)
    ARGS, rest = parser.parse_known_args()
    os.makedirs(ARGS.workdir, exist_ok=True)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
