"""Golden encodings: every text of tests/data/golden/llama3_encode_golden.jsonl, encoded with the Llama 3.1
tokenizer by Tessera (tokenizer_driver) and by Python `tokenizers`. Requires golden == Python == Tessera on every
text (with add_special_tokens=False, as the golden ids were made; Tessera == Python with it too), and the same
decode (with and without skip_special_tokens, and streamed through IncrementalDetokenizer). The golden ids are
asserted, not only reported: two of them (U+FEFF, which a JavaScript port took for whitespace) were wrong for
months while this test only printed the disagreement.

usage: golden_test.py DRIVER MODEL_DIR GOLDEN_JSONL
"""
import json
import sys

from tokenizers import Tokenizer

from tokenizer_compare import first_difference, run_driver


def main():
    driver, model_dir, golden_path = sys.argv[1:4]
    hf = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    golden = [json.loads(line) for line in open(golden_path, encoding="utf-8") if line.strip()]
    texts = [g["text"] for g in golden]
    failures = 0

    disputed = []
    for i, g in enumerate(golden):
        py = hf.encode(g["text"], add_special_tokens=False).ids
        if py != g["ids"]:
            disputed.append(i)
            at = first_difference(py, g["ids"])
            print(f"MISMATCH golden line {i + 1} disagrees with Python tokenizers at id {at}: "
                  f"golden {g['ids'][at:at + 4]} python {py[at:at + 4]}")
    print(f"{len(disputed)} of {len(golden)} golden lines disagree with Python tokenizers")
    failures += len(disputed)

    for add in (False, True):
        ours = run_driver(driver, model_dir, [{"text": t, "add_special_tokens": add} for t in texts])
        for i, (t, r) in enumerate(zip(texts, ours)):
            py = hf.encode(t, add_special_tokens=add).ids
            if r.get("ids") != py:
                failures += 1
                at = first_difference(r.get("ids", []), py)
                print(f"MISMATCH line {i + 1} add_special_tokens={add}: at {at} ours "
                      f"{r.get('ids', r)[at:at + 5] if 'ids' in r else r} python {py[at:at + 5]}")

    requests, expected = [], []
    for t in texts:
        ids = hf.encode(t, add_special_tokens=True).ids
        for skip in (False, True):
            requests.append({"ids": ids, "skip_special_tokens": skip})
            expected.append(hf.decode(ids, skip_special_tokens=skip))
    for i, (r, want) in enumerate(zip(run_driver(driver, model_dir, requests), expected)):
        if r.get("text") != want or r.get("stream") != want:
            failures += 1
            print(f"DECODE MISMATCH request {i}: {r!r:.200} vs {want!r:.200}")

    print(f"compared {len(texts)} golden texts ({sum(len(t.encode()) for t in texts)} bytes) x 2 settings, "
          f"{len(requests)} decodes: {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
