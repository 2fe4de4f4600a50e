"""Renders (template, context) cases with Python jinja2 under Hugging Face's apply_chat_template settings and
with Tessera's chat_template_driver, and compares the two byte for byte.

Hugging Face's environment (transformers.utils.chat_template_utils._compile_jinja_template):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]), a `tojson`
filter that is json.dumps(ensure_ascii=False, ...), and raise_exception / strftime_now globals.
"""

import datetime
import json
import subprocess

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


def hf_environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def strftime_now(format):
        return datetime.datetime.now().strftime(format)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_python(env, template, context):
    """("ok", text) or ("error", "Type: message")."""
    try:
        return "ok", env.from_string(template).render(**context)
    except Exception as e:  # jinja2 raises many types; any of them is "the template failed"
        return "error", f"{type(e).__name__}: {e}"


def render_tessera(driver, cases):
    """Runs the driver once over all (template, context) cases; returns its JSON results in order."""
    lines = "".join(json.dumps({"template": t, "context": c}, ensure_ascii=False) + "\n" for t, c in cases)
    proc = subprocess.run([driver], input=lines.encode("utf-8"), capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"driver failed with exit code {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    results = [json.loads(line) for line in proc.stdout.decode("utf-8").split("\n") if line]
    if len(results) != len(cases):
        raise SystemExit(f"driver printed {len(results)} results for {len(cases)} cases")
    return results


def compare(driver, cases, expect_errors=()):
    """Compares every case; `expect_errors` holds the indices where jinja2 is expected to fail.
    Returns the number of failures (and prints each)."""
    env = hf_environment()
    ours = render_tessera(driver, cases)
    failures = 0
    for i, ((template, context), mine) in enumerate(zip(cases, ours)):
        status, text = render_python(env, template, context)
        problem = None
        if status == "error" and i not in expect_errors:
            problem = f"jinja2 failed unexpectedly ({text}); fix the case"
        elif status == "ok" and i in expect_errors:
            problem = "jinja2 succeeded but the case expects an error"
        elif status == "ok" and mine.get("prompt") != text:
            problem = f"jinja2: {text!r}\ntessera: {mine!r}"
        elif status == "error" and "error" not in mine:
            problem = f"jinja2 raised {text}\ntessera rendered {mine.get('prompt')!r}"
        if problem:
            failures += 1
            print(f"FAIL case {i}: template {template!r}\n  context {json.dumps(context)[:200]}\n  {problem}")
    return failures
