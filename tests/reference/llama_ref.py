"""Independent float64 numpy reference for Hugging Face `LlamaForCausalLM`.

Written from the semantics of transformers' `modeling_llama.py` (and `modeling_rope_utils.py` for llama3 RoPE
scaling), not from Tessera's C++, so that it can judge the C++ independently. It reads a Hugging Face model
directory on its own (config.json plus model.safetensors, or model.safetensors.index.json plus shards), with a
safetensors parser written here (json + numpy only: no torch, no transformers, no safetensors package).

Everything is computed in float64 from the stored weights (BF16 / F16 / F32 widened exactly), so this is the
"ideal" result that bf16-weight / fp32-activation engines approximate. It recomputes the whole sequence each
step (no KV cache): it is meant for the short sequences of tests, and for reading.

Usage as a tool:
    python llama_ref.py --model DIR --prompt-ids 1,2,3 [--max-tokens 16]
prints {"token_ids": [...]} with the greedy continuation (stopping at the eos ids HF generate() would use).
"""

import argparse
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

# ----------------------------------------------------------------------------------------------------------------
# safetensors
#
# File layout (https://github.com/huggingface/safetensors):
#   [8 bytes]  N, little-endian uint64: length of the header
#   [N bytes]  UTF-8 JSON: {"__metadata__": {str: str} (optional),
#                           NAME: {"dtype": "BF16", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...}
#   [rest]     the data area; offsets are relative to its start, tensors are row-major little-endian,
#              and the buffers must tile the data area exactly (no holes, no overlaps, nothing trailing).
#
# Tessera's block-quantized tensors (`import-gguf --keep-quantized`) are stored as dtype "U8" with the last dim in
# bytes and a __metadata__ entry "tessera.quantized.NAME": "Q8_0" | "Q4_0" | "Q4_1". Each row is blocks of 32
# weights, as llama.cpp's ggml-common.h defines them (every scale an IEEE half):
#   Q8_0 {d; int8 q[32]}          w[j] = q[j] * d
#   Q4_0 {d; uint8 q[16]}         w[j] = ((q[j] & 15) - 8) * d, w[j + 16] = ((q[j] >> 4) - 8) * d
#   Q4_1 {d; m; uint8 q[16]}      w[j] = (q[j] & 15) * d + m,  w[j + 16] = (q[j] >> 4) * d + m
# Dequantized here in float64 from the block bytes (the values are exact in float32 too: ggml rounds the
# product to float, which an 8-bit by 11-bit product never needs).
# ----------------------------------------------------------------------------------------------------------------


class SafetensorsError(ValueError):
    """A safetensors file that is malformed or truncated; the message names the file (and tensor)."""


# dtype name -> (numpy dtype of the stored element, bytes per element). BF16 is read as raw uint16.
_SAFETENSORS_DTYPES = {
    "BF16": (np.dtype("<u2"), 2),
    "F16": (np.dtype("<f2"), 2),
    "F32": (np.dtype("<f4"), 4),
}


# Block type -> bytes per 32-weight block.
_QUANTIZED_BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}
_QUANTIZED_PREFIX = "tessera.quantized."


def dequantize_blocks(raw, qtype):
    """uint8 array [..., blocks * block bytes] of `qtype` blocks -> float64 array [..., blocks * 32]."""
    block_bytes = _QUANTIZED_BLOCK_BYTES[qtype]
    lead = raw.shape[:-1]
    blocks = np.ascontiguousarray(raw).reshape(-1, block_bytes)
    d = blocks[:, 0:2].copy().view("<f2").astype(np.float64)  # [blocks, 1]
    if qtype == "Q8_0":
        values = blocks[:, 2:].copy().view(np.int8).astype(np.float64) * d
    else:
        qs = blocks[:, block_bytes - 16:]
        q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float64)  # low nibbles are weights 0..15
        if qtype == "Q4_0":
            values = (q - 8) * d
        else:
            values = q * d + blocks[:, 2:4].copy().view("<f2").astype(np.float64)
    return values.reshape(lead + (-1,))


