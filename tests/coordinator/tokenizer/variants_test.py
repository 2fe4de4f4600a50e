"""Byte-level BPE tokenizers other than Llama 3's, built here with Python `tokenizers` (a small BPE trained on the
test corpus) and saved as tokenizer.json: the GPT-2 ByteLevel pre-tokenizer with and without add_prefix_space,
Split with every behaviour (and invert, and a literal pattern), Digits (SmolLM2's), ignore_merges, merges saved as pairs, added tokens
with single_word / lstrip / rstrip / normalized, and a TemplateProcessing post-processor. Tessera
(tokenizer_driver) must encode and decode exactly as Python does for each.

usage: variants_test.py DRIVER
"""
import json
import os
import random
import sys
import tempfile

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from tokenizer_compare import first_difference, run_driver
from tokenizer_corpus import build_texts, random_unicode_text

LLAMA_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
PROBES = ["x<sp>y", "<sp><sp>", "hello wor world sword wor", "wor", "a wor.", "a  [L]b", "a[L]b", "a[R]   b",
          "a[R]b", " [L] [R] ", "norm normal xnormx", "<s>hi</s>", "ab ab  ab\n\nab", "12345 6 78", "  0 \u00b2 \u0663\u0664 \u2167x 1\u00bd",
          "don't DON'T it's", "  leading and trailing  ", "", " ", "\u180e \u180e", "\u00a0\u3000x"]


def build_base(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>", "</s>", "<sp>"], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken("wor", single_word=True, normalized=False),
                    AddedToken("[L]", lstrip=True, normalized=False),
                    AddedToken("[R]", rstrip=True, normalized=False),
                    AddedToken("norm", normalized=True)])
    return tok


def variants(base):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    out = {}
    for prefix in (False, True):
        t = Tokenizer.from_str(base.to_str())
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=True)
        out[f"bytelevel_prefix={prefix}"] = t.to_str()
    t = Tokenizer.from_str(base.to_str())
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA_REGEX), "isolated"), byte_level])
    t.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    j = json.loads(t.to_str())
    out["llama_split_template"] = json.dumps(j)
    j["model"]["ignore_merges"] = True
    out["llama_split_ignore_merges"] = json.dumps(j)
    j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    out["llama_split_string_merges"] = json.dumps(j)
    for individual in (False, True):  # SmolLM2's pre-tokenizer: numerics split off, then GPT-2's regex
        t = Tokenizer.from_str(base.to_str())
        t.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=individual),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        out[f"digits_individual={individual}_bytelevel"] = t.to_str()
    for behavior in ("removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"):
        for invert in (False, True):
            for name, pattern in (("regex", Regex(r"\s+|[0-9]")), ("string", "ab")):
                t = Tokenizer.from_str(base.to_str())
                t.pre_tokenizer = pre_tokenizers.Sequence(
                    [pre_tokenizers.Split(pattern, behavior, invert=invert), byte_level])
                out[f"split_{name}_{behavior}_invert={invert}"] = t.to_str()
    return out


def main():
    driver = sys.argv[1]
    rng = random.Random(7)
    texts = build_texts(seed=99, target_bytes=300_000)
    base = build_base(texts)
    samples = PROBES + [random_unicode_text(rng, rng.randint(1, 30)) + rng.choice(PROBES) for _ in range(300)]
    samples += [t[:3000] for t in texts[:60]]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in variants(base).items():
            model_dir = os.path.join(tmp, name)
            os.makedirs(model_dir)
            with open(os.path.join(model_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
                f.write(text)
            hf = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
            requests = [{"text": s, "add_special_tokens": add} for s in samples for add in (False, True)]
            expected = [hf.encode(r["text"], add_special_tokens=r["add_special_tokens"]).ids for r in requests]
            decode_requests = [{"ids": ids, "skip_special_tokens": skip} for ids in expected[::7] for skip in (False, True)]
            decode_expected = [hf.decode(r["ids"], skip_special_tokens=r["skip_special_tokens"])
                               for r in decode_requests]
            replies = run_driver(driver, model_dir, requests + decode_requests)
            bad = 0
            for req, r, want in zip(requests, replies, expected):
                if r.get("ids") != want:
                    bad += 1
                    if bad <= 3:
                        at = first_difference(r.get("ids", []), want)
                        print(f"  {name}: MISMATCH {req['text'][:80]!r} add={req['add_special_tokens']} at {at}: "
                              f"ours {r.get('ids', r)} python {want}"[:600])
            for r, want in zip(replies[len(requests):], decode_expected):
                if r.get("text") != want or r.get("stream") != want:
                    bad += 1
                    if bad <= 3:
                        print(f"  {name}: DECODE MISMATCH ours {r!r:.200} python {want!r:.200}")
            print(f"{name}: {len(requests)} encodes, {len(decode_requests)} decodes, {bad} mismatches")
            failures += bad
    print(f"total mismatches: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
