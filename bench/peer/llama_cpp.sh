#!/usr/bin/env bash
# llama.cpp's CPU figures for the same model as Tessera, for comparison. Not run by CI or scripts/test.sh.
#
# Builds llama.cpp (CPU only) from the PyPI source distribution of llama-cpp-python, which vendors it under
# vendor/llama.cpp, into out/peer/ (git-ignored); then, for the given GGUF and a BF16 copy of it made with
# llama-quantize, measures with N threads:
#   prefill_512  llama-bench -p 512 -n 0            (tokens/s, median of the runs' samples)
#   decode_b1    llama-bench -p 0 -n 128            (tokens/s, median of the runs' samples)
#   decode_b32   llama-batched-bench -npp 32 -ntg 32 -npl 1,32 -c 4096, the S_TG t/s of the B=32 row
#                (median over --reps separate runs)
# and prints one JSON line per (weights, measure) on stdout:
#   {"engine":"llama.cpp","weights":"Q4_1","measure":"prefill_512","tokens_per_s":123.4,"runs":3}
# Everything else (build output, the tools' own tables, the version) goes to stderr.
#
# Usage: bench/peer/llama_cpp.sh [--gguf FILE] [--threads N] [--reps N] [--build-only]
#   --gguf FILE   model to run (default: the path printed by scripts/smollm2-gguf.sh, SmolLM2-135M-Instruct.Q4_1.gguf)
#   --threads N   threads for every measurement (default 2)
#   --reps N      repetitions of each measurement, at least 3 (default 3)
#   --build-only  build the tools (if not built yet), print the version, and stop
# Environment: LLAMA_CPP_PYTHON_VERSION (default below) picks another llama-cpp-python sdist; PEER_DIR moves out/peer;
# OMP_WAIT_POLICY passes through to llama.cpp's OpenMP threads (unset: libgomp's default, spin then sleep). On a busy
# machine the figures at 2 threads on 2 cores mostly measure the barrier waits: there, unset gave ~10x fewer decode
# tokens/s than OMP_WAIT_POLICY=passive or than 1 thread. The log warns when the load average is >= 1 when measuring.
#
# The whole script runs under `nice -n 19` (it re-executes itself so) and builds with -j2: the machine is shared.
# Needs: cmake, a C++ compiler, ninja (optional; make otherwise), python3, and pip reaching PyPI on the first run.
set -euo pipefail

# 0.3.36 vendors ggml-org/llama.cpp@0c1e57098; builds here with Debian 12's gcc 12.2 and cmake 3.25.
LCPP_PY_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"

if [ "$(nice)" -lt 19 ]; then exec nice -n 19 "$0" "$@"; fi

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEER="${PEER_DIR:-$ROOT/out/peer}"
GGUF="" THREADS=2 REPS=3 BUILD_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --gguf) GGUF="$2"; shift 2 ;;
    --gguf=*) GGUF="${1#*=}"; shift ;;
    --threads) THREADS="$2"; shift 2 ;;
    --threads=*) THREADS="${1#*=}"; shift ;;
    --reps) REPS="$2"; shift 2 ;;
    --reps=*) REPS="${1#*=}"; shift ;;
    --build-only) BUILD_ONLY=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
    *) echo "llama_cpp.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || { echo "llama_cpp.sh: --threads wants a positive integer" >&2; exit 2; }
if ! [[ "$REPS" =~ ^[0-9]+$ ]] || [ "$REPS" -lt 3 ]; then echo "llama_cpp.sh: --reps wants an integer >= 3" >&2; exit 2; fi

log() { echo "[llama_cpp.sh] $*" >&2; }

SRC_NAME="llama_cpp_python-$LCPP_PY_VERSION"
SDIST="$PEER/$SRC_NAME.tar.gz"
SRC="$PEER/$SRC_NAME/vendor/llama.cpp"
BUILD="$PEER/build-$LCPP_PY_VERSION"
BIN="$BUILD/bin"
TOOLS=(llama-bench llama-batched-bench llama-quantize)

# The llama.cpp commit that this llama-cpp-python release vendors, from its CHANGELOG (the sdist has no git data).
vendored_commit() {
  awk -v v="## [$LCPP_PY_VERSION]" '$0 == v {on = 1; next} on && /^## \[/ {exit}
    on && match($0, /ggml-org\/llama\.cpp@[0-9a-f]+/) {print substr($0, RSTART + 19, RLENGTH - 19); exit}' \
    "$PEER/$SRC_NAME/CHANGELOG.md" 2>/dev/null || true
}

build() {
  local have=1 t
  for t in "${TOOLS[@]}"; do [ -x "$BIN/$t" ] || have=0; done
  if [ "$have" = 1 ]; then log "tools already built in $BIN; skipping the build"; return; fi

  mkdir -p "$PEER"
  if [ ! -f "$SDIST" ]; then
    local pip
    if [ -x "$ROOT/.venv/bin/pip" ]; then pip=("$ROOT/.venv/bin/pip"); else pip=(python3 -m pip); fi
    log "downloading the llama-cpp-python==$LCPP_PY_VERSION sdist with ${pip[*]} (installs nothing)"
    "${pip[@]}" download --no-deps --no-binary :all: --disable-pip-version-check -d "$PEER" \
      "llama-cpp-python==$LCPP_PY_VERSION" >&2
  fi
  if [ ! -f "$SRC/CMakeLists.txt" ]; then
    log "extracting $SDIST"
    rm -rf "${PEER:?}/$SRC_NAME"
    tar -xzf "$SDIST" -C "$PEER"
  fi
  local commit; commit="$(vendored_commit)"
  local gen=() bt=(cmake --build "$BUILD" -j 2 --target "${TOOLS[@]}")
  if command -v ninja >/dev/null; then gen=(-G Ninja); bt=(ninja -C "$BUILD" -j 2 "${TOOLS[@]}"); fi
  log "configuring llama.cpp ${commit:-(commit unknown)} in $BUILD"
  local t0=$SECONDS
  # GGML_OPENMP stays ON, llama.cpp's default and what its published CPU figures use. The vendored tree's .git
  # file points into a submodule store the sdist lacks, so git finds no commit there; LLAMA_BUILD_COMMIT names it.
  cmake -S "$SRC" -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF ${commit:+-DLLAMA_BUILD_COMMIT="$commit"} >&2
  log "building ${TOOLS[*]} (-j2)"
  "${bt[@]}" >&2
  log "build took $((SECONDS - t0)) s (configure + compile)"
}

