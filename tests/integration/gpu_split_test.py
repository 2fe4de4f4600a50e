"""tp = 2 and pp = 2 on one GPU (two worker processes sharing it through Gloo staged in host memory, since NCCL
refuses two ranks on one device), through `tessera generate` and through `tessera serve`, equal to tp = 1 on
the GPU. Labelled gpu; exits 77 (skipped) when there is no usable GPU. Standard library only (the GPU machine
has no test virtualenv): the server is driven with `tessera complete`.

usage: python3 tests/integration/gpu_split_test.py --tessera build/tessera --workdir DIR
"""
import argparse
import json
import os
import subprocess
import sys

import harness

SKIP = 77
PROMPTS = [[128000, 9906, 11, 1917], [128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679, 13],
           [128000, 40]]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    args.tessera = os.path.abspath(args.tessera)
    os.makedirs(args.workdir, exist_ok=True)
    tiny = os.path.join(args.workdir, "tiny")
    if not os.path.exists(os.path.join(tiny, "config.json")):
        subprocess.run([args.tessera, "make-model", "--preset", "tiny", "--out", tiny, "--seed", "3"], check=True,
                       capture_output=True)
    prompts = PROMPTS

    def generate(*split):
        argv = [args.tessera, "generate", "--model", tiny, "--device", "cuda", "--max-tokens", "12", *split]
        for p in prompts:
            argv += ["--prompt-ids", ",".join(map(str, p))]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            return None, result.stderr.strip()
        return [json.loads(line)["token_ids"] for line in result.stdout.splitlines()], ""

    expected, error = generate()
    if expected is None:
        print("skipped: no usable GPU here (%s)" % error)
        return SKIP
    failures = []
    for split in (["--tp", "2"], ["--pp", "2"], ["--tp", "2", "--pp", "2"]):
        got, error = generate(*split)
        if got != expected:
            failures.append("generate %s: %s" % (" ".join(split), error or got))
    server = harness.Server(args.tessera, tiny, 2, 1, ["--device", "cuda"]).start(timeout=300)
    try:
        got = []
        for p in prompts:
            result = subprocess.run([args.tessera, "complete", "--server", server.address, "--prompt-ids",
                                     ",".join(map(str, p)), "--max-tokens", "12", "--temperature", "0", "--json"],
                                    capture_output=True, text=True, timeout=120)
            got.append(json.loads(result.stdout)["token_ids"] if result.returncode == 0 else result.stderr)
        if got != expected:
            failures.append("serve --device cuda --tp 2: %s" % got)
    finally:
        server.stop()
    for f in failures:
        print("FAILED:", f)
    print("ok" if not failures else "%d failures" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
