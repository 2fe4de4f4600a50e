#!/usr/bin/env bash
# The main job end to end on a model made here: build, write a random-weight checkpoint in Hugging Face
# layout, and generate from a batch of three prompts on the CPU backend.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j"$(nproc)" tessera >/dev/null
model=${TESSERA_DEMO_DIR:-out/demo-tiny}
echo "== make-model --preset tiny --out $model"
build/tessera make-model --preset tiny --out "$model" --seed 7
ls -l "$model"
echo "== generate: three prompts in one batch, 24 greedy tokens each (stats on stderr)"
build/tessera generate --model "$model" --max-tokens 24 --stats \
  --prompt-ids 128000,9906,11,1917 \
  --prompt-ids 128000,791,4320,374,220,2983,13 \
  --prompt-ids 128000,40,1093
echo "== generate: sampled at temperature 0.8, seed 42"
build/tessera generate --model "$model" --max-tokens 12 --temperature 0.8 --seed 42 --prompt-ids 128000,9906
