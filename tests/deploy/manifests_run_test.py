"""The Kubernetes manifests really run: renders the two-node overlay (Llama 3.1 405B, tp 8 x pp 2, a
LeaderWorkerSet group of 2 pods) with `kubectl kustomize`, and starts every pod of one group as local processes
exactly as the manifests write them: each container's command, args and environment (ConfigMaps through envFrom
and configMapKeyRef, Secrets through secretKeyRef, the downward API, `$(VAR)` expansion as the kubelet does it),
with the variables the LeaderWorkerSet controller injects (LWS_LEADER_ADDRESS, LWS_GROUP_SIZE, LWS_WORKER_INDEX)
filled in for one group, and each Secret volume written as the kubelet writes it (the keys as files behind a
`..data` link). The Secrets the operator would make are the test's: tessera-tls and tessera-control-tls from the
test PKI in tests/data/tls (server.pem: SAN localhost and 127.0.0.1, serverAuth + clientAuth; ca.pem its CA),
tessera-join-token a random token (a Secret volume too: the pods read it from TESSERA_JOIN_TOKEN_FILE). Then it
runs each container's probes as written (gRPC, TCP, HTTP and HTTPS without verifying the certificate, as the
kubelet), takes a completion through the Service's ports over TLS (grpcio and the OpenAI HTTP API with the
`openai` client, both verifying the server against ca.pem), checks that a plaintext client is refused on the
public gRPC port and that the join token is in no process's argv, in the environment of no process of the pods
(/proc/PID/environ of each tessera process, the ranks' too) and in no log, and finally deletes the group as
Kubernetes does: SIGTERM to every pod in the middle of a stream, which must still complete, each pod gone within
its terminationGracePeriodSeconds.

What differs from a cluster, and only that ("images and GPUs aside"):
- `tessera` (the image's binary) is this build's; the pods share this machine's loopback, so addresses from
  the network (LWS_LEADER_ADDRESS, status.podIP) are 127.0.0.1;
- TESSERA_DEVICE is cpu and TESSERA_KV_CACHE_MEMORY small (GPU memory sizes on a CPU), nvidia.com/gpu ignored;
- a volume's mountPath is a folder under the work directory (paths in args and env are rewritten the same
  way), and the model volume holds a tiny random Llama with the 405B's head ratios (16 heads over 8 KV heads)
  under the directory name the overlay gives.
A changed flag name, a wrong or misspelt environment variable, a probe on the wrong port or service, or a
Service that selects the wrong pods makes this test fail.

usage: .venv/bin/python tests/deploy/manifests_run_test.py --tessera build/tools/tessera --workdir DIR
"""
import argparse
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import harness  # noqa: E402  (the tessera.v1 stubs)

ARGS = None
OVERLAY = os.path.join(REPO, "deploy", "kubernetes", "overlays", "llama-3.1-405b")
TOKENIZER_DIR = os.path.join(REPO, "tests", "data", "llama-3.1-tokenizer")
TLS_DIR = os.path.join(REPO, "tests", "data", "tls")  # tests/data/tls/make-certs.sh
# GPU-sized settings replaced for a CPU run (see the module's docstring).
HARDWARE_ENV = {"TESSERA_DEVICE": "cpu", "TESSERA_KV_CACHE_MEMORY": "16MiB"}
TINY_405B_RATIOS = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 4, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 16,
    "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128009, "torch_dtype": "bfloat16",
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192}}
LWS_LABEL = "leaderworkerset.sigs.k8s.io/"


