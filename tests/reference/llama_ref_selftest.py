"""Unit tests of the numpy reference itself (llama_ref.py): each piece against hand-computed cases.

Run: .venv/bin/python tests/reference/llama_ref_selftest.py [-v]
"""

import json
import math
import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref as ref  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# Test helpers: a minimal safetensors writer and a random tiny model
# ---------------------------------------------------------------------------------------------------------------


def float_to_bf16_bits(x):
    """float -> bf16 bit patterns (round to nearest even); exact for the bf16-representable values used here."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.astype("<u2")


def write_safetensors(path, tensors, dtype="BF16"):
    """Writes {name: float array} in safetensors format, tensors back to back in name order."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if dtype == "BF16":
            blob = float_to_bf16_bits(array).tobytes()
        else:
            blob = array.astype({"F16": "<f2", "F32": "<f4"}[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the Rust writer pads the header to 8 bytes with spaces
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))


def tiny_config(**overrides):
    """A small HF-style config.json dict."""
    config = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                  hidden_size=48, intermediate_size=71, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=53, rms_norm_eps=1e-5, rope_theta=10000.0,
                  rope_scaling=None, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                  max_position_embeddings=256, torch_dtype="bfloat16")
    config.update(overrides)
    return config


def random_weights(config, rng):
    """HF-named random weights for `config` (a dict), rounded to bf16 so that files round-trip exactly."""
    h, ff, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    nq, nkv, hd = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]

    def w(*shape, scale=None, offset=0.0):
        scale = scale if scale is not None else 1 / math.sqrt(shape[-1])
        x = offset + rng.standard_normal(shape).astype(np.float32) * scale
        return ref.bf16_bits_to_float64(float_to_bf16_bits(x))

    def norm(size):
        return w(size, scale=0.1, offset=1.0)

    weights = {"model.embed_tokens.weight": w(v, h, scale=1.0), "model.norm.weight": norm(h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights.update({
            p + "input_layernorm.weight": norm(h),
            p + "self_attn.q_proj.weight": w(nq * hd, h),
            p + "self_attn.k_proj.weight": w(nkv * hd, h),
            p + "self_attn.v_proj.weight": w(nkv * hd, h),
            p + "self_attn.o_proj.weight": w(h, nq * hd),
            p + "post_attention_layernorm.weight": norm(h),
            p + "mlp.gate_proj.weight": w(ff, h),
            p + "mlp.up_proj.weight": w(ff, h),
            p + "mlp.down_proj.weight": w(h, ff),
        })
    if not config["tie_word_embeddings"]:
        weights["lm_head.weight"] = w(v, h)
    return weights


def tiny_model(rng, **overrides):
    config = tiny_config(**overrides)
    return ref.LlamaModel(ref.LlamaConfig.from_dict(config), random_weights(config, rng))


# ---------------------------------------------------------------------------------------------------------------
# RoPE
# ---------------------------------------------------------------------------------------------------------------


class RopeTest(unittest.TestCase):
    def test_rotate_half_negates_second_half_and_swaps(self):
        # x = [1, 2, 3, 4]: halves [1, 2] and [3, 4] -> cat(-[3, 4], [1, 2]).
        np.testing.assert_array_equal(ref.rotate_half(np.array([1.0, 2.0, 3.0, 4.0])), [-3.0, -4.0, 1.0, 2.0])

    def test_rope_at_position_zero_is_identity(self):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((3, 1, 32))  # [heads, T=1, head_dim]
        cos, sin = ref.rope_cos_sin(ref.rope_inv_freq(32, 500000.0), [0])
        np.testing.assert_array_equal(ref.apply_rope(x, cos, sin), x)  # cos 0 = 1, sin 0 = 0 exactly

    def test_rope_rotates_pair_i_with_pair_i_plus_half(self):
        # head_dim 4, theta 100: inv_freq = [1, 1/100^(2/4)] = [1, 0.1]. At position 3 the pair (x0, x2) turns by
        # 3 rad and (x1, x3) by 0.3 rad: (a, b) -> (a cos t - b sin t, b cos t + a sin t).
        inv_freq = ref.rope_inv_freq(4, 100.0)
        np.testing.assert_allclose(inv_freq, [1.0, 0.1], rtol=1e-15)
        x = np.array([1.0, 2.0, 3.0, 4.0])
        cos, sin = ref.rope_cos_sin(inv_freq, [3])
        c3, s3, c03, s03 = math.cos(3), math.sin(3), math.cos(0.3), math.sin(0.3)
        expected = [1 * c3 - 3 * s3, 2 * c03 - 4 * s03, 3 * c3 + 1 * s3, 4 * c03 + 2 * s03]
        np.testing.assert_allclose(ref.apply_rope(x, cos, sin)[0], expected, rtol=1e-14)

    def test_config_reads_both_rope_forms(self):
        old = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4, vocab_size=50,
                   rope_theta=100000.0, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                          high_freq_factor=4.0, original_max_position_embeddings=64))
        new = {k: v for k, v in old.items() if k not in ("rope_theta", "rope_scaling")}
        new["rope_parameters"] = dict(rope_theta=100000.0, **old["rope_scaling"])
        for d in (old, new, dict(old, rope_parameters=new["rope_parameters"])):
            c = ref.LlamaConfig.from_dict(d)
            self.assertEqual(c.rope_theta, 100000.0)
            self.assertEqual(c.rope_scaling, old["rope_scaling"])
        plain = dict(new, rope_parameters=dict(rope_theta=5.0, rope_type="default"))
        self.assertEqual((ref.LlamaConfig.from_dict(plain).rope_theta, ref.LlamaConfig.from_dict(plain).rope_scaling),
                         (5.0, None))
        with self.assertRaises(ValueError):
            ref.LlamaConfig.from_dict(dict(new, rope_theta=500000.0))
        with self.assertRaises(ValueError):
            ref.LlamaConfig.from_dict(dict(old, rope_parameters=dict(new["rope_parameters"], factor=32.0)))

    def test_rope_preserves_norms(self):
        rng = np.random.default_rng(1)
        x = rng.standard_normal((5, 40, 64))  # [heads, T, head_dim]
        scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=64)
        cos, sin = ref.rope_cos_sin(ref.rope_inv_freq(64, 500000.0, scaling), rng.integers(0, 10000, 40))
        np.testing.assert_allclose(np.linalg.norm(ref.apply_rope(x, cos, sin), axis=-1),
                                   np.linalg.norm(x, axis=-1), rtol=1e-13)

    def test_rope_scores_depend_only_on_relative_position(self):
        rng = np.random.default_rng(2)
        q, k = rng.standard_normal(32), rng.standard_normal(32)
        inv_freq = ref.rope_inv_freq(32, 10000.0)

        def score(m, n):
            cm, sm = ref.rope_cos_sin(inv_freq, [m])
            cn, sn = ref.rope_cos_sin(inv_freq, [n])
            return ref.apply_rope(q, cm, sm)[0] @ ref.apply_rope(k, cn, sn)[0]

        self.assertAlmostEqual(score(7, 3), score(104, 100), places=11)
        self.assertAlmostEqual(score(0, 0), q @ k, places=12)

    def test_llama3_inv_freq_of_llama_3_1_8b(self):
        # Llama 3.1 8B: theta 500000, head_dim 128, factor 8, low_freq_factor 1, high_freq_factor 4,
        # original_max_position_embeddings 8192. Unscaled inv_freq[i] = 500000^(-2i/128) = 500000^(-i/64);
        # wavelen = 2*pi / inv_freq. Band edges: 8192 / 4 = 2048 (shorter: unchanged) and 8192 / 1 = 8192
        # (longer: divided by 8). ln(500000) = 13.122363.
        scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=8192)
        inv_freq = ref.rope_inv_freq(128, 500000.0, scaling)
        self.assertEqual(inv_freq.shape, (64,))
        # i = 0: inv_freq = 1, wavelen = 2*pi = 6.28 < 2048: unchanged.
        self.assertEqual(inv_freq[0], 1.0)
        # i = 28: 500000^(-28/64) = exp(-13.122363 * 0.4375) = exp(-5.741034) = 3.211446e-3;
        #   wavelen = 1956.50 < 2048: unchanged (the last high-frequency index).
        self.assertAlmostEqual(inv_freq[28] / 3.211446e-3, 1.0, delta=1e-6)
        # i = 32: 500000^(-1/2) = 1 / 707.10678 = sqrt(2) / 1000 = 1.41421356e-3; wavelen = 1000 * sqrt(2) * pi
        #   = 4442.8829, inside [2048, 8192]: smooth = (8192 / 4442.8829 - 1) / (4 - 1) = (1.8438478 - 1) / 3
        #   = 0.2812826; inv_freq = (1 - smooth) * f / 8 + smooth * f = f * (0.0898397 + 0.2812826)
        #   = 1.41421356e-3 * 0.3711223 = 5.248462e-4.
        self.assertAlmostEqual(inv_freq[32] / 5.248462e-4, 1.0, delta=1e-6)
        # i = 35: 500000^(-35/64) = exp(-7.176355) = 7.644970e-4; wavelen = 8218.72 > 8192:
        #   divided by 8 = 9.556212e-5 (the first low-frequency index).
        self.assertAlmostEqual(inv_freq[35] / 9.556212e-5, 1.0, delta=1e-6)
        # i = 63: 500000^(-63/64) = exp(-12.917014) = 2.455141e-6; wavelen = 2.56e6 > 8192: / 8 = 3.068926e-7.
        self.assertAlmostEqual(inv_freq[63] / 3.068926e-7, 1.0, delta=1e-6)
        # Indices 29..34 are the smooth band (wavelen 2401.7 .. 6695.1): strictly between scaled and unscaled.
        plain = ref.rope_inv_freq(128, 500000.0)
        self.assertTrue(np.all(inv_freq[:29] == plain[:29]))
        self.assertTrue(np.all(inv_freq[35:] == plain[35:] / 8))
        self.assertTrue(np.all((inv_freq[29:35] > plain[29:35] / 8) & (inv_freq[29:35] < plain[29:35])))

    def test_rope_scaling_types(self):
        plain = ref.rope_inv_freq(32, 10000.0)
        np.testing.assert_array_equal(ref.rope_inv_freq(32, 10000.0, {"rope_type": "default"}), plain)
        with self.assertRaises(NotImplementedError):
            ref.rope_inv_freq(32, 10000.0, {"rope_type": "yarn", "factor": 4.0})


