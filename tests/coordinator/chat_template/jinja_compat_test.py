"""Every construct of Tessera's chat-template subset, rendered by Python jinja2 (Hugging Face settings) and by
Tessera in the same run: outputs must be identical byte for byte, or both must fail.

Usage: jinja_compat_test.py --driver PATH/TO/chat_template_driver
"""

import argparse
import sys

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
from jinja_harness import compare  # noqa: E402

MSGS = [
    {"role": "system", "content": "  You are helpful.  "},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye \u00e9\u6771"},
]
BASE = {
    "messages": MSGS,
    "add_generation_prompt": True,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "l": [3, 1, 2],
    "s": "h\u00e9llo",
    "d": {"b": 1, "a": [1, 2], "c": {"x": None, "y": True}},
    "n": None,
    "f": 2.5,
    "words": ["apple", "Banana", "apple", "cherry"],
    "users": [{"name": "ann", "age": 3, "tags": ["x"]}, {"name": "bob", "age": 5},
              {"name": "cy", "age": 3, "active": True}],
}

CASES = []  # (template, context, expect_error)


def case(template, context=None, error=False, **extra):
    ctx = dict(BASE if context is None else context)
    ctx.update(extra)
    CASES.append((template, ctx, error))


# --- whitespace control, trim_blocks and lstrip_blocks ---------------------------------------------------
case("{% if true %}\nyes\n{% endif %}\n")
case("  {% if true %}\n  yes\n  {% endif %}\nafter")
case("a\n  {%- if true -%}\n  b\n  {%- endif -%}\n  c")
case("   {%+ if true %}x{% endif %}")
case("   {% if true +%}\nx{% endif %}")
case("  {{ 'x' }}  \n  {{ 'y' }}\n")
case("a  {{- 'x' -}}  b")
case("a  {{+ 'x' }}  b")
case("a {# c #} b")
case("a\n  {# comment #}\nb")
case("a\n  {#- c -#}\n  b")
case("a\n  {#+ c #}\nb")
case("a {# c +#}\nb")
case("{% raw %}{{ x }}{% if %}{% endraw %}")
case("  {% raw %}\n  {{ x }}\n  {% endraw %}\nz")
case("a {%- raw -%}  {{ y }}  {%- endraw -%} b")
case("{% for i in range(3) %}\n  {{ i }}\n{% endfor %}\n")
case("\t{% if true %}\tx\n\t{% endif %}\ty")
case("x {% if true %} y {% endif %} z")
case("a\r\n  {% if true %}\r\nb\r\n  {% endif %}\r\nc\r\n")
case("abc\n")
case("abc\n\n")
case("{{ 'a' }}\n")
case("{% if true %}   \n{% endif %}")
case("{% if true -%}   \n\n  x  {%- endif %}")
case("{%- if true %}\n\n  x{% endif %}")
case("a\u00a0{%- if true %}b{% endif %}")
case("a\n\u00a0 {% if true %}b{% endif %}")
case("line1\n{# comment #}\nline2")
case("{% set x %}\n  hi\n{% endset %}[{{ x }}]")
case("{% macro m(a) %}\n  <{{ a }}>\n{% endmacro %}\n{{ m(1) }}{{ m(2) }}")
case("{{ 'a' }}\n{{ 'b' }}\n")
case("{% if false %}a{% else %}\n  b{% endif %}")
case("   {% for x in [1,2] %}{{ x }}{% endfor %}   ")
case("\n\n{% if true %}\n\n{% endif %}\n\n")
case("{% for m in messages %}\n  {% if m.role == 'user' %}\n    U: {{ m.content }}\n  {% else %}\n    O\n  {% endif %}\n{% endfor %}")
case("{%- for m in messages -%}\n  [{{- m.role -}}]\n{%- endfor -%}\n")
case("{% for m in messages %}{{ m.role }}\n{% endfor %}")
case("x\n    {%- set a = 1 %}\n    {{- a }}\n")
case("  {%- if true %} a {% endif -%}  \n  b")
case("{{- ' lead' }} {{ 'trail ' -}}   \n end")
case("{% if true %}{% if true %}\n  deep\n  {% endif %}\n{% endif %}")
case("a {%- if true %} b {%- endif %} c")
case("a{# x #}\n{# y #}\nb")
case("{%- set x = 1 -%}\n\n\n{{ x }}")
case(" {% if true %}a{% endif %} {% if true %}b{% endif %}")
case("{% for i in range(2) %}{% if loop.first %}\n{% endif %}{{ i }}{% endfor %}")

