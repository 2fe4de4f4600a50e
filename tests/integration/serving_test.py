"""`tessera serve`, `coordinator` and `worker` as real processes on loopback, driven through a real gRPC
client: greedy tokens across tp x pp splits equal `tessera generate`, start-up in either order, impossible
splits, a worker killed mid-stream, a client cancelling mid-stream, and clean shutdown (no orphans).

usage: .venv/bin/python tests/integration/serving_test.py --tessera build/tessera --workdir DIR [-k PATTERN]
"""
import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import harness

ROOT = harness.REPO
TOKENIZER_DIR = os.path.join(ROOT, "tests", "data", "llama-3.1-tokenizer")
ARGS = None
SERVICE = "tessera.v1.InferenceService"
AWKWARD_CONFIG = {  # 3 layers, 6 heads over 2 KV heads, an odd vocabulary, tied embeddings
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 192, "intermediate_size": 336,
    "num_hidden_layers": 3, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 32,
    "vocab_size": 1001, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 100}}
TINY_PROMPTS = [[128000, 9906, 11, 1917], [128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679, 13],
                [128000, 40]]
AWKWARD_PROMPTS = [[1, 5, 9], [1, 100, 200, 300, 400, 500, 600, 700, 800, 900, 17], [1, 42]]
MAX_TOKENS = 12


