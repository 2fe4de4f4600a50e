#!/usr/bin/env bash
# The main job end to end on a model made here: build, write a random-weight checkpoint in Hugging Face
# layout (with the real Llama 3.1 tokenizer), generate from a batch of prompts (text, chat, token ids) on the
# CPU backend, then serve it: `tessera serve` with a coordinator and tp=2 x pp=2 worker processes, a completion
# streamed through the gRPC client, and a clean shutdown. The weights are random, so the text is gibberish;
# the pipeline is the real one.
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
events=$(mktemp)
serve_pid=
cleanup() {
  [[ -n "$serve_pid" ]] && kill -TERM "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  rm -f "$chat" "$events"
}
trap cleanup EXIT
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
echo "== serve: a coordinator and tp 2 x pp 2 worker processes on a free port (logs on stderr)"
build/tessera serve --model "$model" --tp 2 --pp 2 --grpc-port 0 --kv-cache-memory 64MiB >"$events" &
serve_pid=$!
for _ in $(seq 600); do grep -q '"event":"ready"' "$events" && break; sleep 0.1; done
grep '"event":"ready"' "$events"
port=$(grep -o '"grpc_port":[0-9]*' "$events" | head -1 | cut -d: -f2)
echo "== complete --stream: the same text prompt, streamed through the gRPC client"
build/tessera complete --server "127.0.0.1:$port" --prompt "The capital of France is" --max-tokens 24 --temperature 0 --stream
echo
echo "== complete --json: greedy from token ids (the same tokens as generate above), then sampled with a seed"
build/tessera complete --server "127.0.0.1:$port" --prompt-ids 128000,40,1093 --max-tokens 24 --temperature 0 --json
build/tessera complete --server "127.0.0.1:$port" --prompt "Once upon a time" --max-tokens 12 --temperature 0.8 \
  --seed 42 --json
echo "== SIGTERM: the server stops its workers and exits"
kill -TERM "$serve_pid"
wait "$serve_pid"
serve_pid=
grep '"event":"stats"' "$events" || true