# --- literals and printing as Python str() -------------------------------------------------------------
case(r"{{ 'a\nb\t\'c\\' }}|{{ " + '"it\'s"' + " }}")
case(r"{{ '\u00e9\x41\101\d' }}")
case("{{ 'a' 'b' \"c\" }}")
case("{{ 1_000 }} {{ 0x1F }} {{ 0o17 }} {{ 0b101 }} {{ 0 }}")
case("{{ 1.5e3 }} {{ 2.0 }} {{ 1e-7 }} {{ 1e16 }} {{ 123456789.125 }} {{ 0.1 + 0.2 }} {{ 1e300 * 1e300 }}")
case("{{ 1E5 }} {{ 2.5e-3 }} {{ 10/4 }} {{ 1/3 }} {{ 100.0 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }}")
case("{{ true }} {{ False }} {{ none }} {{ None }} {{ True }}")
case("{{ [1, 'a', none, true, 1.0, [2], {'k': 'v'}] }}")
case("{{ {'a': 1, 'b': [1, 'x']} }}")
case("{{ (1,) }} {{ (1, 2) }} {{ () }} {{ 1, 2 }}")
case(r"""{{ ['it\'s', "q\"", 'a\\b', 'x\ny', '\x00\x7f', 'tab\t'] }}""")
case("{{ d }} {{ l }} {{ n }} {{ f }}")
case("{{ messages[0] }}")

# --- attribute and item access, undefined ---------------------------------------------------------------
case("{{ messages[1].role }} {{ messages[1]['content'] }} {{ d.c.y }} {{ d['a'][1] }}")
case("[{{ d.missing }}] {{ d.missing is defined }} {{ d.c.x is none }} {{ d.c.x }}")
case("{{ l[-1] }} {{ l[5] }}|{{ s[0] }} {{ s[-1] }} {{ s[10] }}|{{ l.0 }}")
case("{{ s.missing }}|{{ n.attr }}|{{ l.attr }}")
case("{{ d.missing.x }}", error=True)
case("{{ nothing.x }}", error=True)
case("{{ nothing['x'] }}", error=True)
case("[{{ nothing }}] {{ nothing is defined }} {{ nothing is undefined }} {{ not nothing }}")
case("{{ nothing | length }} {{ nothing | default('dflt') }} {{ nothing ~ 'x' }} {{ nothing | string }}|")
case("{% for x in nothing %}a{% else %}empty{% endfor %} {{ 'a' in nothing }} {{ nothing | list }}")
case("{{ nothing + 1 }}", error=True)
case("{{ nothing < 1 }}", error=True)
case("{{ nothing == nothing }} {{ nothing == none }} {{ nothing | upper }}|{{ nothing | trim }}|")
case("{% if messages[0].missing %}yes{% else %}no{% endif %}")
case("{{ messages[9] is defined }} {{ (messages | last).role }}")

# --- slicing --------------------------------------------------------------------------------------------
case("{{ l[1:] }} {{ l[:-1] }} {{ l[::-1] }} {{ l[::2] }} {{ l[1:3] }} {{ l[-2:] }} {{ l[5:] }} {{ l[::-2] }}")
case("{{ s[::-1] }} {{ s[1:-1] }} {{ s[:2] }} {{ 'abcdef'[-4:-1:2] }} {{ 'abc'[10:] }}|{{ l[-10:2] }}")
case("{% for m in messages[1:] %}{{ m.role }},{% endfor %}|{{ messages[-1:][0].content }}")
case("{{ l[::0] }}", error=True)
case("{{ (1, 2, 3)[1:] }} {{ l[none:2] }}")

