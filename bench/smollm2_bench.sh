#!/usr/bin/env bash
# SmolLM2-135M-Instruct, the trained model of the demo: import time of its GGUF against reading the file from the
# page cache, then Tessera's decode (batch 1 and 32) and 512-token prefill at tp = 1 with 2 threads next to
# llama.cpp's on the same weights (bench/peer/llama_cpp.sh builds llama.cpp from the llama-cpp-python sdist into
# out/peer; skipped with a note when that fails or --no-peer is given), as one table. Not run by CI.
#
#   bench/smollm2_bench.sh [--threads N] [--no-peer]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2
peer=1
while (($#)); do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --no-peer) peer=0; shift ;;
    *) echo "usage: bench/smollm2_bench.sh [--threads N] [--no-peer]" >&2; exit 2 ;;
  esac
done
ninja -C build -j2 tessera model_bench >/dev/null
gguf=$(scripts/smollm2-gguf.sh)
work=out/bench-smollm2
mkdir -p "$work"
results=$work/results.jsonl
: >"$results"

now() { date +%s.%N; }
cat "$gguf" >/dev/null  # warm the page cache
best_read=1e9
for _ in 1 2 3; do
  t0=$(now); cat "$gguf" >/dev/null; t1=$(now)
  best_read=$(echo "$t1 $t0 $best_read" | awk '{d = $1 - $2; print (d < $3 ? d : $3)}')
done
best_import=1e9
for _ in 1 2 3; do
  rm -rf "$work/model"
  t0=$(now); build/tessera import-gguf --gguf "$gguf" --out "$work/model" --dtype bf16 >/dev/null; t1=$(now)
  best_import=$(echo "$t1 $t0 $best_import" | awk '{d = $1 - $2; print (d < $3 ? d : $3)}')
done
bytes=$(stat -c %s "$gguf")
out_bytes=$(du -cb "$work/model"/*.safetensors | tail -1 | cut -f1)
echo "== import-gguf (best of 3): $(printf %.3f "$best_import") s for $((bytes / 1000000)) MB of Q4_1 GGUF ->" \
  "$((out_bytes / 1000000)) MB of bf16 safetensors; reading the GGUF from the page cache: $(printf %.3f "$best_read") s" \
  "($(echo "$best_import $best_read" | awk '{printf "%.1f", $1 / $2}')x)"

echo "== Tessera: build/bench/model_bench --model $work/model --threads $threads (median of the runs in the JSON)"
build/bench/model_bench --model "$work/model" --threads "$threads" --steps 16 --json 1 | tee "$work/tessera.txt"
grep '^{' "$work/tessera.txt" >>"$results"

if ((peer)); then
  echo "== llama.cpp: bench/peer/llama_cpp.sh --gguf $gguf --threads $threads"
  if bench/peer/llama_cpp.sh --gguf "$gguf" --threads "$threads" >"$work/llama_cpp.jsonl" 2>"$work/llama_cpp.log"; then
    cat "$work/llama_cpp.jsonl" >>"$results"
  else
    echo "llama.cpp could not be built or run here (see $work/llama_cpp.log); its columns stay empty"
  fi
fi

.venv/bin/python - "$results" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
cell = {(r["engine"], r["weights"], r["measure"]): r["tokens_per_s"] for r in rows}
columns = [("tessera", "BF16"), ("llama.cpp", "BF16"), ("llama.cpp", "Q4_1")]
measures = [("prefill_512", "prefill 512 tokens"), ("prefill_512_bf16", "prefill 512, --prefill-precision bf16"),
            ("decode_b1", "decode, batch 1"), ("decode_b32", "decode, batch 32")]
print()
print("| tokens/s (median) | " + " | ".join(f"{e} {w}" for e, w in columns) + " |")
print("|---|" + "---|" * len(columns))
for key, label in measures:
    values = [cell.get((e, w, key)) for e, w in columns]
    if all(v is None for v in values):
        continue
    print(f"| {label} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in values) + " |")
EOF
