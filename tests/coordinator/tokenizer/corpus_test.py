"""The big comparison: >= 5 MB of varied text (tokenizer_corpus.py, seeded) encoded by Tessera (tokenizer_driver)
and by Python `tokenizers` must give identical ids, with add_special_tokens false for every text and true for a
subset; decoding must match Python (with and without skip_special_tokens, also streamed through
IncrementalDetokenizer) for a sample of encodings and for random id sequences, which split multi-byte characters
across tokens and produce invalid UTF-8.

usage: corpus_test.py DRIVER MODEL_DIR [MEGABYTES] [SEED]
"""
import random
import sys
import time

from tokenizers import Tokenizer

from tokenizer_compare import first_difference, run_driver
from tokenizer_corpus import build_texts


def main():
    driver, model_dir = sys.argv[1:3]
    megabytes = float(sys.argv[3]) if len(sys.argv) > 3 else 5
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1234
    hf = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    texts = build_texts(seed, int(megabytes * (1 << 20)))
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    rng = random.Random(seed)
    failures = 0

    start = time.time()
    requests = [{"text": t, "add_special_tokens": False} for t in texts]
    with_special = [i for i in range(len(texts)) if i % 4 == 0]
    requests += [{"text": texts[i], "add_special_tokens": True} for i in with_special]
    replies = run_driver(driver, model_dir, requests)
    expected = [hf.encode(t, add_special_tokens=False).ids for t in texts]
    expected += [hf.encode(texts[i], add_special_tokens=True).ids for i in with_special]
    for n, (r, want) in enumerate(zip(replies, expected)):
        if r.get("ids") != want:
            failures += 1
            if failures <= 10:
                text = requests[n]["text"]
                at = first_difference(r.get("ids", []), want)
                print(f"MISMATCH text {n} ({len(text)} chars, add_special_tokens={requests[n]['add_special_tokens']})"
                      f" at id {at}: ours {r.get('ids', r)[at:at + 6] if 'ids' in r else r} python "
                      f"{want[at:at + 6]} near {hf.decode(want[max(0, at - 3):at + 3])!r}")
    encoded_tokens = sum(len(e) for e in expected)
    print(f"encode: {len(requests)} texts ({len(texts)} without and {len(with_special)} with special tokens), "
          f"{total_bytes} bytes, {encoded_tokens} tokens compared in {time.time() - start:.1f} s: "
          f"{failures} mismatches")

    # Decoding: a sample of the encodings, and random id sequences.
    vocab = hf.get_vocab_size(with_added_tokens=True)
    sequences = [expected[i] for i in rng.sample(range(len(expected)), min(300, len(expected)))]
    for _ in range(300):
        n = rng.randint(1, 40)
        sequences.append([rng.randrange(vocab) if rng.random() < 0.5 else rng.randrange(256) for _ in range(n)])
    decode_requests, decode_expected = [], []
    for ids in sequences:
        for skip in (False, True):
            decode_requests.append({"ids": ids, "skip_special_tokens": skip})
            decode_expected.append(hf.decode(ids, skip_special_tokens=skip))
    decode_failures = 0
    for r, want in zip(run_driver(driver, model_dir, decode_requests), decode_expected):
        if r.get("text") != want or r.get("stream") != want:
            decode_failures += 1
            if decode_failures <= 10:
                print(f"DECODE MISMATCH: ours {r!r:.300} python {want!r:.300}")
    print(f"decode: {len(decode_requests)} id sequences compared (text and stream): {decode_failures} mismatches")
    return 1 if failures or decode_failures else 0


if __name__ == "__main__":
    sys.exit(main())
