"""Security end to end. The control plane's secrets, with real processes: a coordinator started with a join token refuses
a worker without it (or with a wrong one) with UNAUTHENTICATED, logs the refusal without the secret, and still
comes up with the right workers; the rendezvous store answers only the current epoch's registered workers
(a grpcio client without the epoch's store token is UNAUTHENTICATED); `tessera serve --join-token` hands the
token to its own workers through their environment; no log line holds a secret. The public API's keys (--api-key-file) through grpcio, the openai client and
`tessera complete`: UNAUTHENTICATED / 401 without a valid key, RESOURCE_EXHAUSTED / 429 over a key's request
rate or streams, health and metrics open. Per-request limits named in each refusal.

usage: security_test.py --tessera build/tessera --workdir DIR [unittest args]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import unittest

import grpc

import harness

ARGS = None
TOKEN = "s3cret-join-token-5f1c"  # no log line may contain it


def make_tiny():
    return harness.make_tiny(ARGS.tessera, ARGS.workdir)


def rendezvous_stub(address):
    """A grpcio client of tessera.control.v1.Rendezvous (stubs generated here from proto/)."""
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="tessera_control_stubs_")
    args = ["protoc", "-I", os.path.join(harness.REPO, "proto"), "--python_out", out, "--grpc_python_out", out,
            "tessera/control/v1/rendezvous.proto"]
    if protoc.main(args) != 0:
        raise RuntimeError("grpc_tools.protoc failed on rendezvous.proto")
    sys.path.insert(0, out)
    from tessera.control.v1 import rendezvous_pb2, rendezvous_pb2_grpc
    return rendezvous_pb2, rendezvous_pb2_grpc.RendezvousStub(grpc.insecure_channel(address))


def complete_ids(address, prompt, max_tokens=4):
    pb, pb_grpc, _, _ = harness.stubs()
    stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(address))
    request = pb.CompleteRequest(token_ids=pb.TokenIds(ids=prompt), max_tokens=max_tokens, temperature=0.0)
    return list(stub.Complete(request, timeout=60).choices[0].token_ids)


class JoinTokenTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tiny = make_tiny()

    def worker(self, port, token):
        env = dict(os.environ)
        env.pop("TESSERA_JOIN_TOKEN", None)
        if token is not None:
            env["TESSERA_JOIN_TOKEN"] = token
        return harness.Process([ARGS.tessera, "worker", "--coordinator", "127.0.0.1:%d" % port], env=env)

    def test_workers_without_the_token_are_refused_and_the_group_comes_up_with_it(self):
        port = harness.free_port()
        env = dict(os.environ, TESSERA_JOIN_TOKEN=TOKEN)
        coordinator = harness.Process([ARGS.tessera, "coordinator", "--model", self.tiny, "--tp", "2",
                                       "--grpc-port", str(port), "--host", "127.0.0.1", "--kv-cache-memory",
                                       "16MiB"], env=env)
        workers = []
        try:
            coordinator.wait_event("listening")
            for token, why in ((None, "without the join token"), ("wrong-token", "with a wrong join token")):
                intruder = self.worker(port, token)
                self.assertNotEqual(intruder.proc.wait(60), 0)
                intruder.stop()
                log = "".join(intruder.stderr)
                self.assertIn("UNAUTHENTICATED", log)
                self.assertIn(why, log)
                coordinator.wait_stderr("refused a worker's registration")
            workers = [self.worker(port, TOKEN) for _ in range(2)]
            coordinator.wait_event("ready")
            self.assertEqual(len(complete_ids("127.0.0.1:%d" % port, [1, 2, 3])), 4)

            # The rendezvous store: nothing without the epoch's store token, even with the join token.
            pb, stub = rendezvous_stub("127.0.0.1:%d" % port)
            for metadata in ((), (("x-tessera-join-token", TOKEN),), (("x-tessera-store-token", "guess"),)):
                with self.assertRaises(grpc.RpcError) as refused:
                    stub.Get(pb.GetRequest(key="epoch1/tp0/nccl_unique_id"), metadata=metadata, timeout=10)
                self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                with self.assertRaises(grpc.RpcError) as refused:
                    stub.Set(pb.SetRequest(key="x", value=b"y"), metadata=metadata, timeout=10)
                self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        finally:
            self.assertEqual(coordinator.stop(), 0, "".join(coordinator.stderr))
            for w in workers:
                w.proc.wait(15)
                self.assertEqual(w.proc.returncode, 0, "".join(w.stderr))
        for process in [coordinator] + workers:
            self.assertNotIn(TOKEN, "".join(process.stderr))

    def test_the_token_can_come_from_a_file(self):
        path = os.path.join(ARGS.workdir, "join-token")
        with open(path, "w") as f:
            f.write(TOKEN + "\n")  # a Secret's file may end in a newline
        # As a pod gives it: the path in the environment, which serve's workers inherit; they read the file too,
        # so the token itself is in no process's environment.
        server = harness.Server(ARGS.tessera, self.tiny, 2, 1,
                                env=dict(os.environ, TESSERA_JOIN_TOKEN_FILE=path)).start()
        try:
            self.assertEqual(len(complete_ids(server.address, [5, 6, 7])), 4)
            self.assertEqual(len(server.worker_pids), 2)
            for pid in [server.proc.pid] + server.worker_pids:
                with open("/proc/%d/environ" % pid, "rb") as f:
                    self.assertNotIn(TOKEN.encode(), f.read(), pid)
        finally:
            self.assertEqual(server.stop(), 0)
        self.assertNotIn(TOKEN, "".join(server.stderr))
        empty = os.path.join(ARGS.workdir, "empty-token")
        open(empty, "w").close()
        for extra, text in ((["--join-token-file", os.path.join(ARGS.workdir, "absent")], "absent cannot be read"),
                            (["--join-token-file", empty], "holds no token"),
                            (["--join-token-file", path, "--join-token", TOKEN], "not both")):
            for command in (["serve", "--model", self.tiny, "--grpc-port", "0"],
                            ["worker", "--coordinator", "127.0.0.1:1"]):
                result = subprocess.run([ARGS.tessera] + command + extra, capture_output=True, text=True,
                                        timeout=60)
                self.assertNotEqual(result.returncode, 0, (command, extra))
                self.assertIn(text, result.stderr, (command, extra))

    def test_serve_hands_its_token_to_its_own_workers(self):
        server = harness.Server(ARGS.tessera, self.tiny, 2, 1, extra=["--join-token", TOKEN]).start()
        try:
            self.assertEqual(len(complete_ids(server.address, [5, 6, 7])), 4)
        finally:
            self.assertEqual(server.stop(), 0)
        self.assertNotIn(TOKEN, "".join(server.stderr))


PRIVATE_PROMPT = "xyzzy private prompt text"
KEYS = "# test keys\nsk-good-0001\nsk-limited-0002 rpm=2\nsk-one-stream-0003 streams=1\n"


class ApiKeyTest(unittest.TestCase):
    """--api-key-file through real clients: grpcio, the openai client and `tessera complete`."""

    @classmethod
    def setUpClass(cls):
        tiny = make_tiny()
        keys = os.path.join(ARGS.workdir, "keys.txt")
        with open(keys, "w") as f:
            f.write(KEYS)
        cls.server = harness.Server(ARGS.tessera, tiny, 1, 1,
                                    extra=["--api-key-file", keys, "--http-port", "0"]).start()

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0
        log = "".join(cls.server.stderr)
        for secret in ("sk-good-0001", "sk-limited-0002", "sk-one-stream-0003", "sk-wrong", PRIVATE_PROMPT):
            assert secret not in log, "a key or the prompt's text appears in the server's log"

    def grpc_complete(self, key, max_tokens=2):
        pb, pb_grpc, _, _ = harness.stubs()
        stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(self.server.address))
        metadata = (("authorization", "Bearer " + key),) if key is not None else ()
        request = pb.CompleteRequest(token_ids=pb.TokenIds(ids=[1, 2, 3]), max_tokens=max_tokens, temperature=0.0)
        return stub.Complete(request, metadata=metadata, timeout=60)

    def openai_client(self, key):
        import openai
        return openai.OpenAI(base_url="http://%s/v1" % self.server.http_address, api_key=key, max_retries=0,
                             timeout=60)

    def test_grpc_refuses_calls_without_a_valid_key_and_admits_good_ones(self):
        for key, text in ((None, "API key is required"), ("sk-wrong", "not valid")):
            with self.assertRaises(grpc.RpcError) as refused:
                self.grpc_complete(key)
            self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            self.assertIn(text, refused.exception.details())
        self.assertEqual(len(self.grpc_complete("sk-good-0001").choices[0].token_ids), 2)
        # Health stays open.
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(self.server.address))
        self.assertEqual(health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status,
                         health_pb2.HealthCheckResponse.SERVING)

    def test_a_key_over_its_request_rate_gets_resource_exhausted_and_others_go_on(self):
        self.grpc_complete("sk-limited-0002")
        self.grpc_complete("sk-limited-0002")
        with self.assertRaises(grpc.RpcError) as refused:
            self.grpc_complete("sk-limited-0002")
        self.assertEqual(refused.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("rpm=2", refused.exception.details())
        import openai
        with self.assertRaises(openai.RateLimitError):
            self.openai_client("sk-limited-0002").completions.create(model="tiny", prompt=[1, 2], max_tokens=2)
        self.assertEqual(len(self.grpc_complete("sk-good-0001").choices[0].token_ids), 2)

    def test_http_needs_a_key_but_health_and_metrics_do_not(self):
        import openai
        with self.assertRaises(openai.AuthenticationError):
            self.openai_client("sk-wrong").completions.create(model="tiny", prompt=[1, 2], max_tokens=2)
        reply = self.openai_client("sk-good-0001").completions.create(model="tiny", prompt=[1, 2], max_tokens=2)
        self.assertEqual(reply.usage.completion_tokens, 2)
        # Prompt text is not logged (without --log-requests); tearDownClass greps for it.
        self.openai_client("sk-good-0001").completions.create(model="tiny", prompt=PRIVATE_PROMPT, max_tokens=2)
        import urllib.request
        for path in ("/health", "/metrics"):
            with urllib.request.urlopen("http://%s%s" % (self.server.http_address, path), timeout=10) as r:
                self.assertEqual(r.status, 200)
        import urllib.error
        with self.assertRaises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen("http://%s/v1/models" % self.server.http_address, timeout=10)
        self.assertEqual(refused.exception.code, 401)

    def test_a_key_with_one_stream_cannot_open_a_second_while_the_first_runs(self):
        pb, pb_grpc, _, _ = harness.stubs()
        stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(self.server.address))
        metadata = (("authorization", "Bearer sk-one-stream-0003"),)
        request = pb.CompleteRequest(token_ids=pb.TokenIds(ids=[1, 2, 3]), max_tokens=400, temperature=0.0,
                                     ignore_eos=True)
        stream = stub.CompleteStream(request, metadata=metadata, timeout=120)
        next(stream)  # running
        with self.assertRaises(grpc.RpcError) as refused:
            stub.Complete(request, metadata=metadata, timeout=60)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("streams=1", refused.exception.details())
        stream.cancel()

    def test_tessera_bench_speaks_the_key_over_grpc_and_http(self):
        import json
        for backend in ("--grpc", "--http"):
            server = self.server.address if backend == "--grpc" else self.server.http_address
            out = os.path.join(ARGS.workdir, "bench%s.json" % backend)
            argv = [ARGS.tessera, "bench", "--server", server, backend, "--random-input-len", "4",
                    "--random-output-len", "2", "--num-prompts", "3", "--out", out]
            env = dict(os.environ, TESSERA_API_KEY="sk-good-0001")
            result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
            self.assertEqual(result.returncode, 0, result.stderr)
            with open(out) as f:
                self.assertEqual(json.load(f)["completed"], 3)
            env.pop("TESSERA_API_KEY")
            refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
            self.assertNotEqual(refused.returncode, 0, backend)

    def test_tessera_complete_takes_the_key_from_the_environment(self):
        env = dict(os.environ, TESSERA_API_KEY="sk-good-0001")
        argv = [ARGS.tessera, "complete", "--server", self.server.address, "--prompt-ids", "1,2,3",
                "--max-tokens", "2", "--temperature", "0"]
        self.assertEqual(subprocess.run(argv, env=env, capture_output=True, timeout=60).returncode, 0)
        env.pop("TESSERA_API_KEY")
        refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("API key is required", refused.stderr)


class LimitsTest(unittest.TestCase):
    """Per-request limits: each breach is refused naming its limit (INVALID_ARGUMENT / 400, or 413 for a body
    over --max-request-bytes), and a request within them, sent right after, is served."""

    @classmethod
    def setUpClass(cls):
        cls.server = harness.Server(ARGS.tessera, make_tiny(), 1, 1, extra=[
            "--http-port", "0", "--max-n", "2", "--max-tokens-limit", "8", "--max-prompt-tokens", "16",
            "--max-stop-strings", "2", "--max-request-bytes", "4KiB"]).start()

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0

    def test_each_breach_names_its_limit_over_grpc(self):
        pb, pb_grpc, _, _ = harness.stubs()
        stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(self.server.address))
        ok = dict(token_ids=pb.TokenIds(ids=[1, 2, 3]), max_tokens=4, temperature=0.0)
        for change, text in ((dict(max_tokens=9), "--max-tokens-limit"), (dict(n=3), "--max-n"),
                             (dict(token_ids=pb.TokenIds(ids=list(range(1, 18)))), "--max-prompt-tokens"),
                             (dict(stop=["a", "b", "c"]), "--max-stop-strings")):
            with self.assertRaises(grpc.RpcError) as refused:
                stub.Complete(pb.CompleteRequest(**dict(ok, **change)), timeout=60)
            self.assertEqual(refused.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn(text, refused.exception.details())
            self.assertEqual(len(stub.Complete(pb.CompleteRequest(**ok), timeout=60).choices[0].token_ids), 4)
        # An unset max_tokens is capped to the limit.
        unset = pb.CompleteRequest(token_ids=pb.TokenIds(ids=[1, 2, 3]), temperature=0.0, ignore_eos=True)
        self.assertEqual(len(stub.Complete(unset, timeout=60).choices[0].token_ids), 8)

    def test_http_refuses_breaches_with_400_and_a_large_body_with_413(self):
        import openai
        client = openai.OpenAI(base_url="http://%s/v1" % self.server.http_address, api_key="unused",
                               max_retries=0, timeout=60)
        with self.assertRaises(openai.BadRequestError) as refused:
            client.completions.create(model="tiny", prompt=[1, 2, 3], max_tokens=9)
        self.assertIn("--max-tokens-limit", str(refused.exception))
        with self.assertRaises(openai.APIStatusError) as refused:
            client.completions.create(model="tiny", prompt="x" * 5000, max_tokens=2)
        self.assertEqual(refused.exception.status_code, 413)
        self.assertEqual(client.completions.create(model="tiny", prompt=[1, 2, 3], max_tokens=2).usage.completion_tokens, 2)


TLS_DIR = os.path.join(harness.REPO, "tests", "data", "tls")


def tls(name):
    return os.path.join(TLS_DIR, name)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def tls_complete_ids(address, ca, prompt=(1, 2, 3)):
    pb, pb_grpc, _, _ = harness.stubs()
    channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=read(ca)))
    request = pb.CompleteRequest(token_ids=pb.TokenIds(ids=list(prompt)), max_tokens=2, temperature=0.0)
    try:
        return list(pb_grpc.InferenceServiceStub(channel).Complete(request, timeout=20).choices[0].token_ids)
    finally:
        channel.close()


def https_client(address, ca):
    import openai
    import ssl
    return openai.OpenAI(base_url="https://%s/v1" % address, api_key="unused", max_retries=0, timeout=20,
                         http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=ca)))


class TlsTest(unittest.TestCase):
    """--tls-cert / --tls-key on the public ports (grpcio, the openai client, tessera complete and bench, all
    verifying against the test CA), the control plane on its own port with mutual TLS (serve's workers at tp 2,
    so the rendezvous store's channel is mutual TLS too), and a certificate swapped while serving."""

    @classmethod
    def setUpClass(cls):
        # The served certificate lives in a directory of its own, so that the reload test can replace it.
        cls.certs = tempfile.mkdtemp(prefix="tessera_tls_", dir=ARGS.workdir)
        for name in ("server.pem", "server.key"):
            with open(os.path.join(cls.certs, name), "wb") as f:
                f.write(read(tls(name)))
        cls.server = harness.Server(ARGS.tessera, make_tiny(), 2, 1, extra=[
            "--http-port", "0", "--tls-cert", os.path.join(cls.certs, "server.pem"),
            "--tls-key", os.path.join(cls.certs, "server.key"), "--control-ca", tls("ca.pem"),
            "--control-cert", tls("server.pem"), "--control-key", tls("server.key")]).start()

    @classmethod
    def tearDownClass(cls):
        if cls.server is not None:
            assert cls.server.stop() == 0, "".join(cls.server.stderr)

    def test_grpc_speaks_tls_only(self):
        self.assertEqual(len(tls_complete_ids(self.server.address, tls("ca.pem"))), 2)
        with self.assertRaises(grpc.RpcError) as refused:  # plaintext to a TLS port
            complete_ids(self.server.address, [1, 2, 3])
        self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE)
        with self.assertRaises(grpc.RpcError) as refused:  # a certificate of a CA the client does not trust
            tls_complete_ids(self.server.address, tls("rogue-ca.pem"))
        self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE)

    def test_the_control_port_is_its_own_and_wants_a_client_certificate(self):
        control = self.server.ready.get("control_port")
        self.assertIsNotNone(control, self.server.ready)
        self.assertNotEqual(control, self.server.port)
        pb, stub = rendezvous_stub("127.0.0.1:%d" % control)
        # No client certificate: the handshake fails before any call reaches the store.
        channel = grpc.secure_channel("127.0.0.1:%d" % control,
                                      grpc.ssl_channel_credentials(root_certificates=read(tls("ca.pem"))))
        from tessera.control.v1 import rendezvous_pb2_grpc
        with self.assertRaises(grpc.RpcError) as refused:
            rendezvous_pb2_grpc.RendezvousStub(channel).Get(pb.GetRequest(key="x"), timeout=10)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE)
        # A certificate of another CA: refused as well.
        rogue = grpc.ssl_channel_credentials(root_certificates=read(tls("ca.pem")),
                                             private_key=read(tls("rogue.key")),
                                             certificate_chain=read(tls("rogue.pem")))
        with self.assertRaises(grpc.RpcError) as refused:
            rendezvous_pb2_grpc.RendezvousStub(grpc.secure_channel("127.0.0.1:%d" % control, rogue)).Get(
                pb.GetRequest(key="x"), timeout=10)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE)
        # The public port does not carry the control plane.
        channel = grpc.secure_channel(self.server.address,
                                      grpc.ssl_channel_credentials(root_certificates=read(tls("ca.pem"))))
        with self.assertRaises(grpc.RpcError) as refused:
            rendezvous_pb2_grpc.RendezvousStub(channel).Get(pb.GetRequest(key="x"), timeout=10)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.UNIMPLEMENTED)

    def test_https_with_the_openai_client(self):
        reply = https_client(self.server.http_address, tls("ca.pem")).completions.create(
            model="tiny", prompt=[1, 2], max_tokens=2)
        self.assertEqual(reply.usage.completion_tokens, 2)
        stream = https_client(self.server.http_address, tls("ca.pem")).completions.create(
            model="tiny", prompt=[1, 2], max_tokens=3, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        self.assertEqual(chunks[-1].usage.completion_tokens, 3)
        import openai
        with self.assertRaises(openai.APIConnectionError):  # an untrusted certificate
            https_client(self.server.http_address, tls("rogue-ca.pem")).completions.create(
                model="tiny", prompt=[1, 2], max_tokens=2)
        with self.assertRaises(openai.APIConnectionError):  # plain HTTP to the HTTPS port
            openai.OpenAI(base_url="http://%s/v1" % self.server.http_address, api_key="unused", max_retries=0,
                          timeout=20).completions.create(model="tiny", prompt=[1, 2], max_tokens=2)

    def test_tessera_complete_and_bench_take_the_ca(self):
        import json
        result = subprocess.run([ARGS.tessera, "complete", "--server", self.server.address, "--tls-ca",
                                 tls("ca.pem"), "--prompt-ids", "1,2,3", "--max-tokens", "2", "--json"],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(len(json.loads(result.stdout.splitlines()[0])["token_ids"]), 2)
        result = subprocess.run([ARGS.tessera, "complete", "--server", self.server.address, "--tls-ca",
                                 tls("missing.pem"), "--prompt-ids", "1,2,3"],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 2)
        self.assertIn("missing.pem", result.stderr)
        for backend in ("--grpc", "--http"):
            server = self.server.address if backend == "--grpc" else self.server.http_address
            out = os.path.join(ARGS.workdir, "tls-bench%s.json" % backend)
            argv = [ARGS.tessera, "bench", "--server", server, backend, "--tls-ca", tls("ca.pem"),
                    "--random-input-len", "4", "--random-output-len", "2", "--num-prompts", "3", "--out", out]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            self.assertEqual(result.returncode, 0, result.stderr)
            with open(out) as f:
                self.assertEqual(json.load(f)["completed"], 3, backend)

    def test_zz_a_renewed_certificate_is_served_without_a_restart(self):
        # Runs last (zz): afterwards the server presents a certificate of the other CA.
        for name, source in (("server.pem", "other-server.pem"), ("server.key", "other-server.key")):
            staged = os.path.join(self.certs, name + ".new")
            with open(staged, "wb") as f:
                f.write(read(tls(source)))
            os.replace(staged, os.path.join(self.certs, name))
        deadline = time.monotonic() + 30
        grpc_ok = https_ok = False
        while time.monotonic() < deadline and not (grpc_ok and https_ok):
            time.sleep(0.5)
            try:
                grpc_ok = grpc_ok or len(tls_complete_ids(self.server.address, tls("rogue-ca.pem"))) == 2
            except grpc.RpcError:
                pass
            try:
                https_ok = https_ok or https_client(self.server.http_address, tls("rogue-ca.pem")).completions.create(
                    model="tiny", prompt=[1, 2], max_tokens=2).usage.completion_tokens == 2
            except Exception:  # noqa: BLE001 - the old certificate: openai.APIConnectionError
                pass
        self.assertTrue(grpc_ok, "gRPC still presents the old certificate")
        self.assertTrue(https_ok, "HTTPS still presents the old certificate")
        with self.assertRaises(grpc.RpcError):
            tls_complete_ids(self.server.address, tls("ca.pem"))
        self.server.wait_stderr("loaded the changed TLS certificate")


class TlsConfigTest(unittest.TestCase):
    """Certificates that cannot be used stop the server at start, naming the file; remote workers join the
    control port only with a certificate of the coordinator's CA."""

    def run_tessera(self, *args):
        return subprocess.run([ARGS.tessera] + list(args), capture_output=True, text=True, timeout=60)

    def test_unusable_files_are_named(self):
        tiny = make_tiny()
        for extra, text in (
                (["--tls-cert", tls("server.pem"), "--tls-key", tls("missing.key")], "missing.key"),
                (["--tls-cert", tls("server.pem"), "--tls-key", tls("worker.key")],
                 "is not the key of the certificate"),
                (["--tls-cert", tls("server.pem")], "needs its key"),
                (["--tls-cert", tls("make-certs.sh"), "--tls-key", tls("server.key")], "holds no PEM certificate"),
                (["--control-cert", tls("server.pem"), "--control-key", tls("server.key")], "--control-ca")):
            result = self.run_tessera("serve", "--model", tiny, "--grpc-port", "0", "--host", "127.0.0.1", *extra)
            self.assertNotEqual(result.returncode, 0, extra)
            self.assertIn(text, result.stderr, extra)
        # A coordinator's remote workers need the control port named.
        result = self.run_tessera("coordinator", "--model", tiny, "--grpc-port", "0", "--host", "127.0.0.1",
                                  "--tls-cert", tls("server.pem"), "--tls-key", tls("server.key"))
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--control-port", result.stderr)

    def test_a_worker_started_before_its_coordinator_joins_over_mutual_tls(self):
        # gRPC 1.51's TLS channel never finishes a handshake once its first attempts found no listener; the worker
        # must not wait out its connect timeout (5 minutes) when its pod starts before the leader's.
        control = harness.free_port()
        worker = harness.Process([ARGS.tessera, "worker", "--coordinator", "127.0.0.1:%d" % control,
                                  "--drain-timeout", "0s", "--control-ca", tls("ca.pem"), "--control-cert",
                                  tls("worker.pem"), "--control-key", tls("worker.key")])
        worker.wait_stderr("waiting for the coordinator")
        time.sleep(3)
        coordinator = harness.Process([
            ARGS.tessera, "coordinator", "--model", make_tiny(), "--grpc-port", "0", "--host", "127.0.0.1",
            "--kv-cache-memory", "16MiB", "--control-port", str(control), "--control-ca", tls("ca.pem"),
            "--control-cert", tls("server.pem"), "--control-key", tls("server.key")])
        try:
            ready = coordinator.wait_event("ready", timeout=30)
            self.assertEqual(len(complete_ids("127.0.0.1:%d" % ready["grpc_port"], [1, 2, 3])), 4)
        finally:
            self.assertEqual(coordinator.stop(), 0, "".join(coordinator.stderr))
            worker.proc.wait(15)

    def test_remote_workers_need_a_certificate_of_the_coordinators_ca(self):
        control = harness.free_port()
        coordinator = harness.Process([
            ARGS.tessera, "coordinator", "--model", make_tiny(), "--tp", "2", "--grpc-port", "0",
            "--host", "127.0.0.1", "--kv-cache-memory", "16MiB", "--control-port", str(control),
            "--control-ca", tls("ca.pem"), "--control-cert", tls("server.pem"), "--control-key", tls("server.key")])
        workers = []

        def worker(*files):
            return harness.Process([ARGS.tessera, "worker", "--coordinator", "127.0.0.1:%d" % control,
                                    "--drain-timeout", "0s", "--control-ca", tls("ca.pem")] + list(files))
        try:
            listening = coordinator.wait_event("listening")
            self.assertEqual(listening["control_port"], control)
            intruders = [worker(), worker("--control-cert", tls("rogue.pem"), "--control-key", tls("rogue.key"))]
            time.sleep(3)
            for intruder in intruders:  # still knocking: no registration got through
                self.assertIsNone(intruder.proc.poll(), "".join(intruder.stderr))
                self.assertNotIn("registered", "".join(intruder.stderr))
                intruder.stop()
            workers = [worker("--control-cert", tls("worker.pem"), "--control-key", tls("worker.key"))
                       for _ in range(2)]
            ready = coordinator.wait_event("ready")
            self.assertEqual(len(complete_ids("127.0.0.1:%d" % ready["grpc_port"], [1, 2, 3])), 4)
        finally:
            self.assertEqual(coordinator.stop(), 0, "".join(coordinator.stderr))
            for w in workers:
                w.proc.wait(15)
                self.assertEqual(w.proc.returncode, 0, "".join(w.stderr))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--workdir", required=True)
    ARGS, rest = parser.parse_known_args()
    os.makedirs(ARGS.workdir, exist_ok=True)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
