"""Issue 12 item 11: a template cannot exhaust CPU or memory; each bound is a clear error."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from charter_testkit import revise_args, write_prompts

from charter import sandbox
from charter.prompts import PromptError, PromptTemplate


def completion_template(body: str) -> PromptTemplate:
    return PromptTemplate("bomb", f"---\nmode: completion\ninputs: {{}}\n---\n{body}\n")


BOMBS = [
    ("nested-range", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "range() of 100,000 items is over the template limit 10,000"),
    ("nested-loops", "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
     "template loops ran more than 1,000,000 iterations"),
    ("growing-list", "{% set ns = namespace(x=[1]) %}{% for i in range(40) %}{% set ns.x = ns.x + ns.x %}"
     "{% endfor %}{{ ns.x|length }}", "a '+' result would be longer than 1,000,000"),
    ("growing-string", "{% set ns = namespace(x='ab') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}"
     "{% endfor %}", "a '~' concatenation would be longer than 1,000,000"),
    ("repeat", "{{ 'x' * 1000000000 }}", "a '*' result would be longer than 1,000,000"),
    ("filter-width", "{{ 'x'|center(1000000000) }}", "filter center: argument 1000000000 is over"),
    ("method-width", "{{ 'x'.ljust(1000000000) }}", "call of ljust: argument 1000000000 is over"),
    ("power", "{{ 7 ** 100000000 }}", "7 ** 100000000 is over the template limit"),
    ("recursion", "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "template recursion is too deep"),
    ("macro-argument", "{% macro f(n) %}{{ n }}{% endmacro %}{{ f(10 ** 9) }}",
     "call of f: argument 1000000000 is over the template limit"),
    ("loops-in-a-macro", "{% macro f() %}{% for i in range(10000) %}{% endfor %}{% endmacro %}"
     "{% for i in range(200) %}{{ f() }}{% endfor %}", "template loops ran more than 1,000,000 iterations"),
    ("output", "{% for i in range(3000) %}{{ 'y' * 2000 }}{% endfor %}",
     "template output is longer than 4,000,000 characters"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), [b[1:] for b in BOMBS], ids=[b[0] for b in BOMBS])
def test_template_bombs_stop_with_the_limit_named(body, message):
    template = completion_template(body)
    with pytest.raises(PromptError, match="prompt bomb") as err:
        template.render()
    assert message in str(err.value)


def test_ordinary_templates_render_as_before():
    body = "{% for i in range(3) %}{{ loop.index }}:{{ i * 2 }}{{ ' ' ~ 'ab' * 2 }};{% endfor %}{{ [1, 2]|join(',') }}"
    assert completion_template(body).render().text == "1:0 abab;2:2 abab;3:4 abab;1,2"


MACROS = [
    "{% macro q(a, b='B', sep=',') %}{{ a }}{{ sep }}{{ b }}{{ varargs|join('') }}{{ kwargs }}{% endmacro %}"
    "{{ q(1) }}|{{ q(1, 2, ';', 3, 4) }}|{{ q(a=5, extra=6) }}",
    "{% macro row(x) %}[{{ caller(x) }}]{% endmacro %}"
    "{% for i in [1, 2] %}{% call(v) row(i) %}{{ v * 10 }}:{{ loop.index }}{% endcall %}{% endfor %}",
    "{% macro outer(xs) %}{% for x in xs %}{{ inner(x, loop.index) }}{% endfor %}{% endmacro %}"
    "{% macro inner(x, i) %}{{ i }}={{ x }};{% endmacro %}{% for xs in [[1, 2], [3]] %}{{ outer(xs) }}/{% endfor %}",
    "{% macro m() %}{% set v = 1 %}{{ v }}{% endmacro %}{% set v = 2 %}{{ m() }}{{ v }}{{ m|attr('name') }}",
    # Every argument by position (the macro's function is called with them as they are), and not.
    "{% macro d(a, b='x') %}{{ a }}-{{ b }}{% endmacro %}{{ d(1, 2) }} {{ d(3) }} {{ d(4, b=5) }} {{ d(b=6, a=7) }}",
]


@pytest.mark.parametrize("body", MACROS)
def test_macros_render_as_in_jinjas_own_sandbox(body):
    """Template macros take a shorter call path than other callables: the output is still Jinja's."""
    from jinja2.sandbox import SandboxedEnvironment

    expected = SandboxedEnvironment().from_string(body).render()
    assert completion_template(body).render().text == expected.rstrip("\n")


def test_the_time_bound_works_in_a_worker_thread_without_signals(monkeypatch):
    # Under the iteration cap but far past the (lowered) time bound: 81 million empty iterations.
    monkeypatch.setattr(sandbox, "MAX_ITERATIONS", 10**12)
    monkeypatch.setattr(sandbox, "MAX_SECONDS", 0.05)
    template = completion_template(
        "{% for i in range(9000) %}{% for j in range(9000) %}{% endfor %}{% endfor %}"
    )
    with ThreadPoolExecutor(1) as pool, pytest.raises(PromptError, match=r"longer than 0\.05 s to render"):
        pool.submit(template.render).result()
    # Each render gets its own budget: the next one starts afresh.
    assert completion_template("{{ 1 + 1 }}").render().text == "2"


def test_revise_with_a_bomb_template_exits_2_before_anything_is_written(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    override = tmp_path / "templates"
    override.mkdir()
    (override / "respond-chat.jinja").write_text(
        "---\nmode: chat\ninputs:\n  conversation: list[Message]\n  system: str | None\n---\n"
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
        '{% call message("user") %}hi{% endcall %}\n'
    )
    db = tmp_path / "never.duckdb"
    result = cli(*revise_args(prompts, db, server, "--prompts-dir", override))
    assert result.code == 2
    (line,) = result.error_lines()
    assert "respond-chat" in line and "iterations" in line
    assert not db.exists() and server.request_count == 0


def test_dict_attributes_prefer_the_method_and_missing_keys_stay_errors():
    template = PromptTemplate(
        "dicts",
        "---\nmode: completion\ninputs: {d: dict}\n---\n{{ d.role }} {% for k in d.keys() %}{{ k }},{% endfor %}\n",
    )
    # `d.keys` is the method even though the dict has a "keys" key; any other name is the key.
    assert template.render(d={"role": "user", "keys": "not this"}).text == "user role,keys,"
    with pytest.raises(PromptError, match="has no attribute 'role'"):
        template.render(d={"other": 1})
