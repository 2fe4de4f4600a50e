#!/usr/bin/env python3
"""Writes the fuzz targets' test data and seed corpora (tests/fuzz/data, tests/fuzz/corpus/*/seed-*).

Run from the repository root with the virtual environment's Python (it needs grpcio-tools and gguf):
    .venv/bin/python tests/fuzz/make_seeds.py
Seeds are rewritten; regression-* files (inputs that once crashed a target) are left alone.
"""

import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FUZZ = os.path.join(ROOT, "tests", "fuzz")
VOCAB = 512  # the ServedModel's vocab_size in fuzz_model.h
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|eom_id|>", "<|python_tag|>"]
FIRST_SPECIAL = 500


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (the ByteLevel pre-tokenizer's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def write_tokenizer():
    """A Llama 3.1 tokenizer cut down to 256 byte tokens, the first merges that fit under id 500, and the
    special tokens at 500..506: the same pre-tokenizer, post-processor, decoder and chat template."""
    src = os.path.join(ROOT, "tests", "data", "llama-3.1-tokenizer")
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        full = json.load(f)
    with open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    merges = []
    for merge in full["model"]["merges"]:
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        if a in vocab and b in vocab and a + b not in vocab:
            merges.append(f"{a} {b}")
            vocab[a + b] = len(vocab)
            if len(vocab) == FIRST_SPECIAL:
                break
    tok = dict(full)
    tok["model"] = dict(full["model"], vocab=vocab, merges=merges)
    tok["added_tokens"] = [{"id": FIRST_SPECIAL + i, "content": s, "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": False, "special": True} for i, s in enumerate(SPECIALS)]
    post = json.loads(json.dumps(full["post_processor"]).replace("128000", str(FIRST_SPECIAL)))
    tok["post_processor"] = post
    out = os.path.join(FUZZ, "data", "tokenizer")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    cfg = {k: v for k, v in config.items() if k != "added_tokens_decoder"}
    cfg["added_tokens_decoder"] = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in tok["added_tokens"]}
    cfg["model_max_length"] = 256
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)


def corpus_dir(name):
    d = os.path.join(FUZZ, "corpus", name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.startswith("seed-"):
            os.remove(os.path.join(d, f))
    return d


def write(d, name, data):
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))


def http_seeds():
    d = corpus_dir("http_request_fuzz")
    bodies = {
        "completion-text": {"model": "fuzz-model", "prompt": "Hello, world", "max_tokens": 8},
        "completion-ids": {"prompt": [500, 72, 101, 108], "max_tokens": 4, "temperature": 0.7, "top_p": 0.9,
                           "top_k": 20, "seed": 3, "n": 2, "stop": ["\n", "."], "stop_token_ids": [504]},
        "completion-list": {"prompt": ["a b", [1, 2, 3], "c"], "echo": True, "logprobs": 2, "max_tokens": 2},
        "completion-sampling": {"prompt": "x", "min_p": 0.1, "repetition_penalty": 1.1, "presence_penalty": 0.5,
                                "frequency_penalty": -0.5, "logit_bias": {"10": 5, "11": -100}, "min_tokens": 1,
                                "priority": -2, "ignore_eos": True, "user": "u"},
        "completion-stream": {"prompt": "s", "stream": True, "stream_options": {"include_usage": True},
                              "resumable": True},
        "chat": {"model": "fuzz-model", "messages": [{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "Hi there"}],
                 "max_completion_tokens": 16, "logprobs": True, "top_logprobs": 3},
        "chat-tools": {"messages": [{"role": "user", "content": "weather?"}],
                       "tools": [{"type": "function", "function": {"name": "get", "description": "d",
                                                                   "parameters": {"type": "object"}}}]},
        "chat-parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                 {"type": "text", "text": "b"}]},
                                    {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]},
        "tokenize": {"prompt": "tokenize me", "add_special_tokens": False, "tokens": [500, 1, 2]},
    }
    for name, body in bodies.items():
        write(d, name, json.dumps(body))
    write(d, "broken-not-object", "[1, 2, 3]")
    write(d, "broken-truncated", '{"prompt": "abc", "max_tokens": ')
    write(d, "broken-types", '{"prompt": {"a": 1}, "n": "2", "stop": 5, "logit_bias": {"x": 1}}')
    write(d, "broken-utf8", b'{"prompt": "\xff\xfe", "messages": [{"role": "user", "content": "\xc3"}]}')
    write(d, "broken-ranges", '{"prompt": [9999, -1], "max_tokens": 100000, "n": 99, "top_p": 0, "top_logprobs": 50}')


