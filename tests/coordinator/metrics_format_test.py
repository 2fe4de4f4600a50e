"""Parses metrics_sample_main's rendering with prometheus_client's own parser (the format Prometheus scrapes)
and checks every engine metric's type, labels and histogram invariants: buckets cumulative and increasing in
le, +Inf equal to _count. Then Prometheus's own `promtool check metrics` (scripts/setup.sh puts it in .venv/bin):
the text must parse, and its only lint findings may be the two that vLLM's names bring with them."""

import math
import os
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

MODEL = 'org/"tiny"\\llama\nv2'
EXPECTED = {
    "tessera:num_requests_running": "gauge",
    "tessera:num_requests_waiting": "gauge",
    "tessera:kv_cache_usage_perc": "gauge",
    "tessera:prompt_tokens": "counter",  # the parser drops a counter's _total from the family name
    "tessera:generation_tokens": "counter",
    "tessera:request_success": "counter",
    "tessera:time_to_first_token_seconds": "histogram",
    "tessera:inter_token_latency_seconds": "histogram",
    "tessera:e2e_request_latency_seconds": "histogram",
    "tessera:request_queue_time_seconds": "histogram",
    "tessera:request_prefill_time_seconds": "histogram",
    "tessera:request_decode_time_seconds": "histogram",
    "tessera:iteration_tokens_total": "histogram",
    "tessera:worker_step_seconds": "histogram",
    "tessera:control_plane_seconds": "histogram",
    "tessera:num_preemptions": "counter",
    "tessera:prefix_cache_queries": "counter",
    "tessera:prefix_cache_hits": "counter",
}


def check(text):
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == set(EXPECTED), sorted(set(families) ^ set(EXPECTED))
    for name, kind in EXPECTED.items():
        family = families[name]
        assert family.type == kind, (name, family.type, kind)
        assert family.documentation, name
        assert family.samples, name
        for sample in family.samples:
            assert sample.labels["model_name"] == MODEL, (name, sample.labels)
        if kind != "histogram":
            continue
        buckets = [s for s in family.samples if s.name == name + "_bucket"]
        bounds = [float(s.labels["le"]) for s in buckets]
        counts = [s.value for s in buckets]
        assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), (name, bounds)
        assert math.isinf(bounds[-1]), (name, bounds)
        assert counts == sorted(counts), (name, counts)
        (count,) = [s.value for s in family.samples if s.name == name + "_count"]
        (total,) = [s.value for s in family.samples if s.name == name + "_sum"]
        assert counts[-1] == count > 0, (name, counts, count)
        assert total > 0, name
    success = {s.labels["finished_reason"]: s.value for s in families["tessera:request_success"].samples}
    assert success == {"stop": 2, "length": 1, "abort": 0, "error": 0}, success
    ttft = {s.labels["le"]: s.value for s in families["tessera:time_to_first_token_seconds"].samples
            if s.name.endswith("_bucket")}
    assert ttft["0.005"] == 1 and ttft["0.25"] == 2 and ttft["2.5"] == 3 and ttft["2560"] == 3, ttft
    assert ttft["+Inf"] == 4, ttft
    (usage,) = families["tessera:kv_cache_usage_perc"].samples
    assert usage.value == 0.375, usage


# promtool's style lints that vLLM's names (kept so that dashboards port by a rename) do not meet: a colon is
# meant for recording rules, and vLLM's tessera:iteration_tokens_total is a histogram named like a counter.
ACCEPTED_LINTS = ("metric names should not contain ':'", 'non-counter metrics should not have "_total" suffix')


def promtool(text):
    tool = os.path.join(os.path.dirname(sys.executable), "promtool")
    result = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True)
    findings = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    unexpected = [line for line in findings if not line.endswith(ACCEPTED_LINTS)]
    assert result.returncode in (0, 3) and not unexpected, (result.returncode, unexpected)
    assert len(findings) <= len(EXPECTED) + 1, findings  # one per name at most, plus the histogram's suffix
    return len(findings)


def main():
    text = subprocess.run([sys.argv[1]], check=True, capture_output=True, text=True).stdout
    check(text)
    lints = promtool(text)
    # promtool does catch a broken exposition (so that its silence above means something).
    broken = subprocess.run([os.path.join(os.path.dirname(sys.executable), "promtool"), "check", "metrics"],
                            input=text + "x{\n", capture_output=True, text=True)
    assert broken.returncode == 1 and "parsing error" in broken.stdout + broken.stderr, broken
    print(f"parsed {len(text.splitlines())} lines; promtool: {lints} accepted lint findings")


if __name__ == "__main__":
    main()
