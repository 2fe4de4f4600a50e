"""The control plane's secrets end to end, with real processes: a coordinator started with a join token refuses
a worker without it (or with a wrong one) with UNAUTHENTICATED, logs the refusal without the secret, and still
comes up with the right workers; the rendezvous store answers only the current epoch's registered workers
(a grpcio client without the epoch's store token is UNAUTHENTICATED); `tessera serve --join-token` hands the
token to its own workers through their environment; no log line holds a secret.

usage: security_test.py --tessera build/tessera --workdir DIR [unittest args]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import unittest

import grpc

import harness

ARGS = None
TOKENIZER_DIR = os.path.join(harness.REPO, "tests", "data", "llama-3.1-tokenizer")
TOKEN = "s3cret-join-token-5f1c"  # no log line may contain it


def make_tiny():
    out = os.path.join(ARGS.workdir, "tiny")
    if not os.path.exists(os.path.join(out, "config.json")):
        subprocess.run([ARGS.tessera, "make-model", "--preset", "tiny", "--out", out, "--seed", "3",
                        "--tokenizer", TOKENIZER_DIR], check=True, capture_output=True, timeout=120)
    return out


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

    def test_serve_hands_its_token_to_its_own_workers(self):
        server = harness.Server(ARGS.tessera, self.tiny, 2, 1, extra=["--join-token", TOKEN]).start()
        try:
            self.assertEqual(len(complete_ids(server.address, [5, 6, 7])), 4)
        finally:
            self.assertEqual(server.stop(), 0)
        self.assertNotIn(TOKEN, "".join(server.stderr))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--workdir", required=True)
    ARGS, rest = parser.parse_known_args()
    os.makedirs(ARGS.workdir, exist_ok=True)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
