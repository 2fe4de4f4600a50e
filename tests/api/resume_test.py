"""Resumable streams end to end (`tessera serve --resume-window`): a client drops a resumable stream at a random
token and reattaches with its request id and the number of tokens it received, over gRPC (ResumeStream,
ResumeChatStream; the stream is dropped by closing its channel) and HTTP (the stream made by the official `openai`
client with extra_body={"resumable": true}, resumed by GET /v1/completions/{id}/stream?tokens_received=N with
http.client); the concatenated tokens and text equal the unary greedy answer, at cut points 0, random ones and
the last token. Also: after the window the id is NOT_FOUND / 404; a non-resumable stream dropped is still
cancelled while a resumable one runs on; a second resume takes the stream over; malformed resumes and resumable
requests that cannot be (n > 1, echo, unary, resumption off) are refused naming the field.

usage: .venv/bin/python tests/api/resume_test.py --tessera build/tessera --workdir DIR
"""
import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import time
import unittest

import grpc
import openai

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402  (the shared `tessera serve` child process and stubs)
TOKENIZER_DIR = os.path.join(ROOT, "tests", "data", "llama-3.1-tokenizer")
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
                 "{{ m.content }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
WINDOW_S = 3
ARGS = None
MODEL_DIR = None
pb = None  # tessera.v1.inference_pb2
pb_grpc = None