def bf16_bits_to_float64(bits):
    """uint16 bf16 bit patterns -> float64. bf16 is the top half of an IEEE float32, so `<< 16` is exact."""
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def read_safetensors_header(path):
    """Parses and validates the header of one safetensors file.

    Returns (tensors, data_start) where tensors maps name -> (dtype name, shape tuple, begin, end) with byte
    offsets relative to data_start. Raises SafetensorsError if the file is truncated or inconsistent.
    """
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise SafetensorsError(f"{path}: truncated: {file_size} bytes, fewer than the 8-byte header length")
        header_len = int.from_bytes(prefix, "little")
        if header_len > file_size - 8:
            raise SafetensorsError(
                f"{path}: truncated: header length {header_len} exceeds the {file_size - 8} bytes after it")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: header is not valid UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")

    data_start = 8 + header_len
    data_size = file_size - data_start
    metadata = header.get("__metadata__") or {}
    quantized = {key[len(_QUANTIZED_PREFIX):]: value for key, value in metadata.items()
                 if key.startswith(_QUANTIZED_PREFIX)}
    for name, qtype in quantized.items():
        if qtype not in _QUANTIZED_BLOCK_BYTES or name not in header:
            raise SafetensorsError(f"{path}: __metadata__ marks {name!r} as {qtype!r}")
        if header[name].get("dtype") != "U8":
            raise SafetensorsError(f"{path}: tensor {name}: {qtype} blocks must be stored as U8")
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: tensor {name}: needs dtype, shape and data_offsets [begin, end]")
        if name in quantized:
            if not shape or shape[-1] % _QUANTIZED_BLOCK_BYTES[quantized[name]] != 0:
                raise SafetensorsError(f"{path}: tensor {name}: U8 shape {list(shape)} is not whole blocks")
            dtype = quantized[name]
        elif dtype not in _SAFETENSORS_DTYPES:
            raise SafetensorsError(f"{path}: tensor {name}: unsupported dtype {dtype!r}")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SafetensorsError(f"{path}: tensor {name}: bad shape {list(shape)}")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise SafetensorsError(f"{path}: tensor {name}: bad data_offsets {[begin, end]}")
        if end > data_size:
            raise SafetensorsError(
                f"{path}: truncated: tensor {name} ends at byte {end} of a {data_size}-byte data area")
        expected = math.prod(shape) * (1 if dtype in _QUANTIZED_BLOCK_BYTES else _SAFETENSORS_DTYPES[dtype][1])
        if end - begin != expected:
            raise SafetensorsError(
                f"{path}: tensor {name}: {end - begin} bytes for shape {list(shape)} {dtype} ({expected} expected)")
        tensors[name] = (dtype, shape, begin, end)

    # The buffers must tile the data area exactly, as the reference (Rust) implementation requires.
    position = 0
    for name, (_, _, begin, end) in sorted(tensors.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != position:
            raise SafetensorsError(f"{path}: tensor {name} starts at byte {begin}, expected {position} "
                                   "(hole or overlap in the data area)")
        position = end
    if position != data_size:
        raise SafetensorsError(f"{path}: data area has {data_size} bytes but the tensors cover {position}")
    return tensors, data_start


def read_safetensors(path, names=None):
    """Reads tensors (all, or those in `names`) of one safetensors file as float64 numpy arrays."""
    tensors, data_start = read_safetensors_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, (dtype, shape, begin, end) in tensors.items():
        if names is not None and name not in names:
            continue
        if dtype in _QUANTIZED_BLOCK_BYTES:
            out[name] = dequantize_blocks(np.asarray(data[data_start + begin:data_start + end]).reshape(shape), dtype)
            continue
        stored_dtype = _SAFETENSORS_DTYPES[dtype][0]
        raw = data[data_start + begin:data_start + end].view(stored_dtype).reshape(shape)
        out[name] = bf16_bits_to_float64(raw) if dtype == "BF16" else raw.astype(np.float64)
    del data
    return out


def _safetensors_files(model_dir):
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return [single]
    with open(os.path.join(model_dir, "model.safetensors.index.json")) as f:
        return [os.path.join(model_dir, s) for s in sorted(set(json.load(f)["weight_map"].values()))]


def quantized_tensor_names(model_dir):
    """The names of the tensors a model directory stores as quantized blocks (Q8_0 / Q4_0 / Q4_1)."""
    names = set()
    for path in _safetensors_files(model_dir):
        tensors, _ = read_safetensors_header(path)
        names.update(name for name, (dtype, _, _, _) in tensors.items() if dtype in _QUANTIZED_BLOCK_BYTES)
    return names


def quantize_activations_int8(x):
    """x [..., k] (k a multiple of 32) with every 32-value block rounded as llama.cpp's quantize_row_q8_0 (and
    Tessera's --quant-activations int8) rounds it: d = max|x| / 127, q = x / d rounded half away from zero;
    returns q * d in float64."""
    blocks = x.reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / 127.0
    v = np.divide(blocks, d, out=np.zeros_like(blocks), where=d != 0)
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return (q * d).reshape(x.shape)


def load_checkpoint(model_dir):
    """All tensors of a HF model directory (single file or sharded with an index) as float64 arrays."""
    single = os.path.join(model_dir, "model.safetensors")
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(single):
        return read_safetensors(single)
    if not os.path.exists(index):
        raise FileNotFoundError(f"{model_dir}: neither model.safetensors nor model.safetensors.index.json")
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]  # tensor name -> shard file name
    shards = {}
    for name, shard in weight_map.items():
        shards.setdefault(shard, set()).add(name)
    weights = {}
    for shard, names in sorted(shards.items()):
        loaded = read_safetensors(os.path.join(model_dir, shard), names)
        missing = names - loaded.keys()
        if missing:
            raise SafetensorsError(f"{shard}: lacks tensors the index places there: {sorted(missing)[:3]}")
        weights.update(loaded)
    return weights


