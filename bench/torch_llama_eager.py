#!/usr/bin/env python3
"""PyTorch eager baseline for gpu_bench: the llama3-8b shape in plain PyTorch eager mode (no torch.compile, no
CUDA graphs), bf16 random weights made on the GPU directly (no checkpoint), Hugging Face LlamaForCausalLM
semantics (RMSNorm in fp32, rotate_half RoPE with llama3 frequency scaling, grouped-query attention through
repeat_kv + scaled_dot_product_attention, SiLU-gated MLP) and a contiguous KV cache. Times greedy decode steps at
batch 1, 8 and 64 (~128-token contexts) and one 2048-token prefill; medians of CUDA-event timings. Prints a table
last and writes the figures as JSON. Needs only torch.

  python3 bench/torch_llama_eager.py [--json-out PATH] [--steps N] [--context N] [--prefill-tokens N]
                                     [--batches 1,8,64] [--preset llama3-8b|tiny] [--device cuda|cpu]

`--preset tiny --device cpu` is a quick smoke run on any machine with torch.
"""

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

PRESETS = {
    # meta-llama/Llama-3.1-8B-Instruct (worker/checkpoint/model_presets.cc "llama3-8b")
    "llama3-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=128256),
    # worker/checkpoint/model_presets.cc "tiny"
    "tiny": dict(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=384, vocab=128256),
}
ROPE = dict(theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192)
RMS_EPS = 1e-5


