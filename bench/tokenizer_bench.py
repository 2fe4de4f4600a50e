"""Tokenizer throughput and load time: Tessera vs Python `tokenizers`, one thread each, same corpus.

Builds the seeded corpus of tests/coordinator/tokenizer/tokenizer_corpus.py (file slices and hard Unicode cases),
writes it to a temporary file and
  - runs `TESSERA tokenize --model MODEL --file CORPUS --stats` (tessera, or tests' tokenizer_driver, which takes
    the same arguments) and reads load_s / encode_s / mb_per_s from its stats line (best of --repeat);
  - with RAYON_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false, times Tokenizer.from_file and encode() of the same
    text as one string (what Tessera does) and line by line (each line a separate encode call), best of --repeat.
Prints MB/s for each, the ratios and the load times, and checks that both count the same number of tokens.

usage: .venv/bin/python bench/tokenizer_bench.py --tessera build/tessera [--model DIR] [--corpus-mb 5]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "coordinator", "tokenizer"))

from tokenizers import Tokenizer  # noqa: E402

from tokenizer_corpus import build_texts  # noqa: E402


def best(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tessera", required=True, help="tessera binary or tokenizer_driver")
    parser.add_argument("--model", default=os.path.join(ROOT, "tests", "data", "llama-3.1-tokenizer"))
    parser.add_argument("--corpus-mb", type=float, default=5)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    text = "\n".join(build_texts(args.seed, int(args.corpus_mb * (1 << 20))))
    data = text.encode("utf-8")
    megabytes = len(data) / 1e6
    with tempfile.NamedTemporaryFile(suffix=".txt") as corpus:
        corpus.write(data)
        corpus.flush()
        runs = []
        for _ in range(args.repeat):
            proc = subprocess.run([args.tessera, "tokenize", "--model", args.model, "--file", corpus.name, "--stats"],
                                  capture_output=True, text=True, check=True)
            runs.append((json.loads(proc.stderr.strip().splitlines()[-1]), json.loads(proc.stdout)["count"]))
    ours_load = min(r[0]["load_s"] for r in runs)
    ours_encode = min(r[0]["encode_s"] for r in runs)
    ours_count = runs[0][1]

    py_load, hf = best(lambda: Tokenizer.from_file(os.path.join(args.model, "tokenizer.json")), args.repeat)
    py_whole, ids = best(lambda: hf.encode(text, add_special_tokens=False).ids, args.repeat)
    lines = text.splitlines(keepends=True)
    py_lines, _ = best(lambda: [hf.encode(line, add_special_tokens=False) for line in lines], args.repeat)

    print(f"corpus: {len(data)} bytes ({megabytes:.2f} MB), seed {args.seed}; {args.model}")
    print(f"tessera (one thread, whole text):          {megabytes / ours_encode:8.2f} MB/s  "
          f"({ours_encode:.3f} s, {ours_count} tokens)")
    print(f"python tokenizers (1 thread, whole text):  {megabytes / py_whole:8.2f} MB/s  "
          f"({py_whole:.3f} s, {len(ids)} tokens)")
    print(f"python tokenizers (1 thread, per line):    {megabytes / py_lines:8.2f} MB/s  "
          f"({py_lines:.3f} s, {len(lines)} calls)")
    print(f"ratio tessera / python: {py_whole / ours_encode:.1f}x (whole text), "
          f"{py_lines / ours_encode:.1f}x (python per line)")
    print(f"load tokenizer.json: tessera {ours_load * 1000:.0f} ms, python {py_load * 1000:.0f} ms")
    if ours_count != len(ids):
        print(f"ERROR: token counts differ: tessera {ours_count}, python {len(ids)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