def proto_modules():
    """Python modules for proto/ generated into a temporary directory."""
    out = tempfile.mkdtemp(prefix="tessera-fuzz-proto-")
    protos = ["tessera/v1/inference.proto", "tessera/v1/model.proto", "tessera/control/v1/control.proto"]
    subprocess.check_call([sys.executable, "-m", "grpc_tools.protoc", "-I" + os.path.join(ROOT, "proto"),
                           "--python_out=" + out] + protos)
    sys.path.insert(0, out)
    from tessera.v1 import inference_pb2  # noqa: E402
    from tessera.control.v1 import control_pb2  # noqa: E402
    return inference_pb2, control_pb2


def grpc_seeds(inference_pb2):
    """Byte 0: bit 0 = a ChatRequest (else a CompleteRequest), bit 1 = no tokenizer; the rest: the message."""
    d = corpus_dir("grpc_request_fuzz")
    r = inference_pb2.CompleteRequest(text="Hello there", max_tokens=8)
    write(d, "complete-text", b"\x00" + r.SerializeToString())
    write(d, "complete-text-no-tokenizer", b"\x02" + r.SerializeToString())
    r = inference_pb2.CompleteRequest(max_tokens=4, temperature=0.8, top_k=5, top_p=0.5, seed=1, n=3,
                                      stop=["a"], stop_token_ids=[504], echo=True, logprobs=True, top_logprobs=2,
                                      min_p=0.05, repetition_penalty=1.2, presence_penalty=1, frequency_penalty=1,
                                      min_tokens=2, priority=1)
    r.token_ids.ids.extend([500, 10, 20, 30])
    r.logit_bias[7] = 3.0
    write(d, "complete-ids", b"\x00" + r.SerializeToString())
    write(d, "complete-ids-no-tokenizer", b"\x02" + r.SerializeToString())
    r = inference_pb2.CompleteRequest(max_tokens=2)
    r.chat.messages.add(role="user", content="chat via complete")
    write(d, "complete-chat", b"\x00" + r.SerializeToString())
    c = inference_pb2.ChatRequest(max_tokens=6, temperature=0.0)
    c.messages.add(role="system", content="sys")
    c.messages.add(role="user", content="question", name="bob")
    c.messages.add(role="tool", content="42", tool_call_id="call-1")
    write(d, "chat", b"\x01" + c.SerializeToString())
    r = inference_pb2.CompleteRequest(max_tokens=300, n=0, top_p=2.0)
    r.token_ids.ids.extend([600, -5])
    write(d, "broken-ranges", b"\x00" + r.SerializeToString())
    write(d, "broken-bytes", b"\x00\x0a\xff\xff\xff\x0f")


def step_seeds(control_pb2):
    """Records of [flags u8][length u16 LE][a serialized Step]; flags: bit 0 = run the forward pass (advance
    num_computed_tokens), bit 1 = then fail it (Undo)."""
    d = corpus_dir("step_delta_fuzz")

    def record(step, flags=1):
        data = step.SerializeToString()
        return struct.pack("<BH", flags, len(data)) + data

    def new(step, seq_id, prompt=0, cached=(), **sampling):
        n = step.new_sequences.add(seq_id=seq_id, num_prompt_tokens=prompt)
        n.cached_tokens.extend(cached)
        for k, v in sampling.items():
            setattr(n.sampling, k, v)
        return n

    def sched(step, seq_id, tokens, blocks, sample=True):
        s = step.scheduled.add(seq_id=seq_id, sample=sample)
        s.tokens.extend(tokens)
        s.new_block_ids.extend(blocks)

    # A prompt, then decode steps, then finished.
    s1 = control_pb2.Step(step_id=1)
    new(s1, 1, prompt=20, temperature=0.5, top_p=0.9)
    sched(s1, 1, list(range(20)), [0, 1])
    s2 = control_pb2.Step(step_id=2)
    sched(s2, 1, [21], [])
    s3 = control_pb2.Step(step_id=3)
    new(s3, 2, prompt=3, cached=[5, 6], logprobs=True, top_logprobs=2)
    sched(s3, 1, [22], [])
    sched(s3, 2, [7], [2])
    s3.copies.add(src=0, dst=3)
    s4 = control_pb2.Step(step_id=4, finished=[1])
    sched(s4, 2, [8], [])
    write(d, "lifecycle", record(s1) + record(s2) + record(s3) + record(s4))
    write(d, "forward-fails", record(s1) + record(s2, flags=3) + record(s2))
    # Chunked prefill up to the context, with prompt logprobs.
    chunks = []
    s = control_pb2.Step(step_id=1)
    n = new(s, 9, prompt=256, prompt_logprobs=True, logprobs=True)
    n.prompt_tokens.extend([i % 500 for i in range(256)])
    sched(s, 9, [1] * 128, list(range(8)), sample=False)
    chunks.append(record(s))
    s = control_pb2.Step(step_id=2)
    sched(s, 9, [2] * 128, list(range(8, 16)))
    chunks.append(record(s))
    write(d, "chunked-prefill", b"".join(chunks))
    # Several sequences in one step.
    s = control_pb2.Step(step_id=1)
    for i in range(4):
        new(s, 100 + i, prompt=2)
        sched(s, 100 + i, [i, i + 1], [10 + i])
    write(d, "batch", record(s))
    # Broken ones: each must be refused with the table left as it was.
    bad = control_pb2.Step(step_id=7)
    sched(bad, 1, [512], [0])
    write(d, "broken-token", record(s1) + record(bad))
    bad = control_pb2.Step(step_id=7)
    sched(bad, 1, [3], [64])
    write(d, "broken-block", record(s1) + record(bad))
    bad = control_pb2.Step(step_id=7)
    sched(bad, 1, [3] * 240, [2] * 15)
    write(d, "broken-context", record(s1) + record(bad))
    bad = control_pb2.Step(step_id=7, finished=[1, 1])
    write(d, "broken-finished-twice", record(s1) + record(bad))
    bad = control_pb2.Step(step_id=7)
    new(bad, 5, prompt=1)
    sched(bad, 5, [1] * 20, [4])
    write(d, "broken-short-table", record(bad))
    bad = control_pb2.Step(step_id=7)
    bad.copies.add(src=2, dst=2)
    write(d, "broken-copy", record(bad))
    write(d, "broken-bytes", struct.pack("<BH", 1, 4) + b"\xff\xff\xff\xff")


