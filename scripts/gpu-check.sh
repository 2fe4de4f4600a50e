#!/usr/bin/env bash
# gpu-check: one command for a GPU machine (an H200 lent by the device tool) that builds Tessera with its CUDA
# backend, runs the tests labelled `gpu`, times the llama3-8b shape on the CUDA backend (gpu_bench) and in PyTorch
# eager mode (bench/torch_llama_eager.py), and prints a short table last. docs/gpu.md explains the figures.
#
#   scripts/gpu-check.sh               on the GPU machine: about 5 to 8 minutes on an H200 from a clean checkout
#   scripts/gpu-check.sh --fetch-deps  on a Debian 12 machine with apt and a network: downloads the Debian
#                                      packages of the C++ build dependencies into build-gpu-deps/ (ignored by
#                                      git, ~20 MB); carry that folder to a GPU machine whose image lacks them
#
# Environment: OUT (when set, logs and JSON are copied there), TESSERA_GPU_BUILD (build folder, default
# build-gpu), TESSERA_JOBS (default: all cores), TESSERA_MODEL_DIR (the 16 GB llama3-8b checkpoint; default
# /dev/shm/tessera-8b when /dev/shm has room, else inside the build folder; reused when complete).
# Exit status: 0 when everything built, passed and ran (the speed targets are reported, not enforced), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD
deps_dir=$root/build-gpu-deps

