"""Tessera and llama.cpp side by side on the same weights, on this machine, in one window (issue 20).

The `small` preset (the shape of Llama 3.2 1B, random BF16 weights, made once with `tessera make-model`) is
written as a BF16 GGUF with bench/peer/hf_to_gguf.py. llama.cpp is built from the llama-cpp-python source
distribution by bench/peer/llama_cpp.sh --build-only (into out/peer/, git-ignored). Then --rounds rounds, the
engine that goes first alternating from round to round, each measure:
  read bandwidth   build/bench/ceilings --threads T (the physical limit of decode, this round)
  tessera          build/bench/model_bench --model M --threads T --json 1: decode_b1, prefill_512 (exact) and
                   prefill_512_bf16
  llama.cpp        llama-bench -t T -r 1: decode (-p 0 -n 64) and prefill (-p 512 -n 0)
and prints one table: median and range (min-max) over the rounds of each, the ratio Tessera / llama.cpp, and each
engine's decode as weight bytes per second against the round's read bandwidth.

Weight-only quantized decode (--quant Q8_0,Q4_0,Q4_1; default Q8_0,Q4_0): llama.cpp's llama-quantize --pure turns
the BF16 GGUF into one GGUF per type (every matrix in that type: by default llama.cpp would keep the tied
embedding as Q6_K, which Tessera dequantizes to BF16), `tessera import-gguf --keep-quantized` imports that same
file, and each round also runs both engines' decode (and prefill) on it, and Tessera's decode once more with
--quant-activations int8 (llama.cpp's int8 activations; where the CPU has AVX-512 VNNI). Not run by CI (it takes minutes and
wants a quiet machine: it warns when the load average is 1 or more).

usage: .venv/bin/python bench/peer/side_by_side.py [--rounds 5] [--threads 2] [--quant Q8_0,Q4_0] [--json FILE]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(message):
    print("side_by_side: " + message, file=sys.stderr, flush=True)


def run(argv, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit("side_by_side: %s failed (%d):\n%s" % (" ".join(argv), result.returncode, result.stderr[-3000:]))
    return result.stdout


CRASHED = set()  # (gguf, extra) that crashed with llama.cpp's default weight repacking


def llama_bench(binary, gguf, threads, extra):
    """llama-bench's tokens/s, with its default repacked weights; where that crashes (its repacked Q8_0 / Q4_0
    prefill segfaults on the 2-vCPU Xeon with AMX), with --repack 0, and the table says so."""
    argv = [binary, "-m", gguf, "-t", str(threads), "-r", "1", "-o", "json"] + extra
    key = (gguf, tuple(extra))
    if key not in CRASHED:
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode == 0:
            return json.loads(result.stdout)[0]["avg_ts"]
        log("%s crashed (%d); using --repack 0 for it from now on" % (" ".join(argv), result.returncode))
        CRASHED.add(key)
    return json.loads(run(argv + ["--repack", "0"]))[0]["avg_ts"]


def summary(values):
    return statistics.median(values), min(values), max(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build", default=os.path.join(REPO, "build"), help="Tessera's build directory")
    parser.add_argument("--peer-dir", default=os.path.join(REPO, "out", "peer"))
    parser.add_argument("--quant", default="Q8_0,Q4_0",
                        help="comma-separated GGUF types (Q8_0, Q4_0, Q4_1) to compare too; empty: BF16 only")
    parser.add_argument("--json", help="also write the samples and the table here")
    args = parser.parse_args()
    if args.rounds < 5:
        log("fewer than 5 rounds: the medians are not worth much")
    os.makedirs(args.peer_dir, exist_ok=True)
    tessera = os.path.join(args.build, "tessera")
    model_bench = os.path.join(args.build, "bench", "model_bench")
    ceilings = os.path.join(args.build, "bench", "ceilings")
    for binary in (tessera, model_bench, ceilings):
        if not os.access(binary, os.X_OK):
            sys.exit("side_by_side: %s is not built (ninja -C %s tessera model_bench ceilings)" % (binary, args.build))

    run([os.path.join(REPO, "bench", "peer", "llama_cpp.sh"), "--build-only"])
    builds = sorted(d for d in os.listdir(args.peer_dir) if d.startswith("build-"))
    llama = os.path.join(args.peer_dir, builds[-1], "bin", "llama-bench")
    if not os.access(llama, os.X_OK):
        sys.exit("side_by_side: no llama-bench under %s" % args.peer_dir)

    model = os.path.join(args.peer_dir, "small")
    if not os.path.exists(os.path.join(model, "config.json")):
        log("making the small preset in %s" % model)
        run([tessera, "make-model", "--preset", "small", "--out", model, "--seed", "1"])
    gguf = os.path.join(args.peer_dir, "small-bf16.gguf")
    if not os.path.exists(gguf):
        log("writing %s" % gguf)
        run([sys.executable, os.path.join(REPO, "bench", "peer", "hf_to_gguf.py"), "--model", model, "--out", gguf,
             "--tokenizer", os.path.join(REPO, "tests", "data", "llama-3.1-tokenizer")])
    weight_gb = os.path.getsize(gguf) / 1e9  # what a decode step streams (tied embeddings: read once, as lm_head)

    # The quantized GGUFs (one file per type, read by both engines) and Tessera's snapshots of them.
    quant = {}  # type -> (gguf, kept snapshot, GB)
    for qtype in filter(None, args.quant.split(",")):
        if qtype not in ("Q8_0", "Q4_0", "Q4_1"):
            sys.exit("side_by_side: --quant %s: not Q8_0, Q4_0 or Q4_1" % qtype)
        qgguf = os.path.join(args.peer_dir, "small-%s-pure.gguf" % qtype)
        if not os.path.exists(qgguf):
            log("quantizing %s" % qgguf)
            run([os.path.join(os.path.dirname(llama), "llama-quantize"), "--pure", gguf, qgguf, qtype])
        kept = os.path.join(args.peer_dir, "small-%s-kept" % qtype)
        if not os.path.exists(os.path.join(kept, "config.json")):
            log("importing %s with --keep-quantized" % qgguf)
            run([tessera, "import-gguf", "--gguf", qgguf, "--out", kept, "--keep-quantized"])
        quant[qtype] = (qgguf, kept, os.path.getsize(qgguf) / 1e9)

    with open("/proc/cpuinfo") as f:
        vnni = " avx512_vnni" in f.read()
    load = os.getloadavg()[0]
    if load >= 1:
        log("WARNING: load average %.2f: the figures will show the contention" % load)
    samples = {"bandwidth": [], "tessera decode_b1": [], "tessera prefill_512": [], "tessera prefill_512_bf16": [],
               "llama.cpp decode_b1": [], "llama.cpp prefill_512": []}
    for qtype in quant:
        for key in ("tessera decode_b1", "tessera prefill_512", "tessera prefill_512_bf16", "llama.cpp decode_b1",
                    "llama.cpp prefill_512", "tessera decode_b1_int8"):
            samples["%s %s" % (key, qtype)] = []
    for round_index in range(args.rounds):
        bandwidth = json.loads(run([ceilings, "--threads", str(args.threads)]).splitlines()[-1])
        samples["bandwidth"].append(bandwidth["read_bandwidth_gbps"])

        def tessera_round():
            for qtype, snapshot in [("", model)] + [(q, v[1]) for q, v in quant.items()]:
                out = run([model_bench, "--model", snapshot, "--threads", str(args.threads), "--steps", "8",
                           "--json", "1", "--cases", "decode_b1,prefill_512,prefill_512_bf16"])
                for line in out.splitlines():
                    if line.startswith("{"):
                        row = json.loads(line)
                        key = ("tessera %s %s" % (row["measure"], qtype)).strip()
                        if key in samples:
                            samples[key].append(row["tokens_per_s"])
                if qtype and vnni:
                    out = run([model_bench, "--model", snapshot, "--threads", str(args.threads), "--steps", "8",
                               "--json", "1", "--cases", "decode_b1", "--quant-activations", "int8"])
                    for line in out.splitlines():
                        if line.startswith("{"):
                            samples["tessera decode_b1_int8 %s" % qtype].append(json.loads(line)["tokens_per_s"])

        def llama_round():
            for qtype, file in [("", gguf)] + [(q, v[0]) for q, v in quant.items()]:
                suffix = " " + qtype if qtype else ""
                samples["llama.cpp decode_b1" + suffix].append(
                    llama_bench(llama, file, args.threads, ["-p", "0", "-n", "64"]))
                samples["llama.cpp prefill_512" + suffix].append(
                    llama_bench(llama, file, args.threads, ["-p", "512", "-n", "0"]))

        order = (tessera_round, llama_round) if round_index % 2 == 0 else (llama_round, tessera_round)
        start = time.monotonic()
        for step in order:
            step()
        log("round %d/%d in %.0f s: bandwidth %.1f GB/s, decode tessera %.2f / llama.cpp %.2f tok/s" % (
            round_index + 1, args.rounds, time.monotonic() - start, samples["bandwidth"][-1],
            samples["tessera decode_b1"][-1], samples["llama.cpp decode_b1"][-1]))

    bw = summary(samples["bandwidth"])
    print("%d rounds, %d threads, %s (%.2f GB of BF16 weights per decode step); read bandwidth %.1f GB/s "
          "(%.1f-%.1f)" % (args.rounds, args.threads, os.path.basename(gguf), weight_gb, *bw))
    print("%-17s %-24s %-24s %8s %22s" % ("measure", "tessera tok/s", "llama.cpp tok/s", "ratio",
                                         "decode GB/s (% of bw)"))
    table = []
    rows = []
    for qtype, gb in [("", weight_gb)] + [(q, v[2]) for q, v in quant.items()]:
        suffix = " " + qtype if qtype else ""
        rows += [("decode_b1" + suffix, "tessera decode_b1" + suffix, "llama.cpp decode_b1" + suffix, gb),
                 ("prefill_512" + suffix, "tessera prefill_512" + suffix, "llama.cpp prefill_512" + suffix, 0),
                 ("prefill_bf16" + suffix, "tessera prefill_512_bf16" + suffix, "llama.cpp prefill_512" + suffix, 0)]
        if qtype and samples["tessera decode_b1_int8" + suffix]:
            rows.append(("decode_int8" + suffix, "tessera decode_b1_int8" + suffix, "llama.cpp decode_b1" + suffix,
                         gb))
    for measure, ours, theirs, gb in rows:
        a, b = summary(samples[ours]), summary(samples[theirs])
        extra = ""
        if gb:
            extra = "%5.1f (%2.0f%%) / %5.1f (%2.0f%%)" % (a[0] * gb, 100 * a[0] * gb / bw[0], b[0] * gb,
                                                      100 * b[0] * gb / bw[0])
        print("%-17s %7.2f (%6.2f-%6.2f)   %7.2f (%6.2f-%6.2f)   %7.2fx %s" % (measure, *a, *b, a[0] / b[0], extra))
        table.append({"measure": measure, "tessera": a, "llama.cpp": b, "ratio": a[0] / b[0]})
    for gguf_path, extra in sorted(CRASHED):
        print("llama.cpp with --repack 0 (its default repacking crashed): %s %s" % (
            os.path.basename(gguf_path), " ".join(extra)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": samples, "table": table, "weight_gb": weight_gb, "threads": args.threads}, f, indent=1)


if __name__ == "__main__":
    main()
