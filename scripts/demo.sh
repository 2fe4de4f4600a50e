#!/usr/bin/env bash
# The main job end to end on a model made here: build, write a random-weight checkpoint in Hugging Face
# layout (with the real Llama 3.1 tokenizer), and generate from a batch of prompts (text, chat, token ids) on
# the CPU backend. The weights are random, so the text is gibberish; the pipeline is the real one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j"$(nproc)" tessera >/dev/null
model=${TESSERA_DEMO_DIR:-out/demo-tiny}
echo "== make-model --preset tiny --out $model --tokenizer tests/data/llama-3.1-tokenizer"
build/tessera make-model --preset tiny --out "$model" --seed 7 --tokenizer tests/data/llama-3.1-tokenizer
ls "$model"
echo "== tokenize"
build/tessera tokenize --model "$model" --text "The capital of France is" --add-special-tokens
echo "== chat-template"
chat=$(mktemp --suffix=.json)
trap 'rm -f "$chat"' EXIT
echo '[{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "Name a colour."}]' >"$chat"
echo "{\"messages\": $(cat "$chat"), \"add_generation_prompt\": true}" | build/tessera chat-template --model "$model" --input-jsonl /dev/stdin
echo "== generate: a text prompt, a chat and token ids in one batch, 24 greedy tokens each (stats on stderr)"
build/tessera generate --model "$model" --max-tokens 24 --stats \
  --prompt "The capital of France is" --chat "$chat" --prompt-ids 128000,40,1093
echo "== the same batch split over 4 processes: tensor parallel 2 x pipeline parallel 2 (identical tokens)"
build/tessera generate --model "$model" --max-tokens 24 --tp 2 --pp 2 \
  --prompt "The capital of France is" --chat "$chat" --prompt-ids 128000,40,1093
echo "== generate: sampled at temperature 0.8, seed 42"
build/tessera generate --model "$model" --max-tokens 12 --temperature 0.8 --seed 42 --prompt "Once upon a time"