# --fetch-deps: the Debian 12 packages the build needs beyond a compiler, CMake and the CUDA toolkit: the library
# packages of scripts/setup.sh, everything they depend on (recursively) except the base system that any image with
# a compiler has, the OpenCL headers oneDNN's CMake package asks for, and pkg-config.
base_packages='adduser|cdebconf|debconf|dpkg|tar|passwd|install-info|readline-common|gcc-[0-9]+-base|libc6|libc6-dev|libc-dev-bin|linux-libc-dev|libgcc-s1|libstdc\+\+6|libgomp1|libcrypt.*|libnsl.*|libtirpc.*|rpcsvc-proto|libacl1|libaudit.*|libbz2-1\.0|libcap-ng0|libcom-err2|libdb5\.3|libdebian-installer4|libgssapi-krb5-2|libk5crypto3|libkeyutils1|libkrb5.*|liblzma5|libmd0|libnewt.*|libpam.*|libreadline8|libselinux1|libsemanage.*|libsepol2|libslang2|libtextwrap1|libtinfo6|libzstd1|ibverbs-providers'
tool_packages='build-essential|cmake|ninja-build|ccache|pkg-config|clang|libclang-rt-.*|python3-venv'
if [ "${1:-}" = "--fetch-deps" ]; then
  mapfile -t roots < <(sed -n '/^packages=(/,/^)/p' scripts/setup.sh | sed -e 's/#.*//' -e 's/packages=//' |
    tr -s ' ()' '\n' | grep -vxE "($tool_packages)?")
  mapfile -t packages < <(
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
      --no-enhances "${roots[@]}" pkgconf-bin ocl-icd-opencl-dev opencl-c-headers opencl-clhpp-headers |
      grep -v '^[ <]' | grep -vxE "$base_packages" | sort -u)
  ((${#packages[@]})) || { echo "gpu-check: apt-cache depends found nothing (is this Debian 12?)" >&2; exit 1; }
  rm -rf "$deps_dir" && mkdir -p "$deps_dir" && cd "$deps_dir" || exit 1
  apt-get download "${packages[@]}" >/dev/null || { echo "gpu-check: apt-get download failed" >&2; exit 1; }
  echo "gpu-check: ${#packages[@]} packages, $(du -sh . | cut -f1) in $deps_dir (carry build-gpu-deps)"
  exit 0
elif [ $# -gt 0 ]; then
  echo "gpu-check: unknown argument $1 (usage: scripts/gpu-check.sh [--fetch-deps])" >&2
  exit 2
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "gpu-check: no NVIDIA GPU here (nvidia-smi is missing or lists no GPU); run it on a GPU machine" >&2
  exit 1
fi

build=${TESSERA_GPU_BUILD:-$root/build-gpu}
jobs=${TESSERA_JOBS:-$(nproc)}
logs=$build/gpu-check
mkdir -p "$logs"
rm -f "$logs"/*.log "$logs"/*.json "$logs"/*.txt
t_start=$(date +%s)
failures=()

# Copies the logs and JSON to $OUT (flat, at most 8 files) on every exit.
copy_out() {
  if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    cp -f "$logs"/*.log "$logs"/*.json "$logs"/*.txt "$OUT"/ 2>/dev/null || true
  fi
}
trap copy_out EXIT

elapsed() { echo $(($(date +%s) - t_start)); }
# step NAME LOG TIMEOUT_S CMD...: runs CMD with its output in LOG; one line per step; on failure the log's tail.
step() {
  local name=$1 log=$2 limit=$3 t0 rc
  shift 3
  t0=$(date +%s)
  echo "gpu-check: [$(elapsed)s] $name ..."
  timeout "$limit" "$@" >>"$log" 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then
    [ $rc -eq 124 ] && echo "(timed out after ${limit}s)" >>"$log"
    echo "----- last lines of $log -----"
    tail -n 40 "$log"
    echo "gpu-check: $name FAILED (exit $rc, $(($(date +%s) - t0))s; full log: $log)"
    failures+=("$name")
    return 1
  fi
  echo "gpu-check: [$(elapsed)s] $name done in $(($(date +%s) - t0))s"
}

# 1. The machine.
{ nvidia-smi; echo; nvidia-smi -q -d CLOCK,POWER,MEMORY | head -n 80; echo; uname -a; nproc; free -g; df -h / /dev/shm; } \
  >"$logs/nvidia-smi.txt" 2>&1
nvidia-smi

# 2. C++ dependencies carried as Debian packages (--fetch-deps), when present: unpacked into a private prefix
#    (never into /), their absolute /usr paths pointed there, and the binaries linked with an RPATH to it.
cmake_args=()
debs=("$deps_dir"/*.deb)
if [ -e "${debs[0]}" ]; then
  prefix=/tmp/tessera-gpu-deps
  libdir=$prefix/usr/lib/x86_64-linux-gnu
  rm -rf "$prefix" && mkdir -p "$prefix"
  for f in "${debs[@]}"; do dpkg-deb -x "$f" "$prefix" || { echo "gpu-check: cannot unpack $f" >&2; exit 1; }; done
  find "$prefix/usr" -name '*.cmake' -exec sed -i "s|\"/usr/|\"$prefix/usr/|g" {} +
  find "$prefix/usr" -name '*.pc' -exec sed -i "s|=/usr|=$prefix/usr|g" {} +
  # The packages' programs (protoc, grpc_cpp_plugin, pkgconf) reach their libraries through a wrapper.
  for exe in "$prefix"/usr/bin/*; do
    if [ -f "$exe" ] && [ ! -L "$exe" ]; then
      mv "$exe" "$exe.real"
      printf '#!/bin/sh\nLD_LIBRARY_PATH=%s:%s exec %s "$@"\n' "$libdir" "$prefix/usr/lib" "$exe.real" >"$exe"
      chmod +x "$exe"
    fi
  done
  export PKG_CONFIG_PATH="$libdir/pkgconfig:$prefix/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  command -v pkg-config >/dev/null 2>&1 || cmake_args+=("-DPKG_CONFIG_EXECUTABLE=$prefix/usr/bin/pkgconf")
  rpath="-Wl,--disable-new-dtags -Wl,-rpath,$libdir:$prefix/usr/lib -Wl,-rpath-link,$libdir:$prefix/usr/lib"
  cmake_args+=("-DCMAKE_PREFIX_PATH=$prefix/usr" "-DCMAKE_EXE_LINKER_FLAGS=$rpath" "-DCMAKE_SHARED_LINKER_FLAGS=$rpath")
  # Debian's Abseil 20220623 headers predate GCC 13's leaner includes.
  if [ "$(c++ -dumpversion 2>/dev/null | cut -d. -f1)" -ge 13 ] 2>/dev/null; then
    cmake_args+=("-DCMAKE_CXX_FLAGS=-include cstdint" "-DCMAKE_CUDA_FLAGS=--pre-include=cstdint")
  fi
  echo "gpu-check: using ${#debs[@]} carried Debian packages unpacked in $prefix"
fi

# 3. Configure: Release, the CUDA backend for sm_90a only (H100/H200), no fuzz targets. Warnings stay warnings
#    here (CI holds -Werror; a different compiler on this machine must not stop the measurement).
mkdir -p "$build"
printf '#!/bin/sh\nexec "$@" -Wno-error\n' >"$build/no-werror.sh" && chmod +x "$build/no-werror.sh"
generator=Ninja
command -v ninja >/dev/null 2>&1 || generator="Unix Makefiles"
step configure "$logs/build.log" 180 cmake -S "$root" -B "$build" -G "$generator" -DCMAKE_BUILD_TYPE=Release \
  -DTESSERA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a-real -DTESSERA_FUZZ=OFF \
  "-DCMAKE_CXX_COMPILER_LAUNCHER=$build/no-werror.sh" "${cmake_args[@]}"
configured=$?
if [ $configured -ne 0 ] && [ ! -e "${debs[0]}" ]; then
  echo "gpu-check: hint: if the C++ dependencies are missing here, run scripts/gpu-check.sh --fetch-deps on a" \
    "Debian 12 machine and carry build-gpu-deps with the run"
fi

# 4. Build only what runs here: the tessera executable, gpu_bench and the test executables labelled gpu (the
#    aggregate target gpu_tests when the tests define one; else the tessera_add_test calls whose LABELS name gpu,
#    and *_test targets named cuda / gpu / nccl).
gpu_targets=()
if [ $configured -eq 0 ]; then
  all_targets=$(cmake --build "$build" --target help 2>/dev/null | sed -E 's/^(\.\.\. )?([A-Za-z0-9_.+-]+)(: .*)?$/\2/')
  if grep -qx gpu_tests <<<"$all_targets"; then
    gpu_targets=(gpu_tests)
  else
    mapfile -t gpu_targets < <(
      {
        python3 - "$root/tests" <<'EOF'
import pathlib, re, sys
for f in pathlib.Path(sys.argv[1]).rglob("*"):
    if f.name == "CMakeLists.txt" or f.suffix == ".cmake":
        for m in re.finditer(r"tessera_add_test\(\s*([A-Za-z0-9_]+)(.*?)\)", f.read_text(), re.S):
            if re.search(r"\bLABELS\b[^)]*\bgpu\b", m.group(2)):
                print(m.group(1))
EOF
        grep -E '^[A-Za-z0-9_]*(cuda|gpu|nccl)[A-Za-z0-9_]*_test$' <<<"$all_targets"
      } | sort -u | grep -Fx -f <(echo "$all_targets"))
  fi
  echo "gpu-check: gpu test targets: ${gpu_targets[*]:-(none found)}"
  step build "$logs/build.log" 420 cmake --build "$build" -j "$jobs" --target tessera gpu_bench "${gpu_targets[@]}"
  built=$?
else
  built=1
fi

# 5. The tests labelled gpu (no gpu test found is a failure).
if [ $built -eq 0 ]; then
  step "gpu tests" "$logs/ctest.log" 300 ctest --test-dir "$build" -L gpu --no-tests=error --output-on-failure \
    --timeout 240 -j 4
fi

# 6. gpu_bench: ceilings, then llama3-8b decode and prefill on the CUDA backend.
if [ $built -eq 0 ]; then
  model_dir=${TESSERA_MODEL_DIR:-}
  if [ -z "$model_dir" ]; then
    shm_free=$(df -B1 --output=avail /dev/shm 2>/dev/null | tail -n 1 | tr -d ' ')
    if [ "${shm_free:-0}" -gt 20000000000 ] 2>/dev/null; then model_dir=/dev/shm/tessera-8b; else model_dir=$build/tessera-8b; fi
  fi
  made_model=0
  [ -e "$model_dir/model.safetensors.index.json" ] || made_model=1
  bench_exe=$(find "$build" -name gpu_bench -type f -perm -u+x | head -n 1)
  step gpu_bench "$logs/gpu_bench.log" 480 "$bench_exe" --model-dir "$model_dir" --json-out "$logs/gpu_bench.json"
  # A checkpoint this run wrote into memory is dropped before PyTorch runs.
  if [ $made_model -eq 1 ] && [[ $model_dir == /dev/shm/* ]]; then rm -rf "$model_dir"; fi
fi

# 7. The same shape in PyTorch eager mode.
if python3 -c 'import torch' >/dev/null 2>&1; then
  step "pytorch eager" "$logs/torch_eager.log" 300 python3 "$root/bench/torch_llama_eager.py" \
    --json-out "$logs/torch_eager.json"
else
  echo "gpu-check: python3 has no torch; skipping the PyTorch eager baseline" | tee "$logs/torch_eager.log"
  failures+=("pytorch eager (no torch)")
fi

# 8. The table, last.
echo
GPU_CHECK_FAILURES="${failures[*]:-}" GPU_CHECK_SECONDS=$(elapsed) python3 - "$logs" <<'EOF' | tee "$logs/summary.txt"
import json, os, pathlib, re, subprocess, sys

logs = pathlib.Path(sys.argv[1])

def load(name):
    try:
        return json.loads((logs / name).read_text())
    except (OSError, ValueError):
        return None

tessera, torch = load("gpu_bench.json"), load("torch_eager.json")
failures = os.environ.get("GPU_CHECK_FAILURES", "")
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = ""
device = (tessera or {}).get("device", {}).get("name") or (torch or {}).get("device") or "?"
print(f"== Tessera gpu-check: {device}, commit {commit or '?'}, {os.environ.get('GPU_CHECK_SECONDS')} s ==")
tests = "not run"
try:
    text = (logs / "ctest.log").read_text()
    m = re.search(r"(\d+)% tests passed, (\d+) tests? failed out of (\d+)", text)
    if m:
        skipped = len(re.findall(r"\*\*\*Skipped", text))  # a skipped gpu test on a GPU machine is a red flag
        failed, total = int(m.group(2)), int(m.group(3))
        tests = f"{total - failed - skipped} passed, {skipped} skipped, {failed} failed"
    elif "No tests were found" in text:
        tests = "none found"
except OSError:
    pass
print(f"gpu tests: {tests}")
if tessera:
    c = tessera["ceilings"]
    print(f"ceilings: copy {c['copy']['gbps']:.0f} GB/s (device-to-device, read + write); "
          f"cuBLASLt bf16 GEMM {c['gemm_tflops']:.0f} TFLOP/s")
else:
    print("ceilings: - (gpu_bench did not run)")

def fmt(v, spec, dash="-"):
    return dash if v is None else format(v, spec)

torch_decode = {d["batch"]: d["ms_per_step"] for d in (torch or {}).get("decode", [])}
eager_decode = {d["batch"]: d["ms_per_step"] for d in (tessera or {}).get("decode_eager", [])}
print(f"{'case':<14} {'Tessera ms':>10} {'tokens/s':>10} {'% ceiling':>10} {'PyTorch ms':>11} {'speedup':>8} "
      f"{'no graphs':>10}")
speedups = {}
for d in (tessera or {}).get("decode", []) or [{"batch": b} for b in sorted(torch_decode)]:
    b, ms = d["batch"], d.get("ms_per_step")
    t = torch_decode.get(b)
    s = t / ms if (t and ms) else None
    speedups[b] = s
    print(f"decode b={b:<5} {fmt(ms, '10.2f'):>10} {fmt(d.get('tokens_per_s'), '10.0f'):>10} "
          f"{fmt(d.get('pct_of_roofline'), '9.0f'):>9}% {fmt(t, '11.2f'):>11} {fmt(s, '7.2f'):>7}x "
          f"{fmt(eager_decode.get(b), '10.2f'):>10}")
p, tp = (tessera or {}).get("prefill", {}), (torch or {}).get("prefill", {})
if p or tp:
    s = tp["ms"] / p["ms"] if (p and tp) else None
    print(f"prefill {p.get('tokens', tp.get('tokens', 0)):<6} {fmt(p.get('ms'), '10.1f'):>10} "
          f"{fmt(p.get('tokens_per_s'), '10.0f'):>10} {fmt(p.get('pct_of_gemm_ceiling'), '9.0f'):>9}% "
          f"{fmt(tp.get('ms'), '11.1f'):>11} {fmt(s, '7.2f'):>7}x")
print("(decode % of the HBM roofline: weight bytes per step / copy bandwidth; prefill % of the GEMM ceiling)")

def mark(ok):
    return "-" if ok is None else ("met" if ok else "MISSED")

b1 = next((d for d in (tessera or {}).get("decode", []) if d["batch"] == 1), None)
r1 = b1["pct_of_roofline"] if b1 else None
rp = p.get("pct_of_gemm_ceiling")
print("targets:")
print(f"  batch-1 decode >= 85% of the HBM roofline: {fmt(r1, '.0f', '-')}{'' if r1 is None else '%'} "
      f"{mark(None if r1 is None else r1 >= 85)}")
print(f"  prefill >= 70% of the GEMM ceiling:        {fmt(rp, '.0f', '-')}{'' if rp is None else '%'} "
      f"{mark(None if rp is None else rp >= 70)}")
known = [s for s in speedups.values() if s is not None]
each = ", ".join(f"b={b} {fmt(s, '.2f')}x" for b, s in speedups.items())
print(f"  decode >= 3x PyTorch eager (every batch):  {each or '-'} {mark(min(known) >= 3 if known else None)}")
print(f"failed steps: {failures}" if failures else "all steps ran")
EOF

[ ${#failures[@]} -eq 0 ]
