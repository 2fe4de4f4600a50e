"""tessera plan end to end: the real binary on presets, a model directory and config.json files; text and JSON
output; the recommendation's commands and Kubernetes overlay; malformed input and exit codes.

usage: .venv/bin/python tests/tools/plan_test.py --tessera build/tessera --workdir DIR
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import unittest

ARGS = None


def run(*argv):
    return subprocess.run([ARGS.tessera, "plan", *argv], capture_output=True, text=True, timeout=60)


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class PlanTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        shutil.rmtree(ARGS.workdir, ignore_errors=True)
        os.makedirs(ARGS.workdir)
        cls.model_dir = os.path.join(ARGS.workdir, "llama3-70b")
        result = subprocess.run([ARGS.tessera, "make-model", "--preset", "llama3-70b", "--config-only",
                                 "--out", cls.model_dir], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr

    def plan_json(self, *argv):
        result = run(*argv, "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = json_lines(result.stdout)
        self.assertTrue(all(line["event"] == "layout" for line in lines[:-1]))
        self.assertEqual(lines[-1]["event"], "recommendation")
        return lines[:-1], lines[-1]

    def test_70b_on_h100_recommends_tp8_and_the_70b_overlay(self):
        layouts, rec = self.plan_json("--model", self.model_dir, "--gpu", "h100-80gb", "--gpus-per-node", "8")
        self.assertEqual((rec["tp"], rec["pp"], rec["nodes"]), (8, 1, 1))
        self.assertEqual(rec["commands"], [
            f"tessera serve --model {self.model_dir} --device cuda --tp 8 --pp 1 --kv-cache-memory "
            f"{rec['kv_cache_memory']} --max-model-len 131072 --max-num-seqs 256 --max-num-batched-tokens 2048"])
        self.assertEqual(rec["kubernetes"]["command"], "kubectl apply -k deploy/kubernetes/overlays/llama-3.3-70b")
        tp8 = next(l for l in layouts if (l["tp"], l["pp"]) == (8, 1))
        self.assertEqual(tp8["weight_bytes"], 17_640_751_104)  # tests/tools/planner_test.cc counts it
        self.assertEqual(tp8["kv_bytes_per_token"], 40960)
        self.assertEqual(tp8["max_batch"], tp8["kv_tokens"] // 131072)
        self.assertEqual([d["batch"] for d in tp8["decode"]], [1, 8, 32, 128])
        for layout in layouts:
            self.assertGreaterEqual(layout["max_batch"], 1)
            self.assertLessEqual(layout["gpus"], 8)
            self.assertGreater(layout["prefill_ms"], 0)

    def test_405b_on_h100_needs_two_nodes_and_matches_the_405b_overlay(self):
        _, rec = self.plan_json("--model", "llama3.1-405b", "--gpu", "h100-80gb", "--gpus-per-node", "8")
        self.assertEqual((rec["tp"], rec["pp"], rec["nodes"], rec["ranks_per_node"]), (8, 2, 2, 8))
        self.assertTrue(rec["commands"][0].startswith("node 0: tessera coordinator --model MODEL_DIR --device cuda"
                                                      " --tp 8 --pp 2 "))
        self.assertIn("--local-ranks 8", rec["commands"][0])
        self.assertEqual(rec["commands"][1], "node 1: tessera worker --coordinator NODE0_ADDRESS:50051 --device cuda"
                                             " --local-ranks 8 --rank 8 --listen-host NODE1_ADDRESS")
        self.assertEqual(rec["kubernetes"]["command"], "kubectl apply -k deploy/kubernetes/overlays/llama-3.1-405b")

    def test_405b_on_h200_fits_one_node_and_says_what_to_change_in_the_overlay(self):
        _, rec = self.plan_json("--model", "llama3.1-405b", "--gpu", "h200-141gb", "--gpus-per-node", "8")
        self.assertEqual((rec["tp"], rec["pp"], rec["nodes"]), (8, 1, 1))
        k = rec["kubernetes"]
        self.assertFalse(k["matches"])
        self.assertEqual(k["overlay"], "deploy/kubernetes/overlays/llama-3.1-405b")
        self.assertEqual((k["change"]["size"], k["change"]["TESSERA_PP"], k["change"]["TESSERA_LOCAL_RANKS"]),
                         (1, "1", "8"))

    def test_text_output_names_the_recommendation_and_its_rule(self):
        result = run("--model", os.path.join(self.model_dir, "config.json"), "--gpu", "h100-80gb",
                     "--gpus-per-node", "8", "--max-model-len", "8192", "--kv-cache-dtype", "fp8")
        self.assertEqual(result.returncode, 0, result.stderr)
        out = result.stdout
        self.assertIn("Recommended: tp 8 pp 1 on 1 node(s), 8 GPUs each", out)
        self.assertIn("rule: the fewest nodes", out)
        self.assertIn("kubectl apply -k deploy/kubernetes/overlays/llama-3.3-70b", out)
        self.assertIn("--max-model-len 8192", out)
        self.assertIn("fp8", out)
        self.assertEqual(result.stderr, "")

    def test_more_nodes_list_more_layouts(self):
        one, _ = self.plan_json("--model", "llama3-8b", "--gpu", "b200-180gb", "--gpus-per-node", "4")
        two, _ = self.plan_json("--model", "llama3-8b", "--gpu", "b200-180gb", "--gpus-per-node", "4", "--nodes", "2")
        self.assertGreater(len(two), len(one))
        self.assertEqual(max(l["nodes"] for l in two), 2)

    def expect_error(self, argv, code, *fragments):
        result = run(*argv)
        self.assertEqual(result.returncode, code, result.stderr)
        self.assertEqual(result.stdout, "")
        for fragment in fragments:
            self.assertIn(fragment, result.stderr)
        if code == 1:
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)

    def test_bad_input_fails_with_one_line_naming_the_culprit(self):
        base = ["--gpu", "h100-80gb", "--gpus-per-node", "8"]
        self.expect_error(["--model", "llama9", *base], 1, '"llama9"', "llama3.1-405b")
        self.expect_error(["--model", "llama3-70b", "--gpu", "h100", "--gpus-per-node", "8"], 1, '"h100"',
                          "h200-141gb")
        self.expect_error(["--model", "llama3-70b", "--gpu", "h100-80gb", "--gpus-per-node", "0"], 1,
                          "--gpus-per-node 0")
        self.expect_error(["--model", "llama3-70b", *base, "--kv-cache-dtype", "int4"], 1, "int4")
        malformed = os.path.join(ARGS.workdir, "malformed.json")
        with open(malformed, "w") as f:
            f.write('{"hidden_size": 8192,')
        self.expect_error(["--model", malformed, *base], 1, malformed)
        with open(os.path.join(self.model_dir, "config.json")) as f:
            config = json.load(f)
        del config["num_attention_heads"]
        missing = os.path.join(ARGS.workdir, "missing.json")
        with open(missing, "w") as f:
            json.dump(config, f)
        self.expect_error(["--model", missing, *base], 1, "num_attention_heads")

    def test_nothing_fits_names_the_model_size_and_the_gpu_memory(self):
        self.expect_error(["--model", "llama3.1-405b", "--gpu", "a100-80gb", "--gpus-per-node", "8", "--nodes", "1"],
                          1, "llama3.1-405b", "405.9 B parameters", "8 x a100-80gb", "80.0 GiB each")

    def test_bad_usage_exits_2(self):
        self.assertEqual(run("--model", "llama3-70b", "--gpu", "h100-80gb").returncode, 2)
        self.assertEqual(run("--model", "llama3-70b", "--gpu", "h100-80gb", "--gpus-per-node", "x").returncode, 2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--workdir", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], *rest])