def setUpModule():
    global MODEL_DIR, pb, pb_grpc
    shutil.rmtree(ARGS.workdir, ignore_errors=True)
    os.makedirs(ARGS.workdir)
    MODEL_DIR = os.path.join(ARGS.workdir, "tiny")
    subprocess.run([ARGS.tessera, "make-model", "--preset", "tiny", "--tokenizer", TOKENIZER_DIR, "--out", MODEL_DIR,
                    "--seed", "3"], check=True, capture_output=True, timeout=120)
    config_path = os.path.join(MODEL_DIR, "tokenizer_config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["chat_template"] = CHAT_TEMPLATE
    with open(config_path, "w") as f:
        json.dump(config, f)
    pb, pb_grpc, _, _ = harness.stubs()


def Tokens(events):
    return [t for e in events if e.HasField("delta") for t in e.delta.token_ids]


def Text(events, chat=False):
    return "".join(e.delta.content if chat else e.delta.text for e in events if e.HasField("delta"))


def ReadSse(response):
    """The JSON chunks of an SSE body up to `data: [DONE]` (an error event is returned as a chunk)."""
    chunks = []
    for raw in response:
        line = raw.decode().rstrip("\r\n")
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            return chunks
        chunks.append(json.loads(data))
    raise AssertionError("the stream ended without data: [DONE]")


class ResumeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = harness.Server(ARGS.tessera, MODEL_DIR, extra=[
            "--http-port", "0", "--resume-window", f"{WINDOW_S}s", "--kv-cache-memory", "1GiB"]).start()
        cls.channel = grpc.insecure_channel(cls.server.address)
        grpc.channel_ready_future(cls.channel).result(timeout=30)
        cls.inference = pb_grpc.InferenceServiceStub(cls.channel)
        cls.http_port = cls.server.ready["http_port"]
        cls.client = openai.OpenAI(base_url=f"http://127.0.0.1:{cls.http_port}/v1", api_key="unused", max_retries=0,
                                   timeout=120)
        cls.model = cls.server.ready["model"]
        cls.rng = random.Random()
        seed = cls.rng.randrange(1 << 30)
        print(f"resume_test: random cut points from seed {seed}", file=sys.stderr)
        cls.rng.seed(seed)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        code = cls.server.stop()
        if code != 0:
            raise AssertionError("tessera serve exited %d:\n%s" % (code, "".join(cls.server.stderr)))

    def Request(self, **fields):
        fields.setdefault("text", "The capital of France is")
        fields.setdefault("max_tokens", 24)
        fields.setdefault("temperature", 0.0)
        fields.setdefault("ignore_eos", True)
        return pb.CompleteRequest(**fields)

    def assertRpcError(self, call, code, *parts):
        with self.assertRaises(grpc.RpcError) as caught:
            call()
        self.assertEqual(caught.exception.code(), code, caught.exception.details())
        for part in parts:
            self.assertIn(part, caught.exception.details())

    def DropAt(self, method, request, cut):
        """Streams `request` on a channel of its own, reads until it has at least `cut` tokens (for cut = all of
        them: until the choice's end), then closes the channel. Returns (events received, tokens received)."""
        channel = grpc.insecure_channel(self.server.address)
        stub = pb_grpc.InferenceServiceStub(channel)
        events = []
        stream = getattr(stub, method)(request, timeout=120)
        try:
            for event in stream:
                events.append(event)
                if event.HasField("end") or (cut > 0 and len(Tokens(events)) >= cut):
                    break
                if cut == 0 and event.HasField("header"):
                    break
        finally:
            channel.close()  # the connection goes away mid-stream
        return events, len(Tokens(events))

    # --- gRPC ---

    def test_grpc_resume_at_random_cuts_equals_the_unary_answer(self):
        unary = self.inference.Complete(self.Request(), timeout=60).choices[0]
        n = len(unary.token_ids)
        self.assertEqual(n, 24)
        cuts = [0, 1, self.rng.randrange(2, n - 1), self.rng.randrange(2, n - 1), n - 1, n]
        for i, cut in enumerate(cuts):
            with self.subTest(cut=cut):
                request_id = f"grpc-resume-{i}-{cut}"
                before, received = self.DropAt("CompleteStream", self.Request(resumable=True, request_id=request_id),
                                               cut)
                self.assertEqual(before[0].header.request_id, request_id)
                if i % 2:
                    time.sleep(0.5)  # sometimes the request has ended meanwhile
                after = list(self.inference.ResumeStream(
                    pb.ResumeRequest(request_id=request_id, tokens_received=received), timeout=60))
                kinds = [e.WhichOneof("event") for e in after]
                self.assertEqual(kinds[0], "header")
                self.assertEqual(after[0].header.request_id, request_id)
                self.assertEqual(kinds[-2:], ["end", "trailer"])
                self.assertEqual(Tokens(before) + Tokens(after), list(unary.token_ids))
                self.assertEqual(Text(before) + Text(after), unary.text)
                self.assertEqual(after[-2].end.completion_tokens, n)
                self.assertEqual(after[-1].trailer.usage.completion_tokens, n)

    def test_grpc_chat_resume_equals_the_unary_answer(self):
        messages = [pb.ChatMessage(role="user", content="Capital of France?")]
        chat = dict(messages=messages, max_tokens=20, temperature=0.0, ignore_eos=True)
        unary = self.inference.Chat(pb.ChatRequest(**chat), timeout=60).choices[0]
        cut = self.rng.randrange(1, 20)
        before, received = self.DropAt("ChatStream", pb.ChatRequest(resumable=True, request_id="chat-resume", **chat),
                                       cut)
        after = list(self.inference.ResumeChatStream(
            pb.ResumeRequest(request_id="chat-resume", tokens_received=received), timeout=60))
        self.assertEqual(Tokens(before) + Tokens(after), list(unary.token_ids))
        self.assertEqual(Text(before, chat=True) + Text(after, chat=True), unary.message.content)
        # The other RPC names the right one.
        self.assertRpcError(lambda: list(self.inference.ResumeStream(
            pb.ResumeRequest(request_id="chat-resume", tokens_received=0), timeout=10)),
            grpc.StatusCode.FAILED_PRECONDITION, "ResumeChatStream")

    def test_a_dropped_resumable_stream_runs_on_and_expires_after_the_window(self):
        request = self.Request(resumable=True, request_id="grpc-expire", max_tokens=20000)
        _, received = self.DropAt("CompleteStream", request, 2)
        # Still running: its id is taken.
        self.assertRpcError(lambda: self.inference.Complete(self.Request(request_id="grpc-expire", max_tokens=1),
                                                            timeout=30), grpc.StatusCode.ALREADY_EXISTS)
        # Resume a little, drop again, then wait out the window: the request is cancelled and forgotten.
        channel = grpc.insecure_channel(self.server.address)
        stream = pb_grpc.InferenceServiceStub(channel).ResumeStream(
            pb.ResumeRequest(request_id="grpc-expire", tokens_received=received), timeout=60)
        self.assertEqual(next(stream).WhichOneof("event"), "header")
        self.assertEqual(next(stream).WhichOneof("event"), "delta")
        channel.close()
        deadline = time.time() + WINDOW_S + 30
        while True:
            # A probe that does not attach (which would restart the window): OUT_OF_RANGE while the journal is kept,
            # NOT_FOUND once it expired.
            try:
                list(self.inference.ResumeStream(pb.ResumeRequest(request_id="grpc-expire", tokens_received=10**9),
                                                 timeout=10))
                self.fail("a resume past the produced tokens was answered")
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    self.assertIn("grpc-expire", e.details())
                    break
                self.assertEqual(e.code(), grpc.StatusCode.OUT_OF_RANGE, e.details())
            self.assertLess(time.time(), deadline, "grpc-expire was still resumable long after its window")
            time.sleep(0.2)
        # ... and its request was cancelled: the id is free again.
        for _ in range(100):
            try:
                self.inference.Complete(self.Request(request_id="grpc-expire", max_tokens=1), timeout=30)
                break
            except grpc.RpcError as e:
                self.assertEqual(e.code(), grpc.StatusCode.ALREADY_EXISTS, e.details())
                time.sleep(0.1)
        else:
            self.fail("request grpc-expire was still running after its window")

    def test_a_dropped_stream_that_is_not_resumable_is_still_cancelled(self):
        self.DropAt("CompleteStream", self.Request(request_id="grpc-plain", max_tokens=20000), 2)
        for _ in range(300):  # the server notices the drop and cancels: the id is free again
            try:
                self.inference.Complete(self.Request(request_id="grpc-plain", max_tokens=1), timeout=30)
                break
            except grpc.RpcError as e:
                self.assertEqual(e.code(), grpc.StatusCode.ALREADY_EXISTS, e.details())
                time.sleep(0.05)
        else:
            self.fail("request grpc-plain was still running 15 s after its client left")
        self.assertRpcError(lambda: list(self.inference.ResumeStream(
            pb.ResumeRequest(request_id="grpc-plain", tokens_received=0), timeout=10)), grpc.StatusCode.NOT_FOUND)

    def test_a_second_resume_takes_the_stream_over_and_cancel_still_cancels(self):
        request = self.Request(resumable=True, request_id="grpc-takeover", max_tokens=20000)
        first = self.inference.CompleteStream(request, timeout=120)
        self.assertEqual(next(first).WhichOneof("event"), "header")
        self.assertEqual(next(first).WhichOneof("event"), "delta")
        second = self.inference.ResumeStream(pb.ResumeRequest(request_id="grpc-takeover", tokens_received=0),
                                             timeout=120)
        self.assertEqual(next(second).WhichOneof("event"), "header")
        self.assertRpcError(lambda: list(first), grpc.StatusCode.ABORTED, "resumed by another call")
        self.inference.Cancel(pb.CancelRequest(request_id="grpc-takeover"), timeout=10)
        self.assertRpcError(lambda: list(second), grpc.StatusCode.CANCELLED)

    def test_malformed_resumes_and_requests_that_cannot_be_resumable(self):
        _, received = self.DropAt("CompleteStream", self.Request(resumable=True, request_id="grpc-bad", max_tokens=4),
                                  4)
        self.assertEqual(received, 4)
        cases = [
            (pb.ResumeRequest(request_id="no-such-stream"), grpc.StatusCode.NOT_FOUND, ["no-such-stream"]),
            (pb.ResumeRequest(request_id=""), grpc.StatusCode.INVALID_ARGUMENT, ["request_id is empty"]),
            (pb.ResumeRequest(request_id="grpc-bad", tokens_received=-1), grpc.StatusCode.INVALID_ARGUMENT,
             ["tokens_received must be >= 0, got -1"]),
            (pb.ResumeRequest(request_id="grpc-bad", tokens_received=5), grpc.StatusCode.OUT_OF_RANGE,
             ["tokens_received = 5 is more than the 4 tokens"]),
        ]
        for resume, code, parts in cases:
            with self.subTest(resume=str(resume)):
                self.assertRpcError(lambda: list(self.inference.ResumeStream(resume, timeout=10)), code, *parts)
        refused = [
            (dict(n=2), ["resumable streams need n = 1, got n = 2"]),
            (dict(echo=True), ["echo"]),
        ]
        for fields, parts in refused:
            with self.subTest(fields=fields):
                self.assertRpcError(lambda: list(self.inference.CompleteStream(self.Request(resumable=True, **fields),
                                                                               timeout=10)),
                                    grpc.StatusCode.INVALID_ARGUMENT, *parts)
        self.assertRpcError(lambda: self.inference.Complete(self.Request(resumable=True), timeout=10),
                            grpc.StatusCode.INVALID_ARGUMENT, "resumable applies to streams")
        # A kept journal's id is taken.
        self.assertRpcError(lambda: list(self.inference.CompleteStream(
            self.Request(resumable=True, request_id="grpc-bad"), timeout=10)), grpc.StatusCode.ALREADY_EXISTS,
            "grpc-bad")

    # --- HTTP ---

    def Get(self, path):
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=60)
        connection.request("GET", path)
        return connection, connection.getresponse()

    def HttpResume(self, kind, request_id, received):
        connection, response = self.Get(f"/v1/{kind}/{request_id}/stream?tokens_received={received}")
        try:
            if response.status != 200:
                self.fail(f"GET {request_id}: {response.status} {response.read()}")
            self.assertTrue(response.getheader("Content-Type").startswith("text/event-stream"))
            return ReadSse(response)
        finally:
            connection.close()

    def test_http_completion_resume_at_random_cuts_equals_the_unary_answer(self):
        fields = dict(model=self.model, prompt="The capital of France is", max_tokens=24, temperature=0.0)
        unary = self.client.completions.create(extra_body={"ignore_eos": True}, **fields).choices[0].text
        for cut in [0, self.rng.randrange(1, 24), self.rng.randrange(1, 24), 24]:
            with self.subTest(cut=cut):
                stream = self.client.completions.create(stream=True, stream_options={"include_usage": True},
                                                        extra_body={"ignore_eos": True, "resumable": True}, **fields)
                text, received, request_id = "", 0, None
                for chunk in stream:
                    request_id = chunk.id
                    if chunk.choices and received < cut:
                        choice = chunk.choices[0]
                        text += choice.text
                        received += len(choice.model_extra["token_ids"])
                    if received >= cut:
                        break
                stream.close()  # the connection goes away
                chunks = self.HttpResume("completions", request_id, received)
                self.assertEqual({c["id"] for c in chunks}, {request_id})
                self.assertEqual({c["object"] for c in chunks}, {"text_completion"})
                with_choices = [c for c in chunks if c["choices"]]
                text += "".join(c["choices"][0]["text"] for c in with_choices)
                received += sum(len(c["choices"][0]["token_ids"]) for c in with_choices)
                self.assertEqual(text, unary)
                self.assertEqual(received, 24)
                self.assertEqual([c["choices"][0]["finish_reason"] for c in with_choices
                                  if c["choices"][0]["finish_reason"]], ["length"])
                self.assertEqual(chunks[-1]["choices"], [])
                self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 24)

    def test_http_chat_resume_equals_the_unary_answer(self):
        fields = dict(model=self.model, messages=[{"role": "user", "content": "Capital of France?"}], max_tokens=20,
                      temperature=0.0)
        unary = self.client.chat.completions.create(extra_body={"ignore_eos": True}, **fields)
        cut = self.rng.randrange(1, 20)
        stream = self.client.chat.completions.create(stream=True, extra_body={"ignore_eos": True, "resumable": True},
                                                     **fields)
        text, received, request_id = "", 0, None
        for chunk in stream:
            request_id = chunk.id
            text += chunk.choices[0].delta.content or ""
            received += len((chunk.choices[0].model_extra or {}).get("token_ids") or [])
            if received >= cut:
                break
        stream.close()
        chunks = self.HttpResume("chat/completions", request_id, received)
        self.assertEqual({c["object"] for c in chunks}, {"chat.completion.chunk"})
        text += "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        self.assertEqual(text, unary.choices[0].message.content)
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")

    def test_http_errors_name_the_field(self):
        stream = self.client.completions.create(model=self.model, prompt="Hi", max_tokens=3, temperature=0.0,
                                                stream=True, extra_body={"ignore_eos": True, "resumable": True})
        request_id = next(iter(stream)).id
        stream.close()
        for path, status, param in [
                ("/v1/completions/cmpl-nope/stream?tokens_received=0", 404, None),
                (f"/v1/completions/{request_id}/stream?tokens_received=-1", 400, "tokens_received"),
                (f"/v1/completions/{request_id}/stream?tokens_received=x", 400, "tokens_received"),
                (f"/v1/completions/{request_id}/stream?tokens_received=4", 400, "tokens_received"),
                (f"/v1/chat/completions/{request_id}/stream", 400, None)]:
            with self.subTest(path=path):
                connection, response = self.Get(path)
                body = json.loads(response.read())
                connection.close()
                self.assertEqual(response.status, status, body)
                self.assertEqual(body["error"]["param"], param, body)
        for extra, param in [({}, "resumable"), ({"stream": True, "n": 2}, "n"),
                             ({"stream": True, "echo": True}, "echo"), ({"stream": True, "prompt": ["a", "b"]}, "prompt")]:
            with self.subTest(extra=extra):
                body = {"model": self.model, "prompt": "Hi", "max_tokens": 3, "resumable": True, **extra}
                connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
                connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
                response = connection.getresponse()
                answer = json.loads(response.read())
                connection.close()
                self.assertEqual(response.status, 400, answer)
                self.assertEqual(answer["error"]["param"], param, answer)


class ResumptionOffTest(unittest.TestCase):
    def test_resumable_requests_are_refused_naming_the_flag(self):
        server = harness.Server(ARGS.tessera, MODEL_DIR, extra=["--http-port", "0", "--resume-window", "0s"]).start()
        channel = grpc.insecure_channel(server.address)
        try:
            inference = pb_grpc.InferenceServiceStub(channel)
            request = pb.CompleteRequest(text="Hi", max_tokens=2, resumable=True)
            with self.assertRaises(grpc.RpcError) as caught:
                list(inference.CompleteStream(request, timeout=30))
            self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("--resume-window", caught.exception.details())
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.ready['http_port']}/v1", api_key="unused",
                                   max_retries=0)
            with self.assertRaises(openai.BadRequestError) as refused:
                client.completions.create(model=server.ready["model"], prompt="Hi", max_tokens=2, stream=True,
                                          extra_body={"resumable": True})
            self.assertIn("--resume-window", str(refused.exception))
        finally:
            channel.close()
            self.assertEqual(server.stop(), 0, "".join(server.stderr))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tessera", required=True, help="the tessera executable")
    parser.add_argument("--workdir", required=True, help="scratch directory (emptied first)")
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