# ---------------------------------------------------------------------------------------------------------------
# Norm, attention, model
# ---------------------------------------------------------------------------------------------------------------


class LayerTest(unittest.TestCase):
    def test_rms_norm_by_hand(self):
        # x = [3, 4]: mean(x^2) = 12.5, rms = 3.5355339; weight [2, 0.5] -> [2 * 0.8485281, 0.5 * 1.1313708].
        y = ref.rms_norm(np.array([3.0, 4.0]), np.array([2.0, 0.5]), eps=0.0)
        np.testing.assert_allclose(y, [1.6970563, 0.5656854], rtol=1e-7)

    def test_silu_by_hand(self):
        # silu(x) = x * sigmoid(x): silu(0) = 0, silu(1) = 1 / (1 + e^-1) = 0.7310586.
        np.testing.assert_allclose(ref.silu(np.array([0.0, 1.0])), [0.0, 0.7310586], atol=1e-7)

    def test_first_query_attends_only_to_itself(self):
        rng = np.random.default_rng(3)
        q, k, v = rng.standard_normal((3, 2, 5, 8))
        out = ref.causal_attention(q, k, v, 1 / math.sqrt(8))
        np.testing.assert_allclose(out[:, 0], v[:, 0], rtol=1e-14)

    @staticmethod
    def mha_loops(q, k, v, scale):
        """Plain multi-head causal attention, one head and one query at a time."""
        out = np.zeros_like(q)
        for h in range(q.shape[0]):
            for i in range(q.shape[1]):
                s = np.array([q[h, i] @ k[h, j] * scale for j in range(i + 1)])
                p = np.exp(s - s.max())
                out[h, i] = (p / p.sum()) @ v[h, :i + 1]
        return out

    def test_gqa_with_as_many_kv_heads_as_query_heads_is_mha(self):
        rng = np.random.default_rng(4)
        q, k, v = rng.standard_normal((3, 4, 7, 16))
        np.testing.assert_allclose(ref.causal_attention(q, k, v, 0.25), self.mha_loops(q, k, v, 0.25),
                                   rtol=1e-12, atol=1e-14)

    def test_gqa_groups_consecutive_query_heads(self):
        # 6 query heads over 2 KV heads: heads 0, 1, 2 read KV head 0 and heads 3, 4, 5 read KV head 1 (HF repeat_kv).
        rng = np.random.default_rng(5)
        q = rng.standard_normal((6, 7, 16))
        k, v = rng.standard_normal((2, 2, 7, 16))
        expected = self.mha_loops(q, k[[0, 0, 0, 1, 1, 1]], v[[0, 0, 0, 1, 1, 1]], 0.25)
        np.testing.assert_allclose(ref.causal_attention(q, k, v, 0.25), expected, rtol=1e-12, atol=1e-14)

    def test_changing_a_later_token_leaves_earlier_logits_unchanged(self):
        model = tiny_model(np.random.default_rng(6))
        ids = [1, 17, 5, 40, 33, 8, 21]
        changed = ids[:4] + [12] + ids[5:]
        a, b = model.forward(ids), model.forward(changed)
        np.testing.assert_array_equal(a[:4], b[:4])  # positions before the change: bit-identical
        self.assertGreater(np.abs(a[4:] - b[4:]).max(), 1e-3)

    def test_last_only_equals_last_row(self):
        model = tiny_model(np.random.default_rng(7))
        ids = [1, 9, 30, 2, 44]
        np.testing.assert_allclose(model.forward(ids, last_only=True)[0], model.forward(ids)[-1], rtol=1e-12)

    def test_tied_model_uses_the_embedding_as_lm_head(self):
        rng = np.random.default_rng(8)
        config = tiny_config(tie_word_embeddings=True)
        weights = random_weights(config, rng)
        model = ref.LlamaModel(ref.LlamaConfig.from_dict(config), weights)
        self.assertIs(model.lm_head, weights["model.embed_tokens.weight"])
        untied = tiny_config()
        weights_untied = random_weights(untied, rng)
        del weights_untied["lm_head.weight"]
        with self.assertRaisesRegex(KeyError, "lm_head.weight"):
            ref.LlamaModel(ref.LlamaConfig.from_dict(untied), weights_untied)

    def test_config_defaults_and_eos_forms(self):
        c = ref.LlamaConfig.from_dict(dict(hidden_size=64, intermediate_size=100, num_hidden_layers=1,
                                           num_attention_heads=4, vocab_size=10, eos_token_id=[5, 6]))
        self.assertEqual((c.num_key_value_heads, c.head_dim, c.eos_token_ids), (4, 16, [5, 6]))
        self.assertEqual(ref.LlamaConfig.from_dict(tiny_config(eos_token_id=7)).eos_token_ids, [7])