def tessera(*argv, check=True, timeout=120):
    result = subprocess.run([ARGS.tessera, *argv], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError("tessera %s exited %d: %s" % (" ".join(argv), result.returncode, result.stderr))
    return result


def make_models():
    """The tiny preset (with the Llama 3.1 tokenizer) and the awkward config, made once per workdir."""
    tiny = os.path.join(ARGS.workdir, "tiny")
    awkward = os.path.join(ARGS.workdir, "awkward")
    if not os.path.exists(os.path.join(tiny, "config.json")):
        tessera("make-model", "--preset", "tiny", "--out", tiny, "--seed", "3", "--tokenizer", TOKENIZER_DIR)
    if not os.path.exists(os.path.join(awkward, "config.json")):
        os.makedirs(ARGS.workdir, exist_ok=True)
        config = os.path.join(ARGS.workdir, "awkward_config.json")
        with open(config, "w") as f:
            json.dump(AWKWARD_CONFIG, f)
        tessera("make-model", "--config", config, "--out", awkward, "--seed", "4")
    return tiny, awkward


def generate_reference(model, prompts):
    argv = ["generate", "--model", model, "--max-tokens", str(MAX_TOKENS)]
    for p in prompts:
        argv += ["--prompt-ids", ",".join(map(str, p))]
    return [json.loads(line)["token_ids"] for line in tessera(*argv).stdout.splitlines()]


def inference_stub(address):
    pb, pb_grpc, _, _ = harness.stubs()
    return pb, pb_grpc.InferenceServiceStub(grpc.insecure_channel(address))


def complete_ids(address, prompt, max_tokens=MAX_TOKENS, **fields):
    pb, stub = inference_stub(address)
    request = pb.CompleteRequest(token_ids=pb.TokenIds(ids=prompt), max_tokens=max_tokens, temperature=0.0,
                                 **fields)
    return list(stub.Complete(request, timeout=60).choices[0].token_ids)


def health(address, service):
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


class ServerTestCase(unittest.TestCase):
    def stop_cleanly(self, server):
        """SIGTERM the server: it exits 0 (stop() fails the test if it has not within its timeout) and none of
        its workers survive it."""
        self.assertEqual(server.stop(signal.SIGTERM, timeout=15), 0, "".join(server.stderr))
        for pid in server.worker_pids:
            self.assertFalse(harness.pid_alive(pid), "worker pid %d outlived the server" % pid)


class SplitsTest(ServerTestCase):
    """Greedy tokens through the gRPC API, requests in flight together, equal `tessera generate` (one rank)."""

    @classmethod
    def setUpClass(cls):
        cls.tiny, cls.awkward = make_models()

    def check_splits(self, model, prompts, splits):
        expected = generate_reference(model, prompts)
        for tp, pp, layers, *flags in splits:
            with self.subTest(tp=tp, pp=pp, pp_layers=layers, flags=flags):
                extra = (["--pp-layers", layers] if layers else []) + (flags[0] if flags else [])
                server = harness.Server(ARGS.tessera, model, tp, pp, extra).start()
                try:
                    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
                        got = list(pool.map(lambda p: complete_ids(server.address, p), prompts))
                    self.assertEqual(got, expected)
                    if "--graph-max-batch" in extra:  # every worker captured 1, 2 and 4 (CPU call lists)
                        captured = [line for line in server.stderr if "captured 3 decode-step graphs" in line]
                        self.assertEqual(len(captured), tp * pp, "".join(server.stderr))
                finally:
                    self.stop_cleanly(server)

    def test_tiny_preset(self):
        self.check_splits(self.tiny, TINY_PROMPTS,
                          [(1, 1, None), (2, 1, None), (1, 2, None), (2, 2, None), (4, 1, None), (1, 2, "1,3"),
                           (2, 2, None, ["--graph-max-batch", "4"])])

    def test_awkward_config(self):
        self.check_splits(self.awkward, AWKWARD_PROMPTS, [(1, 1, None), (2, 1, None), (2, 2, "2,1"), (1, 3, None),
                                                            (2, 1, None, ["--graph-max-batch", "4"])])


class LifecycleTest(ServerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.tiny, cls.awkward = make_models()

    def test_an_impossible_split_fails_at_start_up_with_one_line(self):
        for argv, message in [(["--tp", "3"], "num_attention_heads=4 is not divisible by tp=3"),
                              (["--pp", "9"], "pp=9 is larger than num_hidden_layers=4"),
                              (["--pp", "2", "--pp-layers", "1,1"], "sums to 2 but num_hidden_layers=4")]:
            result = tessera("serve", "--model", self.tiny, "--grpc-port", "0", *argv, check=False, timeout=30)
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn(message, result.stderr)

    def start_workers(self, port, count):
        return [harness.Process([ARGS.tessera, "worker", "--coordinator", "127.0.0.1:%d" % port])
                for _ in range(count)]

    def test_coordinator_and_workers_start_in_either_order(self):
        expected = generate_reference(self.tiny, TINY_PROMPTS[:1])[0]
        for workers_first in (False, True):
            with self.subTest(workers_first=workers_first):
                port = harness.free_port()
                coordinator_argv = [ARGS.tessera, "coordinator", "--model", self.tiny, "--tp", "2", "--pp", "1",
                                    "--grpc-port", str(port), "--host", "127.0.0.1", "--kv-cache-memory", "16MiB"]
                if workers_first:
                    workers = self.start_workers(port, 2)
                    for w in workers:  # each has failed to reach it once and is retrying
                        w.wait_stderr("waiting for the coordinator")
                    coordinator = harness.Process(coordinator_argv)
                else:
                    coordinator = harness.Process(coordinator_argv)
                    coordinator.wait_event("listening")
                    workers = self.start_workers(port, 2)
                try:
                    coordinator.wait_event("ready")
                    self.assertEqual(complete_ids("127.0.0.1:%d" % port, TINY_PROMPTS[0]), expected)
                finally:
                    self.assertEqual(coordinator.stop(), 0, "".join(coordinator.stderr))
                    for w in workers:  # the coordinator told them to leave
                        w.proc.wait(10)
                        self.assertEqual(w.proc.returncode, 0, "".join(w.stderr))

    def test_without_recovery_a_killed_worker_fails_its_requests_and_readiness_but_not_the_server(self):
        # --replacement-timeout 0: fail-stop (tests/integration/recovery_test.py covers the default, recovery).
        server = harness.Server(ARGS.tessera, self.tiny, 2, 2,
                                ["--heartbeat-timeout", "2s", "--replacement-timeout", "0s"]).start()
        try:
            self.assertEqual(health(server.address, SERVICE), health_pb2.HealthCheckResponse.SERVING)
            pb, stub = inference_stub(server.address)
            request = pb.CompleteRequest(token_ids=pb.TokenIds(ids=TINY_PROMPTS[0]), max_tokens=8000,
                                         ignore_eos=True)
            stream = stub.CompleteStream(request, timeout=60)
            deltas = 0
            killed = False
            # The stream's own deadline bounds the wait: the kill must end it with UNAVAILABLE, not a timeout.
            with self.assertRaises(grpc.RpcError) as caught:
                for event in stream:
                    if event.HasField("delta"):
                        deltas += 1
                        if deltas == 3:
                            os.kill(server.worker_pids[1], signal.SIGKILL)
                            killed = True
            self.assertTrue(killed, "the stream ended before the kill")
            self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE, caught.exception.details())
            self.assertIn("rank", caught.exception.details())
            self.assertEqual(health(server.address, SERVICE), health_pb2.HealthCheckResponse.NOT_SERVING)
            self.assertEqual(health(server.address, ""), health_pb2.HealthCheckResponse.SERVING)
            with self.assertRaises(grpc.RpcError) as again:
                complete_ids(server.address, TINY_PROMPTS[0])
            self.assertEqual(again.exception.code(), grpc.StatusCode.UNAVAILABLE)
        finally:
            self.stop_cleanly(server)

    def test_a_client_cancelling_mid_stream_frees_its_kv_blocks(self):
        # 1 MiB holds 32 blocks of 16 tokens at tp=1: one request of 512 tokens takes the whole cache.
        server = harness.Server(ARGS.tessera, self.tiny, 1, 1, ["--kv-cache-memory", "1MiB"]).start()
        try:
            pb, stub = inference_stub(server.address)
            whole_cache = dict(token_ids=pb.TokenIds(ids=TINY_PROMPTS[0]), max_tokens=512 - 4, ignore_eos=True,
                               temperature=0.0)
            first = None
            for cancel_by_id in (False, True):
                call = stub.CompleteStream(pb.CompleteRequest(request_id="big%d" % cancel_by_id, **whole_cache),
                                           timeout=60)
                for event in call:
                    if event.HasField("delta"):
                        first = event.delta.token_ids[0]
                        if cancel_by_id:
                            stub.Cancel(pb.CancelRequest(request_id="big1"), timeout=10)
                        else:
                            call.cancel()
                        break
                with self.assertRaises(grpc.RpcError) as caught:
                    for _ in call:
                        pass
                self.assertEqual(caught.exception.code(), grpc.StatusCode.CANCELLED)
                # Another whole-cache request is admitted only if the cancelled one's blocks came back; it stops
                # at its first token.
                again = stub.Complete(pb.CompleteRequest(stop_token_ids=[first], **whole_cache), timeout=20)
                self.assertEqual(list(again.choices[0].token_ids), [first])
                self.assertEqual(again.choices[0].finish_reason, pb.FINISH_REASON_STOP)
        finally:
            self.stop_cleanly(server)

    def test_logs_are_json_lines_and_hold_prompt_text_only_with_log_requests(self):
        secret = "Zanzibar pelican quartet"
        for log_requests in (False, True):
            with self.subTest(log_requests=log_requests):
                extra = ["--log-level", "debug"] + (["--log-requests"] if log_requests else [])
                server = harness.Server(ARGS.tessera, self.tiny, 2, 1, extra).start()
                try:
                    subprocess.run([ARGS.tessera, "complete", "--server", server.address, "--prompt", secret,
                                    "--max-tokens", "2"], check=True, capture_output=True, timeout=60)
                finally:
                    self.stop_cleanly(server)
                lines = [json.loads(line) for line in server.stderr]  # every line is one JSON object
                components = {line.get("component") for line in lines}
                self.assertTrue({"coordinator", "worker", "api"} <= components, components)
                self.assertTrue(all({"ts", "level", "msg"} <= set(line) for line in lines))
                self.assertTrue(any(line.get("rank") == 1 for line in lines))
                requests = [line for line in lines if line.get("component") == "api"]
                self.assertEqual(len(requests), 1, requests)
                self.assertIn("request_id", requests[0])
                self.assertEqual(secret in "".join(server.stderr), log_requests)

    def test_sigint_stops_the_server_and_its_workers(self):
        server = harness.Server(ARGS.tessera, self.tiny, 2, 1).start()
        self.assertEqual(len(server.worker_pids), 2)
        self.assertEqual(server.stop(signal.SIGINT), 0, "".join(server.stderr))
        for pid in server.worker_pids:
            self.assertFalse(harness.pid_alive(pid))


class DrainTest(ServerTestCase):
    """SIGTERM (what Kubernetes sends before it kills a pod) drains: readiness turns NOT_SERVING at once, new
    requests are refused over gRPC and HTTP, the streams already running finish within --drain-timeout, then
    everything stops; a second signal stops at once."""

    @classmethod
    def setUpClass(cls):
        cls.tiny, _ = make_models()

    def open_stream(self, server, max_tokens):
        pb, stub = inference_stub(server.address)
        request = pb.CompleteRequest(token_ids=pb.TokenIds(ids=TINY_PROMPTS[0]), max_tokens=max_tokens,
                                     ignore_eos=True, temperature=0.0)
        return pb, stub, stub.CompleteStream(request, timeout=120)

    def http_status(self, server, method, path, body=None):
        import http.client
        conn = http.client.HTTPConnection(server.http_address, timeout=10)
        conn.request(method, path, body=json.dumps(body) if body else None,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        conn.close()
        if response.status == 503:
            self.assertEqual(response.getheader("Retry-After"), "1")
        return response.status, payload

    def wait_not_serving(self, server):
        """Seconds until readiness reads NOT_SERVING (polled every 10 ms)."""
        start = time.time()
        while health(server.address, SERVICE) != health_pb2.HealthCheckResponse.NOT_SERVING:
            self.assertLess(time.time() - start, 2, "readiness still SERVING 2 s after SIGTERM")
            time.sleep(0.01)
        return time.time() - start

    def test_sigterm_mid_stream_lets_the_stream_finish_and_refuses_new_requests(self):
        # A drain long enough for the 1500 tokens under ThreadSanitizer too (~45 ms a step there, ~70 s in all).
        server = harness.Server(ARGS.tessera, self.tiny, 2, 1, ["--http-port", "0", "--drain-timeout", "300s"]).start()
        pb, stub, stream = self.open_stream(server, 1500)
        tokens = []
        signalled = None
        for event in stream:
            if event.HasField("delta"):
                tokens += event.delta.token_ids
                if signalled is None and len(tokens) >= 3:
                    server.proc.send_signal(signal.SIGTERM)
                    signalled = time.time()
                    print("readiness NOT_SERVING %.3f s after SIGTERM" % self.wait_not_serving(server),
                          file=sys.stderr)
                    self.assertEqual(health(server.address, ""), health_pb2.HealthCheckResponse.SERVING)
                    with self.assertRaises(grpc.RpcError) as refused:
                        complete_ids(server.address, TINY_PROMPTS[1])
                    self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE)
                    self.assertIn("draining", refused.exception.details())
                    self.assertIn(("grpc-retry-pushback-ms", "1000"), refused.exception.trailing_metadata())
                    status, _ = self.http_status(server, "GET", "/health")
                    self.assertEqual(status, 503)
                    status, payload = self.http_status(server, "POST", "/v1/completions",
                                                       {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 2})
                    self.assertEqual(status, 503, payload)
            elif event.HasField("end"):
                self.assertEqual(event.end.finish_reason, pb.FINISH_REASON_LENGTH)
        self.assertIsNotNone(signalled, "the stream ended before the signal")
        self.assertEqual(len(tokens), 1500)  # the whole answer, after the signal
        self.assertEqual(server.proc.wait(30), 0, "".join(server.stderr))
        print("stream finished and server stopped %.2f s after SIGTERM" % (time.time() - signalled),
              file=sys.stderr)
        self.assertTrue(any("drained in" in line for line in server.stderr), "".join(server.stderr[-5:]))
        self.stop_cleanly(server)  # exited 0 already; no worker survives it

    def test_drain_timeout_bounds_the_wait_and_a_second_signal_stops_at_once(self):
        for second_signal in (False, True):
            with self.subTest(second_signal=second_signal):
                server = harness.Server(ARGS.tessera, self.tiny, 1, 1,
                                        ["--drain-timeout", "60s" if second_signal else "1s"]).start()
                _, _, stream = self.open_stream(server, 20000)
                signalled = None
                with self.assertRaises(grpc.RpcError) as caught:
                    for event in stream:
                        if event.HasField("delta") and signalled is None:
                            server.proc.send_signal(signal.SIGTERM)
                            signalled = time.time()
                            if second_signal:
                                self.wait_not_serving(server)
                                server.proc.send_signal(signal.SIGTERM)
                self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE, caught.exception.details())
                ended = time.time() - signalled
                self.assertEqual(server.proc.wait(30), 0, "".join(server.stderr))
                print("second_signal=%s: the stream ended %.2f s after the first SIGTERM" % (second_signal, ended),
                      file=sys.stderr)
                self.assertLess(ended, 20)
                if not second_signal:
                    self.assertTrue(any("--drain-timeout 1 s passed with 1 requests unfinished" in line
                                        for line in server.stderr), "".join(server.stderr[-5:]))
                self.stop_cleanly(server)