build
COMMIT="$(vendored_commit)"
log "llama.cpp: ggml-org/llama.cpp@${COMMIT:-unknown}, vendored by llama-cpp-python $LCPP_PY_VERSION; $("$BIN/llama-batched-bench" --version 2>&1 | grep -m1 '^version' || true)"
[ "$BUILD_ONLY" = 1 ] && exit 0

if [ -z "$GGUF" ]; then
  GGUF="$("$ROOT/scripts/smollm2-gguf.sh")" || { log "no GGUF: scripts/smollm2-gguf.sh found none (run scripts/setup.sh) and --gguf was not given"; exit 1; }
fi
[ -f "$GGUF" ] || { log "no such file: $GGUF"; exit 1; }
GGUF="$(cd "$(dirname "$GGUF")" && pwd)/$(basename "$GGUF")"

BF16="$PEER/$(basename "$GGUF" .gguf).bf16.gguf"
if [ ! -s "$BF16" ] || [ "$GGUF" -nt "$BF16" ]; then
  log "making the BF16 copy $BF16"
  "$BIN/llama-quantize" --allow-requantize "$GGUF" "$BF16.tmp" BF16 "$THREADS" >&2
  mv "$BF16.tmp" "$BF16"
fi

TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
log "OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-(unset)}; load average before measuring: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
if awk '{exit !($1 >= 1)}' /proc/loadavg; then
  log "WARNING: the machine is busy (load average >= 1): these figures reflect the contention, not llama.cpp alone"
fi

# emit WEIGHTS MEASURE VALUES... : prints the JSON line with the median of VALUES.
emit() {
  python3 - "$@" <<'EOF'
import json, statistics, sys
w, m, vals = sys.argv[1], sys.argv[2], [float(v) for v in sys.argv[3:]]
print(json.dumps({"engine": "llama.cpp", "weights": w, "measure": m,
                  "tokens_per_s": round(statistics.median(vals), 2), "runs": len(vals)}, separators=(",", ":")))
EOF
}

# llama_bench FILE ARGS... : runs llama-bench -o json and sets W (weights, from the model's ftype) and S (its samples).
llama_bench() {
  local f="$1"; shift
  "$BIN/llama-bench" -m "$f" -t "$THREADS" -r "$REPS" -o json "$@" >"$TMP/lb.json" 2>"$TMP/lb.log" ||
    { cat "$TMP/lb.log" >&2; log "llama-bench failed"; exit 1; }
  python3 - "$TMP/lb.json" >"$TMP/lb.txt" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))[0]
print(r["model_type"].split()[-1], *r["samples_ts"])
sys.stderr.write("  %s  pp%d tg%d  avg %.2f +- %.2f t/s  samples %s  (%s; %s; n_batch %d, n_ubatch %d, flash_attn %s)\n" % (
    r["model_type"], r["n_prompt"], r["n_gen"], r["avg_ts"], r["stddev_ts"], " ".join("%.2f" % s for s in r["samples_ts"]),
    r.get("cpu_info"), r.get("backends"), r.get("n_batch", 0), r.get("n_ubatch", 0), r.get("flash_attn")))
EOF
  read -r W S <"$TMP/lb.txt"
}

for f in "$GGUF" "$BF16"; do
  log "$(basename "$f"): prefill 512 (llama-bench -p 512 -n 0 -r $REPS -t $THREADS)"
  llama_bench "$f" -p 512 -n 0
  # shellcheck disable=SC2086
  emit "$W" prefill_512 $S

  log "$(basename "$f"): decode at batch 1 (llama-bench -p 0 -n 128 -r $REPS -t $THREADS)"
  llama_bench "$f" -p 0 -n 128
  # shellcheck disable=SC2086
  emit "$W" decode_b1 $S

  log "$(basename "$f"): decode at 32 sequences (llama-batched-bench -npp 32 -ntg 32 -npl 1,32 -c 4096 -t $THREADS, $REPS runs)"
  B32=()
  for ((i = 0; i < REPS; i++)); do
    "$BIN/llama-batched-bench" -m "$f" -t "$THREADS" -tb "$THREADS" -c 4096 -npp 32 -ntg 32 -npl 1,32 \
      --output-format jsonl >"$TMP/bb.txt" 2>&1 || { cat "$TMP/bb.txt" >&2; exit 1; }
    python3 - "$TMP/bb.txt" >"$TMP/bb.val" <<'EOF'
import json, sys
rows = {r["pl"]: r for r in (json.loads(l) for l in open(sys.argv[1]) if l.startswith('{"n_kv_max"'))}
sys.stderr.write("  run: B=1 S_TG %.2f t/s, B=32 S_TG %.2f t/s (B=32 S_PP %.2f t/s)\n" % (rows[1]["speed_tg"], rows[32]["speed_tg"], rows[32]["speed_pp"]))
print(rows[32]["speed_tg"])
EOF
    B32+=("$(cat "$TMP/bb.val")")
  done
  emit "$W" decode_b32 "${B32[@]}"
done
log "load average after measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