# ----------------------------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------------------------


def rope_from_config(d):
    """(rope_theta, rope_scaling) from either form of config.json: transformers <= 4 writes top-level `rope_theta`
    and `rope_scaling`; transformers 5 writes `rope_parameters` ({"rope_theta", "rope_type", "factor", ...}).
    Values given in both forms must agree."""
    theta, scaling = d.get("rope_theta"), d.get("rope_scaling")
    params = d.get("rope_parameters")
    if params is None:
        return (10000.0 if theta is None else theta), scaling
    p_theta = params.get("rope_theta")
    if theta is not None and p_theta is not None and theta != p_theta:
        raise ValueError(f"rope_parameters.rope_theta={p_theta} contradicts rope_theta={theta}")
    p_scaling = None if params.get("rope_type", "default") == "default" else {
        k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        scaling = None
    if scaling is not None and scaling != p_scaling:
        raise ValueError(f"rope_parameters {p_scaling} contradicts rope_scaling {scaling}")
    theta = p_theta if p_theta is not None else theta
    return (10000.0 if theta is None else theta), p_scaling


@dataclass
class LlamaConfig:
    """The fields of HF `LlamaConfig` that the forward pass depends on (defaults are LlamaConfig's)."""
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    eos_token_ids: list = field(default_factory=list)
    bos_token_id: int = None

    @staticmethod
    def from_dict(d):
        if d.get("hidden_act", "silu") != "silu":
            raise NotImplementedError(f"hidden_act {d['hidden_act']!r}: only silu is implemented")
        heads = d["num_attention_heads"]
        eos = d.get("eos_token_id")  # an int, a list (Llama 3.1: [128001, 128008, 128009]) or absent
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        rope_theta, rope_scaling = rope_from_config(d)
        return LlamaConfig(
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,  # None/absent means MHA in HF
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            vocab_size=d["vocab_size"],
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            attention_bias=d.get("attention_bias", False),
            mlp_bias=d.get("mlp_bias", False),
            eos_token_ids=eos,
            bos_token_id=d.get("bos_token_id"),
        )


# ----------------------------------------------------------------------------------------------------------------
# The pieces of the forward pass
# ----------------------------------------------------------------------------------------------------------------


def rope_inv_freq(head_dim, theta, rope_scaling=None):
    """Per-pair inverse frequencies [head_dim / 2] of HF's RoPE, with optional llama3 scaling.

    Plain RoPE: inv_freq[i] = 1 / theta^(2i / head_dim).
    rope_type "llama3" (Llama 3.1+), per frequency, with wavelen = 2*pi / inv_freq and
    L = original_max_position_embeddings:
      wavelen < L / high_freq_factor (high frequencies)  -> unchanged;
      wavelen > L / low_freq_factor  (low frequencies)   -> inv_freq / factor;
      in between: smooth = (L / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor),
                  inv_freq = (1 - smooth) * inv_freq / factor + smooth * inv_freq.
    (At both edges of the middle band the two formulas agree, so the boundaries' < / <= do not matter.)
    """
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    rope_type = None if rope_scaling is None else rope_scaling.get("rope_type", rope_scaling.get("type"))
    if rope_type in (None, "default"):
        return inv_freq
    if rope_type != "llama3":
        raise NotImplementedError(f"rope_scaling type {rope_type!r}: only default and llama3 are implemented")
    factor = rope_scaling["factor"]
    low = rope_scaling["low_freq_factor"]
    high = rope_scaling["high_freq_factor"]
    original_max = rope_scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (original_max / wavelen - low) / (high - low)
    interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return np.where(wavelen < original_max / high, inv_freq,
                    np.where(wavelen > original_max / low, inv_freq / factor, interpolated))


def rope_cos_sin(inv_freq, positions):
    """cos, sin of shape [T, head_dim]: HF concatenates the angles with themselves (rotate_half layout)."""
    angles = np.outer(np.asarray(positions, dtype=np.float64), inv_freq)  # [T, head_dim / 2]
    emb = np.concatenate([angles, angles], axis=-1)                      # [T, head_dim]
    return np.cos(emb), np.sin(emb)


def rotate_half(x):
    """cat(-x2, x1) where x1, x2 are the first and second halves of the last axis."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x, cos, sin):
    """x: [..., T, head_dim]; rotates pair (i, i + head_dim/2) by angle position * inv_freq[i]."""
    return x * cos + rotate_half(x) * sin


def rms_norm(x, weight, eps):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x):
    return x / (1.0 + np.exp(-x))


def causal_attention(q, k, v, scale):
    """Grouped-query causal attention.

    q: [nq, T, hd]; k, v: [nkv, T, hd] with nq a multiple of nkv. As HF's repeat_kv, query head h reads KV head
    h // (nq / nkv) (each KV head serves a consecutive group of query heads). Returns [nq, T, hd].
    """
    n_rep = q.shape[0] // k.shape[0]
    k = np.repeat(k, n_rep, axis=0)                           # [nq, T, hd]: kv0, kv0, ..., kv1, kv1, ...
    v = np.repeat(v, n_rep, axis=0)
    scores = q @ k.transpose(0, 2, 1) * scale                 # [nq, T(query), T(key)]
    t = scores.shape[-1]
    scores = np.where(np.tril(np.ones((t, t), dtype=bool)), scores, -np.inf)  # query i sees keys j <= i
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs @ v


def linear(x, weight, bias=None):
    """y = x @ W.T (+ b); HF stores nn.Linear weights as [out_features, in_features]."""
    y = x @ weight.T
    return y if bias is None else y + bias


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


class LlamaModel:
    """HF LlamaForCausalLM in float64. Weights are a dict of HF tensor names -> float64 arrays."""

    def __init__(self, config, weights, quantized=frozenset()):
        """quantized: the HF names of the weights stored as blocks (only --quant-activations int8 reads it)."""
        self.config = c = config
        self.inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling)  # [head_dim / 2]

        def get(name, shape):
            if name not in weights:
                raise KeyError(f"checkpoint lacks tensor {name}")
            w = weights[name]
            if w.shape != shape:
                raise ValueError(f"tensor {name}: shape {list(w.shape)}, config implies {list(shape)}")
            return w

        def bias(name, size, present):
            return get(name, (size,)) if present else None

        h, hd, nq, nkv, ff = c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads, \
            c.intermediate_size
        if nq % nkv:
            raise ValueError(f"num_attention_heads={nq} is not a multiple of num_key_value_heads={nkv}")
        self.embed = get("model.embed_tokens.weight", (c.vocab_size, h))                   # [vocab, hidden]
        self.layers = []
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            ab, mb = c.attention_bias, c.mlp_bias
            self.layers.append(dict(
                input_norm=get(p + "input_layernorm.weight", (h,)),                           # [hidden]
                q=get(p + "self_attn.q_proj.weight", (nq * hd, h)),                           # [nq*hd, hidden]
                q_b=bias(p + "self_attn.q_proj.bias", nq * hd, ab),
                k=get(p + "self_attn.k_proj.weight", (nkv * hd, h)),                          # [nkv*hd, hidden]
                k_b=bias(p + "self_attn.k_proj.bias", nkv * hd, ab),
                v=get(p + "self_attn.v_proj.weight", (nkv * hd, h)),                          # [nkv*hd, hidden]
                v_b=bias(p + "self_attn.v_proj.bias", nkv * hd, ab),
                o=get(p + "self_attn.o_proj.weight", (h, nq * hd)),                           # [hidden, nq*hd]
                o_b=bias(p + "self_attn.o_proj.bias", h, ab),
                post_norm=get(p + "post_attention_layernorm.weight", (h,)),                   # [hidden]
                gate=get(p + "mlp.gate_proj.weight", (ff, h)),                                # [ffn, hidden]
                gate_b=bias(p + "mlp.gate_proj.bias", ff, mb),
                up=get(p + "mlp.up_proj.weight", (ff, h)),                                    # [ffn, hidden]
                up_b=bias(p + "mlp.up_proj.bias", ff, mb),
                down=get(p + "mlp.down_proj.weight", (h, ff)),                                # [hidden, ffn]
                down_b=bias(p + "mlp.down_proj.bias", h, mb),
                quantized={key for key, name in (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"),
                                                 ("v", "self_attn.v_proj"), ("o", "self_attn.o_proj"),
                                                 ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
                                                 ("down", "mlp.down_proj")) if p + name + ".weight" in quantized},
            ))
        self.norm = get("model.norm.weight", (h,))                                          # [hidden]
        if c.tie_word_embeddings:
            # HF ties lm_head to the embedding parameter; a stored lm_head.weight (if any) is not used.
            self.lm_head = self.embed                                                       # [vocab, hidden]
            self.lm_head_quantized = "model.embed_tokens.weight" in quantized
        elif "lm_head.weight" in weights:
            self.lm_head = get("lm_head.weight", (c.vocab_size, h))                         # [vocab, hidden]
            self.lm_head_quantized = "lm_head.weight" in quantized
        else:
            # HF would initialise a missing untied lm_head randomly (with a warning): not a usable checkpoint.
            raise KeyError("checkpoint lacks lm_head.weight and config.json has tie_word_embeddings=false")

    @staticmethod
    def from_pretrained(model_dir):
        """Reads config.json and the safetensors weights of a HF model directory."""
        with open(os.path.join(model_dir, "config.json")) as f:
            config = LlamaConfig.from_dict(json.load(f))
        return LlamaModel(config, load_checkpoint(model_dir), quantized_tensor_names(model_dir))

    def forward(self, token_ids, last_only=False, int8_rows=None):
        """Logits [T, vocab] for token_ids at positions 0..T-1 (only the last row's [1, vocab] if last_only).

        int8_rows (bool [T], or None): rows whose activations are rounded to int8 blocks
        (quantize_activations_int8) before each quantized projection, as --quant-activations int8 does in steps
        small enough for the GEMV; the last row's lm_head input is then rounded too (the lm_head runs on one row
        per sequence)."""
        c = self.config
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0 or ids.min() < 0 or ids.max() >= c.vocab_size:
            raise ValueError(f"token ids must be a non-empty 1-D list within [0, {c.vocab_size})")
        t, nq, nkv, hd = ids.size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
        cos, sin = rope_cos_sin(self.inv_freq, np.arange(t))                  # [T, hd] each
        scale = 1.0 / math.sqrt(hd)

        def rounded(a, quantized):
            if int8_rows is None or not quantized or not np.any(int8_rows):
                return a
            a = a.copy()
            a[int8_rows] = quantize_activations_int8(a[int8_rows])
            return a

        def proj(a, layer, key):
            return linear(rounded(a, key in layer["quantized"]), layer[key], layer[key + "_b"])

        x = self.embed[ids]                                                   # [T, hidden]: the residual stream
        for layer in self.layers:
            h = rms_norm(x, layer["input_norm"], c.rms_norm_eps)
            q = proj(h, layer, "q").reshape(t, nq, hd).transpose(1, 0, 2)                     # [nq, T, hd]
            k = proj(h, layer, "k").reshape(t, nkv, hd).transpose(1, 0, 2)                    # [nkv, T, hd]
            v = proj(h, layer, "v").reshape(t, nkv, hd).transpose(1, 0, 2)                    # [nkv, T, hd]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            attn = causal_attention(q, k, v, scale).transpose(1, 0, 2).reshape(t, nq * hd)   # [T, nq*hd]
            x = x + proj(attn, layer, "o")

            h = rms_norm(x, layer["post_norm"], c.rms_norm_eps)
            gated = silu(proj(h, layer, "gate")) * proj(h, layer, "up")
            x = x + proj(gated, layer, "down")                                                # [T, hidden]

        x = rms_norm(x[-1:] if last_only else x, self.norm, c.rms_norm_eps)
        if int8_rows is not None and self.lm_head_quantized:
            x = x.copy()
            x[-1:] = quantize_activations_int8(x[-1:])
        return x @ self.lm_head.T                                                           # [T or 1, vocab]

    def generate_greedy(self, prompt_ids, max_tokens, eos_ids=None):
        """Greedy decoding as HF generate(do_sample=False).

        Returns (tokens, logits): the generated ids (the eos id included when one is emitted, and then
        generation stops) and the float64 [len(tokens), vocab] logits each token was chosen from. Ties in the
        argmax go to the lowest index. eos_ids defaults to config.json's eos_token_id.
        """
        eos = set(self.config.eos_token_ids if eos_ids is None else eos_ids)
        sequence = list(prompt_ids)
        tokens, rows = [], []
        for _ in range(max_tokens):
            logits = self.forward(sequence, last_only=True)[0]
            token = int(np.argmax(logits))  # numpy's argmax returns the first maximal index
            tokens.append(token)
            rows.append(logits)
            sequence.append(token)
            if token in eos:
                break
        vocab = self.config.vocab_size
        return tokens, (np.stack(rows) if rows else np.zeros((0, vocab)))


def generation_eos_ids(model_dir):
    """The eos ids HF generate() stops at: generation_config.json's eos_token_id when that file sets one
    (it overrides config.json's), else config.json's. An int or a list in either file."""
    for name in ("generation_config.json", "config.json"):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                eos = json.load(f).get("eos_token_id")
            if eos is not None:
                return [eos] if isinstance(eos, int) else list(eos)
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face model directory")
    parser.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    model = LlamaModel.from_pretrained(args.model)
    prompt = [int(s) for s in args.prompt_ids.split(",")]
    tokens, _ = model.generate_greedy(prompt, args.max_tokens, generation_eos_ids(args.model))
    print(json.dumps({"token_ids": tokens}))


if __name__ == "__main__":
    main()