class GenerateTest(unittest.TestCase):
    def test_greedy_rows_are_the_forward_logits_and_tokens_their_argmax(self):
        model = tiny_model(np.random.default_rng(9))
        prompt = [1, 4, 50, 7]
        tokens, logits = model.generate_greedy(prompt, 6, eos_ids=[])
        self.assertEqual(len(tokens), 6)
        self.assertEqual(logits.shape, (6, 53))
        for i, token in enumerate(tokens):
            row = model.forward(prompt + tokens[:i])[-1]
            np.testing.assert_allclose(logits[i], row, rtol=1e-12)
            self.assertEqual(token, int(np.argmax(row)))

    def test_stops_after_emitting_eos_and_includes_it(self):
        model = tiny_model(np.random.default_rng(10))
        prompt = [1, 3, 3]
        free, _ = model.generate_greedy(prompt, 8, eos_ids=[])
        stop_at = free[2]  # make the third greedy token an eos id
        first = free.index(stop_at)
        tokens, logits = model.generate_greedy(prompt, 8, eos_ids=[stop_at])
        self.assertEqual(tokens, free[:first + 1])
        self.assertEqual(len(logits), first + 1)

    def test_generation_config_eos_overrides_config_eos(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(tiny_config(eos_token_id=2), f)
            self.assertEqual(ref.generation_eos_ids(d), [2])
            with open(os.path.join(d, "generation_config.json"), "w") as f:
                json.dump({"eos_token_id": [5, 6]}, f)
            self.assertEqual(ref.generation_eos_ids(d), [5, 6])

    def test_argmax_ties_go_to_the_first_index(self):
        config = tiny_config()
        weights = random_weights(config, np.random.default_rng(11))
        weights["lm_head.weight"] = np.zeros_like(weights["lm_head.weight"])  # every logit 0.0
        model = ref.LlamaModel(ref.LlamaConfig.from_dict(config), weights)
        tokens, _ = model.generate_greedy([1, 2], 3, eos_ids=[])
        self.assertEqual(tokens, [0, 0, 0])


# ---------------------------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------------------------


class SafetensorsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "model.safetensors")
        self.values = {"a": np.array([[1.0, -2.0, 0.5], [3.25, -0.125, 61440.0]]), "b": np.array([1.5, -7.0])}

    def tearDown(self):
        self.dir.cleanup()

    def test_round_trips_bf16_f16_f32(self):
        for dtype in ("BF16", "F16", "F32"):
            write_safetensors(self.path, self.values, dtype)
            loaded = ref.read_safetensors(self.path)
            for name, value in self.values.items():
                self.assertEqual(loaded[name].dtype, np.float64)
                np.testing.assert_array_equal(loaded[name], value, err_msg=f"{dtype} {name}")

    def test_bf16_is_the_top_half_of_float32(self):
        # 0x3F80 -> 0x3F800000 = 1.0; 0xC040 -> 0xC0400000 = -3.0; 0x3EAA -> 0x3EAA0000 = 0.33203125.
        bits = np.array([0x3F80, 0xC040, 0x3EAA], dtype=np.uint16)
        np.testing.assert_array_equal(ref.bf16_bits_to_float64(bits), [1.0, -3.0, 0.33203125])

    def test_rejects_a_file_truncated_in_the_data_area(self):
        write_safetensors(self.path, self.values)
        with open(self.path, "r+b") as f:
            f.truncate(os.path.getsize(self.path) - 1)
        with self.assertRaisesRegex(ref.SafetensorsError, r"truncated.*tensor b"):
            ref.read_safetensors(self.path)

    def test_rejects_a_file_truncated_in_the_header(self):
        write_safetensors(self.path, self.values)
        for size in (20, 5):
            with open(self.path, "r+b") as f:
                f.truncate(size)
            with self.assertRaisesRegex(ref.SafetensorsError, "truncated"):
                ref.read_safetensors(self.path)

    def test_rejects_inconsistent_headers(self):
        def write_raw(header, data_size):
            raw = json.dumps(header).encode()
            with open(self.path, "wb") as f:
                f.write(len(raw).to_bytes(8, "little") + raw + bytes(data_size))

        cases = [
            ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "12 expected"),
            ({"x": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}}, 4, "unsupported dtype"),
            ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8, "hole or overlap"),
            ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, 8, "cover 4"),
        ]
        for header, data_size, message in cases:
            write_raw(header, data_size)
            with self.assertRaisesRegex(ref.SafetensorsError, message):
                ref.read_safetensors(self.path)
        with open(self.path, "wb") as f:
            f.write((5).to_bytes(8, "little") + b"{nope")
        with self.assertRaisesRegex(ref.SafetensorsError, "JSON"):
            ref.read_safetensors(self.path)

    def test_loads_a_sharded_checkpoint_like_a_single_file(self):
        rng = np.random.default_rng(12)
        config = tiny_config()
        weights = random_weights(config, rng)
        names = sorted(weights)
        shards = {"model-00001-of-00002.safetensors": names[:7], "model-00002-of-00002.safetensors": names[7:]}
        weight_map = {}
        for shard, shard_names in shards.items():
            write_safetensors(os.path.join(self.dir.name, shard), {n: weights[n] for n in shard_names})
            weight_map.update({n: shard for n in shard_names})
        with open(os.path.join(self.dir.name, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
        with open(os.path.join(self.dir.name, "config.json"), "w") as f:
            json.dump(config, f)
        loaded = ref.load_checkpoint(self.dir.name)
        self.assertEqual(sorted(loaded), names)
        for name in names:
            np.testing.assert_array_equal(loaded[name], weights[name])
        from_files = ref.LlamaModel.from_pretrained(self.dir.name)
        in_memory = ref.LlamaModel(ref.LlamaConfig.from_dict(config), weights)
        np.testing.assert_array_equal(from_files.forward([1, 5, 9]), in_memory.forward([1, 5, 9]))


if __name__ == "__main__":
    unittest.main()