# --- arithmetic and concatenation -----------------------------------------------------------------------
case("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 7 / 2 }} {{ 4 / 2 }}")
case("{{ 2 ** 10 }} {{ 2 ** -1 }} {{ 2.5 * 2 }} {{ 1 + 2.0 }} {{ 1 - 3 }} {{ -3 }} {{ +3 }} {{ -f }}")
case("{{ 'ab' * 3 }} {{ 3 * 'ab' }} {{ [1] * 2 }} {{ 'x' * 0 }}|{{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 7.0 // -2 }}")
case("{{ true + 1 }} {{ 2 * 3 + 4 }} {{ 2 + 3 * 4 }} {{ (2 + 3) * 4 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }}")
case("{{ 10 - 2 - 3 }} {{ 100 / 10 / 5 }} {{ 2 * 3 % 4 }} {{ 1 ~ (2 + 3) }}")
case("{{ 1 + 2 ~ 3 + 4 }}", error=True)  # `~` binds tighter than `+`
case("{{ 1 / 0 }}", error=True)
case("{{ 1 // 0 }}", error=True)
case("{{ 'a' ~ 1 ~ none ~ true ~ 1.0 ~ [1] }}")
case("{{ 'a' + 'b' }} {{ [1] + [2, 3] }} {{ (1,) + (2,) }}")
case("{{ 'a' + 1 }}", error=True)
case("{{ 1 + 'a' }}", error=True)
case("{{ messages[1].content + '!' }} {{ bos_token + messages[1]['content'] | upper + eos_token }}")

# --- comparisons, membership, logic, inline if ----------------------------------------------------------
case("{{ 1 < 2 }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 5 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ 'a' != 'b' }}")
case("{{ [1, 2] == [1, 2] }} {{ 1 >= 1 }} {{ none == none }} {{ true == 1 }} {{ [1, 2] < [1, 3] }} {{ 2 <= 1 }}")
case("{{ 'a' in 'cat' }} {{ 1 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }} {{ 'x' not in 'abc' }}")
case("{{ 'role' in messages[0] }} {{ 'tool_calls' in messages[0] }} {{ 'b' in d }} {{ 1.0 in [1] }}")
case("{{ 1 in 'abc' }}", error=True)
case("{{ 'a' in none }}", error=True)
case("{{ 'a' < 1 }}", error=True)
case("{{ true and false }} {{ 0 or 'x' }} {{ '' or [] }} {{ 1 and 2 }} {{ not 0 }} {{ not [] }} {{ none or 'd' }}")
case("{{ not 1 == 2 }} {{ not (1 == 2) and true }} {{ false or true and false }} {{ not not 'x' }}")
case("{{ 'y' if true else 'n' }} {{ 'y' if false else 'n' }} [{{ 'y' if false }}] {{ 1 if 0 else 2 if 1 else 3 }}")
case("{{ ('a' if true else 'b') ~ 'c' }} {{ 'x' ~ ('y' if n is none else 'z') }}")

# --- set, namespace, scoping ----------------------------------------------------------------------------
case("{% set x = 1 %}{% set y = x + 1 %}{{ x }}{{ y }}")
case("{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c, e = [3, 4] %}{{ c }}{{ e }}")
case("{% set t = 1, 2 %}{{ t }}")
case("{% set x = 0 %}{% for i in [1, 2] %}{{ x }}{% set x = x + i %}{{ x }}{% endfor %}|{{ x }}")
case("{% set ns = namespace(n=0, s='') %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.n }} {{ ns.s }}")
case("{% set ns = namespace(found=false) %}{% for m in messages %}{% if m.role == 'assistant' %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }}")
case("{% set ns = namespace() %}{% set ns.a = [1] %}{{ ns.a }} {{ ns.missing is defined }}")
case("{% set ns = namespace({'k': 'v'}, j=2) %}{{ ns.k }}{{ ns.j }}")
case("{% set x = 5 %}{% if true %}{% set x = 6 %}{% endif %}{{ x }}")
case("{% for i in [1] %}{% set inner = 'v' %}{% endfor %}[{{ inner }}]")
case("{% set messages = messages[1:] %}{{ messages | length }}{% set bos_token = 'B' %}{{ bos_token }}")
case("{% set x %}a{{ 1 + 1 }}b{% endset %}{{ x | length }}{{ x }}")
case("{% set n = 1 %}{{ n }}")
case("{% set x = 1 %}{% set x.y = 2 %}", error=True)
case("{% set d2 = dict(a=1, b='x') %}{{ d2 }} {{ d2.b }}")