class MemoryTest(ServerTestCase):
    """Each rank reads only its slices: its peak resident set stays within 1.2x its shard plus its KV cache."""

    def test_each_worker_holds_its_shard_and_kv_cache_and_little_else(self):
        small = os.path.join(ARGS.workdir, "small")
        if not os.path.exists(os.path.join(small, "config.json")):
            tessera("make-model", "--preset", "small", "--out", small, timeout=600)
        kv = 64 << 20
        server = harness.Server(ARGS.tessera, small, 2, 1, ["--kv-cache-memory", "64MiB"]).start(timeout=600)
        try:
            self.assertEqual(len(complete_ids(server.address, [128000, 9906, 11], max_tokens=3)), 3)
            shard = {}
            for line in server.stderr:
                m = re.search(r"rank (\d+) loaded its shard in \S+ s \((\d+) bytes read", line)
                if m:
                    shard[int(m.group(1))] = int(m.group(2))
            self.assertEqual(sorted(shard), [0, 1])
            for pid in server.worker_pids:
                with open("/proc/%d/cmdline" % pid) as f:
                    argv = f.read().split("\0")
                rank = int(argv[argv.index("--rank") + 1])
                with open("/proc/%d/status" % pid) as f:
                    peak = int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024
                print("rank %d: peak RSS %.3f GB, shard %.3f GB, KV %.3f GB" % (rank, peak / 1e9, shard[rank] / 1e9,
                                                                             kv / 1e9), file=sys.stderr)
                self.assertLessEqual(peak, 1.2 * shard[rank] + kv, "rank %d" % rank)
        finally:
            self.stop_cleanly(server)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--workdir", required=True)
    ARGS, rest = parser.parse_known_args()
    ARGS.tessera = os.path.abspath(ARGS.tessera)
    os.makedirs(ARGS.workdir, exist_ok=True)
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