def llama3_inv_freq(head_dim):
    """inv_freq of HF's _compute_llama3_parameters (rope_type "llama3")."""
    inv_freq = 1.0 / (ROPE["theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    factor, low, high = ROPE["factor"], ROPE["low_freq_factor"], ROPE["high_freq_factor"]
    old_len = ROPE["original_max_position"]
    low_freq_wavelen = old_len / low
    high_freq_wavelen = old_len / high
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


class EagerLlama:
    """Weights (random, on `device`) and the HF-semantics forward over a contiguous KV cache."""

    def __init__(self, cfg, device, dtype, seed=0):
        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        self.head_dim = cfg["hidden"] // cfg["heads"]
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)

        def linear(out_features, in_features):  # [out, in] as in HF checkpoints
            t = torch.empty(out_features, in_features, device=device, dtype=dtype)
            return t.normal_(0.0, 0.02, generator=gen)

        def norm(n):
            t = torch.empty(n, device=device, dtype=dtype)
            return t.normal_(1.0, 0.02, generator=gen)

        h, i, hd = cfg["hidden"], cfg["intermediate"], self.head_dim
        nq, nkv = cfg["heads"], cfg["kv_heads"]
        self.embed = linear(cfg["vocab"], h)  # [vocab, hidden]
        self.layers = []
        for _ in range(cfg["layers"]):
            self.layers.append(dict(
                input_norm=norm(h),            # [hidden]
                q_proj=linear(nq * hd, h),     # [nq * hd, hidden]
                k_proj=linear(nkv * hd, h),    # [nkv * hd, hidden]
                v_proj=linear(nkv * hd, h),    # [nkv * hd, hidden]
                o_proj=linear(h, nq * hd),     # [hidden, nq * hd]
                post_norm=norm(h),             # [hidden]
                gate_proj=linear(i, h),        # [intermediate, hidden]
                up_proj=linear(i, h),          # [intermediate, hidden]
                down_proj=linear(h, i),        # [hidden, intermediate]
            ))
        self.norm = norm(h)                    # [hidden]
        self.lm_head = linear(cfg["vocab"], h)  # [vocab, hidden] (untied)
        self.inv_freq = llama3_inv_freq(hd).to(device)  # [hd / 2] fp32

    def new_cache(self, batch, max_len):
        """Per layer (k, v), each [batch, kv_heads, max_len, head_dim]."""
        shape = (batch, self.cfg["kv_heads"], max_len, self.head_dim)
        return [(torch.empty(shape, device=self.device, dtype=self.dtype),
                 torch.empty(shape, device=self.device, dtype=self.dtype)) for _ in self.layers]

    def rms_norm(self, x, weight):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + RMS_EPS)
        return weight * xf.to(x.dtype)

    def rope(self, start, length):
        positions = torch.arange(start, start + length, device=self.device, dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq[None, :]  # [T, hd / 2]
        emb = torch.cat((freqs, freqs), dim=-1)              # [T, hd]
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    @staticmethod
    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    @staticmethod
    def repeat_kv(x, groups):  # [B, nkv, S, hd] -> [B, nkv * groups, S, hd]
        if groups == 1:
            return x
        b, nkv, s, hd = x.shape
        return x[:, :, None, :, :].expand(b, nkv, groups, s, hd).reshape(b, nkv * groups, s, hd)

    def forward(self, ids, start, cache):
        """ids [B, T] at positions start..start+T-1 of every sequence; returns fp32 logits [B, vocab] of the last
        token. Writes the keys and values into cache[:, :, start:start+T]."""
        cfg, hd = self.cfg, self.head_dim
        b, t = ids.shape
        nq, nkv = cfg["heads"], cfg["kv_heads"]
        end = start + t
        x = F.embedding(ids, self.embed)  # [B, T, hidden]
        cos, sin = self.rope(start, t)    # [T, hd], broadcast over [B, heads, T, hd]
        mask = None
        causal = False
        if t > 1 and start == 0:
            causal = True
        elif t > 1:  # new tokens after a cached prefix: token j sees keys 0..start+j
            key_positions = torch.arange(end, device=self.device)
            mask = key_positions[None, :] <= (start + torch.arange(t, device=self.device))[:, None]
        for layer, (k_cache, v_cache) in zip(self.layers, cache):
            h = self.rms_norm(x, layer["input_norm"])
            q = F.linear(h, layer["q_proj"]).view(b, t, nq, hd).transpose(1, 2)
            k = F.linear(h, layer["k_proj"]).view(b, t, nkv, hd).transpose(1, 2)
            v = F.linear(h, layer["v_proj"]).view(b, t, nkv, hd).transpose(1, 2)
            q = q * cos + self.rotate_half(q) * sin
            k = k * cos + self.rotate_half(k) * sin
            k_cache[:, :, start:end] = k
            v_cache[:, :, start:end] = v
            keys = self.repeat_kv(k_cache[:, :, :end], nq // nkv)
            values = self.repeat_kv(v_cache[:, :, :end], nq // nkv)
            attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal)
            attn = attn.transpose(1, 2).reshape(b, t, nq * hd)
            x = x + F.linear(attn, layer["o_proj"])
            h = self.rms_norm(x, layer["post_norm"])
            x = x + F.linear(F.silu(F.linear(h, layer["gate_proj"])) * F.linear(h, layer["up_proj"]),
                             layer["down_proj"])
        x = self.rms_norm(x, self.norm)
        return F.linear(x[:, -1, :], self.lm_head).float()  # [B, vocab]


class Timer:
    """Per-region timings: CUDA events on a GPU (recorded in stream order, read after one synchronize), the host
    clock on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.pairs = []

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.pairs.append([event, None])
        else:
            self.pairs.append([time.perf_counter(), None])

    def stop(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.pairs[-1][1] = event
        else:
            self.pairs[-1][1] = time.perf_counter()

    def milliseconds(self):
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in self.pairs]
        return [(b - a) * 1e3 for a, b in self.pairs]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_ids(batch, length, vocab, device, seed):
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return torch.randint(0, vocab - 1000, (batch, length), generator=gen).to(device)


def bench_decode(model, batch, context, warmup, steps):
    """Median ms of one greedy decode step (forward + argmax feeding the next step, no host sync per step)."""
    cache = model.new_cache(batch, context + warmup + steps + 1)
    ids = random_ids(batch, context, model.cfg["vocab"], model.device, 17 + batch)
    logits = model.forward(ids, 0, cache)
    token = logits.argmax(-1, keepdim=True)  # [B, 1]
    position = context
    for _ in range(warmup):
        token = model.forward(token, position, cache).argmax(-1, keepdim=True)
        position += 1
    synchronize(model.device)
    timer = Timer(model.device)
    for _ in range(steps):
        timer.start()
        logits = model.forward(token, position, cache)
        token = logits.argmax(-1, keepdim=True)
        timer.stop()
        position += 1
    times = timer.milliseconds()
    if not torch.isfinite(logits).all():
        print(f"torch_llama_eager: warning: non-finite logits at batch {batch}", file=sys.stderr)
    del cache
    return statistics.median(times), min(times)


def bench_prefill(model, tokens, repeats):
    """Median ms of one prefill of a `tokens`-token prompt (one warm-up first)."""
    cache = model.new_cache(1, tokens)
    timer = Timer(model.device)
    for r in range(repeats + 1):
        ids = random_ids(1, tokens, model.cfg["vocab"], model.device, 99 + r)
        synchronize(model.device)
        if r > 0:
            timer.start()
        model.forward(ids, 0, cache).argmax(-1)
        if r > 0:
            timer.stop()
    times = timer.milliseconds()
    del cache
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json-out", default="")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--prefill-tokens", type=int, default=2048)
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llama3-8b")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    if args.device == "cuda" and not torch.cuda.is_available():
        print("torch_llama_eager: no CUDA device visible to PyTorch", file=sys.stderr)
        return 1
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    cfg = PRESETS[args.preset]
    started = time.perf_counter()
    with torch.inference_mode():
        model = EagerLlama(cfg, device, torch.bfloat16)
        synchronize(device)
        print(f"torch_llama_eager: torch {torch.__version__} on {device_name}: {args.preset} weights made in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
        decode = []
        for batch in batches:
            median_ms, min_ms = bench_decode(model, batch, args.context, 3, args.steps)
            decode.append(dict(batch=batch, context=args.context, steps=args.steps, ms_per_step=median_ms,
                               min_ms_per_step=min_ms, tokens_per_s=batch / median_ms * 1e3))
            print(f"torch_llama_eager: decode batch {batch}: {median_ms:.3f} ms/step", file=sys.stderr)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        prefill_ms = bench_prefill(model, args.prefill_tokens, 3)

    result = dict(framework="pytorch eager", torch=torch.__version__, device=device_name, preset=args.preset,
                  decode=decode,
                  prefill=dict(tokens=args.prefill_tokens, ms=prefill_ms,
                               tokens_per_s=args.prefill_tokens / prefill_ms * 1e3))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    print(f"\nPyTorch eager ({args.preset}, {device_name})")
    print(f"{'case':<16} {'ms':>10} {'tokens/s':>12}")
    for d in decode:
        print(f"decode b={d['batch']:<7} {d['ms_per_step']:>10.2f} {d['tokens_per_s']:>12.0f}")
    print(f"prefill {args.prefill_tokens:<8} {prefill_ms:>10.1f} {result['prefill']['tokens_per_s']:>12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