# --- for loops ------------------------------------------------------------------------------------------
case("{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }};{% endfor %}")
case("{% for x in l %}{{ loop.previtem | default('-') }}<{{ x }}>{{ loop.nextitem | default('-') }} {% endfor %}")
case("{% for x in [] %}a{% else %}empty{% endfor %}|{% for x in [1] %}a{% else %}empty{% endfor %}")
case("{% for m in messages if m.role == 'user' %}{{ loop.index }}:{{ m.content }}({{ loop.length }}) {% endfor %}")
case("{% for m in messages if m.role == 'nobody' %}x{% else %}none matched{% endfor %}")
case("{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}")
case("{% for x in [1, 2] %}{% for y in 'ab' %}{{ x }}{{ y }}{{ loop.index }}{% endfor %}{{ loop.index }} {% endfor %}")
case("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}")
case("{% for k, v in d | items %}{{ k }}={{ v }};{% endfor %}|{% for (a, b) in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}")
case("{% for c in s %}{{ c }}.{% endfor %}|{% for k in d %}{{ k }}{% endfor %}")
case("{% for x in [1, 2, 3] %}{% for y in [1, 2] %}{% if y == 2 %}{% break %}{% endif %}{{ x }}{{ y }}{% endfor %}{% endfor %}")
case("{% for x in range(1, 10, 3) %}{{ x }}{% endfor %}{% for x in range(5, 0, -2) %}{{ x }}{% endfor %}")
case("{% for x in 5 %}{% endfor %}", error=True)
case("{% for a, b in [[1, 2, 3]] %}{% endfor %}", error=True)
case("{% for m in messages %}{% if loop.first and m.role == 'system' %}S{% elif loop.last %}L{% else %}M{% endif %}{% endfor %}")
case("{% for x in l %}{{ x }}{% if not loop.last %}, {% endif %}{% endfor %}")

# --- if / elif / else -----------------------------------------------------------------------------------
case("{% if n %}a{% elif f > 2 %}b{% elif true %}c{% else %}d{% endif %}")
case("{% if [] %}a{% elif {} %}b{% elif '' %}c{% elif 0.0 %}d{% else %}e{% endif %}")
case("{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] | trim }}{% endif %}")
case("{% if l|length > 2 and s is string %}ok{% endif %}")

# --- macros ---------------------------------------------------------------------------------------------
case("{% macro f(a, b=2) %}{{ a }}{{ b }}{{ x }}{% endmacro %}{% set x = 5 %}{{ f(1) }}{{ f(1, b=3) }}{{ f(b=4, a=0) }}")
case("{% macro g(a) %}[{{ a }}]{% endmacro %}{{ g() }}{{ g('x') | upper }}")
case("{% macro fact(k) %}{% if k <= 1 %}1{% else %}{{ k * fact(k - 1) | int }}{% endif %}{% endmacro %}{{ fact(5) }}")
case("{% macro v() %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ v(1, 2, k=3) }}")
case("{% macro h(a) %}{{ a }}{% endmacro %}{{ h(1, 2) }}", error=True)
case("{% macro render(m) %}<{{ m.role }}>{{ m.content | trim }}</{{ m.role }}>{% endmacro %}{% for m in messages %}{{ render(m) }}{% endfor %}")
case("{% macro d2(a, b=a ~ '!') %}{{ b }}{% endmacro %}{{ d2('x') }}")

