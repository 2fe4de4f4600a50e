"""Helpers for end-to-end tests: Python stubs generated from proto/ with grpc_tools, and real `tessera`
processes (serve, coordinator, worker) started on loopback and always torn down."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_STUBS = None


def stubs():
    """Generates and imports tessera.v1 stubs once; returns (inference_pb2, inference_pb2_grpc, model_pb2,
    model_pb2_grpc)."""
    global _STUBS
    if _STUBS is None:
        from grpc_tools import protoc
        out = tempfile.mkdtemp(prefix="tessera_stubs_")
        protos = ["tessera/v1/inference.proto", "tessera/v1/model.proto"]
        args = ["protoc", "-I", os.path.join(REPO, "proto"), "--python_out", out, "--grpc_python_out", out]
        if protoc.main(args + protos) != 0:
            raise RuntimeError("grpc_tools.protoc failed on " + ", ".join(protos))
        sys.path.insert(0, out)
        from tessera.v1 import inference_pb2, inference_pb2_grpc, model_pb2, model_pb2_grpc
        _STUBS = (inference_pb2, inference_pb2_grpc, model_pb2, model_pb2_grpc)
    return _STUBS


def make_tiny(tessera, workdir):
    """The tiny preset (seed 3, with the Llama 3.1 tokenizer) in workdir/tiny, made once."""
    out = os.path.join(workdir, "tiny")
    if not os.path.exists(os.path.join(out, "config.json")):
        tokenizer = os.path.join(REPO, "tests", "data", "llama-3.1-tokenizer")
        subprocess.run([tessera, "make-model", "--preset", "tiny", "--out", out, "--seed", "3", "--tokenizer",
                        tokenizer], check=True, capture_output=True, timeout=120)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A tessera subprocess whose stdout JSON lines and stderr are collected by threads."""

    def __init__(self, args, env=None):
        self.args = args
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.events = []
        self.stderr = []
        self._cv = threading.Condition()
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"text": line}
            with self._cv:
                self.events.append(event)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def _read_stderr(self):
        for line in self.proc.stderr:
            with self._cv:
                self.stderr.append(line)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_stderr(self, text, timeout=120):
        """Waits for a stderr line containing `text`; raises if the process exits first or after `timeout`."""
        deadline = time.time() + timeout
        with self._cv:
            while not any(text in line for line in self.stderr):
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("%s: no stderr line with %r (exit %s):\n%s" % (
                        self.args[1], text, self.proc.poll(), "".join(self.stderr)))
                self._cv.wait(0.1)

    def wait_event(self, name, timeout=120):
        """Returns the first stdout JSON line with "event": name; raises if the process exits first."""
        deadline = time.time() + timeout
        with self._cv:
            while True:
                for e in self.events:
                    if e.get("event") == name:
                        return e
                if self.proc.poll() is not None:
                    raise RuntimeError("%s exited (%s) before %s:\n%s" % (
                        self.args[1], self.proc.returncode, name, "".join(self.stderr)))
                if time.time() > deadline:
                    raise RuntimeError("no %s event from %s in %s s:\n%s" % (
                        name, self.args[1], timeout, "".join(self.stderr)))
                self._cv.wait(0.1)

    def children(self):
        """Pids of this process's children (from /proc)."""
        try:
            with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Signals the process and waits; returns its exit code (kills it after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("%s did not stop within %s s" % (self.args[1], timeout))
        for reader in self._readers:  # every line it printed is in events / stderr once stop returns
            reader.join(10)
        return self.proc.returncode

    def __del__(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class Server(Process):
    """`tessera serve` on a free port; ready once every shard is loaded."""

    def __init__(self, tessera, model, tp=1, pp=1, extra=(), env=None):
        extra = list(extra)
        if "--kv-cache-memory" not in extra:
            extra += ["--kv-cache-memory", "64MiB"]
        super().__init__([tessera, "serve", "--model", model, "--tp", str(tp), "--pp", str(pp),
                          "--grpc-port", "0", "--host", "127.0.0.1"] + extra, env=env)
        self.worker_pids = []
        self.port = None
        self.ready = None

    def start(self, timeout=120):
        self.ready = self.wait_event("ready", timeout)
        self.port = self.ready["grpc_port"]
        self.worker_pids = self.children()
        return self

    @property
    def http_address(self):
        """HOST:PORT of the OpenAI-compatible HTTP API (None unless started with --http-port)."""
        port = (self.ready or {}).get("http_port", -1)
        return "127.0.0.1:%d" % port if port > 0 else None

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port
