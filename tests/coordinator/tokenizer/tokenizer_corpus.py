"""Deterministic test corpus for the tokenizer comparisons and bench/tokenizer_bench.py.

build_texts(seed, target_bytes) returns a list of str whose UTF-8 size totals at least target_bytes: slices of
text files that any Debian 12 with this project's build dependencies has (licenses, C headers, Perl and Python
sources), interleaved with generated hard cases (emoji ZWJ / skin-tone sequences, combining marks, CRLF, digit
runs, zero-width characters, U+FEFF, U+0085, U+180E, NUL, mixed scripts, odd-case contractions, long whitespace
runs, special-token text). The same seed on the same machine gives the same texts.
"""
import glob
import os
import random

ROOTS = [
    "/usr/share/common-licenses/*",
    "/usr/share/perl/5.*/**/*.pm",
    "/usr/share/perl/5.*/**/*.pod",
    "/usr/lib/python3.*/**/*.py",
    "/usr/include/**/*.h",
]

SCRIPTS = {
    "cjk": (0x4E00, 0x9FA5),
    "hiragana": (0x3041, 0x3096),
    "hangul": (0xAC00, 0xD7A3),
    "arabic": (0x0621, 0x064A),
    "devanagari": (0x0905, 0x0939),
    "cyrillic": (0x0410, 0x044F),
    "greek": (0x0391, 0x03C9),
    "hebrew": (0x05D0, 0x05EA),
    "thai": (0x0E01, 0x0E30),
    "latin1": (0x00C0, 0x00FF),
}
EMOJI = ["\U0001F600", "\U0001F44D", "\U0001F468", "\U0001F469", "\U0001F467", "\U0001F466", "\U0001F3F3",
         "\u2764", "\U0001F525", "\U0001F680", "\U0001F9D1", "\U0001F4BB", "\u2708", "\U0001F1FA", "\U0001F1F8"]
SKIN_TONES = ["\U0001F3FB", "\U0001F3FC", "\U0001F3FD", "\U0001F3FE", "\U0001F3FF"]
COMBINING = ["\u0301", "\u0300", "\u0308", "\u0327", "\u0303", "\u20DD", "\u0336", "\u093F", "\u064E"]
ZERO_WIDTH = ["\u200B", "\u200C", "\u200D", "\u2060", "\uFEFF"]
SPACES = [" ", "\t", "\n", "\r\n", "\r", "\u000B", "\u000C", "\u00A0", "\u0085", "\u1680", "\u2000", "\u2007",
          "\u200A", "\u2028", "\u2029", "\u202F", "\u205F", "\u3000", "\u180E", "\x1c", "\x1f"]
CONTRACTIONS = ["'s", "'S", "'t", "'T", "'re", "'RE", "'rE", "'ve", "'Ve", "'VE", "'m", "'M", "'ll", "'LL", "'Ll",
                "'d", "'D", "'\u017F", "\u2019s", "'"]
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|reserved_special_token_5|>", "<|python_tag|>", "<|eom_id|>", "<|eot_id|", "<|", "|>",
            "<|eot_id|><|eot_id|>", "< |eot_id|>", "<<|eot_id|>>"]
PUNCT = list("!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "--", "\u2014", "\u00BF", "\u00AB", "\u00BB"]
WORDS = ["the", "The", "THE", "hello", "world", "don", "won", "it", "tokenizer", "Llama", "x", "I", "a",
         "naïve", "café", "straße", "Ὀδυσσεύς", "москва", "東京", "مرحبا", "नमस्ते", "שלום", "สวัสดี", "안녕하세요"]


def _file_list():
    files = []
    for pattern in ROOTS:
        files.extend(sorted(glob.glob(pattern, recursive=True)))
    return [f for f in files if os.path.isfile(f)]


def _word(rng):
    kind = rng.random()
    if kind < 0.4:
        return rng.choice(WORDS)
    lo, hi = SCRIPTS[rng.choice(sorted(SCRIPTS))]
    return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 12)))


def _piece(rng):
    r = rng.random()
    if r < 0.10:  # emoji, ZWJ sequences, skin tones, flags
        parts = []
        for _ in range(rng.randint(1, 4)):
            e = rng.choice(EMOJI)
            if rng.random() < 0.4:
                e += rng.choice(SKIN_TONES)
            if rng.random() < 0.3:
                e += "\uFE0F"
            parts.append(e)
        return "\u200D".join(parts) if rng.random() < 0.6 else "".join(parts)
    if r < 0.18:
        return _word(rng) + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 4)))
    if r < 0.26:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 40)))
    if r < 0.36:
        return rng.choice(SPACES) * rng.randint(1, 3) if rng.random() < 0.7 else " " * rng.randint(2, 300)
    if r < 0.42:
        return rng.choice(ZERO_WIDTH) + rng.choice(["", _word(rng)])
    if r < 0.50:
        return _word(rng) + rng.choice(CONTRACTIONS) + rng.choice(["", " ", _word(rng)])
    if r < 0.55:
        return rng.choice(SPECIALS)
    if r < 0.63:
        return "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 6)))
    if r < 0.66:
        return rng.choice(["\x00", "\x01", "\x7f", "\x1b[0m", "\ufffd", "\U0010FFFD", "\uE000"])
    if r < 0.70:  # random code points from the assigned parts of the BMP and the SMP
        return "".join(chr(rng.choice([rng.randint(0x20, 0x2FFF), rng.randint(0xA000, 0xD7FF),
                                       rng.randint(0xF900, 0xFFEF), rng.randint(0x1F300, 0x1FAFF)]))
                       for _ in range(rng.randint(1, 8)))
    return _word(rng)


def random_unicode_text(rng, n_pieces):
    out = []
    for _ in range(n_pieces):
        out.append(_piece(rng))
        out.append(rng.choice([" ", " ", " ", "", "\n", "  "]))
    return "".join(out)


def build_texts(seed=1234, target_bytes=5 << 20):
    rng = random.Random(seed)
    files = _file_list()
    texts, total = [], 0
    while total < target_bytes:
        if files and rng.random() < 0.6:
            path = rng.choice(files)
            with open(path, "rb") as f:
                data = f.read()
            start = rng.randint(0, max(0, len(data) - 1))
            chunk = data[start:start + rng.choice([100, 1000, 5000, 20000, 60000])]
            text = chunk.decode("utf-8", errors="replace")
            if rng.random() < 0.2:  # sprinkle hard cases into real text
                pos = rng.randint(0, len(text))
                text = text[:pos] + random_unicode_text(rng, rng.randint(1, 20)) + text[pos:]
        else:
            text = random_unicode_text(rng, rng.choice([1, 5, 50, 500, 3000]))
        texts.append(text)
        total += len(text.encode("utf-8"))
    return texts