# --- filters --------------------------------------------------------------------------------------------
case("[{{ '  a b  ' | trim }}] [{{ 'xxaxx' | trim('x') }}] [{{ '\u00a0\ta\n' | trim }}] {{ 5 | trim }}")
case("{{ l | length }} {{ s | length }} {{ d | length }} {{ 'é😀' | count }} {{ [] | length }}")
case("{{ 5 | length }}", error=True)
case("{{ s | upper }} {{ 'ÀÉ ßx' | lower }} {{ 'straße' | upper }} {{ none | upper }} {{ 'abc' | capitalize }} {{ 'aBC dEF' | capitalize }}")
case("{{ 'hello world-foo(bar) x_y' | title }} {{ \"they're 1st\" | title }} {{ 'ÉCOLE élève' | title }}")
case("{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ [] | tojson(indent=2) }}|{{ {} | tojson }}")
case("{{ 'é\"<>&\\n\u2028' | tojson }} {{ 'é😀' | tojson(ensure_ascii=true) }} {{ 1.5 | tojson }} {{ none | tojson }} {{ true | tojson }}")
case("{{ d | tojson(sort_keys=true) }} {{ d | tojson(separators=(',', ':')) }} {{ d | tojson(indent='\\t') }}")
case("{{ users | tojson(indent=4) }}")
case("{{ [1, [2, {'a': []}]] | tojson(indent=0) }}|{{ l | tojson(4) }}")
case("{{ nothing | tojson }}", error=True)
case("{{ l | join }} {{ l | join(', ') }} {{ users | join('|', attribute='name') }} {{ [1, none, 'x'] | join('-') }}")
case("{{ 'aXbXc' | replace('X', '-') }} {{ 'aaa' | replace('a', 'b', 2) }} {{ 'abc' | replace('', '.') }} {{ 12 | replace('1', 'one') }}")
case("{{ l | first }} {{ l | last }} {{ s | first }} {{ s | last }} {{ d | first }} [{{ [] | first }}] {{ users | first }}")
case("{{ nothing | default('a') }} {{ n | default('b') }} {{ '' | default('c') }} {{ '' | default('c', true) }} {{ 0 | d('z', true) }} {{ false | d('y') }}")
case("{{ 12 | string }}{{ [1] | string }}{{ none | string }} {{ ('x' | string) + 'y' }}")
case("{{ '42' | int }} {{ ' 7 ' | int }} {{ '4.9' | int }} {{ 'x' | int }} {{ 'x' | int(5) }} {{ 3.99 | int }} {{ -3.99 | int }} {{ true | int }} {{ none | int }} {{ '0x1A' | int(0, 16) }} {{ '1e3' | int }}")
case("{{ '2.5' | float }} {{ 3 | float }} {{ 'x' | float }} {{ 'x' | float(1.5) }} {{ ' 1e3 ' | float }} {{ none | float }}")
case("{{ 'abc' | list }} {{ d | list }} {{ (1, 2) | list }} {{ l | list }}")
case("{{ d | items | list }} {% for k, v in {'z': 1, 'a': 2} | items %}{{ k }}{{ v }}{% endfor %}")
case("{{ 5 | items | list }}", error=True)
case("{{ users | selectattr('age', 'equalto', 3) | map(attribute='name') | join(',') }} {{ users | rejectattr('active') | map(attribute='name') | list }}")
case("{{ users | selectattr('active') | list | length }} {{ users | selectattr('name', 'in', ['bob', 'cy']) | map(attribute='age') | list }}")
case("{{ messages | selectattr('role', 'eq', 'user') | list | length }} {{ messages | rejectattr('role', '==', 'user') | map(attribute='role') | join(' ') }}")
case("{{ users | selectattr('name', 'defined') | map(attribute='name') | first }} {{ users | map(attribute='tags.0', default='-') | list }}")
case("{{ l | select('odd') | list }} {{ l | reject('odd') | list }} {{ [0, 1, '', 'a', none] | select | list }} {{ words | reject('equalto', 'apple') | list }}")
case("{{ l | select('gt', 1) | list }} {{ l | select('<=', 2) | list }} {{ words | select('lower') | list }}")
case("{{ words | map('upper') | list }} {{ words | map('replace', 'a', 'A') | join }} {{ users | map(attribute='missing', default=0) | list }}")
case("{{ l | reverse | list }} {{ s | reverse }} {{ d | reverse | list }} {{ (1, 2) | reverse | join }}")
case("{{ words | unique | list }} {{ words | unique(case_sensitive=true) | list }} {{ users | unique(attribute='age') | map(attribute='name') | list }} {{ [1, 1.0, true, 2] | unique | list }}")
case("{{ 'a <b>' | safe }} {{ 5 | abs }} {{ -2.5 | abs }}")
case("{{ 'a\nb\n\nc' | indent }}|{{ 'a\nb' | indent(2, true) }}|{{ 'a\n\nb' | indent(2, blank=true) }}|{{ 'x\ny' | indent('> ') }}")
case("{{ messages | map(attribute='content') | map('trim') | join('|') }}")
case("{{ messages | selectattr('role', 'equalto', 'user') | length }}", error=True)
case("{% if messages | selectattr('role', 'equalto', 'nobody') %}generator is truthy{% endif %}")

