"""The public gRPC API of `tessera serve`, end to end through grpcio: Complete and CompleteStream, Chat and
ChatStream (rendered with a template that prints tools, checked against jinja2), Cancel, deadlines, bad arguments, health, reflection, Tokenize / Detokenize against Hugging Face `tokenizers`, the
model list, logprobs (with and without echo), logit_bias, min_tokens, penalties and cached prompt tokens (with and
without prefix caching). It starts a real server on a tiny random-weight model (tp=1, pp=1) on a port the OS picks.

Python stubs are generated from proto/ with grpc_tools.protoc into a temporary directory.

usage: .venv/bin/python tests/api/grpc_api_test.py --tessera build/tessera --workdir DIR
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import grpc
import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER_DIR = os.path.join(ROOT, "tests", "data", "llama-3.1-tokenizer")
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402  (the shared `tessera serve` child process)
ARGS = None
# The served model's chat template (written over the one make-model copies): Llama 3 headers, plus the tools,
# message names and tool call ids, so that a test sees what reached the template.
CHAT_TEMPLATE = ("{{ bos_token }}{% if tools %}Tools: {{ tools | tojson }}\n{% endif %}"
                 "{% for m in messages %}<|start_header_id|>{{ m.role }}"
                 "{% if m.name is defined %} name={{ m.name }}{% endif %}"
                 "{% if m.tool_call_id is defined %} id={{ m.tool_call_id }}{% endif %}"
                 "<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
pb = None  # the generated modules, set by GenerateStubs


def GenerateStubs(out_dir):
    """Generates tessera/v1/*_pb2(_grpc).py from proto/ and imports them."""
    from grpc_tools import protoc
    import grpc_tools

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    protos = ["tessera/v1/inference.proto", "tessera/v1/model.proto"]
    rc = protoc.main(["grpc_tools.protoc", f"-I{os.path.join(ROOT, 'proto')}", f"-I{well_known}",
                      f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *protos])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed ({rc}) on {protos}")
    sys.path.insert(0, out_dir)
    from tessera.v1 import inference_pb2, inference_pb2_grpc, model_pb2, model_pb2_grpc

    class Modules:
        pass

    modules = Modules()
    modules.inference, modules.inference_grpc = inference_pb2, inference_pb2_grpc
    modules.model, modules.model_grpc = model_pb2, model_pb2_grpc
    return modules


def RenderChat(messages, tools=None, bos_token="<|begin_of_text|>"):
    """CHAT_TEMPLATE rendered as Hugging Face's apply_chat_template(add_generation_prompt=True) does."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    return env.from_string(CHAT_TEMPLATE).render(messages=messages, tools=tools, documents=None,
                                                 add_generation_prompt=True, bos_token=bos_token)


def RunTessera(*argv):
    result = subprocess.run([ARGS.tessera, *argv], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"tessera {' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result


class GrpcApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        global pb
        shutil.rmtree(ARGS.workdir, ignore_errors=True)
        os.makedirs(ARGS.workdir)
        cls.stubs_dir = tempfile.mkdtemp(prefix="tessera-stubs-")
        pb = GenerateStubs(cls.stubs_dir)
        cls.model_dir = os.path.join(ARGS.workdir, "tiny")
        RunTessera("make-model", "--preset", "tiny", "--tokenizer", TOKENIZER_DIR, "--out", cls.model_dir,
                   "--seed", "3")
        cls.hf = Tokenizer.from_file(os.path.join(cls.model_dir, "tokenizer.json"))
        config_path = os.path.join(cls.model_dir, "tokenizer_config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["chat_template"] = CHAT_TEMPLATE
        with open(config_path, "w") as f:
            json.dump(config, f)
        cls.server = harness.Server(ARGS.tessera, cls.model_dir, extra=["--kv-cache-memory", "1GiB"]).start()
        try:
            cls.channel = grpc.insecure_channel(cls.server.address)
            grpc.channel_ready_future(cls.channel).result(timeout=30)
        except BaseException:
            cls.tearDownClass()  # unittest skips it when setUpClass fails: never leave the server running
            raise
        cls.inference = pb.inference_grpc.InferenceServiceStub(cls.channel)
        cls.models = pb.model_grpc.ModelServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        if hasattr(cls, "channel"):
            cls.channel.close()
        code = cls.server.stop() if hasattr(cls, "server") else 0  # raises if it did not exit in time
        shutil.rmtree(cls.stubs_dir, ignore_errors=True)
        if code != 0:
            raise AssertionError("tessera serve exited %d:\n%s" % (code, "".join(cls.server.stderr)))

    def Request(self, **fields):
        fields.setdefault("text", "The capital of France is")
        fields.setdefault("max_tokens", 8)
        fields.setdefault("temperature", 0.0)
        if "token_ids" in fields:
            fields.pop("text")
            fields["token_ids"] = pb.inference.TokenIds(ids=fields["token_ids"])
        return pb.inference.CompleteRequest(**fields)

    def Stream(self, request, timeout=60):
        return list(self.inference.CompleteStream(request, timeout=timeout))

    def assertRpcError(self, call, code, *parts):
        with self.assertRaises(grpc.RpcError) as caught:
            call()
        self.assertEqual(caught.exception.code(), code, caught.exception.details())
        for part in parts:
            self.assertIn(part, caught.exception.details())
        return caught.exception

    def test_complete_answers_the_decoded_tokens_and_usage(self):
        prompt = "The capital of France is"
        response = self.inference.Complete(self.Request(text=prompt), timeout=60)
        self.assertTrue(response.request_id)
        self.assertEqual(response.model, os.path.basename(self.model_dir))
        self.assertEqual(len(response.choices), 1)
        choice = response.choices[0]
        self.assertGreater(len(choice.token_ids), 0)
        self.assertLessEqual(len(choice.token_ids), 8)
        self.assertIn(choice.finish_reason, (pb.inference.FINISH_REASON_LENGTH, pb.inference.FINISH_REASON_STOP))
        self.assertEqual(choice.text, self.hf.decode(list(choice.token_ids), skip_special_tokens=True))
        prompt_tokens = len(self.hf.encode(prompt, add_special_tokens=True).ids)
        self.assertEqual(response.usage.prompt_tokens, prompt_tokens)
        self.assertEqual(response.usage.completion_tokens, len(choice.token_ids))
        self.assertEqual(response.usage.total_tokens, prompt_tokens + len(choice.token_ids))
        # Greedy is deterministic, and a prompt given as ids gives the same tokens.
        ids = self.hf.encode(prompt, add_special_tokens=True).ids
        again = self.inference.Complete(self.Request(token_ids=ids), timeout=60)
        self.assertEqual(list(again.choices[0].token_ids), list(choice.token_ids))

    def test_stream_is_header_deltas_ends_trailer_and_matches_unary(self):
        request = self.Request(max_tokens=12, ignore_eos=True)
        unary = self.inference.Complete(request, timeout=60).choices[0]
        events = self.Stream(request)
        kinds = [e.WhichOneof("event") for e in events]
        self.assertEqual(kinds[0], "header")
        self.assertEqual(kinds[-1], "trailer")
        self.assertEqual(kinds[-2], "end")
        self.assertEqual(kinds.count("header"), 1)
        self.assertEqual(kinds.count("end"), 1)
        self.assertEqual(set(kinds[1:-2]), {"delta"})
        header = events[0].header
        self.assertTrue(header.request_id)
        self.assertEqual(header.num_choices, 1)
        self.assertEqual(header.prompt_tokens, len(self.hf.encode("The capital of France is").ids))
        deltas = [e.delta for e in events if e.HasField("delta")]
        self.assertEqual("".join(d.text for d in deltas), unary.text)
        self.assertEqual([t for d in deltas for t in d.token_ids], list(unary.token_ids))
        self.assertEqual(events[-2].end.finish_reason, pb.inference.FINISH_REASON_LENGTH)
        self.assertEqual(events[-2].end.completion_tokens, 12)
        self.assertEqual(events[-1].trailer.usage.completion_tokens, 12)

    def test_n_choices_come_with_their_indices(self):
        response = self.inference.Complete(self.Request(n=2, temperature=1.0, seed=7, max_tokens=4), timeout=60)
        self.assertEqual([c.index for c in response.choices], [0, 1])
        ends = [e.end.index for e in self.Stream(self.Request(n=2, temperature=1.0, seed=7, max_tokens=4))
                if e.HasField("end")]
        self.assertEqual(sorted(ends), [0, 1])

    def test_cancel_ends_a_running_stream(self):
        request = self.Request(request_id="py-cancel", max_tokens=20000, ignore_eos=True)
        stream = self.inference.CompleteStream(request, timeout=120)
        self.assertEqual(next(stream).WhichOneof("event"), "header")
        self.assertEqual(next(stream).WhichOneof("event"), "delta")
        self.inference.Cancel(pb.inference.CancelRequest(request_id="py-cancel"), timeout=10)
        self.assertRpcError(lambda: list(stream), grpc.StatusCode.CANCELLED)
        self.assertRpcError(lambda: self.inference.Cancel(pb.inference.CancelRequest(request_id="py-cancel")),
                            grpc.StatusCode.NOT_FOUND)

    def test_a_deadline_ends_the_call_and_the_server_stops_the_request(self):
        request = self.Request(request_id="py-deadline", max_tokens=20000, ignore_eos=True)
        self.assertRpcError(lambda: self.inference.Complete(request, timeout=0.5), grpc.StatusCode.DEADLINE_EXCEEDED)
        # The server notices the ended call and stops the request, freeing its id: a new request with that id is
        # ALREADY_EXISTS while the old one runs (polled, bounded), then taken.
        for _ in range(600):
            try:
                self.inference.Complete(self.Request(request_id="py-deadline", max_tokens=1), timeout=60)
                break
            except grpc.RpcError as e:
                self.assertEqual(e.code(), grpc.StatusCode.ALREADY_EXISTS, e.details())
            time.sleep(0.05)
        else:
            self.fail("request py-deadline was still running 30 s after its deadline")
        # The server still serves.
        self.assertEqual(len(self.inference.Complete(self.Request(max_tokens=2), timeout=60).choices), 1)

    def test_bad_arguments_are_invalid_argument_naming_the_field(self):
        cases = [
            (dict(model="no-such-model"), ["model", "no-such-model"]),
            (dict(text=""), ["prompt text"]),
            (dict(token_ids=[128000, 128256]), ["prompt token_ids[1] = 128256"]),
            (dict(max_tokens=0), ["max_tokens"]),
            (dict(temperature=-1.0), ["temperature"]),
            (dict(top_p=1.5), ["top_p"]),
            (dict(top_k=-1), ["top_k"]),
            (dict(n=17), ["n must be in [1, 16]"]),
            (dict(max_tokens=200000), ["max_tokens (200000)", "131072"]),
            (dict(min_p=1.5), ["min_p must be in [0, 1]", "1.5"]),
            (dict(repetition_penalty=0.0), ["repetition_penalty must be > 0"]),
            (dict(presence_penalty=2.5), ["presence_penalty must be in [-2, 2]", "2.5"]),
            (dict(frequency_penalty=-3.0), ["frequency_penalty must be in [-2, 2]", "-3"]),
            (dict(logit_bias={128256: 1.0}), ["logit_bias token id 128256 is outside the vocabulary [0, 128256)"]),
            (dict(logit_bias={5: 101.0}), ["logit_bias[5] = 101 is outside [-100, 100]"]),
            (dict(min_tokens=-1), ["min_tokens must be >= 0"]),
            (dict(min_tokens=9), ["min_tokens must be in [0, max_tokens = 8], got 9"]),
            (dict(logprobs=True, top_logprobs=21), ["top_logprobs must be in [0, 20], got 21"]),
            (dict(top_logprobs=3), ["top_logprobs needs logprobs"]),
        ]
        for fields, parts in cases:
            with self.subTest(fields=fields):
                request = self.Request(**fields)
                self.assertRpcError(lambda: self.inference.Complete(request, timeout=30),
                                    grpc.StatusCode.INVALID_ARGUMENT, *parts)
                self.assertRpcError(lambda: self.Stream(request, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, *parts)
        no_prompt = pb.inference.CompleteRequest(max_tokens=4)
        self.assertRpcError(lambda: self.inference.Complete(no_prompt, timeout=30), grpc.StatusCode.INVALID_ARGUMENT,
                            "prompt")

    def ChatRequest(self, messages, **fields):
        fields.setdefault("max_tokens", 8)
        fields.setdefault("temperature", 0.0)
        return pb.inference.ChatRequest(messages=[pb.inference.ChatMessage(**m) for m in messages], **fields)

    def PromptTokens(self, messages, tools=None):
        return len(self.hf.encode(RenderChat(messages, tools), add_special_tokens=False).ids)

    def test_chat_answers_an_assistant_message_rendered_with_the_template(self):
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
        response = self.inference.Chat(self.ChatRequest(messages), timeout=60)
        self.assertTrue(response.request_id)
        self.assertEqual(response.model, os.path.basename(self.model_dir))
        self.assertEqual(len(response.choices), 1)
        choice = response.choices[0]
        self.assertEqual(choice.index, 0)
        self.assertEqual(choice.message.role, "assistant")
        self.assertGreater(len(choice.token_ids), 0)
        self.assertEqual(choice.message.content, self.hf.decode(list(choice.token_ids), skip_special_tokens=True))
        self.assertIn(choice.finish_reason, (pb.inference.FINISH_REASON_LENGTH, pb.inference.FINISH_REASON_STOP))
        prompt_tokens = self.PromptTokens(messages)
        self.assertEqual(response.usage.prompt_tokens, prompt_tokens)
        self.assertEqual(response.usage.completion_tokens, len(choice.token_ids))
        self.assertEqual(response.usage.total_tokens, prompt_tokens + len(choice.token_ids))
        # The same conversation as a Complete chat prompt, and as the rendered ids, gives the same greedy tokens.
        chat_prompt = pb.inference.ChatMessages(messages=[pb.inference.ChatMessage(**m) for m in messages])
        completed = self.inference.Complete(pb.inference.CompleteRequest(chat=chat_prompt, max_tokens=8,
                                                                         temperature=0.0), timeout=60)
        self.assertEqual(list(completed.choices[0].token_ids), list(choice.token_ids))
        ids = self.hf.encode(RenderChat(messages), add_special_tokens=False).ids
        by_ids = self.inference.Complete(self.Request(token_ids=ids), timeout=60)
        self.assertEqual(list(by_ids.choices[0].token_ids), list(choice.token_ids))

    def test_chat_stream_is_header_content_deltas_ends_trailer_and_matches_chat(self):
        messages = [{"role": "user", "content": "Count to ten."}]
        request = self.ChatRequest(messages, max_tokens=12, ignore_eos=True)
        unary = self.inference.Chat(request, timeout=60).choices[0]
        events = list(self.inference.ChatStream(request, timeout=60))
        kinds = [e.WhichOneof("event") for e in events]
        self.assertEqual(kinds[0], "header")
        self.assertEqual(kinds[-2:], ["end", "trailer"])
        self.assertEqual(set(kinds[1:-2]), {"delta"})
        header = events[0].header
        self.assertTrue(header.request_id)
        self.assertEqual(header.num_choices, 1)
        self.assertEqual(header.prompt_tokens, self.PromptTokens(messages))
        deltas = [e.delta for e in events if e.HasField("delta")]
        self.assertEqual("".join(d.content for d in deltas), unary.message.content)
        self.assertEqual([t for d in deltas for t in d.token_ids], list(unary.token_ids))
        self.assertEqual(events[-2].end.finish_reason, pb.inference.FINISH_REASON_LENGTH)
        self.assertEqual(events[-2].end.completion_tokens, 12)
        self.assertEqual(events[-1].trailer.usage.completion_tokens, 12)
        self.assertEqual(events[-1].trailer.usage.prompt_tokens, header.prompt_tokens)

    def test_chat_n_choices_come_with_their_indices(self):
        request = self.ChatRequest([{"role": "user", "content": "Colours?"}], n=3, temperature=1.0, seed=7,
                                   max_tokens=4)
        response = self.inference.Chat(request, timeout=60)
        self.assertEqual([c.index for c in response.choices], [0, 1, 2])
        self.assertEqual({c.message.role for c in response.choices}, {"assistant"})
        self.assertEqual(response.usage.completion_tokens, sum(len(c.token_ids) for c in response.choices))
        events = list(self.inference.ChatStream(request, timeout=60))
        self.assertEqual(events[0].header.num_choices, 3)
        self.assertEqual(sorted(e.end.index for e in events if e.HasField("end")), [0, 1, 2])
        # The same seed samples the same choices, streamed or not.
        for i, choice in enumerate(response.choices):
            streamed = [t for e in events if e.HasField("delta") and e.delta.index == i for t in e.delta.token_ids]
            self.assertEqual(streamed, list(choice.token_ids))

    def test_chat_tools_names_and_tool_call_ids_reach_the_template(self):
        messages = [{"role": "user", "content": "Weather in Paris?", "name": "ann"},
                    {"role": "tool", "content": '{"sky": "clear"}', "tool_call_id": "call_1"}]
        with_tools = self.inference.Chat(self.ChatRequest(messages, tools=json.dumps(TOOLS), max_tokens=2),
                                         timeout=60)
        self.assertEqual(with_tools.usage.prompt_tokens, self.PromptTokens(messages, TOOLS))
        without = self.inference.Chat(self.ChatRequest(messages, max_tokens=2), timeout=60)
        self.assertEqual(without.usage.prompt_tokens, self.PromptTokens(messages))
        self.assertGreater(with_tools.usage.prompt_tokens, without.usage.prompt_tokens)
        header = next(iter(self.inference.ChatStream(self.ChatRequest(messages, tools=json.dumps(TOOLS),
                                                                      max_tokens=2), timeout=60)))
        self.assertEqual(header.header.prompt_tokens, with_tools.usage.prompt_tokens)

    def test_chat_errors_name_the_field(self):
        user = [{"role": "user", "content": "Hi"}]
        cases = [
            (self.ChatRequest([]), grpc.StatusCode.INVALID_ARGUMENT, ["messages is empty"]),
            (self.ChatRequest(user + [{"content": "no role"}]), grpc.StatusCode.INVALID_ARGUMENT,
             ["messages[1].role is empty"]),
            (self.ChatRequest(user, model="no-such-model"), grpc.StatusCode.NOT_FOUND, ["model", "no-such-model"]),
            (self.ChatRequest(user, tools="[{"), grpc.StatusCode.INVALID_ARGUMENT, ["tools is not valid JSON"]),
            (self.ChatRequest(user, tools="{}"), grpc.StatusCode.INVALID_ARGUMENT, ["tools must be a JSON array"]),
            (self.ChatRequest(user, temperature=-1.0), grpc.StatusCode.INVALID_ARGUMENT, ["temperature"]),
            (self.ChatRequest(user, n=17), grpc.StatusCode.INVALID_ARGUMENT, ["n must be in [1, 16]"]),
            (self.ChatRequest(user, presence_penalty=3.0), grpc.StatusCode.INVALID_ARGUMENT, ["presence_penalty"]),
            (self.ChatRequest(user, logprobs=True, top_logprobs=30), grpc.StatusCode.INVALID_ARGUMENT,
             ["top_logprobs must be in [0, 20]"]),
        ]
        for request, code, parts in cases:
            with self.subTest(request=str(request)[:80]):
                self.assertRpcError(lambda: self.inference.Chat(request, timeout=30), code, *parts)
                self.assertRpcError(lambda: list(self.inference.ChatStream(request, timeout=30)), code, *parts)

    # --- logprobs, sampling parameters, cached tokens ---

    def assertGreedyLogprobs(self, token_ids, logprobs, top):
        """One logprob per token id, rank 1 with the top-1 entry's logprob (greedy), `top` alternatives sorted."""
        self.assertEqual(len(logprobs), len(token_ids))
        for token, lp in zip(token_ids, logprobs):
            self.assertEqual(lp.token_id, token)
            self.assertTrue(lp.HasField("logprob"))
            self.assertLessEqual(lp.logprob, 0.0)
            self.assertEqual(lp.rank, 1)
            self.assertEqual(len(lp.top_logprobs), top)
            values = [t.logprob for t in lp.top_logprobs]
            self.assertEqual(values, sorted(values, reverse=True))
            self.assertEqual(lp.top_logprobs[0].token_id, token)
            self.assertEqual(lp.top_logprobs[0].logprob, lp.logprob)

    def test_logprobs_are_returned_unary_and_streamed_alike(self):
        request = self.Request(max_tokens=10, ignore_eos=True, logprobs=True, top_logprobs=4)
        unary = self.inference.Complete(request, timeout=60).choices[0]
        self.assertGreedyLogprobs(unary.token_ids, unary.logprobs, 4)
        self.assertEqual(len(unary.prompt_logprobs), 0)  # no echo
        deltas = [e.delta for e in self.Stream(request) if e.HasField("delta")]
        for d in deltas:
            self.assertEqual(len(d.logprobs), len(d.token_ids))
        self.assertEqual([lp.SerializeToString() for d in deltas for lp in d.logprobs],
                         [lp.SerializeToString() for lp in unary.logprobs])
        plain = self.inference.Complete(self.Request(max_tokens=4), timeout=60).choices[0]
        self.assertEqual(len(plain.logprobs), 0)

    def test_chat_logprobs_are_returned_unary_and_streamed_alike(self):
        request = self.ChatRequest([{"role": "user", "content": "Hi"}], max_tokens=8, ignore_eos=True, logprobs=True,
                                   top_logprobs=2)
        unary = self.inference.Chat(request, timeout=60).choices[0]
        self.assertGreedyLogprobs(unary.token_ids, unary.logprobs, 2)
        deltas = [e.delta for e in self.inference.ChatStream(request, timeout=60) if e.HasField("delta")]
        self.assertEqual([lp.SerializeToString() for d in deltas for lp in d.logprobs],
                         [lp.SerializeToString() for lp in unary.logprobs])

    def test_logit_bias_of_100_makes_greedy_output_that_token(self):
        response = self.inference.Complete(self.Request(max_tokens=3, ignore_eos=True, logit_bias={1234: 100.0}),
                                           timeout=60)
        self.assertEqual(list(response.choices[0].token_ids), [1234, 1234, 1234])

    def test_min_tokens_holds_back_eos(self):
        eos = {128009: 100.0}  # <|eot_id|>, an eos id of the model, made the greedy choice
        plain = self.inference.Complete(self.Request(max_tokens=12, logit_bias=eos), timeout=60).choices[0]
        self.assertEqual(list(plain.token_ids), [128009])
        held = self.inference.Complete(self.Request(max_tokens=12, logit_bias=eos, min_tokens=5), timeout=60).choices[0]
        self.assertGreaterEqual(len(held.token_ids), 5)
        self.assertEqual(len(held.token_ids), 6)  # banned for 5 tokens, then sampled as the 6th
        self.assertEqual(held.token_ids[-1], 128009)
        self.assertNotIn(128009, held.token_ids[:-1])
        self.assertEqual(held.finish_reason, pb.inference.FINISH_REASON_STOP)

    def test_penalties_change_greedy_output(self):
        base = list(self.inference.Complete(self.Request(max_tokens=16, ignore_eos=True), timeout=60).choices[0].token_ids)
        for penalty in (dict(presence_penalty=2.0), dict(frequency_penalty=2.0), dict(repetition_penalty=2.0)):
            with self.subTest(**penalty):
                ids = self.inference.Complete(self.Request(max_tokens=16, ignore_eos=True, **penalty),
                                              timeout=60).choices[0].token_ids
                self.assertNotEqual(list(ids), base)
        same = self.inference.Complete(self.Request(max_tokens=16, ignore_eos=True, min_p=0.5, priority=3),
                                       timeout=60).choices[0].token_ids
        self.assertEqual(list(same), base)

    def test_cached_tokens_report_the_prefix_cache_hits(self):
        prompt = list(range(3000, 3100))  # 100 tokens no other test sends
        first = self.inference.Complete(self.Request(token_ids=prompt, max_tokens=6), timeout=60)
        self.assertEqual(first.usage.cached_tokens, 0)
        second = self.inference.Complete(self.Request(token_ids=prompt, max_tokens=6), timeout=60)
        # Six full blocks of 16 come from the cache; the last token is always computed.
        self.assertEqual(second.usage.cached_tokens, 96)
        self.assertEqual(list(second.choices[0].token_ids), list(first.choices[0].token_ids))
        self.assertEqual(second.choices[0].text, first.choices[0].text)
        events = self.Stream(self.Request(token_ids=prompt, max_tokens=6))
        self.assertEqual(events[-1].trailer.usage.cached_tokens, 96)

    def test_health_reports_serving(self):
        health = health_pb2_grpc.HealthStub(self.channel)
        for service in ("", "tessera.v1.InferenceService"):
            with self.subTest(service=service):
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                self.assertEqual(answer.status, health_pb2.HealthCheckResponse.SERVING)

    def test_reflection_lists_the_services(self):
        reflection = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = list(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        names = {s.name for a in answers for s in a.list_services_response.service}
        self.assertIn("tessera.v1.InferenceService", names)
        self.assertIn("tessera.v1.ModelService", names)

    def test_tokenize_and_detokenize_match_hugging_face(self):
        for text in ["Hello world!", "héllo 東京 😀 <|eot_id|> tabs\tand\nlines", "  leading spaces", "x" * 300]:
            for special in (False, True):
                with self.subTest(text=text[:20], add_special_tokens=special):
                    got = self.inference.Tokenize(pb.inference.TokenizeRequest(text=text, add_special_tokens=special),
                                                  timeout=10)
                    expected = self.hf.encode(text, add_special_tokens=special).ids
                    self.assertEqual(list(got.token_ids), expected)
                    for skip in (False, True):
                        back = self.inference.Detokenize(
                            pb.inference.DetokenizeRequest(token_ids=expected, skip_special_tokens=skip), timeout=10)
                        self.assertEqual(back.text, self.hf.decode(expected, skip_special_tokens=skip))
        self.assertRpcError(
            lambda: self.inference.Detokenize(pb.inference.DetokenizeRequest(token_ids=[1, 999999]), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT, "token_ids[1] = 999999")

    def test_models_lists_the_served_model(self):
        models = self.models.ListModels(pb.model.ListModelsRequest(), timeout=10).models
        self.assertEqual(len(models), 1)
        model = models[0]
        self.assertEqual(model.id, os.path.basename(self.model_dir))
        self.assertEqual(model.max_context_length, 131072)
        self.assertEqual(model.vocab_size, 128256)
        self.assertEqual((model.tp_size, model.pp_size, model.num_layers), (1, 1, 4))
        self.assertTrue(model.ready)
        self.assertEqual(self.models.GetModel(pb.model.GetModelRequest(id=model.id), timeout=10).id, model.id)
        self.assertRpcError(lambda: self.models.GetModel(pb.model.GetModelRequest(id="no-such-model"), timeout=10),
                            grpc.StatusCode.NOT_FOUND, "no-such-model")


class SecondServerTest(unittest.TestCase):
    """Servers of their own: one without prefix caching, and echo + logprobs (the prompt's logprobs, a separate
    path through the workers)."""

    @classmethod
    def setUpClass(cls):
        global pb
        cls.stubs_dir = tempfile.mkdtemp(prefix="tessera-stubs-")
        if pb is None:
            pb = GenerateStubs(cls.stubs_dir)
        cls.model_dir = os.path.join(ARGS.workdir, "tiny")
        if not os.path.exists(cls.model_dir):
            os.makedirs(ARGS.workdir, exist_ok=True)
            RunTessera("make-model", "--preset", "tiny", "--tokenizer", TOKENIZER_DIR, "--out", cls.model_dir,
                       "--seed", "3")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.stubs_dir, ignore_errors=True)

    def Serve(self, extra):
        server = harness.Server(ARGS.tessera, self.model_dir, extra=extra).start()
        channel = grpc.insecure_channel(server.address)
        grpc.channel_ready_future(channel).result(timeout=30)
        return server, channel, pb.inference_grpc.InferenceServiceStub(channel)

    def test_cached_tokens_are_zero_without_prefix_caching(self):
        server, channel, inference = self.Serve(["--no-enable-prefix-caching"])
        try:
            request = pb.inference.CompleteRequest(token_ids=pb.inference.TokenIds(ids=list(range(3000, 3100))),
                                                   max_tokens=4, temperature=0.0)
            for _ in range(2):
                self.assertEqual(inference.Complete(request, timeout=60).usage.cached_tokens, 0)
        finally:
            channel.close()
            self.assertEqual(server.stop(), 0, "".join(server.stderr))

    def test_echo_with_logprobs_returns_the_prompts_logprobs_first_unset(self):
        server, channel, inference = self.Serve([])
        try:
            request = pb.inference.CompleteRequest(text="The capital of France is", max_tokens=5, temperature=0.0,
                                                   ignore_eos=True, echo=True, logprobs=True, top_logprobs=2)
            choice = inference.Complete(request, timeout=60).choices[0]
            self.assertEqual(len(choice.prompt_logprobs), len(choice.prompt_token_ids))
            self.assertEqual([lp.token_id for lp in choice.prompt_logprobs], list(choice.prompt_token_ids))
            self.assertFalse(choice.prompt_logprobs[0].HasField("logprob"))
            self.assertEqual(choice.prompt_logprobs[0].rank, 0)
            for lp in choice.prompt_logprobs[1:]:
                self.assertTrue(lp.HasField("logprob"))
                self.assertGreaterEqual(lp.rank, 1)
                self.assertEqual(len(lp.top_logprobs), 2)
            self.assertEqual(len(choice.logprobs), len(choice.token_ids))
            events = list(inference.CompleteStream(request, timeout=60))
            echo = events[1].delta
            self.assertEqual(echo.text, "The capital of France is")
            self.assertEqual([lp.SerializeToString() for lp in echo.prompt_logprobs],
                             [lp.SerializeToString() for lp in choice.prompt_logprobs])
        finally:
            channel.close()
            self.assertEqual(server.stop(), 0, "".join(server.stderr))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tessera", required=True, help="the tessera executable")
    parser.add_argument("--workdir", required=True, help="scratch directory (emptied first)")
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
