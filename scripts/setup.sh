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
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-venv
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

# Test tools live in .venv/ (numpy for the reference implementation).
python_packages=(numpy)
if [ ! -x .venv/bin/python ]; then
  py=$(command -v python3)
  "$py" -m venv .venv
fi
if ! .venv/bin/python -c 'import numpy' 2>/dev/null; then
  echo "setup: installing ${python_packages[*]} into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check "${python_packages[@]}"
fi