# --- tests ----------------------------------------------------------------------------------------------
case("{{ s is string }} {{ 1 is string }} {{ 1 is number }} {{ 1.5 is number }} {{ true is number }} {{ 'x' is number }}")
case("{{ d is mapping }} {{ l is mapping }} {{ l is iterable }} {{ s is iterable }} {{ 1 is iterable }} {{ d is iterable }} {{ nothing is iterable }}")
case("{{ l is sequence }} {{ s is sequence }} {{ d is sequence }} {{ 1 is sequence }} {{ n is none }} {{ 0 is none }}")
case("{{ 1 is equalto 1 }} {{ 1 is eq 2 }} {{ 'a' is equalto('a') }} {{ true is true }} {{ 1 is true }} {{ false is false }} {{ 0 is false }}")
case("{{ true is boolean }} {{ 1 is boolean }} {{ 1 is integer }} {{ true is integer }} {{ 1.0 is integer }} {{ 1.0 is float }} {{ 1 is float }}")
case("{{ 1 is in [1, 2] }} {{ 'a' is in 'xyz' }} {{ 'abc' is lower }} {{ 'aBc' is lower }} {{ 'ABC' is upper }} {{ '1' is upper }}")
case("{{ 3 is odd }} {{ 3 is even }} {{ 4 is even }} {{ -3 is odd }} {{ 0 is even }} {{ 5 is gt 3 }} {{ 5 is lt 3 }} {{ 5 is ge 5 }}")
case("{{ x is defined }} {{ l is defined }} {{ l is not defined }} {{ n is not none }} {{ not n is none }} {{ l is not string }}")
case("{{ messages[0].content is string and messages[0].role is defined }} {{ 'x' if n is none else 'y' }}")

# --- methods --------------------------------------------------------------------------------------------
case("[{{ '  x  '.strip() }}] [{{ '  x  '.lstrip() }}] [{{ '  x  '.rstrip() }}] [{{ 'xxyxx'.strip('x') }}] [{{ '\u3000x\n'.strip() }}]")
case("{{ 'a b  c'.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a b c'.split(' ', 1) }} {{ 'a b c'.rsplit(' ', 1) }} {{ '  a  b '.split(None, 1) }} {{ ''.split() }} {{ ''.split(',') }}")
case("{{ 'abc'.startswith('a') }} {{ 'abc'.endswith('bc') }} {{ 'abc'.startswith(('x', 'ab')) }} {{ 'abc'.endswith('abcd') }}")
case("{{ 'aBc dEf'.upper() }} {{ 'aBc'.lower() }} {{ \"they're bill's 1st\".title() }} {{ 'hello WORLD'.capitalize() }}")
case("{{ 'a-b-c'.replace('-', '+') }} {{ 'a-b-c'.replace('-', '', 1) }} {{ ', '.join(['a', 'b']) }} {{ 'abcb'.find('b') }} {{ 'éab'.find('a') }} {{ 'abab'.count('ab') }}")
case("{{ d.items() | list }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.get('b') }} {{ d.get('zz') }} {{ d.get('zz', 'dflt') }} {{ d.items() | length }}")
case("{% for k, v in messages[0].items() %}{{ k }}:{{ v | trim }};{% endfor %} {{ 'l1\nl2\r\nl3'.splitlines() }}")
case("{{ messages[1].content.strip().lower().replace('h', 'j') }}")
case("{{ ', '.join([1, 2]) }}", error=True)
case("{{ nothing.strip() }}", error=True)
case("{{ l.strip() }}", error=True)

# --- globals --------------------------------------------------------------------------------------------
case("{{ range(3) | list }} {{ range(2, 5) | list }} {{ range(0) | list }} {{ range(3) | length }}")
case("{{ raise_exception('Conversation roles must alternate user/assistant') }}", error=True)
case("{% if messages[1].role != 'system' %}{{ raise_exception('bad role: ' ~ messages[1].role) }}{% endif %}", error=True)
case("{{ strftime_now('%Y') | length }} {{ strftime_now is defined }} {{ raise_exception is defined }}")
case("{{ undefined_function(1) }}", error=True)
case("{{ messages[0]() }}", error=True)

# --- generation-prompt templates in the style real models ship -----------------------------------------
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
case(CHATML)
case(CHATML, add_generation_prompt=False)
ALTERNATE = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
             "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
             "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
             "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}")
case(ALTERNATE, messages=MSGS[1:3])
case(ALTERNATE, error=True)
case(ALTERNATE, messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], error=True)

