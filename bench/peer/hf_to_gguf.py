"""Writes a Hugging Face Llama checkpoint (BF16 safetensors) as a BF16 GGUF file for llama.cpp, so that the two
engines run the same weights side by side (bench/peer/side_by_side.sh). llama.cpp's own converter needs torch;
this needs only numpy and the `gguf` package (both in .venv).

What it writes follows llama.cpp's convert_hf_to_gguf.py for LlamaForCausalLM: the llama.* hyperparameters,
q_proj / k_proj rows permuted to llama.cpp's rotary layout (the inverse of what `tessera import-gguf` undoes),
`rope_freqs.weight` for Llama 3 rope scaling, the norms as F32, no `output.weight` when the embeddings are tied, and the BPE
tokenizer ("gpt2" model, "llama-bpe" pre-tokenizer) from tokenizer.json (the model's, or --tokenizer DIR's).

usage: .venv/bin/python bench/peer/hf_to_gguf.py --model DIR --out FILE.gguf [--tokenizer DIR]
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import gguf


def read_safetensors(model_dir):
    """{name: (np.memmap of uint16 bf16 bits or other, dtype string, shape)} over every shard."""
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    if not files:
        sys.exit("hf_to_gguf: no .safetensors file in %s" % model_dir)
    tensors = {}
    for name in files:
        path = os.path.join(model_dir, name)
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + length)
        for key, info in header.items():
            if key == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            if info["dtype"] != "BF16":
                sys.exit("hf_to_gguf: %s in %s is %s, not BF16" % (key, name, info["dtype"]))
            tensors[key] = data[begin:end].view(np.uint16).reshape(info["shape"])
    return tensors


def rotary_permute(w, n_head):
    """HF's q/k rows (two halves per head) to llama.cpp's interleaved rotary layout."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(config, head_dim):
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if scaling.get("rope_type", scaling.get("type")) != "llama3":
        return None
    base = config.get("rope_theta", scaling.get("rope_theta", 10000.0))
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_context = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def add_tokenizer(writer, tokenizer_dir, vocab_size):
    with open(os.path.join(tokenizer_dir, "tokenizer.json"), encoding="utf-8") as f:
        spec = json.load(f)
    tokens = [None] * vocab_size
    types = [gguf.TokenType.NORMAL] * vocab_size
    for token, i in spec["model"]["vocab"].items():
        if i < vocab_size:
            tokens[i] = token
    for added in spec.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    for i, token in enumerate(tokens):
        if token is None:  # ids past the tokenizer's: padding as llama.cpp's converter writes it
            tokens[i], types[i] = "[PAD%d]" % i, gguf.TokenType.UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokenizer", help="directory of tokenizer.json (default: --model)")
    args = parser.parse_args()
    with open(os.path.join(args.model, "config.json")) as f:
        config = json.load(f)
    if config.get("model_type") != "llama":
        sys.exit("hf_to_gguf: %s is not a Llama checkpoint" % args.model)
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim", hidden // n_head)
    vocab = config["vocab_size"]
    tied = config.get("tie_word_embeddings", False)
    tensors = read_safetensors(args.model)

    writer = gguf.GGUFWriter(args.out, "llama")
    writer.add_name(os.path.basename(os.path.normpath(args.model)))
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    bos, eos = config.get("bos_token_id"), config.get("eos_token_id")
    if bos is not None:
        writer.add_bos_token_id(bos)
    if eos is not None:
        writer.add_eos_token_id(eos[0] if isinstance(eos, list) else eos)
    add_tokenizer(writer, args.tokenizer or args.model, vocab)

    def bf16(name, array):
        if array.ndim == 1:  # norms: F32, as llama.cpp's converter writes them (its CPU ops take no BF16 there)
            writer.add_tensor(name, (array.astype(np.uint32) << 16).view(np.float32))
            return
        writer.add_tensor(name, np.ascontiguousarray(array), raw_shape=array.shape,
                          raw_dtype=gguf.GGMLQuantizationType.BF16)

    bf16("token_embd.weight", tensors["model.embed_tokens.weight"])
    bf16("output_norm.weight", tensors["model.norm.weight"])
    if not tied:
        bf16("output.weight", tensors["lm_head.weight"])
    factors = llama3_rope_factors(config, head_dim)
    if factors is not None:
        writer.add_tensor("rope_freqs.weight", factors)
    names = {"input_layernorm": "attn_norm", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for layer in range(config["num_hidden_layers"]):
        hf = "model.layers.%d." % layer
        bf16("blk.%d.attn_q.weight" % layer, rotary_permute(tensors[hf + "self_attn.q_proj.weight"], n_head))
        bf16("blk.%d.attn_k.weight" % layer, rotary_permute(tensors[hf + "self_attn.k_proj.weight"], n_kv))
        for ours, theirs in names.items():
            bf16("blk.%d.%s.weight" % (layer, theirs), tensors[hf + ours + ".weight"])

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    print("hf_to_gguf: wrote %s (%.2f GB)" % (args.out, os.path.getsize(args.out) / 1e9), file=sys.stderr)


if __name__ == "__main__":
    main()
