"""The tessera executable end to end: subcommands, JSON output, exit codes and one-line errors.

usage: .venv/bin/python tests/tools/cli_test.py --tessera build/tessera --workdir DIR
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import unittest

from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER_DIR = os.path.join(ROOT, "tests", "data", "llama-3.1-tokenizer")
ARGS = None


def run(*argv, check=True):
    result = subprocess.run([ARGS.tessera, *argv], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"tessera {' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class CliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = os.path.join(ARGS.workdir, "tiny")
        shutil.rmtree(ARGS.workdir, ignore_errors=True)
        os.makedirs(ARGS.workdir)
        run("make-model", "--preset", "tiny", "--out", cls.model, "--seed", "5", "--tokenizer", TOKENIZER_DIR)
        cls.hf = Tokenizer.from_file(os.path.join(cls.model, "tokenizer.json"))

    def test_make_model_copies_the_tokenizer_and_its_licence_notice(self):
        for name in ("tokenizer.json", "tokenizer_config.json", "NOTICE", "config.json", "generation_config.json",
                     "model.safetensors.index.json"):
            self.assertTrue(os.path.exists(os.path.join(self.model, name)), name)

    def test_generate_with_a_text_prompt_encodes_it_with_bos_and_decodes_the_output(self):
        text = "The capital of France is"
        out = json_lines(run("generate", "--model", self.model, "--prompt", text, "--max-tokens", "6").stdout)
        self.assertEqual(len(out), 1)
        self.assertEqual(len(out[0]["token_ids"]), 6)
        self.assertEqual(out[0]["text"], self.hf.decode(out[0]["token_ids"], skip_special_tokens=True))
        # The same prompt given as the ids HF produces (bos added) generates the same tokens.
        ids = self.hf.encode(text, add_special_tokens=True).ids
        by_ids = json_lines(run("generate", "--model", self.model, "--prompt-ids", ",".join(map(str, ids)),
                                "--max-tokens", "6").stdout)
        self.assertEqual(by_ids[0]["token_ids"], out[0]["token_ids"])
        self.assertNotIn("text", by_ids[0])

    def test_generate_with_a_chat_renders_the_template_and_batches_with_other_prompts(self):
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
        chat = os.path.join(ARGS.workdir, "chat.json")
        with open(chat, "w") as f:
            json.dump(messages, f)
        jsonl = os.path.join(ARGS.workdir, "chat.jsonl")
        with open(jsonl, "w") as f:
            f.write(json.dumps({"messages": messages, "add_generation_prompt": True}) + "\n")
        prompt = json_lines(run("chat-template", "--model", self.model, "--input-jsonl", jsonl).stdout)[0]["prompt"]
        self.assertTrue(prompt.startswith("<|begin_of_text|>") and prompt.endswith("<|end_header_id|>\n\n"))
        ids = self.hf.encode(prompt, add_special_tokens=False).ids
        alone = json_lines(run("generate", "--model", self.model, "--prompt-ids", ",".join(map(str, ids)),
                               "--max-tokens", "5").stdout)[0]
        batched = json_lines(run("generate", "--model", self.model, "--prompt", "Hello", "--chat", chat,
                                 "--max-tokens", "5").stdout)
        self.assertEqual(len(batched), 2)
        self.assertEqual(batched[1]["token_ids"], alone["token_ids"])

    def test_generate_split_over_processes_gives_the_tokens_of_one_process(self):
        args = ("generate", "--model", self.model, "--prompt", "Hello there", "--prompt-ids", "128000,40,1093",
                "--max-tokens", "6")
        one = json_lines(run(*args).stdout)
        for tp, pp in ((2, 1), (1, 2), (2, 2)):
            with self.subTest(tp=tp, pp=pp):
                self.assertEqual(json_lines(run(*args, "--tp", str(tp), "--pp", str(pp)).stdout), one)
        self.assertEqual(json_lines(run(*args, "--pp", "2", "--pp-layers", "1,3").stdout), one)

    def test_generate_through_step_graphs_gives_the_eager_tokens(self):
        args = ("generate", "--model", self.model, "--prompt", "Hello there", "--prompt-ids", "128000,40,1093",
                "--prompt-ids", "128000,5", "--max-tokens", "6", "--stats")
        eager = run(*args)
        self.assertEqual(json_lines(eager.stderr)[-1]["graph_steps"], 0)  # the CPU's default: no graphs
        for split in ((), ("--tp", "2")):
            with self.subTest(split=split):
                graphed = run(*args, "--graph-max-batch", "4", *split)
                self.assertEqual(json_lines(graphed.stdout), json_lines(eager.stdout))
                self.assertEqual(json_lines(graphed.stderr)[-1]["graph_steps"], 5)  # every decode step

    def test_generate_runs_on_the_serving_engine_and_reports_its_figures(self):
        args = ("generate", "--model", self.model, "--prompt-ids", "128000,40,1093", "--prompt-ids", "128000,5",
                "--max-tokens", "4", "--stats")
        result = run(*args, "--tp", "2")
        stats = json_lines(result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)  # the workers log elsewhere
        self.assertEqual(sorted(stats[0]), ["decode_tokens_per_s", "graph_steps", "load_s", "peak_rss_bytes",
                                            "prefill_tokens_per_s"])
        self.assertGreater(stats[0]["decode_tokens_per_s"], 0)
        self.assertGreater(stats[0]["peak_rss_bytes"], 1 << 20)  # a worker's, which holds the weights
        self.assertEqual([len(line["token_ids"]) for line in json_lines(result.stdout)], [4, 4])

    def test_a_worker_failing_in_generate_is_one_line_naming_its_rank_and_the_logs(self):
        config_only = os.path.join(ARGS.workdir, "config-only")
        run("make-model", "--preset", "tiny", "--out", config_only, "--config-only")
        result = run("generate", "--model", config_only, "--prompt-ids", "1", "--tp", "2", check=False)
        self.assertEqual(result.returncode, 1, result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertRegex(lines[0], r"^tessera generate: rank \d: assign_shard: .*safetensors")
        logs = re.search(r"the engine's logs are in (\S+)\)", lines[0]).group(1)
        self.assertTrue(os.path.exists(os.path.join(logs, "workers.log")), logs)
        self.assertIn("registered with the coordinator", open(os.path.join(logs, "workers.log")).read())
        shutil.rmtree(logs)

    def test_tokenize_and_detokenize_agree_with_hugging_face(self):
        text = "Tessera's tokenizer: 12345 tokens, émojis 👩‍💻 and <|eot_id|>."
        ids = json_lines(run("tokenize", "--model", self.model, "--text", text, "--add-special-tokens").stdout)
        self.assertEqual(ids, [{"ids": self.hf.encode(text, add_special_tokens=True).ids}])
        decoded = json_lines(run("detokenize", "--model", self.model, "--ids",
                                 ",".join(map(str, ids[0]["ids"]))).stdout)
        self.assertEqual(decoded, [{"text": self.hf.decode(ids[0]["ids"], skip_special_tokens=False)}])

    def test_errors_are_one_line_naming_the_culprit_with_exit_code_1(self):
        cases = [
            (("generate", "--model", self.model, "--prompt-ids", "1,999999"), "999999"),
            (("generate", "--model", os.path.join(ARGS.workdir, "missing"), "--prompt-ids", "1"), "missing"),
            (("generate", "--model", self.model, "--chat", os.path.join(ARGS.workdir, "nope.json")), "nope.json"),
            (("generate", "--model", self.model, "--prompt-ids", "1,x"), "'x'"),
            (("generate", "--model", self.model, "--prompt-ids", "1", "--prefill-precision", "fp8"), "fp8"),
            (("generate", "--model", self.model, "--prompt-ids", "1", "--quant-activations", "int4"), "int4"),
            (("generate", "--model", self.model, "--prompt-ids", "1", "--graph-max-batch", "-5"), "--graph-max-batch=-5"),
            (("detokenize", "--model", self.model, "--ids", "128256"), "128256"),
            (("generate", "--model", self.model, "--prompt-ids", "1", "--device", "tpu"), "tpu"),
            (("generate", "--model", self.model, "--prompt-ids", "1", "--tp", "3"),
             "num_attention_heads=4 is not divisible by tp=3"),
            (("generate", "--model", self.model, "--prompt-ids", "1", "--pp", "2", "--pp-layers", "1,2"),
             "sums to 3 but num_hidden_layers=4"),
            (("make-model", "--preset", "huge", "--out", os.path.join(ARGS.workdir, "x")), "huge"),
        ]
        for argv, culprit in cases:
            with self.subTest(argv=argv):
                result = run(*argv, check=False)
                self.assertEqual(result.returncode, 1, result.stderr)
                lines = result.stderr.strip().splitlines()
                self.assertEqual(len(lines), 1, result.stderr)
                self.assertTrue(lines[0].startswith(f"tessera {argv[0]}: "), lines[0])
                self.assertIn(culprit, lines[0])

    def test_bad_usage_exits_2_and_help_exits_0(self):
        self.assertEqual(run(check=False).returncode, 2)
        self.assertEqual(run("generate", "--model", self.model, check=False).returncode, 2)
        self.assertEqual(run("tokenize", "--model", self.model, "--text", "a", "--file", "b", check=False).returncode, 2)
        self.assertEqual(run("frobnicate", check=False).returncode, 2)
        self.assertEqual(run("help").returncode, 0)
        for command in ("make-model", "generate", "tokenize", "detokenize", "chat-template"):
            result = run(command, "--help")
            self.assertIn("--", result.stdout)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--workdir", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
