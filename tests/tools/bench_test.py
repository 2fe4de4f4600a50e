"""`tessera bench` end to end: a real `tessera serve --grpc-port 0` on a tiny random-weight model (tp=1,
pp=1), benchmarked with a few random prompts at two request rates and with a JSONL dataset (and over HTTP
when the server has it); checks the summary table, the --out JSON's fields, the --chart SVG (parsed as XML), the usage errors, and the error when nothing
answers. Asserts nothing on time.

usage: .venv/bin/python tests/tools/bench_test.py --tessera build/tessera --workdir DIR
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import unittest
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402  (the shared `tessera serve` child process)
TOKENIZER_DIR = os.path.join(ROOT, "tests", "data", "llama-3.1-tokenizer")
ARGS = None
SVG = "{http://www.w3.org/2000/svg}"


def Tessera(*argv):
    return subprocess.run([ARGS.tessera, *argv], capture_output=True, text=True, timeout=120)


def FreePort():
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        shutil.rmtree(ARGS.workdir, ignore_errors=True)
        os.makedirs(ARGS.workdir)
        cls.model_dir = os.path.join(ARGS.workdir, "tiny")
        made = Tessera("make-model", "--preset", "tiny", "--tokenizer", TOKENIZER_DIR, "--out", cls.model_dir,
                       "--seed", "3")
        if made.returncode != 0:
            raise AssertionError(f"make-model failed: {made.stderr}")
        cls.server = harness.Server(ARGS.tessera, cls.model_dir, extra=["--http-port", "0"]).start()

    @classmethod
    def tearDownClass(cls):
        if hasattr(cls, "server"):
            cls.server.stop()

    def Bench(self, name, *flags, backend="--grpc"):
        out = os.path.join(ARGS.workdir, f"{name}.json")
        chart = os.path.join(ARGS.workdir, f"{name}.svg")
        address = self.server.address if backend == "--grpc" else self.server.http_address
        result = Tessera("bench", "--server", address, backend, "--out", out, "--chart", chart, *flags)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")  # no progress bar without a terminal
        with open(out) as f:
            report = json.load(f)
        return result.stdout, report, chart

    def CheckReport(self, report, num_prompts, output_len=None):
        self.assertEqual(report["completed"], num_prompts, report["first_error"])
        self.assertEqual(report["failed"], 0)
        self.assertEqual(report["failures"], {})
        self.assertGreater(report["duration_s"], 0)
        if output_len is not None:
            self.assertEqual(report["total_output_tokens"], num_prompts * output_len)
        for key in ("request_throughput", "input_throughput", "output_throughput"):
            self.assertGreater(report[key], 0, key)
        for metric in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
            summary = report[metric]
            self.assertEqual(set(summary), {"count", "mean", "p50", "p90", "p99"}, metric)
            self.assertGreater(summary["count"], 0, metric)
            self.assertLessEqual(summary["p50"], summary["p90"], metric)
            self.assertLessEqual(summary["p90"], summary["p99"], metric)
        self.assertEqual(report["ttft_ms"]["count"], num_prompts)
        self.assertLessEqual(report["ttft_ms"]["p99"], report["e2e_ms"]["p99"] + 1e-9)
        self.assertEqual(sum(w["requests"] for w in report["windows"]), num_prompts)

    def CheckChart(self, path):
        root = ET.parse(path).getroot()  # raises on malformed XML
        self.assertEqual(root.tag, f"{SVG}svg")
        self.assertEqual(len(root.findall(f".//{SVG}polyline")), 6)  # p50/p90/p99 of TTFT and E2E

    def test_random_prompts_at_two_rates_report_every_field(self):
        for name, rate in (("rate4", "4"), ("inf", "inf")):
            with self.subTest(rate=rate):
                stdout, report, chart = self.Bench(name, "--random-input-len", "12", "--random-output-len", "6",
                                                   "--num-prompts", "6", "--request-rate", rate, "--seed", "7")
                self.CheckReport(report, 6, output_len=6)
                self.assertEqual(report["total_input_tokens"], 6 * 12)
                self.assertEqual(report["config"]["request_rate"], 4.0 if rate == "4" else "inf")
                self.assertEqual(report["config"]["backend"], "grpc")
                self.assertEqual(report["tpot_ms"]["count"], 6)
                for line in ("Successful requests:", "Failed requests:", "Request throughput (req/s):",
                             "Output token throughput (tok/s):", "TTFT", "ITL", "TPOT", "E2E"):
                    self.assertIn(line, stdout)
                self.CheckChart(chart)

    def test_dataset_prompts_with_a_concurrency_cap(self):
        dataset = os.path.join(ARGS.workdir, "prompts.jsonl")
        with open(dataset, "w") as f:
            f.write(json.dumps({"prompt": "The capital of France is", "max_tokens": 5}) + "\n\n")
            f.write(json.dumps({"prompt_token_ids": [128000, 791, 6864], "max_tokens": 3}) + "\n")
        _, report, chart = self.Bench("dataset", "--dataset", dataset, "--num-prompts", "4", "--max-concurrency",
                                      "2", "--ignore-eos")
        self.CheckReport(report, 4, output_len=None)
        self.assertEqual(report["total_output_tokens"], 5 + 3 + 5 + 3)  # the lines cycle
        self.assertEqual(report["config"]["max_concurrency"], 2)
        self.CheckChart(chart)

    def test_http_streams_openai_completions(self):
        if self.server.http_address is None:
            self.skipTest("tessera serve printed no http_port: no HTTP server in this build")
        _, report, chart = self.Bench("http", "--random-input-len", "10", "--random-output-len", "5",
                                      "--num-prompts", "5", "--max-concurrency", "2", backend="--http")
        self.CheckReport(report, 5, output_len=5)
        self.assertEqual(report["config"]["backend"], "http")
        self.assertEqual(report["config"]["model"], "tiny")  # from GET /v1/models
        self.CheckChart(chart)

    def test_bad_flags_are_usage_errors(self):
        base = ["bench", "--server", self.server.address]
        for flags, part in ((["--random-input-len", "4", "--random-output-len", "2"], "--grpc and --http"),
                            (["--grpc"], "--dataset"),
                            (["--grpc", "--random-input-len", "4"], "--random-output-len"),
                            (["--grpc", "--random-input-len", "4", "--random-output-len", "2", "--request-rate",
                              "0"], "--request-rate"),
                            (["--grpc", "--random-input-len", "4", "--random-output-len", "2",
                              "--max-concurrency", "5000"], "--max-concurrency")):
            with self.subTest(flags=flags):
                result = Tessera(*base, *flags)
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn(part, result.stderr)

    def test_a_bad_dataset_line_names_the_file_and_line(self):
        dataset = os.path.join(ARGS.workdir, "bad.jsonl")
        with open(dataset, "w") as f:
            f.write('{"prompt": "ok"}\n{"prompt_token_ids": [1, "x"]}\n')
        result = Tessera("bench", "--server", self.server.address, "--grpc", "--dataset", dataset)
        self.assertEqual(result.returncode, 1)
        self.assertIn("bad.jsonl:2:", result.stderr)
        self.assertIn('"prompt_token_ids"[1]', result.stderr)

    def test_nothing_listening_is_a_one_line_error(self):
        address = f"127.0.0.1:{FreePort()}"
        grpc = Tessera("bench", "--server", address, "--grpc", "--random-input-len", "4", "--random-output-len",
                       "2", "--num-prompts", "2")
        self.assertEqual(grpc.returncode, 1)
        self.assertIn("the server does not answer gRPC", grpc.stderr)
        http = Tessera("bench", "--server", address, "--http", "--random-input-len", "4", "--random-output-len",
                       "2", "--num-prompts", "2")
        self.assertEqual(http.returncode, 1)
        self.assertIn("the server does not answer HTTP", http.stderr)


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--tessera", required=True)
    parser.add_argument("--workdir", required=True)
    ARGS, rest = parser.parse_known_args()
    ARGS.tessera = os.path.abspath(ARGS.tessera)
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)


if __name__ == "__main__":
    main()
