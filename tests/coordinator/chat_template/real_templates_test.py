"""Real chat templates rendered by Python jinja2 (Hugging Face settings) and by Tessera in the same run, on
conversations with system prompts, tools, tool calls and ipython / tool messages, with and without
add_generation_prompt: outputs must be identical byte for byte (or both must raise).

Templates: the chat_template of tests/data/llama-3-tokenizer and tests/data/llama-3.1-tokenizer, plus the
full Llama 3.1 Instruct template (tools, builtin_tools, date_string), the Llama 3.2 one (strftime_now) and
ChatML / Qwen 2.5 / Gemma 3 style templates, written out below, and the templates of model directories given
with --model-dir (SmolLM2's, as import-gguf writes it from the GGUF). `date_string` is passed explicitly wherever the
date would otherwise show, so that the output does not depend on today's date.

Usage: real_templates_test.py --driver PATH/TO/chat_template_driver --data tests/data
"""

import argparse
import copy
import json
import os
import sys

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
from jinja_harness import compare  # noqa: E402

LLAMA_31_TOOLS = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# Llama 3.2: the date comes from strftime_now unless date_string is given.
LLAMA_32 = LLAMA_31_TOOLS.replace(
    '{%- if not date_string is defined %}\n    {%- set date_string = "26 Jul 2024" %}\n{%- endif %}',
    '{%- if not date_string is defined %}\n    {%- if strftime_now is defined %}\n'
    '        {%- set date_string = strftime_now("%d %b %Y") %}\n    {%- else %}\n'
    '        {%- set date_string = "26 Jul 2024" %}\n    {%- endif %}\n{%- endif %}')

QWEN_25 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

GEMMA_3 = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city (°C).",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city, e.g. \"Paris\""},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Adds numbers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]}}},
]

SIMPLE = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "  Be terse.\n"}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "  Tell me a joke.  "}],
    [{"role": "user", "content": "Ünïcödé ✓ 東京 😀\nline2\r\n\t"}],
    [{"role": "user", "content": "{{ not a template }} {% raw %} \"quotes\" \\ back"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": "   "}],
]

TOOL_CALL = {"role": "assistant", "tool_calls": [{"type": "function", "function": {
    "name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]}
TOOL_RESULT = {"role": "tool", "content": "{\"temperature\": 21, \"sky\": \"clear\"}"}
IPYTHON_DICT = {"role": "ipython", "content": {"temperature": 21.5, "ok": True, "list": [1, None]}}
WITH_TOOLS = [
    [{"role": "user", "content": "Weather in Paris?"}],
    [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"}, TOOL_CALL,
     TOOL_RESULT, {"role": "assistant", "content": "It is 21°C and clear."}],
    [{"role": "user", "content": "Weather?"}, TOOL_CALL, IPYTHON_DICT],
]


def llama_cases(template):
    cases = []
    for messages in SIMPLE + WITH_TOOLS:
        for gen in (True, False):
            base = {"messages": messages, "add_generation_prompt": gen, "bos_token": "<|begin_of_text|>",
                    "eos_token": "<|eot_id|>", "date_string": "26 Jul 2024"}
            cases.append(base)
            cases.append({**base, "tools": TOOLS})
            cases.append({**base, "tools": TOOLS, "tools_in_user_message": False, "date_string": "01 Jan 2025"})
    builtin = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Search it"},
               {"role": "assistant", "tool_calls": [{"function": {"name": "brave_search",
                                                                  "arguments": {"query": "llama 3.1"}}}]},
               {"role": "ipython", "content": "results..."}]
    cases.append({"messages": builtin, "add_generation_prompt": True, "bos_token": "<|begin_of_text|>",
                  "builtin_tools": ["brave_search", "code_interpreter", "wolfram_alpha"], "date_string": "x"})
    cases.append({"messages": builtin, "add_generation_prompt": False, "bos_token": "<|begin_of_text|>",
                  "builtin_tools": ["wolfram_alpha"], "custom_tools": TOOLS[:1], "date_string": "x"})
    two_calls = copy.deepcopy(TOOL_CALL)
    two_calls["tool_calls"].append(two_calls["tool_calls"][0])
    cases.append({"messages": [{"role": "user", "content": "a"}, two_calls], "bos_token": "",
                  "date_string": "x"})  # raises: single tool calls only
    cases.append({"messages": [{"role": "system", "content": "only system"}], "tools": TOOLS,
                  "bos_token": "", "date_string": "x"})  # raises: no first user message
    return cases


def generic_cases():
    cases = []
    for messages in SIMPLE + WITH_TOOLS[:2]:
        for gen in (True, False):
            cases.append({"messages": messages, "add_generation_prompt": gen, "bos_token": "<bos>",
                          "eos_token": "<eos>"})
            cases.append({"messages": messages, "add_generation_prompt": gen, "bos_token": "<bos>",
                          "tools": TOOLS})
    multimodal = [{"role": "system", "content": [{"type": "text", "text": "Look. "}]},
                  {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What is it? "}]}]
    cases.append({"messages": multimodal, "add_generation_prompt": True, "bos_token": "<bos>"})
    return cases


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--driver", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model-dir", action="append", default=[],
                        help="also a model snapshot's own template (e.g. one written by tessera import-gguf)")
    args = parser.parse_args()
    templates = {}
    for name in ("llama-3-tokenizer", "llama-3.1-tokenizer"):
        with open(os.path.join(args.data, name, "tokenizer_config.json"), encoding="utf-8") as f:
            templates[name] = json.load(f)["chat_template"]
    templates["llama-3.1-instruct-tools"] = LLAMA_31_TOOLS
    templates["llama-3.2-instruct"] = LLAMA_32
    cases, names = [], []
    for name, template in templates.items():
        for context in llama_cases(template):
            cases.append((template, context))
            names.append(name)
    generic = [("qwen-2.5", QWEN_25), ("gemma-3", GEMMA_3)]
    for model_dir in args.model_dir:
        with open(os.path.join(model_dir, "tokenizer_config.json"), encoding="utf-8") as f:
            generic.append((os.path.basename(model_dir.rstrip("/")), json.load(f)["chat_template"]))
    for name, template in generic:
        for context in generic_cases():
            cases.append((template, context))
            names.append(name)
    # Which cases raise is jinja2's call; the harness checks that Tessera fails on exactly those.
    from jinja_harness import hf_environment, render_python
    env = hf_environment()
    expect_errors = {i for i, (t, c) in enumerate(cases) if render_python(env, t, c)[0] == "error"}
    failures = compare(args.driver, cases, expect_errors)
    raised = len(expect_errors)
    print(f"{len(cases) - failures}/{len(cases)} real-template renders match jinja2 "
          f"({raised} of them raise in both); templates: {', '.join(templates)}, "
          f"{', '.join(name for name, _ in generic)}")
    return 1 if failures or len(cases) < 100 else 0


if __name__ == "__main__":
    sys.exit(main())
