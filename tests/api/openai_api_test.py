"""The OpenAI-compatible HTTP API of `tessera serve --http-port 0`, end to end through the official `openai`
client: completions and chat (unary and streamed, n > 1, prompt lists, stop strings, usage, logprobs with and
without echo, logit_bias, min_tokens, penalties, cached prompt tokens with and without prefix caching), errors and their
status codes, /health, /v1/models, /metrics, /tokenize and /detokenize, a client that disconnects mid-stream
(its KV blocks come back), a full queue (429) and a killed worker (503), and 1,000 streaming connections held open at once (raw asyncio sockets).

usage: .venv/bin/python tests/api/openai_api_test.py --tessera build/tessera --workdir DIR
"""
import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request

import openai
import prometheus_client.parser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402  (the shared `tessera serve` child process)
TOKENIZER_DIR = os.path.join(ROOT, "tests", "data", "llama-3.1-tokenizer")
READY_TIMEOUT_S = 120
ARGS = None
# Shows what reached the template: the tools and every message.
CHAT_TEMPLATE = ("{{ bos_token }}{% if tools %}Tools: {{ tools | tojson }}\n{% endif %}"
                 "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
                 "{{ m.content }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
CONNECTIONS = 1000


class Server(harness.Process):
    """`tessera serve` (or `coordinator`, which has no workers and never turns ready) with the HTTP API on a
    free port."""

    def __init__(self, model_dir, extra=(), command="serve"):
        super().__init__([ARGS.tessera, command, "--model", model_dir, "--tp", "1", "--pp", "1", "--grpc-port",
                          "0", "--http-port", "0", "--host", "127.0.0.1", *extra])
        self.http_port = self.wait_event("listening", READY_TIMEOUT_S)["http_port"]
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.ready = self.wait_event("ready", READY_TIMEOUT_S) if command == "serve" else None

    def client(self):
        # Generous: under ThreadSanitizer (scripts/test.sh --tsan) a 400-token request takes over a minute.
        return openai.OpenAI(base_url=self.base + "/v1", api_key="unused", max_retries=0, timeout=300)

    def printed(self, name):
        """The `name` events printed so far (after stop: all of them)."""
        return [e for e in self.events if e.get("event") == name]


def RunTessera(*argv):
    result = subprocess.run([ARGS.tessera, *argv], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"tessera {' '.join(argv)} exited {result.returncode}: {result.stderr}")


def Http(base, path, body=None):
    """(status, content type, body text) of a GET (body None) or POST with a JSON body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("Content-Type"), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


MODEL_DIR = None


def setUpModule():
    """The tiny random model every test serves, with CHAT_TEMPLATE."""
    global MODEL_DIR
    shutil.rmtree(ARGS.workdir, ignore_errors=True)
    os.makedirs(ARGS.workdir)
    MODEL_DIR = os.path.join(ARGS.workdir, "tiny")
    RunTessera("make-model", "--preset", "tiny", "--tokenizer", TOKENIZER_DIR, "--out", MODEL_DIR, "--seed", "3")
    config_path = os.path.join(MODEL_DIR, "tokenizer_config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["chat_template"] = CHAT_TEMPLATE
    with open(config_path, "w") as f:
        json.dump(config, f)


class OpenAiApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model_dir = MODEL_DIR
        with open(os.path.join(cls.model_dir, "config.json")) as f:
            cls.context = json.load(f)["max_position_embeddings"]
        # Room for the 1,000 connections of one test (client and server sockets).
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        cls.server = Server(cls.model_dir,
                            ["--max-queued-requests", str(CONNECTIONS + 64)])
        cls.client = cls.server.client()
        cls.model = cls.server.ready["model"]

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop() if hasattr(cls, "server") else 0  # raises if it did not exit in time
        if code != 0:
            raise AssertionError("tessera serve exited %d:\n%s" % (code, "".join(cls.server.stderr)))

    def Complete(self, **fields):
        fields.setdefault("model", self.model)
        fields.setdefault("prompt", "The capital of France is")
        fields.setdefault("max_tokens", 8)
        fields.setdefault("temperature", 0.0)
        return self.client.completions.create(**fields)

    def Chat(self, **fields):
        fields.setdefault("model", self.model)
        fields.setdefault("messages", MESSAGES)
        fields.setdefault("max_tokens", 8)
        fields.setdefault("temperature", 0.0)
        return self.client.chat.completions.create(**fields)

    def Tokenize(self, **body):
        status, _, text = Http(self.server.base, "/tokenize", body)
        self.assertEqual(status, 200, text)
        return json.loads(text)

    # --- health, models, metrics, tokenize ---

    def test_health_is_ok_once_ready(self):
        self.assertIn("http_port", self.server.ready)
        status, _, _ = Http(self.server.base, "/health")
        self.assertEqual(status, 200)

    def test_models_lists_the_served_model(self):
        models = self.client.models.list()
        self.assertEqual([m.id for m in models.data], [self.model])
        self.assertEqual(models.data[0].object, "model")

    def test_metrics_is_prometheus_text_that_counts_the_served_tokens(self):
        self.client.completions.create(model=self.model, prompt="Count me", max_tokens=3, temperature=0)
        status, content_type, text = Http(self.server.base, "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(content_type.startswith("text/plain; version=0.0.4"), content_type)
        families = {f.name: f for f in prometheus_client.parser.text_string_to_metric_families(text)}
        for name in ("tessera:num_requests_running", "tessera:num_requests_waiting", "tessera:kv_cache_usage_perc",
                     "tessera:prompt_tokens", "tessera:generation_tokens", "tessera:request_success",
                     "tessera:time_to_first_token_seconds", "tessera:inter_token_latency_seconds",
                     "tessera:e2e_request_latency_seconds", "tessera:request_queue_time_seconds",
                     "tessera:request_prefill_time_seconds", "tessera:request_decode_time_seconds",
                     "tessera:iteration_tokens_total", "tessera:worker_step_seconds",
                     "tessera:control_plane_seconds"):
            self.assertIn(name, families, sorted(families))
        value = {s.name: s.value for s in families["tessera:generation_tokens"].samples}
        self.assertGreaterEqual(value["tessera:generation_tokens_total"], 3)
        ttft = {s.name: s.value for s in families["tessera:time_to_first_token_seconds"].samples}
        self.assertGreaterEqual(ttft["tessera:time_to_first_token_seconds_count"], 1)

    def test_tokenize_and_detokenize_round_trip(self):
        tokens = self.Tokenize(model=self.model, prompt="Hello world")
        self.assertEqual(tokens["count"], len(tokens["tokens"]))
        self.assertEqual(tokens["max_model_len"], self.context)
        status, _, text = Http(self.server.base, "/detokenize", {"model": self.model, "tokens": tokens["tokens"]})
        self.assertEqual(status, 200, text)
        self.assertEqual(json.loads(text)["prompt"], "<|begin_of_text|>Hello world")
        status, _, text = Http(self.server.base, "/detokenize", {"tokens": [1, 10**7]})
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(text)["error"]["param"], "tokens")

    def test_unknown_routes_are_404(self):
        status, _, text = Http(self.server.base, "/v1/nothing")
        self.assertEqual(status, 404)
        self.assertIn("error", json.loads(text))

    # --- completions ---

    def test_completion_text_usage_and_length(self):
        result = self.Complete(max_tokens=5, extra_body={"ignore_eos": True})
        prompt_tokens = self.Tokenize(prompt="The capital of France is")["count"]
        self.assertEqual(result.object, "text_completion")
        self.assertEqual(result.model, self.model)
        self.assertEqual(len(result.choices), 1)
        self.assertEqual(result.choices[0].finish_reason, "length")
        self.assertEqual(result.usage.prompt_tokens, prompt_tokens)
        self.assertEqual(result.usage.completion_tokens, 5)
        self.assertEqual(result.usage.total_tokens, prompt_tokens + 5)

    def test_streamed_completion_equals_unary(self):
        unary = self.Complete(max_tokens=12, extra_body={"ignore_eos": True})
        chunks = list(self.Complete(max_tokens=12, stream=True, stream_options={"include_usage": True},
                                    extra_body={"ignore_eos": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        self.assertEqual(text, unary.choices[0].text)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishes, ["length"])
        self.assertIsNone(chunks[0].usage)
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 12)
        self.assertEqual(chunks[-1].usage.prompt_tokens, unary.usage.prompt_tokens)

    def test_n_choices_and_prompt_lists_are_indexed_prompt_major(self):
        single = self.Complete(prompt="Paris is", n=2)
        self.assertEqual([c.index for c in single.choices], [0, 1])
        self.assertEqual(single.choices[0].text, single.choices[1].text)  # greedy
        both = self.Complete(prompt=["Paris is", "Berlin is"], n=2)
        self.assertEqual([c.index for c in both.choices], [0, 1, 2, 3])
        self.assertEqual(both.choices[0].text, single.choices[0].text)
        other = self.Complete(prompt="Berlin is")
        self.assertEqual(both.choices[2].text, other.choices[0].text)
        self.assertEqual(both.usage.prompt_tokens, single.usage.prompt_tokens + other.usage.prompt_tokens)
        sampled = self.Complete(n=3, temperature=1.0, seed=7, max_tokens=6, stream=True)
        indices = {c.choices[0].index for c in sampled if c.choices}
        self.assertEqual(indices, {0, 1, 2})

    def test_token_id_prompts(self):
        ids = self.Tokenize(prompt="The capital of France is")["tokens"]
        by_ids = self.Complete(prompt=ids)
        by_text = self.Complete()
        self.assertEqual(by_ids.choices[0].text, by_text.choices[0].text)
        lists = self.Complete(prompt=[ids, ids])
        self.assertEqual(len(lists.choices), 2)

    def test_stop_string_cuts_the_text(self):
        full = self.Complete(max_tokens=24, extra_body={"ignore_eos": True}).choices[0].text
        self.assertGreater(len(full), 8, full)
        stop = full[4:7]
        expected = full[:full.find(stop)]
        for stream in (False, True):
            if stream:
                chunks = list(self.Complete(max_tokens=24, stop=[stop], stream=True))
                text = "".join(c.choices[0].text for c in chunks)
                finish = chunks[-1].choices[0].finish_reason
            else:
                result = self.Complete(max_tokens=24, stop=stop).choices[0]
                text, finish = result.text, result.finish_reason
            self.assertEqual(text, expected)
            self.assertEqual(finish, "stop")

    # --- chat ---

    def test_chat_unary_and_stream_agree(self):
        unary = self.Chat(max_tokens=10)
        self.assertEqual(unary.object, "chat.completion")
        self.assertEqual(unary.choices[0].message.role, "assistant")
        prompt_tokens = self.Tokenize(messages=MESSAGES)["count"]
        self.assertEqual(unary.usage.prompt_tokens, prompt_tokens)
        chunks = list(self.Chat(max_tokens=10, stream=True, stream_options={"include_usage": True}))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertEqual(chunks[0].object, "chat.completion.chunk")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, unary.choices[0].message.content)
        self.assertEqual(chunks[-1].usage.completion_tokens, unary.usage.completion_tokens)
        self.assertEqual([c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason],
                         [unary.choices[0].finish_reason])

    def test_chat_passes_tools_to_the_template(self):
        plain = self.Tokenize(messages=MESSAGES)["count"]
        result = self.Chat(tools=TOOLS, max_completion_tokens=3)
        self.assertGreater(result.usage.prompt_tokens, plain + 10)  # the tools' JSON is in the prompt
        self.assertLessEqual(result.usage.completion_tokens, 3)

    def test_chat_n_choices(self):
        result = self.Chat(n=3, temperature=0.8, seed=1, max_tokens=4)
        self.assertEqual([c.index for c in result.choices], [0, 1, 2])

    # --- errors ---

    def assertBadRequest(self, param, call, **fields):
        with self.assertRaises(openai.BadRequestError) as caught:
            call(**fields)
        self.assertEqual(caught.exception.status_code, 400)
        self.assertEqual(caught.exception.body.get("param") if isinstance(caught.exception.body, dict) else None,
                         param, caught.exception.body)

    def test_bad_fields_are_400_naming_the_param(self):
        self.assertBadRequest("max_tokens", self.Complete, max_tokens=0)
        self.assertBadRequest("max_tokens", self.Complete, max_tokens=self.context * 2)
        self.assertBadRequest("temperature", self.Complete, temperature=-1.0)
        self.assertBadRequest("top_p", self.Complete, top_p=2.0)
        self.assertBadRequest("n", self.Complete, n=0)
        self.assertBadRequest("prompt", self.Complete, prompt="")
        self.assertBadRequest("prompt", self.Complete, prompt=[1, 10**7])
        self.assertBadRequest("temperature", self.Complete, extra_body={"temperature": "hot"})
        self.assertBadRequest("logprobs", self.Complete, logprobs=21)
        self.assertBadRequest("logprobs", self.Complete, logprobs=-1)
        self.assertBadRequest("top_logprobs", self.Chat, logprobs=True, top_logprobs=21)
        self.assertBadRequest("top_logprobs", self.Chat, top_logprobs=2)  # without logprobs
        self.assertBadRequest("presence_penalty", self.Complete, presence_penalty=2.5)
        self.assertBadRequest("frequency_penalty", self.Chat, frequency_penalty=-3)
        self.assertBadRequest("repetition_penalty", self.Complete, extra_body={"repetition_penalty": 0})
        self.assertBadRequest("min_p", self.Complete, extra_body={"min_p": 1.5})
        self.assertBadRequest("logit_bias", self.Complete, logit_bias={"128256": 1})
        self.assertBadRequest("logit_bias", self.Chat, logit_bias={"5": 101})
        self.assertBadRequest("logit_bias", self.Complete, logit_bias={"five": 1})
        self.assertBadRequest("min_tokens", self.Complete, extra_body={"min_tokens": -1})
        self.assertBadRequest("min_tokens", self.Complete, max_tokens=4, extra_body={"min_tokens": 5})
        self.assertBadRequest("priority", self.Complete, extra_body={"priority": "high"})
        self.assertBadRequest("messages", self.Chat, messages=[])
        self.assertBadRequest("max_completion_tokens", self.Chat, max_completion_tokens=0)
        self.assertBadRequest("stream_options", self.Complete, stream_options={"include_usage": True})

    def test_unknown_model_is_404(self):
        for call in (self.Complete, self.Chat):
            with self.assertRaises(openai.NotFoundError) as caught:
                call(model="no-such-model")
            self.assertEqual(caught.exception.body.get("code"), "model_not_found")

    def test_unknown_fields_are_ignored(self):
        result = self.Complete(user="someone", extra_body={"some_future_field": {"a": 1}})
        self.assertEqual(len(result.choices), 1)

    # --- logprobs, sampling parameters, cached tokens ---

    def test_completion_logprobs_stream_equals_unary_and_greedy_tokens_are_the_top_one(self):
        fields = dict(max_tokens=10, logprobs=3, extra_body={"ignore_eos": True})
        unary = self.Complete(**fields)
        lp = unary.choices[0].logprobs
        self.assertEqual(len(lp.tokens), unary.usage.completion_tokens)
        self.assertEqual(len(lp.token_logprobs), len(lp.tokens))
        self.assertEqual("".join(lp.tokens), unary.choices[0].text)  # plain tokens, no stop: the text
        offset = 0
        for token, logprob, top, text_offset in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset):
            self.assertEqual(text_offset, offset)
            offset += len(token)
            self.assertLessEqual(logprob, 0.0)
            # Greedy: the sampled token is the most likely one, so it is among the 3 and has the top logprob.
            self.assertLessEqual(len(top), 3)
            self.assertEqual(top[token], logprob)
            self.assertEqual(max(top.values()), logprob)
        chunks = list(self.Complete(stream=True, **fields))
        streamed = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for chunk in chunks:
            for name in streamed:
                streamed[name] += getattr(chunk.choices[0].logprobs, name) if chunk.choices[0].logprobs else []
        self.assertEqual(streamed, {name: getattr(lp, name) for name in streamed})
        self.assertIsNone(self.Complete().choices[0].logprobs)  # not asked: null

    def test_chat_logprobs_stream_equals_unary_with_sorted_top_logprobs(self):
        fields = dict(max_tokens=10, logprobs=True, top_logprobs=5, extra_body={"ignore_eos": True})
        unary = self.Chat(**fields)
        content = unary.choices[0].logprobs.content
        self.assertEqual(len(content), unary.usage.completion_tokens)
        self.assertEqual(b"".join(bytes(c.bytes) for c in content).decode("utf-8", errors="replace"),
                         unary.choices[0].message.content)
        for entry in content:
            self.assertEqual(len(entry.top_logprobs), 5)
            values = [t.logprob for t in entry.top_logprobs]
            self.assertEqual(values, sorted(values, reverse=True))
            self.assertEqual(entry.top_logprobs[0].token, entry.token)  # greedy: rank 1
            self.assertEqual(entry.top_logprobs[0].logprob, entry.logprob)
        streamed = [c for chunk in self.Chat(stream=True, **fields)
                    if chunk.choices and chunk.choices[0].logprobs
                    for c in chunk.choices[0].logprobs.content]
        self.assertEqual([c.model_dump() for c in streamed], [c.model_dump() for c in content])
        self.assertIsNone(self.Chat(logprobs=False).choices[0].logprobs)

    def test_logit_bias_of_100_makes_greedy_output_that_token(self):
        status, _, text = Http(self.server.base, "/detokenize", {"tokens": [1234, 1234, 1234]})
        self.assertEqual(status, 200, text)
        result = self.Complete(max_tokens=3, logit_bias={"1234": 100}, extra_body={"ignore_eos": True})
        self.assertEqual(result.choices[0].text, json.loads(text)["prompt"])
        chat = self.Chat(max_tokens=3, logit_bias={"1234": 100}, extra_body={"ignore_eos": True})
        self.assertEqual(chat.choices[0].message.content, json.loads(text)["prompt"])

    def test_min_tokens_holds_back_eos(self):
        eos = {"128009": 100}  # <|eot_id|>, an eos id of the model, made the greedy choice
        plain = self.Complete(max_tokens=12, logit_bias=eos)
        self.assertEqual((plain.usage.completion_tokens, plain.choices[0].finish_reason), (1, "stop"))
        held = self.Complete(max_tokens=12, logit_bias=eos, extra_body={"min_tokens": 5})
        self.assertGreaterEqual(held.usage.completion_tokens, 5)
        # eos is banned for 5 tokens, then sampled (and counted) as the 6th.
        self.assertEqual((held.usage.completion_tokens, held.choices[0].finish_reason), (6, "stop"))
        chat = self.Chat(max_tokens=12, logit_bias=eos, extra_body={"min_tokens": 3})
        self.assertEqual(chat.usage.completion_tokens, 4)

    def test_penalties_change_greedy_output_and_min_p_priority_are_accepted(self):
        fields = dict(max_tokens=16, extra_body={"ignore_eos": True})
        base = self.Complete(**fields).choices[0].text
        for name, extra in (("presence_penalty", {"presence_penalty": 2.0}),
                            ("frequency_penalty", {"frequency_penalty": 2.0}),
                            ("repetition_penalty", {"extra_body": {"ignore_eos": True, "repetition_penalty": 2.0}})):
            with self.subTest(name):
                merged = dict(fields, **extra)
                self.assertNotEqual(self.Complete(**merged).choices[0].text, base)
        # min_p keeps the most likely token, so greedy output stays; priority only orders the queue.
        same = self.Complete(max_tokens=16, extra_body={"ignore_eos": True, "min_p": 0.5, "priority": -1})
        self.assertEqual(same.choices[0].text, base)
        chat = self.Chat(presence_penalty=1.0, frequency_penalty=1.0, extra_body={"repetition_penalty": 1.3})
        self.assertEqual(len(chat.choices), 1)

    def test_cached_tokens_report_the_prefix_cache_hits(self):
        prompt = list(range(2000, 2100))  # 100 tokens no other test sends
        first = self.Complete(prompt=prompt, max_tokens=6)
        self.assertEqual(first.usage.prompt_tokens_details.cached_tokens, 0)
        second = self.Complete(prompt=prompt, max_tokens=6)
        # Six full blocks of 16 come from the cache; the last token is always computed.
        self.assertEqual(second.usage.prompt_tokens_details.cached_tokens, 96)
        self.assertEqual(second.choices[0].text, first.choices[0].text)
        chunks = list(self.Complete(prompt=prompt, max_tokens=6, stream=True, stream_options={"include_usage": True}))
        self.assertEqual(chunks[-1].usage.prompt_tokens_details.cached_tokens, 96)
        self.assertEqual("".join(c.choices[0].text for c in chunks if c.choices), first.choices[0].text)

    # --- connections ---

    def test_a_thousand_streaming_connections_at_once(self):
        body = json.dumps({"model": self.model, "messages": MESSAGES, "max_tokens": 64, "stream": True,
                           "temperature": 0.0}).encode()
        request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

        async def open_stream():
            reader, writer = await asyncio.open_connection("127.0.0.1", self.server.http_port)
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            self.assertIn(b" 200 ", head.split(b"\r\n")[0])
            self.assertIn(b"text/event-stream", head)
            data = b""
            while b"\n\n" not in data:  # the first SSE event (chunked: size lines around it)
                more = await reader.read(4096)
                self.assertTrue(more, "the server closed a stream before its first event")
                data += more
            event = data[data.find(b"data: "):]
            first = json.loads(event[6:event.find(b"\n\n")])
            self.assertEqual(first["choices"][0]["delta"]["role"], "assistant")
            return writer

        async def main():
            writers = await asyncio.wait_for(asyncio.gather(*(open_stream() for _ in range(CONNECTIONS))), 120)
            # Every connection has its first event and is still open here.
            self.assertEqual(len(writers), CONNECTIONS)
            for w in writers:
                w.close()
            await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)

        asyncio.run(main())
        # The abandoned requests were cancelled: a new one is answered.
        self.assertEqual(len(self.Complete(max_tokens=2).choices), 1)


class PromptLogprobsTest(unittest.TestCase):
    """echo + logprobs on /v1/completions: the prompt's logprobs come first, the first one null. Its own server:
    prompt logprobs are a separate path through the workers."""

    @classmethod
    def setUpClass(cls):
        cls.server = Server(MODEL_DIR)
        cls.client = cls.server.client()
        cls.model = cls.server.ready["model"]

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        if code != 0:
            raise AssertionError("tessera serve exited %d:\n%s" % (code, "".join(cls.server.stderr)))

    def test_echo_with_logprobs_returns_the_prompts_logprobs_first_null(self):
        fields = dict(model=self.model, prompt="The capital of France is", max_tokens=5, temperature=0.0,
                      logprobs=2, echo=True, extra_body={"ignore_eos": True})
        unary = self.client.completions.create(**fields)
        lp = unary.choices[0].logprobs
        prompt_tokens = unary.usage.prompt_tokens
        self.assertEqual(len(lp.tokens), prompt_tokens + 5)
        self.assertEqual(lp.tokens[0], "<|begin_of_text|>")
        self.assertIsNone(lp.token_logprobs[0])
        self.assertIsNone(lp.top_logprobs[0])
        for logprob, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
            self.assertLessEqual(logprob, 0.0)
            self.assertIn(logprob, top.values())  # the prompt token's own logprob is in its dict
            self.assertLessEqual(len(top), 3)
        self.assertTrue(unary.choices[0].text.startswith("The capital of France is"))
        chunks = list(self.client.completions.create(stream=True, **fields))
        self.assertEqual(chunks[0].choices[0].text, "The capital of France is")
        self.assertEqual(len(chunks[0].choices[0].logprobs.tokens), prompt_tokens)
        tokens = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
        logprobs = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.token_logprobs]
        self.assertEqual(tokens, lp.tokens)
        self.assertEqual(logprobs, lp.token_logprobs)


class NoPrefixCachingTest(unittest.TestCase):
    def test_cached_tokens_are_zero_without_prefix_caching(self):
        server = Server(MODEL_DIR, ["--no-enable-prefix-caching"])
        try:
            client = server.client()
            prompt = list(range(2000, 2100))
            for _ in range(2):
                result = client.completions.create(model=server.ready["model"], prompt=prompt, max_tokens=4,
                                                   temperature=0.0)
                self.assertEqual(result.usage.prompt_tokens_details.cached_tokens, 0)
        finally:
            self.assertEqual(server.stop(), 0, "".join(server.stderr))


class NotReadyTest(unittest.TestCase):
    def test_a_coordinator_without_workers_answers_503(self):
        server = Server(MODEL_DIR, command="coordinator")
        try:
            status, _, text = Http(server.base, "/health")
            self.assertEqual(status, 503, text)
            with self.assertRaises(openai.InternalServerError) as caught:
                server.client().completions.create(model="tiny", prompt="Hi", max_tokens=2)
            self.assertEqual(caught.exception.status_code, 503)
        finally:
            self.assertEqual(server.stop(), 0, "".join(server.stderr))


class OverloadAndFailureTest(unittest.TestCase):
    """A full queue is 429 and a dead worker 503, each with OpenAI's error body, through the `openai` client."""

    def Metric(self, server, name):
        _, _, text = Http(server.base, "/metrics")
        for family in prometheus_client.parser.text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return sample.value
        raise AssertionError("no %s in /metrics" % name)

    def test_a_full_queue_is_429_and_the_running_request_goes_on(self):
        server = Server(MODEL_DIR, ["--max-num-seqs", "1", "--max-queued-requests", "1"])
        try:
            client = server.client()
            model = server.ready["model"]
            long = dict(model=model, prompt="Hi", max_tokens=400, temperature=0.0, extra_body={"ignore_eos": True})
            running = client.completions.create(stream=True, **long)
            next(iter(running))  # the first request holds the only sequence slot
            waiting = []
            thread = threading.Thread(target=lambda: waiting.append(client.completions.create(**long)))
            thread.start()
            deadline = time.time() + 30
            while self.Metric(server, "tessera:num_requests_waiting") < 1:
                self.assertLess(time.time(), deadline, "the second request never queued")
                time.sleep(0.05)
            with self.assertRaises(openai.RateLimitError) as caught:
                client.completions.create(model=model, prompt="Hi", max_tokens=2)
            self.assertEqual(caught.exception.status_code, 429)
            self.assertIn("queue is full", caught.exception.body["message"])
            self.assertEqual(caught.exception.body["type"], "rate_limit_error")
            # Nobody else lost anything: the running stream and the queued request both end normally.
            text = "".join(c.choices[0].text for c in running if c.choices)
            self.assertTrue(text)
            thread.join(120)
            self.assertEqual(waiting[0].choices[0].finish_reason, "length")
            self.assertEqual(waiting[0].usage.completion_tokens, 400)
        finally:
            self.assertEqual(server.stop(), 0, "".join(server.stderr))

    def test_a_killed_worker_ends_streams_with_an_error_event_then_answers_503(self):
        server = Server(MODEL_DIR, ["--heartbeat-timeout", "2s", "--replacement-timeout", "0s"])  # fail-stop
        try:
            client = server.client()
            model = server.ready["model"]
            [worker] = server.children()
            stream = client.completions.create(model=model, prompt="Hi", max_tokens=5000, temperature=0.0,
                                               stream=True, extra_body={"ignore_eos": True})
            # The stream has begun (200) when the worker dies: the failure arrives as an error event.
            with self.assertRaises(openai.APIError) as caught:
                for i, _ in enumerate(stream):
                    if i == 2:
                        os.kill(worker, signal.SIGKILL)
            self.assertIn("rank", str(caught.exception))
            status, _, text = Http(server.base, "/health")
            self.assertEqual(status, 503, text)
            with self.assertRaises(openai.InternalServerError) as again:
                client.completions.create(model=model, prompt="Hi", max_tokens=2)
            self.assertEqual(again.exception.status_code, 503)
            self.assertEqual(again.exception.body["type"], "service_unavailable")
        finally:
            self.assertEqual(server.stop(), 0, "".join(server.stderr))


class DisconnectTest(unittest.TestCase):
    """A client that closes its stream cancels its request: its KV blocks come back."""

    def test_a_client_disconnecting_mid_stream_frees_its_kv_blocks(self):
        model_dir = MODEL_DIR
        # 1 MiB holds 32 blocks of 16 tokens at tp=1: one request of 512 tokens takes the whole cache.
        server = Server(model_dir, ["--kv-cache-memory", "1MiB"])
        try:
            client = server.client()
            model = server.ready["model"]
            prompt = [128000, 791, 6864, 315]
            whole_cache = dict(model=model, prompt=prompt, max_tokens=512 - len(prompt), temperature=0.0,
                               extra_body={"ignore_eos": True})
            stream = client.completions.create(stream=True, **whole_cache)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    break
            stream.close()  # the connection goes away mid-stream
            # Another whole-cache request is admitted only once the first one's blocks came back.
            again = client.completions.create(**whole_cache)
            self.assertEqual(again.choices[0].finish_reason, "length")
            self.assertEqual(again.usage.completion_tokens, 512 - len(prompt))
        finally:
            self.assertEqual(server.stop(), 0, "".join(server.stderr))
        # The second request took a step per token; had the first run to its end (not cancelled), the engine
        # would have taken as many again before admitting the second.
        stats = server.printed("stats")
        self.assertEqual(len(stats), 1)
        self.assertLess(stats[0]["steps"], (512 - len(prompt)) * 3 // 2, stats[0])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--workdir", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