# --- assorted interactions -------------------------------------------------------------------------------
case("{{ -1 | abs }} {{ -(1) }} {{ not true | string }} {{ true | string | lower }} {{ 1 | string + '2' }} {{ [1, 2] | map('string') | join }}")
case("{{ messages | length is even }} {% if not messages %}empty{% else %}full{% endif %} {{ loop is defined }}")
case("{% set ns = namespace(items=[]) %}{% for m in messages %}{% set ns.items = ns.items + [m.role[0]] %}{% endfor %}{{ ns.items | join }}")
case("{{ 'é' < 'z' }} {{ 'Z' < 'a' }} {{ 'b' > 'abc' }} {{ (messages | map(attribute='role') | list)[1:3] }}")
case("{{ [3, 1] + l }} {{ l | first + l | last }} {{ users[0].tags[0] ~ users[1].name }} {{ users[2].active is true }}")
case("{% for u in users if u.age > 3 or u.active %}{{ u.name }}{% endfor %} {{ users | selectattr('age', 'gt', 3) | list | length }}")
case("{% for m in messages %}{% for k in m %}{{ k }}{% endfor %};{% endfor %}")
case("{{ messages[0]['content'][2:6] | upper }} {{ messages[-1].content[-2:] }}")
case("{% set s2 = 'a\\nb' %}{{ s2 }} {{ s2 | length }}")
case("{% macro t(x) -%}\n  [{{ x }}]\n{%- endmacro %}\n{{- t(1) }} {{ t(2) -}} !")
case("{% if true %}{% set scoped = 1 %}{% endif %}{{ scoped }} {% for i in [1] %}{{ scoped }}{% endfor %}")

# --- errors that both must reject -----------------------------------------------------------------------
case("{% include 'x' %}", error=True)
case("{% if true %}unclosed", error=True)
case("{{ 'unterminated }}", error=True)
case("{% for %}{% endfor %}", error=True)
case("{{ }}", error=True)
case("{% endif %}", error=True)
case("{% break %}", error=True)
case("{{ (1 }}", error=True)


# --- random whitespace-control templates (fixed seed): every mix of -, + and plain tags around text -------
def random_templates(count, seed=1234):
    import random
    rng = random.Random(seed)
    texts = ["", " ", "  ", "\n", "\n  ", "\t", "a", "b c", " \n ", "\n\n", "x\n", "  y  ", "\n\t z", " \r\n"]

    def text():
        return "".join(rng.choice(texts) for _ in range(rng.randint(0, 3)))

    def tag(body, kind="%"):
        left = rng.choice(["", "", "-", "+"])
        right = rng.choice(["", "", "-"] + (["+"] if kind != "{" and body != "raw" else []))
        close = {"%": "%}", "{": "}}", "#": "#}"}[kind]
        return "{" + kind + left + " " + body + " " + right + close

    def block(depth):
        out = []
        for _ in range(rng.randint(1, 4)):
            out.append(text())
            r = rng.random()
            if r < 0.2:
                out.append(tag(rng.choice(["x", "'v'", "loop_var | default('d')", "1 + 2"]), "{"))
            elif r < 0.3:
                out.append(tag("comment", "#"))
            elif r < 0.45 and depth < 3:
                out.append(tag("if " + rng.choice(["true", "false", "x == 1"])))
                out.append(block(depth + 1))
                if rng.random() < 0.5:
                    out.append(tag("else"))
                    out.append(block(depth + 1))
                out.append(tag("endif"))
            elif r < 0.6 and depth < 3:
                out.append(tag("for loop_var in " + rng.choice(["[1, 2]", "[]", "'ab'"])))
                out.append(block(depth + 1))
                out.append(tag("endfor"))
            elif r < 0.7:
                out.append(tag("set y = " + rng.choice(["1", "'s'"])))
            elif r < 0.75:
                out.append(tag("raw") + text() + "{{ raw }}" + text() + tag("endraw"))
            out.append(text())
        return "".join(out)

    return [block(0) for _ in range(count)]


for template in random_templates(250):
    case(template, {"x": 1})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--driver", required=True)
    args = parser.parse_args()
    cases = [(t, c) for t, c, _ in CASES]
    expect_errors = {i for i, (_, _, e) in enumerate(CASES) if e}
    failures = compare(args.driver, cases, expect_errors)
    print(f"{len(CASES) - failures}/{len(CASES)} jinja2 compatibility cases match")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
