"""The null device (--device null) at real shapes: Llama 3.1 405B at tp 8 x pp 2 (16 worker processes) and
Llama 3.3 70B at tp 8 and at tp 4 x pp 2 come up from a `make-model --config-only` directory, report per-rank
"would load" and accounted weight bytes, size a KV cache as an H200 would, serve 32 concurrent gRPC requests
and one through the OpenAI HTTP API with the null sampler's deterministic tokens, stay small in memory, and
shut down cleanly. Full layer counts (126 and 80). One ctest entry per layout.

usage: null_device_test.py --tessera build/tessera --workdir DIR [unittest args]
"""
import argparse
import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import unittest

import grpc

import harness

ARGS = None
TOKENIZER_DIR = os.path.join(harness.REPO, "tests", "data", "llama-3.1-tokenizer")
VOCAB = 128256
H200_BYTES = 143771 << 20  # kernels/null/null_backend.h: kNullDefaultMemoryBytes
MAX_TOKENS = 4
REQUESTS = 32


def null_token(prompt, position, vocab=VOCAB):
    """kernels/null/null_backend.h's NullToken, written again from its definition: FNV-1a 64 over the prompt
    ids' little-endian int32 bytes, xor the position, times the FNV prime, modulo vocab - vocab // 16."""
    h, prime, mask = 14695981039346656037, 1099511628211, (1 << 64) - 1
    for token in prompt:
        for b in range(4):
            h ^= (token >> (8 * b)) & 0xFF
            h = (h * prime) & mask
    h ^= position
    h = (h * prime) & mask
    return h % (vocab - vocab // 16)


def expected_tokens(prompt, count=MAX_TOKENS):
    return [null_token(prompt, len(prompt) + i) for i in range(count)]


def make_config_only(preset):
    out = os.path.join(ARGS.workdir, preset)
    if not os.path.exists(os.path.join(out, "config.json")):
        subprocess.run([ARGS.tessera, "make-model", "--preset", preset, "--out", out, "--config-only",
                        "--tokenizer", TOKENIZER_DIR], check=True, capture_output=True, timeout=60)
    return out


def worker_pids(server):
    """The server's children, spawned by any of its threads (/proc/PID/task/*/children)."""
    pids = []
    task_dir = "/proc/%d/task" % server.proc.pid
    for task in os.listdir(task_dir):
        try:
            with open(os.path.join(task_dir, task, "children")) as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return sorted(pids)


def resident_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class NullLayoutTest(unittest.TestCase):
    PRESET = None
    TP = PP = 1

    def run_layout(self):
        model = make_config_only(self.PRESET)
        world = self.TP * self.PP
        server = harness.Server(ARGS.tessera, model, tp=self.TP, pp=self.PP,
                                extra=["--device", "null", "--kv-cache-memory", "auto", "--max-num-seqs", "32",
                                       "--http-port", "0", "--step-timeout", "300s", "--comm-timeout", "120s"])
        try:
            server.start(timeout=300)
            server.worker_pids = worker_pids(server)
            self.assertEqual(len(server.worker_pids), world, "".join(server.stderr[-30:]))
            self.check_start_up_figures(server, world)
            self.check_grpc(server)
            self.check_http(server)
            # The same processes served throughout (no worker was lost and replaced), and with no backing for
            # weights or KV cache each stays at tens of MB.
            self.assertEqual(worker_pids(server), server.worker_pids, "".join(server.stderr[-30:]))
            for pid in server.worker_pids:
                kib = resident_kib(pid)
                self.assertLess(kib, 256 * 1024, "worker %d is resident with %d KiB" % (pid, kib))
        finally:
            code = server.stop(signal.SIGTERM, timeout=60)
        self.assertEqual(code, 0, "".join(server.stderr[-50:]))
        for pid in server.worker_pids:
            self.assertFalse(harness.pid_alive(pid), "worker pid %d outlived the server" % pid)

    def check_start_up_figures(self, server, world):
        log = "".join(server.stderr)
        loads = {int(r): (int(read), int(held)) for r, read, held in re.findall(
            r"worker rank (\d+): would load (\d+) bytes of weights; (\d+) bytes of weights accounted", log)}
        self.assertEqual(sorted(loads), list(range(world)), log[-3000:])
        budgets = {int(r): (int(block), int(budget), int(blocks)) for r, block, budget, blocks in re.findall(
            r"worker rank (\d+): KV blocks of (\d+) bytes; a budget of (\d+) bytes holds (\d+)", log)}
        self.assertEqual(sorted(budgets), list(range(world)))
        # Each rank's KV budget is an H200's 0.9 less its weights and activations, and the group takes the
        # smallest number of blocks.
        for rank, (read, held) in loads.items():
            block, budget, blocks = budgets[rank]
            self.assertGreater(held, 0)
            self.assertLess(held + budget, int(H200_BYTES * 0.9) + 1)
            self.assertGreater(budget, H200_BYTES * 0.9 - held - (8 << 30))  # activations: a few GiB at most
            self.assertEqual(blocks, budget // block)
        self.assertEqual(server.ready["kv_blocks"], min(b for _, _, b in budgets.values()))

    def check_grpc(self, server):
        pb, pb_grpc, _, _ = harness.stubs()
        stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(server.address))
        prompts = [[128000] + [1000 + 37 * i + j for j in range(2 + i % 13)] for i in range(REQUESTS)]

        def complete(i):
            request = pb.CompleteRequest(token_ids=pb.TokenIds(ids=prompts[i]), max_tokens=MAX_TOKENS,
                                         temperature=0.0 if i % 2 == 0 else 0.8, seed=i, ignore_eos=True)
            return list(stub.Complete(request, timeout=600).choices[0].token_ids)

        with concurrent.futures.ThreadPoolExecutor(REQUESTS) as pool:
            results = list(pool.map(complete, range(REQUESTS)))
        for i, got in enumerate(results):
            self.assertEqual(got, expected_tokens(prompts[i]), "request %d" % i)

    def check_http(self, server):
        import openai
        from tokenizers import Tokenizer
        client = openai.OpenAI(base_url="http://%s/v1" % server.http_address, api_key="unused", max_retries=0,
                               timeout=600)
        prompt = [128000, 9906, 1917]
        reply = client.completions.create(model=server.ready["model"], prompt=prompt, max_tokens=MAX_TOKENS,
                                          temperature=0)
        tokenizer = Tokenizer.from_file(os.path.join(TOKENIZER_DIR, "tokenizer.json"))
        self.assertEqual(reply.choices[0].text, tokenizer.decode(expected_tokens(prompt)))
        self.assertEqual(reply.usage.completion_tokens, MAX_TOKENS)


class Llama405bTp8Pp2Test(NullLayoutTest):
    PRESET, TP, PP = "llama3.1-405b", 8, 2

    def test_serves_at_16_ranks(self):
        self.run_layout()


class Llama70bTp8Test(NullLayoutTest):
    PRESET, TP, PP = "llama3-70b", 8, 1

    def test_serves_at_tp_8(self):
        self.run_layout()


class Llama70bTp4Pp2Test(NullLayoutTest):
    PRESET, TP, PP = "llama3-70b", 4, 2

    def test_serves_at_tp_4_pp_2(self):
        self.run_layout()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--workdir", required=True)
    ARGS, rest = parser.parse_known_args()
    os.makedirs(ARGS.workdir, exist_ok=True)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
