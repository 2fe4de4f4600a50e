#!/usr/bin/env bash
# Installs what is missing, configures, builds into build/ and runs every test. Ends with ctest's summary.
#
# --tsan: builds the threaded and distributed parts with ThreadSanitizer into build-tsan/ (TESSERA_SANITIZE=thread,
# -O1 -g, no CUDA, no fuzzers) and runs their tests there: coordinator (scheduler, inference and model services,
# rendezvous, complete client), worker (worker_process, worker_shard), parallel (Gloo communicators), the CPU
# ThreadPool, and the Python tests that drive the `tessera` binary (api.grpc_api_test, api.openai_api_test,
# tools.bench_test, integration.serving.* but MemoryTest, tools.cli_test). Every TSan report of every process,
# those Python tests' `tessera` ones too, goes to build-tsan/tsan-reports/; the run fails if a test fails or any
# report appears, and prints the reports. Library false positives are suppressed, each with its reason, in
# scripts/tsan.supp.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
tsan=0
for arg in "$@"; do
  case "$arg" in
    --tsan) tsan=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "test.sh: unknown option '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done

scripts/setup.sh
jobs=${TESSERA_JOBS:-$(nproc)}

if ((!tsan)); then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  ninja -C build -j"$jobs"
  cd build
  ctest --output-on-failure -j"$jobs" --timeout 600
  exit
fi

# --- ThreadSanitizer ---------------------------------------------------------------------------------------------
# The gtest executables whose every test runs (ThreadPoolTest.* only from cpu_kernels_test: the rest of it is
# single-threaded kernel numerics), the helpers they start, and the Python tests run on the `tessera` binary.
# Not here: CUDA, tensor_parallel_test and the reference / SmolLM2 model tests (numerics, too slow under TSan).
tsan_gtests=(scheduler_test inference_service_test inference_service_validation_test rendezvous_service_test
             complete_command_test worker_process_test worker_shard_test worker_shard_errors_test
             gloo_communicator_test cpu_kernels_test:ThreadPoolTest.)
tsan_helpers=(rendezvous_rank_main tessera)
tsan_python='^(api\.grpc_api_test|api\.openai_api_test|tools\.bench_test|integration\.serving\..*|tools\.cli_test)$'
tsan_skip='^integration\.serving\.MemoryTest$'  # asserts on peak RSS, which TSan's shadow memory multiplies

build=build-tsan
reports=$PWD/$build/tsan-reports
cmake -S . -B "$build" -G Ninja -DTESSERA_SANITIZE=thread -DTESSERA_CUDA=OFF -DTESSERA_FUZZ=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g -DNDEBUG" \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g -DNDEBUG" >/dev/null
start=$SECONDS
ninja -C "$build" -j"$jobs" "${tsan_gtests[@]%%:*}" "${tsan_helpers[@]}"
echo "test.sh --tsan: built in $((SECONDS - start)) s"

# The tests to run, by executable (ctest knows each gtest case by its own name only), as one anchored regex.
selection=$(cd "$build" && ctest --show-only=json-v1 | python3 -c '
import json, os, re, sys
gtests = dict((spec.split(":") + [""])[:2] for spec in sys.argv[1].split())
python_tests, skip = re.compile(sys.argv[2]), re.compile(sys.argv[3])
names = []
for test in json.load(sys.stdin)["tests"]:
    exe = os.path.basename((test.get("command") or [""])[0])
    if skip.match(test["name"]):
        continue
    if (exe in gtests and test["name"].startswith(gtests[exe])) or python_tests.match(test["name"]):
        names.append(re.sub(r"([][.*+?^$()|\\])", r"\\\1", test["name"]))
if not names:
    sys.exit("test.sh --tsan: no tests selected")
print("^(" + "|".join(names) + ")$")
' "${tsan_gtests[*]}" "$tsan_python" "$tsan_skip")

# TSan is 5-15x slower: timeouts are generous (tests that set their own TIMEOUT keep it). Reports go to files,
# one per process, so that those of the processes the Python tests start are caught too; halt_on_error stays off
# so that one run shows every report, and a process that reported exits with 66.
rm -rf "$reports" && mkdir -p "$reports"
export TSAN_OPTIONS="suppressions=$PWD/scripts/tsan.supp second_deadlock_stack=1 history_size=4 halt_on_error=0 \
exitcode=66 log_path=$reports/tsan"
start=$SECONDS
status=0
(cd "$build" && ctest --output-on-failure -j"$jobs" --timeout 1800 -R "$selection") || status=$?
echo "test.sh --tsan: tests ran in $((SECONDS - start)) s"

shopt -s nullglob
found=("$reports"/tsan.*)
if ((${#found[@]})); then
  # Every report in full up to ~1 MB of them; past that the first lines of each file. All stay in $reports.
  if (($(cat "${found[@]}" | wc -c) < 1000000)); then
    for report in "${found[@]}"; do echo "=== $report"; cat "$report"; done
  else
    for report in "${found[@]}"; do echo "=== $report (first 100 lines)"; head -n 100 "$report"; done
  fi
  echo "test.sh --tsan: $(cat "${found[@]}" | grep -c '^WARNING: ThreadSanitizer') ThreadSanitizer report(s) from" \
    "${#found[@]} process(es), by kind:" >&2
  grep -h '^SUMMARY: ThreadSanitizer' "${found[@]}" | sort | uniq -c | sort -rn >&2
  echo "test.sh --tsan: reports in $reports" >&2
  status=1
fi
exit "$status"
