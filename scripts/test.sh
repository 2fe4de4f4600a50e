#!/usr/bin/env bash
# Installs what is missing, configures, builds into build/ and runs every test. Ends with ctest's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
jobs=${TESSERA_JOBS:-$(nproc)}
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j"$jobs"
cd build
ctest --output-on-failure -j"$jobs" --timeout 600
