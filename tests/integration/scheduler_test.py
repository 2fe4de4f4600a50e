"""The scheduler through a real `tessera serve` (tiny model, grpcio clients): a KV cache that holds two
sequences serving four long requests at once preempts and resumes them, every request completes with the
greedy tokens it gets alone, and no block is left in use, at (tp, pp) = (1, 1) and (2, 2), with the prefix
cache on and off; requests sharing a long prefix compute it once; a seeded request samples the same tokens
alone and in a batch of 64, at either split.

usage: .venv/bin/python tests/integration/scheduler_test.py --tessera build/tessera --workdir DIR [-k PATTERN]
"""
import argparse
import concurrent.futures
import os
import sys
import unittest
import urllib.request

import grpc

import harness

ARGS = None
# Four prompts of 20 tokens (2 blocks of 16), each asking for 180 more: 200 tokens = 13 blocks a sequence.
PROMPTS = [[128000] + [1000 + 37 * i + j for j in range(19)] for i in range(4)]
MAX_TOKENS = 180
BLOCKS_PER_SEQ = 13


def tiny_model():
    return harness.make_tiny(ARGS.tessera, ARGS.workdir)


def complete(address, prompt, max_tokens=MAX_TOKENS):
    pb, pb_grpc, _, _ = harness.stubs()
    stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(address))
    request = pb.CompleteRequest(token_ids=pb.TokenIds(ids=prompt), max_tokens=max_tokens, temperature=0.0,
                                 ignore_eos=True)
    return list(stub.Complete(request, timeout=300).choices[0].token_ids)


def metric(server, name):
    text = urllib.request.urlopen("http://%s/metrics" % server.http_address, timeout=30).read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no %s in /metrics" % name)


class PreemptionTest(unittest.TestCase):
    def check(self, tp, pp, caching):
        # The KV cache budget per rank that makes 2 sequences of 13 blocks fit and 3 not: 32 blocks, whose
        # size per rank shrinks with the KV heads (tp) and layers (pp) each rank holds.
        kv = "%dKiB" % (1024 // (tp * pp))
        extra = ["--http-port", "0", "--kv-cache-memory", kv, "--max-num-seqs", "4"]
        if not caching:
            extra.append("--no-enable-prefix-caching")
        server = harness.Server(ARGS.tessera, tiny_model(), tp, pp, extra).start()
        try:
            blocks = server.ready["kv_blocks"]
            self.assertGreaterEqual(blocks, 2 * BLOCKS_PER_SEQ, server.ready)
            self.assertLess(blocks, 3 * BLOCKS_PER_SEQ, server.ready)
            alone = [complete(server.address, p) for p in PROMPTS]
            with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
                together = list(pool.map(lambda p: complete(server.address, p), PROMPTS))
            for i in range(len(PROMPTS)):
                self.assertEqual(len(together[i]), MAX_TOKENS)
                self.assertEqual(together[i], alone[i], "request %d differs when preempted" % i)
            self.assertGreater(metric(server, "tessera:num_preemptions_total"), 0)
            self.assertEqual(metric(server, "tessera:kv_cache_usage_perc"), 0.0)  # no block leaked
            self.assertEqual(metric(server, "tessera:num_requests_running"), 0.0)
            self.assertGreater(metric(server, "tessera:worker_busy_seconds"), 0.0)  # rank 0, from its heartbeats
        finally:
            self.assertEqual(server.stop(), 0, "".join(server.stderr))

    def test_tp1_pp1_with_prefix_caching(self):
        self.check(1, 1, True)

    def test_tp1_pp1_without_prefix_caching(self):
        self.check(1, 1, False)

    def test_tp2_pp2_with_prefix_caching(self):
        self.check(2, 2, True)

    def test_tp2_pp2_without_prefix_caching(self):
        self.check(2, 2, False)


class PrefixCacheTest(unittest.TestCase):
    def test_a_shared_prefix_is_computed_once_and_evicted_under_pressure(self):
        server = harness.Server(ARGS.tessera, tiny_model(), 1, 1,
                                ["--http-port", "0", "--kv-cache-memory", "1MiB"]).start()
        try:
            prefix = PROMPTS[0] + [2000 + j for j in range(28)]  # 48 tokens: 3 full blocks
            first = complete(server.address, prefix + [5, 6], max_tokens=8)
            queries = metric(server, "tessera:prefix_cache_queries_total")
            hits = metric(server, "tessera:prefix_cache_hits_total")
            again = complete(server.address, prefix + [5, 6], max_tokens=8)
            self.assertEqual(again, first)
            self.assertEqual(metric(server, "tessera:prefix_cache_hits_total") - hits, 48)
            self.assertEqual(metric(server, "tessera:prefix_cache_queries_total") - queries, 50)  # vLLM counts the prompt
            # Pressure: requests that need the whole cache evict the prefix; it is computed again, same tokens.
            for p in PROMPTS:
                complete(server.address, p, max_tokens=400)
            hits = metric(server, "tessera:prefix_cache_hits_total")
            third = complete(server.address, prefix + [5, 6], max_tokens=8)
            self.assertEqual(third, first)
            self.assertEqual(metric(server, "tessera:prefix_cache_hits_total") - hits, 0)
            self.assertEqual(metric(server, "tessera:kv_cache_usage_perc"), 0.0)
        finally:
            self.assertEqual(server.stop(), 0, "".join(server.stderr))


class SeededSamplingTest(unittest.TestCase):
    """A seeded request draws the same tokens alone and among 63 others (batch invariance), at (1, 1) and
    (2, 2): its random numbers depend only on its seed and position, and its logits do not depend on the batch
    while every step stays on the CPU's GEMV path (at most 256 tokens a step, hence the token budget: larger
    prefill steps go through oneDNN, whose different rounding, ~1e-6 of a logit, can move a draw that falls on
    a boundary of the cumulative distribution)."""

    def check(self, tp, pp):
        server = harness.Server(ARGS.tessera, tiny_model(), tp, pp,
                                ["--kv-cache-memory", "%dMiB" % (64 // (tp * pp)), "--max-num-seqs", "64",
                                 "--max-num-batched-tokens", "256"]).start()
        pb, pb_grpc, _, _ = harness.stubs()
        stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(server.address))

        def sample(i, seed):
            request = pb.CompleteRequest(token_ids=pb.TokenIds(ids=PROMPTS[i % 4][: 5 + i % 13]), max_tokens=24,
                                         temperature=0.8, top_p=0.9, top_k=50 if i % 2 else 0, seed=seed,
                                         ignore_eos=True)
            return list(stub.Complete(request, timeout=300).choices[0].token_ids)

        try:
            alone = sample(0, 1234)
            with concurrent.futures.ThreadPoolExecutor(64) as pool:
                crowd = list(pool.map(lambda i: sample(i, 1234 if i == 0 else 99 + i), range(64)))
            self.assertEqual(crowd[0], alone)
            self.assertEqual(len(set(tuple(t) for t in crowd)), 64, "the others should differ")
        finally:
            self.assertEqual(server.stop(), 0, "".join(server.stderr))

    def test_alone_and_among_63_others_at_tp1_pp1(self):
        self.check(1, 1)

    def test_alone_and_among_63_others_at_tp2_pp2(self):
        self.check(2, 2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--workdir", required=True)
    ARGS, rest = parser.parse_known_args()
    os.makedirs(ARGS.workdir, exist_ok=True)
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