def render(overlay):
    venv_kubectl = os.path.join(REPO, ".venv", "bin", "kubectl")  # scripts/setup.sh unpacks Debian's there
    kubectl = ARGS.kubectl or (venv_kubectl if os.path.exists(venv_kubectl) else shutil.which("kubectl"))
    if kubectl is None:
        raise RuntimeError("kubectl not found (scripts/setup.sh installs Debian's kubernetes-client)")
    out = subprocess.run([kubectl, "kustomize", overlay], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError("kubectl kustomize %s failed: %s" % (overlay, out.stderr))
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def expand(text, env):
    """The kubelet's $(VAR) expansion: $(NAME) becomes NAME's value when NAME is defined, else stays as it is;
    $$ is a literal $."""
    def one(m):
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def test_secrets():
    """The Secrets deploy/README.md has the operator make, with the test PKI and a fresh random join token: name ->
    {key: bytes}."""
    def read(name):
        with open(os.path.join(TLS_DIR, name), "rb") as f:
            return f.read()
    return {
        # kubernetes.io/tls: the public ports' certificate (SAN 127.0.0.1, the Service's address here).
        "tessera-tls": {"tls.crt": read("server.pem"), "tls.key": read("server.key")},
        # The control plane: the CA, and one certificate (serverAuth + clientAuth) for both pods.
        "tessera-control-tls": {"ca.crt": read("ca.pem"), "tls.crt": read("server.pem"),
                                "tls.key": read("server.key")},
        "tessera-join-token": {"token": secrets.token_hex(32).encode()},
    }


def write_secret_volume(directory, data, source):
    """A Secret volume as the kubelet's atomic writer leaves it: the files in a timestamped folder, `..data` a
    link to it, and each key a link through `..data` (so that an update swaps one link). `items` projects
    chosen keys to chosen paths; defaultMode / mode set the files' permissions."""
    items = source.get("items") or [{"key": k, "path": k} for k in sorted(data)]
    stamp = "..%s" % time.strftime("%Y_%m_%d_%H_%M_%S.000000000", time.gmtime())
    os.makedirs(os.path.join(directory, stamp))
    for item in items:
        if item["key"] not in data:
            raise AssertionError("Secret %s has no key %r" % (source["secretName"], item["key"]))
        path = os.path.join(directory, stamp, item["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data[item["key"]])
        os.chmod(path, item.get("mode", source.get("defaultMode", 0o644)))
    os.symlink(stamp, os.path.join(directory, "..data"))
    for top in sorted({i["path"].split("/")[0] for i in items}):
        os.symlink(os.path.join("..data", top), os.path.join(directory, top))


class Pod:
    """One pod of the group: its template, index, labels, the one container's resolved argv and environment."""

    def __init__(self, name, template, index, lws, config_maps, secret_data, mounts_root):
        self.name = name
        self.index = index
        self.secret_data = secret_data
        self.from_secrets = set()  # variables whose value is a Secret's: never printed
        self.spec = template["spec"]
        containers = self.spec["containers"]
        if len(containers) != 1:
            raise AssertionError("%s: expected one container, found %d" % (name, len(containers)))
        self.container = containers[0]
        self.labels = dict(template.get("metadata", {}).get("labels", {}))
        self.labels.update({LWS_LABEL + "name": lws["metadata"]["name"], LWS_LABEL + "group-index": "0",
                            LWS_LABEL + "worker-index": str(index)})
        size = lws["spec"]["leaderWorkerTemplate"]["size"]
        ns = lws["metadata"].get("namespace", "default")
        # What the controller injects; the leader's DNS name (<lws>-<group>.<lws>.<namespace>) is this machine.
        self.dns_name = "%s-0.%s.%s" % (lws["metadata"]["name"], lws["metadata"]["name"], ns)
        self.lws_env = {"LWS_LEADER_ADDRESS": "127.0.0.1", "LWS_GROUP_SIZE": str(size),
                        "LWS_WORKER_INDEX": str(index)}
        self.mounts = {}  # mountPath -> local folder
        self.env, argv = self.resolve(self.container, config_maps, mounts_root)
        if argv[0] != "tessera":
            raise AssertionError("%s: command %s does not run tessera" % (name, argv))
        self.argv = [ARGS.tessera] + argv[1:]
        # Init containers run in order, each to completion, before the container (their commands as written:
        # they are the image's tools, found on PATH here).
        self.inits = [(c["name"], *self.resolve(c, config_maps, mounts_root))
                      for c in self.spec.get("initContainers", [])]
        self.process = None
        self.init_process = None
        self.init_failure = None
        self.stopping = False
        self.lock = threading.Lock()
        self.started = threading.Event()

    def resolve(self, container, config_maps, mounts_root):
        """One container's environment and argv as the kubelet makes them, paths under its mounts mapped to the
        local folders; mounts its volumes."""
        name = "%s/%s" % (self.name, container["name"])
        env = dict(self.lws_env)
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                data = config_maps[source["configMapRef"]["name"]]
            elif "secretRef" in source:
                data = {k: v.decode() for k, v in self.secret(source["secretRef"]["name"]).items()}
                self.from_secrets.update(source.get("prefix", "") + k for k in data)
            else:
                raise AssertionError("%s: envFrom %s is neither a ConfigMap nor a Secret" % (name, source))
            env.update({source.get("prefix", "") + k: str(v) for k, v in data.items()})
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = expand(str(var["value"]), env)
            elif "valueFrom" in var:
                env[var["name"]] = self.value_from(var["valueFrom"], config_maps)
                if "secretKeyRef" in var["valueFrom"]:
                    self.from_secrets.add(var["name"])
            else:
                env[var["name"]] = ""
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        mounts = {}
        for mount in container.get("volumeMounts", []):
            if "subPath" in mount or "subPathExpr" in mount:
                raise AssertionError("%s: subPath mounts are not supported by this test" % name)
            volume = volumes[mount["name"]]
            shared = "persistentVolumeClaim" in volume or "hostPath" in volume
            local = os.path.join(mounts_root, "shared" if shared else "pod-%d" % self.index, mount["name"])
            if "secret" in volume:  # written by the kubelet before the container starts
                if not os.path.exists(local):
                    os.makedirs(local)
                    write_secret_volume(local, self.secret(volume["secret"]["secretName"]), volume["secret"])
            else:
                os.makedirs(local, exist_ok=True)
            mounts[mount["mountPath"].rstrip("/")] = local
        if container is self.container:
            self.mounts = mounts
        for key, value in HARDWARE_ENV.items():
            if key in env:
                env[key] = value
        env = {k: local_path(mounts, v) for k, v in env.items()}
        command = container.get("command")
        if not command:
            raise AssertionError("%s: the container has no command (the image's entry point is not assumed)" % name)
        argv = [expand(a, env) for a in command + container.get("args", [])]
        return env, [argv[0]] + [local_path(mounts, a) for a in argv[1:]]

    def value_from(self, source, config_maps):
        if "fieldRef" in source:
            field = source["fieldRef"]["fieldPath"]
            known = {"status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1", "metadata.name": self.name,
                     "metadata.namespace": "default", "spec.nodeName": "localhost"}
            if field not in known:
                raise AssertionError("%s: fieldRef %s is not one this test fills" % (self.name, field))
            return known[field]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return str(config_maps[ref["name"]][ref["key"]])
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = self.secret(ref["name"])
            if ref["key"] not in data:
                raise AssertionError("%s: Secret %s has no key %r" % (self.name, ref["name"], ref["key"]))
            return data[ref["key"]].decode()
        if "resourceFieldRef" in source:
            return "1"
        raise AssertionError("%s: valueFrom %s is not supported by this test" % (self.name, source))

    def secret(self, name):
        """A Secret's data; the kubelet does not start a container whose Secret is missing."""
        if name not in self.secret_data:
            raise AssertionError("%s: Secret %s is not one the operator makes (deploy/README.md)" % (self.name, name))
        return self.secret_data[name]

    def shown_env(self):
        """The environment to print, the Secrets' values hidden."""
        return {k: "<secret>" if k in self.from_secrets else v for k, v in self.env.items()}

    def start(self, log_dir):
        """Starts the pod: its init containers one after the other (in a thread), then the container;
        `started` is set once the container runs or an init container failed (`init_failure`)."""
        self.log_path = os.path.join(log_dir, "%s.log" % self.name)
        open(self.log_path, "w").close()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        path = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for name, env, argv in self.inits:
            with open(self.log_path, "a") as log, self.lock:
                if self.stopping:
                    return
                # Its own session: a signal reaches this pod's process only, as in a container.
                self.init_process = subprocess.Popen(argv, env={**path, **env}, stdout=log,
                                                     stderr=subprocess.STDOUT, start_new_session=True)
            code = self.init_process.wait()
            if code != 0:
                self.init_failure = "init container %s exited %s" % (name, code)
                self.started.set()
                return
        with open(self.log_path, "a") as log, self.lock:
            if self.stopping:
                return
            self.process = subprocess.Popen(self.argv, env={**path, **self.env}, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.started.set()

    def log_tail(self, lines=30):
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def kill_all(self):
        with self.lock:
            self.stopping = True
        for process in (self.init_process, self.process):
            if process is not None and process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()


def local_path(mounts, value):
    """`value` with a mounted path (mountPath -> local folder) replaced by the local folder."""
    for path, local in mounts.items():
        if value == path or value.startswith(path + "/"):
            return local + value[len(path):]
    return value


def grpc_health(port, service, credentials=None):
    address = "127.0.0.1:%d" % port
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    try:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=5).status
    finally:
        channel.close()


def container_port(container, port):
    """A probe's or Service's port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError("no container port named %r" % port)


def probe_once(pod, probe):
    """Runs one probe as the kubelet would; True on success."""
    try:
        if "grpc" in probe:
            port = container_port(pod.container, probe["grpc"]["port"])
            return grpc_health(port, probe["grpc"].get("service", "")) == health_pb2.HealthCheckResponse.SERVING
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = container_port(pod.container, get["port"])
            scheme = get.get("scheme", "HTTP")
            if scheme == "HTTPS":  # the kubelet does not verify the certificate
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
            elif scheme == "HTTP":
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            else:
                raise AssertionError("%s: httpGet scheme %r" % (pod.name, scheme))
            try:
                conn.request("GET", get.get("path", "/"),
                             headers={h["name"]: h["value"] for h in get.get("httpHeaders", [])})
                status = conn.getresponse().status
            finally:
                conn.close()
            return 200 <= status < 400
        if "tcpSocket" in probe:
            with socket.create_connection(("127.0.0.1", container_port(pod.container, probe["tcpSocket"]["port"])),
                                          timeout=5):
                return True
        if "exec" in probe:
            return subprocess.run(probe["exec"]["command"], env=pod.env, timeout=30).returncode == 0
    except (grpc.RpcError, OSError, http.client.HTTPException, subprocess.TimeoutExpired):
        return False
    raise AssertionError("%s: a probe with no handler: %s" % (pod.name, probe))


def wait_probe(pod, kind, limit):
    """Polls the container's `kind` probe (every periodSeconds after initialDelaySeconds) until it succeeds, for
    at most failureThreshold periods (startup) or `limit` seconds; returns the seconds it took."""
    probe = pod.container.get(kind)
    if probe is None:
        raise AssertionError("%s has no %s" % (pod.name, kind))
    # Probes begin once the init containers are done and the container runs.
    if not pod.started.wait(limit):
        raise AssertionError("%s: init containers still running after %s s:\n%s" % (pod.name, limit,
                                                                                 pod.log_tail()))
    if pod.init_failure:
        raise AssertionError("%s: %s:\n%s" % (pod.name, pod.init_failure, pod.log_tail()))
    start = time.time()
    period = probe.get("periodSeconds", 10)
    budget = probe.get("initialDelaySeconds", 0) + period * probe.get("failureThreshold", 3)
    # A failing startup probe restarts the container after failureThreshold periods; readiness has no end.
    deadline = start + (min(budget, limit) if kind == "startupProbe" else limit)
    time.sleep(min(probe.get("initialDelaySeconds", 0), 1))
    while not probe_once(pod, probe):
        if pod.process.poll() is not None:
            raise AssertionError("%s exited (%s) before its %s succeeded:\n%s" % (
                pod.name, pod.process.returncode, kind, pod.log_tail()))
        if time.time() > deadline:
            raise AssertionError("%s: %s still failing after %.0f s:\n%s" % (
                pod.name, kind, time.time() - start, pod.log_tail()))
        time.sleep(min(period, 0.5))  # faster than the kubelet; the outcome is the same
    return time.time() - start


def rank_process(pid, rank):
    """The pid of the child of `pid` (forked by any of its threads) running `--rank rank`."""
    for task in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            try:
                with open("/proc/%d/cmdline" % child) as f:
                    argv = f.read().split("\0")
            except OSError:
                continue
            if "--rank" in argv and argv[argv.index("--rank") + 1] == str(rank):
                return child
    raise AssertionError("no process of rank %d under pid %d" % (rank, pid))


def argv_holding(secret):
    """The pids of every process on this machine whose command line holds `secret`."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    if secret in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def pod_processes(pid):
    """`pid` and every process below it (children forked by any of its threads, recursively)."""
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            tasks = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue
        for task in tasks:
            try:
                with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                    todo += [int(c) for c in f.read().split()]
            except OSError:
                pass
    return found


def environ_holding(secret, pids):
    """(pid, variable names) of each process in `pids` whose environment (/proc/PID/environ: what it was started
    with, which its children inherit) holds `secret`, and the number of processes read (gone ones skipped)."""
    found, read = [], 0
    for pid in pids:
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                variables = f.read().split(b"\0")
        except OSError:
            continue
        read += 1
        names = [v.split(b"=", 1)[0].decode(errors="replace") for v in variables if secret in v]
        if names:
            found.append((pid, names))
    return found, read


def port_free(port):
    """Whether a server can listen on `port` (with SO_REUSEADDR, as gRPC and Beast do: connections of an
    earlier run in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


class ManifestsRunTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        docs = render(ARGS.overlay)
        cls.config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
        [cls.lws] = [d for d in docs if d["kind"] == "LeaderWorkerSet"]
        cls.services = [d for d in docs if d["kind"] == "Service"]
        os.makedirs(ARGS.workdir, exist_ok=True)
        cls.mounts_root = os.path.join(ARGS.workdir, "mounts")
        shutil.rmtree(cls.mounts_root, ignore_errors=True)
        cls.secrets = test_secrets()
        template = cls.lws["spec"]["leaderWorkerTemplate"]
        size = template["size"]
        leader_template = template.get("leaderTemplate", template["workerTemplate"])
        name = cls.lws["metadata"]["name"]
        cls.pods = [Pod("%s-0" % name, leader_template, 0, cls.lws, cls.config_maps, cls.secrets, cls.mounts_root)]
        cls.pods += [Pod("%s-0-%d" % (name, i), template["workerTemplate"], i, cls.lws, cls.config_maps, cls.secrets,
                         cls.mounts_root) for i in range(1, size)]
        cls.leader = cls.pods[0]
        model = cls.leader.env["TESSERA_MODEL"]
        if not os.path.exists(os.path.join(model, "config.json")):
            config = os.path.join(ARGS.workdir, "tiny405_config.json")
            with open(config, "w") as f:
                json.dump(TINY_405B_RATIOS, f)
            subprocess.run([ARGS.tessera, "make-model", "--config", config, "--out", model, "--seed", "5",
                            "--tokenizer", TOKENIZER_DIR], check=True, capture_output=True, timeout=300)
        cls.log_dir = os.path.join(ARGS.workdir, "logs")
        shutil.rmtree(cls.log_dir, ignore_errors=True)
        os.makedirs(cls.log_dir)

    def setUp(self):
        # ctest's timeout (SIGTERM) or Ctrl-C must not leave the pods running on the manifests' fixed ports.
        def stop(sig, frame):
            self.tearDown()
            sys.exit(128 + sig)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def tearDown(self):
        for pod in self.pods:
            pod.kill_all()

    def assert_token_hidden(self, token, when):
        """The join token is in no process's argv and in the environment of no process of the pods (each pod's
        container process and every rank process it started, all of which must be running)."""
        self.assertEqual(argv_holding(token), [], "the join token is in these processes' argv %s" % when)
        for pod in self.pods:
            pids = pod_processes(pod.process.pid)
            # The container's process and one process per local rank: each environment was read.
            self.assertEqual(len(pids), 1 + int(pod.env["TESSERA_LOCAL_RANKS"]), "%s: %s" % (pod.name, pids))
            found, read = environ_holding(token, pids)
            self.assertEqual(read, len(pids), "%s: an environment could not be read" % pod.name)
            self.assertEqual(found, [], "%s: the join token is in these processes' environment %s (pid, "
                                        "variables)" % (pod.name, when))

    def test_the_two_node_overlay_serves_and_drains_as_written(self):
        leader, workers = self.leader, self.pods[1:]
        self.assertEqual(len(self.pods), 2, "the 405B overlay is a group of two pods")
        for pod in self.pods:
            print("%s: %s" % (pod.name, " ".join(pod.argv[1:])), file=sys.stderr)
            print("  env: %s" % " ".join("%s=%s" % kv for kv in sorted(pod.shown_env().items())
                                          if kv[0].startswith(("TESSERA_", "LWS_"))), file=sys.stderr)
        ports = {container_port(p.container, port["containerPort"])
                 for p in self.pods for port in p.container.get("ports", [])}
        busy = [p for p in sorted(ports) if not port_free(p)]
        if busy:
            self.fail("ports %s that the manifests use are taken on this machine" % busy)

        # The Service: selects the leader only, and its target ports are the leader's container ports.
        [service] = [s for s in self.services if s["spec"].get("selector")]
        selector = service["spec"]["selector"]
        self.assertTrue(all(leader.labels.get(k) == v for k, v in selector.items()),
                        "Service %s selects %s, not the leader (%s)" % (service["metadata"]["name"], selector,
                                                                       leader.labels))
        for w in workers:
            self.assertFalse(all(w.labels.get(k) == v for k, v in selector.items()),
                             "Service selects worker pod %s too" % w.name)
        targets = {p["name"]: container_port(leader.container, p.get("targetPort", p["port"]))
                   for p in service["spec"]["ports"]}
        self.assertEqual(set(targets), {"grpc", "http"}, service["spec"]["ports"])

        start = time.time()
        for pod in reversed(self.pods):  # workers first: any order works
            pod.start(self.log_dir)
        for pod in self.pods:
            took = wait_probe(pod, "startupProbe", 60)  # these processes answer within a second
            print("%s: startupProbe passed after %.1f s" % (pod.name, took), file=sys.stderr)
        took = wait_probe(leader, "readinessProbe", 180)
        print("leader ready %.1f s after the pods started" % (time.time() - start), file=sys.stderr)
        for pod in self.pods:
            for kind in ("readinessProbe", "livenessProbe"):
                if kind in pod.container:
                    self.assertTrue(probe_once(pod, pod.container[kind]), "%s: %s" % (pod.name, kind))

        # The join token came from its Secret volume, as a file (TESSERA_JOIN_TOKEN_FILE), and is in no
        # process's argv (ps shows argv to anyone on the node) and in no environment of the pods' processes:
        # neither the containers' nor the rank processes' they start (every rank is running now).
        token = self.secrets["tessera-join-token"]["token"]
        for pod in self.pods:
            self.assertNotIn("TESSERA_JOIN_TOKEN", pod.env)
            self.assertFalse([k for k, v in pod.env.items() if token.decode() in v], pod.name)
            [volume] = [v["name"] for v in pod.spec["volumes"]
                        if v.get("secret", {}).get("secretName") == "tessera-join-token"]
            [mount] = [m["mountPath"].rstrip("/") for m in pod.container["volumeMounts"] if m["name"] == volume]
            path = pod.env["TESSERA_JOIN_TOKEN_FILE"]
            self.assertTrue(path.startswith(pod.mounts[mount] + "/"), path)  # a file of the Secret's volume
            with open(path, "rb") as f:
                self.assertEqual(f.read(), token)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o440)
        self.assert_token_hidden(token, "with every rank running")

        # The public gRPC port is TLS only: a plaintext client is refused. The health service answers a client
        # that trusts ca.pem (the Secret's CA; the certificate names 127.0.0.1).
        with open(os.path.join(TLS_DIR, "ca.pem"), "rb") as f:
            ca = f.read()
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        for port in (targets["grpc"], int(leader.env["TESSERA_CONTROL_PORT"])):  # the control port: mutual TLS
            with self.assertRaises(grpc.RpcError) as refused:
                grpc_health(port, "")
            self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE, port)
        self.assertEqual(grpc_health(targets["grpc"], "tessera.v1.InferenceService", credentials),
                         health_pb2.HealthCheckResponse.SERVING)

        # A completion through each of the Service's ports, over TLS.
        pb, pb_grpc, _, _ = harness.stubs()
        channel = grpc.secure_channel("127.0.0.1:%d" % targets["grpc"], credentials)
        stub = pb_grpc.InferenceServiceStub(channel)
        served = leader.env.get("TESSERA_SERVED_MODEL_NAME") or os.path.basename(leader.env["TESSERA_MODEL"])
        answer = stub.Complete(pb.CompleteRequest(model=served, text="The capital of France is", max_tokens=8,
                                                  temperature=0.0, ignore_eos=True), timeout=120)
        self.assertEqual(len(answer.choices[0].token_ids), 8)
        import openai
        client = openai.OpenAI(base_url="https://127.0.0.1:%d/v1" % targets["http"], api_key="unused",
                               http_client=openai.DefaultHttpxClient(
                                   verify=ssl.create_default_context(cafile=os.path.join(TLS_DIR, "ca.pem"))))
        self.assertEqual([m.id for m in client.models.list().data], [served])
        text = client.completions.create(model=served, prompt="The capital of France is", max_tokens=8,
                                         temperature=0, extra_body={"ignore_eos": True})
        self.assertEqual(text.choices[0].text, answer.choices[0].text)

        # A rank of the worker pod dies mid-stream: the pod's `tessera worker --local-ranks` restarts it, the
        # coordinator re-forms the group (restartPolicy None: no pod is recreated), and the stream completes
        # with the answer an uninterrupted run gives.
        long = pb.CompleteRequest(model=served, text="Once upon a time", max_tokens=120, temperature=0.0,
                                  ignore_eos=True)
        reference = list(stub.Complete(long, timeout=120).choices[0].token_ids)
        got, killed = [], None
        for event in stub.CompleteStream(long, timeout=300):
            if event.HasField("delta"):
                got += event.delta.token_ids
                if killed is None and len(got) >= 5:
                    local = int(workers[0].env["TESSERA_LOCAL_RANKS"])
                    first = int(workers[0].env["LWS_WORKER_INDEX"]) * local
                    victim = rank_process(workers[0].process.pid, first + local // 2)
                    os.kill(victim, signal.SIGKILL)
                    killed = time.time()
        self.assertIsNotNone(killed)
        self.assertEqual(got, reference)
        print("a worker pod's rank killed mid-stream: the stream completed unchanged %.2f s later" % (
            time.time() - killed), file=sys.stderr)
        wait_probe(leader, "readinessProbe", 60)
        self.assert_token_hidden(token, "after a rank restart")

        # Deleting the group: every pod gets SIGTERM at once, mid-stream. The stream still completes; readiness
        # turns NOT_SERVING; each pod is gone within its grace period.
        request = pb.CompleteRequest(model=served, text="Once upon a time", max_tokens=200, temperature=0.0,
                                     ignore_eos=True)
        tokens = 0
        signalled = None
        for event in stub.CompleteStream(request, timeout=300):
            if event.HasField("delta"):
                tokens += len(event.delta.token_ids)
                if signalled is None:
                    for pod in self.pods:
                        pod.process.send_signal(signal.SIGTERM)
                    signalled = time.time()
                    readiness = leader.container["readinessProbe"]
                    deadline = time.time() + 2
                    while probe_once(leader, readiness):
                        self.assertLess(time.time(), deadline, "the leader still ready 2 s after SIGTERM")
                        time.sleep(0.01)
                    self.assertTrue(probe_once(leader, leader.container["livenessProbe"]),
                                    "the leader must stay live while it drains")
        channel.close()
        self.assertEqual(tokens, 200)
        for pod in self.pods:
            grace = pod.spec.get("terminationGracePeriodSeconds", 30)
            try:
                code = pod.process.wait(max(1, grace - (time.time() - signalled)))
            except subprocess.TimeoutExpired:
                self.fail("%s outlived its terminationGracePeriodSeconds (%s s):\n%s" % (pod.name, grace,
                                                                                       pod.log_tail()))
            self.assertEqual(code, 0, "%s exited %s:\n%s" % (pod.name, code, pod.log_tail()))
        print("every pod gone %.1f s after SIGTERM" % (time.time() - signalled), file=sys.stderr)
        time.sleep(0.5)
        control = int(leader.env["TESSERA_CONTROL_PORT"])
        leftovers = subprocess.run(["pgrep", "-f", "--", "--coordinator 127.0.0.1:%d" % control],
                                   capture_output=True, text=True).stdout.split()
        self.assertEqual(leftovers, [], "worker processes outlived their pods")
        # No log line of any pod (the coordinator's, every rank's) repeats the join token.
        for pod in self.pods:
            with open(pod.log_path, "rb") as f:
                self.assertNotIn(token, f.read(), "%s's log holds the join token" % pod.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--kubectl", default=None)
    parser.add_argument("--overlay", default=OVERLAY, help="another copy of the two-node overlay (to see it fail)")
    ARGS, rest = parser.parse_known_args()
    ARGS.tessera = os.path.abspath(ARGS.tessera)
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
