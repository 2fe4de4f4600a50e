"""Tessera's sampler (kernels/sampler.h, through tests/kernels/sampler_driver) against the numpy reference
(sampling_reference.py): Exp32 bit for bit, then many random rows and parameters (penalties, logit bias,
banned ids, temperature, min-p, top-k, top-p, ties, out-of-range ids): the same token for the same uniform
exactly, logprobs within 1e-5, ranks and top ids exactly.

    sampling_reference_test.py --driver PATH --workdir DIR [--cases N] [--seed S]
"""

import argparse
import os
import struct
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sampling_reference as ref  # noqa: E402

F32 = np.float32


def check_exp32(driver, workdir, rng):
    xs = np.concatenate([
        rng.uniform(-90.0, 0.0, 200000).astype(F32),
        rng.uniform(-1e-3, 0.0, 20000).astype(F32),
        np.array([0.0, -0.0, -80.0, np.nextafter(F32(-80.0), F32(-100.0)), -87.0, -1e-30, -np.inf, np.nan,
                  -0.34657359, -0.69314718, -1.0397208], dtype=F32),
    ])
    inp, out = os.path.join(workdir, "exp32.in"), os.path.join(workdir, "exp32.out")
    xs.tofile(inp)
    subprocess.run([driver, "exp32", inp, out], check=True)
    got = np.fromfile(out, dtype=F32)
    want = ref.exp32(xs)
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, f"Exp32 differs at x={xs[bad[:5]]}: C++ {got[bad[:5]]} numpy {want[bad[:5]]}"
    ok = xs >= -80
    exact = np.exp(xs[ok].astype(np.float64))
    rel = np.max(np.abs(got[ok] - exact) / exact)
    assert rel < 3e-7, f"Exp32 relative error {rel}"
    print(f"exp32: {xs.size} values bit-identical, max relative error {rel:.2e}")


def random_case(rng):
    vocab = int(rng.choice([1, 2, 3, 7, 50, 999, 1024, 1025, 5003, 32000, 128256],
                           p=[.03, .04, .04, .08, .12, .12, .05, .05, .2, .17, .1]))
    kind = rng.integers(0, 4)
    logits = rng.normal(0.0, rng.uniform(0.3, 4.0), vocab).astype(F32)
    if kind == 1:  # ties: few distinct values
        logits = (np.round(logits * 2) / 2).astype(F32)
    elif kind == 2:  # peaked: a few large logits (a trained model's shape)
        logits[rng.integers(0, vocab, max(1, vocab // 1000))] += F32(rng.uniform(5, 20))
    p = {}
    r = rng.uniform()
    p["temperature"] = 0.0 if r < 0.12 else (1e-6 if r < 0.15 else float(rng.uniform(0.05, 2.0)))
    if rng.uniform() < 0.4:
        p["top_k"] = int(rng.integers(1, vocab + 5))
    if rng.uniform() < 0.5:
        p["top_p"] = 0.0 if rng.uniform() < 0.05 else float(rng.uniform(0.05, 1.0))
    if rng.uniform() < 0.3:
        p["min_p"] = float(rng.uniform(0.0, 0.6))
    if rng.uniform() < 0.4:
        n = int(rng.integers(1, 300))
        toks = rng.integers(-2, vocab + 2, n).tolist()
        p["tokens"] = [int(t) for t in toks]
        p["num_prompt"] = int(rng.integers(0, n + 1))
        if rng.uniform() < 0.7:
            p["repetition"] = float(rng.uniform(0.5, 2.0))
        if rng.uniform() < 0.7:
            p["presence"] = float(rng.uniform(-1.0, 2.0))
        if rng.uniform() < 0.7:
            p["frequency"] = float(rng.uniform(-1.0, 2.0))
    if rng.uniform() < 0.3:
        p["bias"] = [(int(t), float(rng.uniform(-10, 10))) for t in rng.integers(-3, vocab + 3, rng.integers(1, 6))]
    if rng.uniform() < 0.3:
        p["banned"] = [int(t) for t in rng.integers(-2, vocab + 2, rng.integers(1, 4))]
    p["top_logprobs"] = int(rng.choice([-1, 0, 1, 5, 20, 25])) if rng.uniform() < 0.5 else -1
    seed, step = int(rng.integers(0, 2**63)), int(rng.integers(0, 10**6))
    return logits, p, seed, step


def pack(cases):
    out = [struct.pack("<q", len(cases))]
    for logits, p, seed, step in cases:
        toks = p.get("tokens", [])
        bias = p.get("bias", [])
        banned = p.get("banned", [])
        out.append(struct.pack("<qqqqqqQQffffffii", logits.size, len(toks), p.get("num_prompt", 0), len(bias),
                               len(banned), p["top_logprobs"], seed, step, p["temperature"], p.get("top_p", 1.0),
                               p.get("min_p", 0.0), p.get("repetition", 1.0), p.get("presence", 0.0),
                               p.get("frequency", 0.0), p.get("top_k", 0), 0))
        out.append(logits.astype("<f4").tobytes())
        out.append(np.array(toks, dtype="<i4").tobytes())
        out.append(np.array([b[0] for b in bias], dtype="<i4").tobytes())
        out.append(np.array([b[1] for b in bias], dtype="<f4").tobytes())
        out.append(np.array(banned, dtype="<i4").tobytes())
    return b"".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--cases", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    check_exp32(args.driver, args.workdir, rng)

    # The uniform: the reference's splitmix64 against known C++ values is implied by the token checks.
    cases = [random_case(rng) for _ in range(args.cases)]
    inp, out = os.path.join(args.workdir, "cases.in"), os.path.join(args.workdir, "cases.out")
    with open(inp, "wb") as f:
        f.write(pack(cases))
    subprocess.run([args.driver, "sample", inp, out], check=True)
    with open(out) as f:
        lines = f.read().splitlines()
    assert len(lines) == len(cases), f"{len(lines)} results for {len(cases)} cases"
    failures = 0
    random_rows = 0
    for i, ((logits, p, seed_c, step), line) in enumerate(zip(cases, lines)):
        fields = line.split()
        token = int(fields[0])
        want, theta = ref.sample(logits, p, seed_c, step)
        random_rows += theta is not None
        problems = []
        if token != want:
            problems.append(f"token {token}, reference {want} (threshold {theta})")
        if p["top_logprobs"] >= 0:
            lp, rank, top = ref.token_logprobs(logits, token, p["top_logprobs"])
            rank_c, num_top, lp_c = int(fields[1]), int(fields[2]), float(fields[3])
            pairs = fields[4:]
            top_c = [(int(pairs[2 * j]), float(pairs[2 * j + 1])) for j in range(num_top)]
            if abs(lp_c - lp) > 1e-5 and not (np.isinf(lp) and lp_c == lp):
                problems.append(f"logprob {lp_c}, reference {lp}")
            if rank_c != rank:
                problems.append(f"rank {rank_c}, reference {rank}")
            if [t for t, _ in top_c] != [t for t, _ in top]:
                problems.append(f"top ids {[t for t, _ in top_c]}, reference {[t for t, _ in top]}")
            elif any(abs(a[1] - b[1]) > 1e-5 for a, b in zip(top_c, top)):
                problems.append("top logprobs differ by more than 1e-5")
        if problems:
            failures += 1
            if failures <= 10:
                shown = {k: (v if not isinstance(v, list) or len(v) < 8 else f"[{len(v)} items]") for k, v in p.items()}
                print(f"case {i}: vocab {logits.size} {shown} seed {seed_c} step {step}: " + "; ".join(problems))
    print(f"{len(cases)} cases ({random_rows} random draws): {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
