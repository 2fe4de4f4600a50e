"""Shared helpers for the Python tests that compare Tessera's tokenizer with Hugging Face `tokenizers`."""
import json
import subprocess


def run_driver(driver, model_dir, requests):
    """Sends JSON-line requests to `tokenizer_driver jsonl` and returns its replies, in order."""
    payload = "".join(json.dumps(r) + "\n" for r in requests)
    proc = subprocess.run([driver, "jsonl", "--model", model_dir], input=payload.encode("utf-8"),
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"tokenizer_driver failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    replies = [json.loads(line) for line in proc.stdout.decode("utf-8").split("\n") if line]
    if len(replies) != len(requests):
        raise RuntimeError(f"tokenizer_driver answered {len(replies)} of {len(requests)} requests")
    return replies


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))