def gguf_seeds():
    import gguf
    d = corpus_dir("gguf_reader_fuzz")
    tmp = tempfile.mkdtemp(prefix="tessera-fuzz-gguf-")

    def make(name, fill):
        path = os.path.join(tmp, name + ".gguf")
        w = gguf.GGUFWriter(path, "llama")
        fill(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(path, "rb") as f:
            return f.read()

    def metadata(w):
        w.add_uint8("t.u8", 7)
        w.add_int8("t.i8", -7)
        w.add_uint16("t.u16", 700)
        w.add_int16("t.i16", -700)
        w.add_uint32("t.u32", 70000)
        w.add_int32("t.i32", -70000)
        w.add_float32("t.f32", 0.5)
        w.add_uint64("t.u64", 2**63 + 5)
        w.add_int64("t.i64", -(2**40))
        w.add_float64("t.f64", 1.25)
        w.add_bool("t.bool", True)
        w.add_string("t.str", "hello")
        w.add_array("t.arr_i32", [1, 2, 3])
        w.add_array("t.arr_str", ["a", "bc", ""])
        w.add_array("t.arr_f32", [0.5, 1.5])
        w.add_array("t.arr_arr", [[1, 2], [3]])
        w.add_uint32("general.alignment", 32)

    def tensors(w):
        w.add_tensor("f32", np.arange(8, dtype=np.float32).reshape(2, 4))
        w.add_tensor("f16", np.ones((3, 2), dtype=np.float16))
        raw_q8 = np.zeros((1, 34), dtype=np.uint8)  # one Q8_0 block: f16 scale + 32 int8
        raw_q8[0, 1] = 0x3C
        raw_q8[0, 2:] = np.arange(32, dtype=np.uint8)
        w.add_tensor("q8_0", raw_q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor("q4_k", np.full((1, 144), 0x11, dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q4_K)

    valid = make("valid", lambda w: (metadata(w), tensors(w)))
    write(d, "valid", valid)
    write(d, "metadata-only", make("meta", metadata))
    write(d, "tensors-only", make("tensors", tensors))
    write(d, "empty", make("empty", lambda w: None))
    write(d, "broken-truncated", valid[: len(valid) // 2])
    write(d, "broken-magic", b"GGUX" + valid[4:64])
    write(d, "broken-version", valid[:4] + struct.pack("<I", 1) + valid[8:64])
    write(d, "broken-big-endian", valid[:4] + struct.pack(">I", 3) + valid[8:64])
    # A header that claims more metadata and tensors than the file holds.
    write(d, "broken-counts", b"GGUF" + struct.pack("<IQQ", 3, 1000, 1000))
    # One string key with an absurd length.
    write(d, "broken-string", b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**40) + b"key")
    # A tensor whose data runs past the end.
    info = struct.pack("<Q", 1) + b"t" + struct.pack("<IQQIQ", 2, 32, 4, 0, 0)
    write(d, "broken-tensor-past-end", b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + info)


def main():
    write_tokenizer()
    http_seeds()
    inference_pb2, control_pb2 = proto_modules()
    grpc_seeds(inference_pb2)
    step_seeds(control_pb2)
    gguf_seeds()


if __name__ == "__main__":
    main()
