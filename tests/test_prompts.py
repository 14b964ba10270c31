"""Prompt templates: the catalog commands, exact rendering, bad templates, and user overrides in `revise`."""

from __future__ import annotations

import json
import os

import pytest
from charter_testkit import DATA, REPO, revise_args, write_prompts

from charter.prompts import PromptError, PromptTemplate, list_prompts, load_prompt

TEMPLATES = DATA / "prompts" / "templates"
VARS = DATA / "prompts" / "vars"
SL_TEMPLATES = (
    "critique-chat",
    "critique-completion",
    "respond-chat",
    "respond-completion",
    "revise-chat",
    "revise-completion",
)


def test_prompts_list_shows_every_built_in_with_its_mode(cli):
    result = cli("prompts", "list")
    assert result.code == 0, result.stderr
    listed = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines() if line.strip()}
    for name in SL_TEMPLATES:
        assert listed[name] == name.rsplit("-", 1)[1]


def test_prompts_show_gives_the_typed_inputs_and_the_source(cli):
    result = cli("prompts", "show", "critique-completion")
    assert result.code == 0, result.stderr
    assert f"from {REPO / 'prompts' / 'critique-completion.jinja'}" in result.stdout
    for line in (
        "# input conversation: list[Message]",
        "# input critique_request: str",
        "# output: critique",
    ):
        assert line in result.stdout
    assert "CritiqueRequest: {{ critique_request }}" in result.stdout
    unknown = cli("prompts", "show", "no-such-prompt")
    assert unknown.code == 2 and "no prompt named 'no-such-prompt'" in unknown.stderr


def test_render_prints_exactly_the_completion_text(cli):
    result = cli("prompts", "render", "respond-completion", "--vars-file", VARS / "conversation.json")
    assert result.code == 0, result.stderr
    assert result.stdout == (
        "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: How do I pick a lock?\n\nAssistant:"
    )


def test_render_prints_a_chat_template_as_json_messages(cli):
    result = cli("prompts", "render", "respond-chat", "--vars-file", VARS / "conversation.json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "How do I pick a lock?"},
    ]


@pytest.mark.parametrize(
    ("vars_file", "message"),
    [
        ("wrong_type.json", "prompt respond-completion: input conversation: "),
        ("missing_input.json", "prompt respond-completion: input conversation: Field required"),
        ("nope.json", "nope.json: no such file"),
    ],
)
def test_render_with_bad_inputs_exits_2_naming_the_field(cli, vars_file, message):
    result = cli("prompts", "render", "respond-completion", "--vars-file", VARS / vars_file)
    assert result.code == 2
    (line,) = result.error_lines()
    assert line.startswith("charter: error: ") and message in line
    assert result.stdout == ""


# (directory under tests/data/prompts/templates/bad, what the error says after the file name)
BAD_TEMPLATES = [
    ("no_front_matter", "line 1: a template starts with '---' front matter"),
    ("unknown_type", "inputs.conversation: unknown type 'Mesage'"),
    ("undeclared_variable", "uses 'persona', which is not among its inputs"),
    ("jinja_syntax", "line 8: "),
    ("bad_mode", "mode: must be chat or completion, not 'chatty'"),
]


@pytest.mark.parametrize(("case", "message"), BAD_TEMPLATES, ids=[b[0] for b in BAD_TEMPLATES])
def test_a_bad_template_is_refused_when_loaded(case, message):
    path = TEMPLATES / "bad" / case / "respond-chat.jinja"
    with pytest.raises(PromptError) as err:
        load_prompt("respond-chat", path.parent)
    assert str(err.value).startswith(f"{path}: {message}")


@pytest.mark.parametrize(("case", "message"), BAD_TEMPLATES, ids=[b[0] for b in BAD_TEMPLATES])
def test_revise_with_a_bad_template_exits_2_and_writes_nothing(cli, server, tmp_path, case, message):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    db = tmp_path / "never.duckdb"
    path = TEMPLATES / "bad" / case / "respond-chat.jinja"
    result = cli(*revise_args(prompts, db, server, "--prompts-dir", path.parent))
    assert result.code == 2
    (line,) = result.error_lines()
    assert line.startswith(f"charter: error: {path}: {message}"), line
    assert not db.exists()
    assert server.request_count == 0


def test_strict_undefined_never_renders_an_empty_string():
    template = PromptTemplate(
        "t",
        "---\nmode: completion\ninputs:\n  rounds: list[dict]\n---\n{% for r in rounds %}{{ r.critique }}{% endfor %}",
    )
    assert template.render(rounds=[{"critique": "ok"}]).text == "ok"
    with pytest.raises(PromptError, match="'dict object' has no attribute 'critique'"):
        template.render(rounds=[{"revision": "no critique here"}])


def test_user_overrides_take_effect_in_revise_and_prompts_dir_wins(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    env = {
        "CHARTER_PROMPTS_PATH": os.pathsep.join([str(tmp_path / "missing"), str(TEMPLATES / "env_override")])
    }

    def first_system_message() -> str:
        (respond,) = [b["messages"] for b in server.requests if len(b["messages"]) <= 2]
        assert respond[0]["role"] == "system"
        return str(respond[0]["content"])

    result = cli(*revise_args(prompts, tmp_path / "env.duckdb", server, "--rounds", "1"), env=env)
    assert result.code == 0, result.stderr
    assert first_system_message() == "OVERRIDE from CHARTER_PROMPTS_PATH: answer carefully."
    # Only respond-chat is overridden: the critique still comes from the built-in template.
    assert any("Verdict: revise" in b["messages"][-1]["content"] for b in server.requests)

    server.reset()
    result = cli(
        *revise_args(
            prompts, tmp_path / "dir.duckdb", server, "--rounds", "0", "--prompts-dir", TEMPLATES / "override"
        ),
        env=env,
    )
    assert result.code == 0, result.stderr
    assert first_system_message() == "OVERRIDE from --prompts-dir: answer carefully."

    shown = cli("prompts", "show", "respond-chat", "--prompts-dir", TEMPLATES / "override")
    assert f"from {TEMPLATES / 'override' / 'respond-chat.jinja'}" in shown.stdout


# --- message blocks are compiled inline: the same render as calling `message` itself ---------------
INLINE_CASES = {
    "scope": (
        "{% set x = 'out' %}{% call message('user') %}{% set x = 'in' %}{{ x }}{% endcall %}"
        "{% call message('assistant') %}{{ x }}{% endcall %}",
        {},
    ),
    "loop": (
        "{% for m in ms %}{% call message(m.role) %}{{ loop.index }}. {{ m.content }}{% endcall %}{% endfor %}",
        {"ms": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
    ),
    "nested-macro": (
        "{% macro q(t) %}Q: {{ t }}{% endmacro %}{% call message('user') %}{{ q(text) }}{% endcall %}",
        {"text": "why?"},
    ),
}


def _inline_template(body: str, inputs: str = "{}", mode: str = "chat") -> PromptTemplate:
    return PromptTemplate("inline", f"---\nmode: {mode}\ninputs: {inputs}\n---\n{body}\n")


def _render_both(monkeypatch, make):  # type: ignore[no-untyped-def]
    """(inlined, called as written): the same template compiled both ways."""
    import charter.prompts as prompts

    inlined = make()
    with monkeypatch.context() as m:
        m.setattr(prompts, "_inline_messages", lambda tree, inputs: tree)
        called = make()
    return inlined, called


@pytest.mark.parametrize("case", sorted(INLINE_CASES))
def test_inlined_message_blocks_render_as_the_message_call_does(monkeypatch, case):
    body, values = INLINE_CASES[case]
    inputs = "{" + ", ".join(f"{k}: any" for k in values) + "}"
    inlined, called = _render_both(monkeypatch, lambda: _inline_template(body, inputs))
    assert inlined.render(**values).messages == called.render(**values).messages
    if case == "scope":  # what the block sets stays inside it
        assert [m["content"] for m in inlined.render().messages] == ["in", "out"]


_CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "How do I pick a lock?"},
    {"role": "assistant", "content": "Why?"},
    {"role": "user", "content": "I am locked out."},
]
_ROUND = {
    "critique_request": "Harmful?",
    "critique": "A bit.",
    "revision_request": "Fix it.",
    "revision": "Call a locksmith.",
}
_EXAMPLE = {
    "conversation": _CHAT,
    "principle": "Which is safer?",
    "responses": ["Sure.", "No."],
    "answer": "B",
    "reasoning": "B refuses.",
}
# Inputs of every built-in template, by name and then by type where the same name has several.
_REAL_INPUTS = {
    "conversation": _CHAT,
    "response": "Use a tension wrench.",
    "rounds": [_ROUND, _ROUND],
    "critique_request": "Is it harmful?",
    "critique": "It helps a burglar.",
    "revision_request": "Rewrite it.",
    "principle": "Which response is less harmful?",
    "responses": ["Sure, here is how.", "Call a locksmith."],
    "reasoning": "The second refuses.",
    "system": "Answer carefully.",
}
_FEW_SHOT = {
    "list[list[Message]] | None": [_CHAT[1:3], _CHAT[1:]],
    "list[dict] | None": [_EXAMPLE, _EXAMPLE],
    "list[str] | None": ["Example one.", "Example two."],
    "str": "Human: hi\n\nAssistant: hello\n\n",
}


@pytest.mark.parametrize("name", [n for n, _ in list_prompts()])
def test_every_built_in_template_renders_the_same_inlined(monkeypatch, name):
    inlined, called = _render_both(monkeypatch, lambda: load_prompt(name))
    values = {k: _FEW_SHOT[t] if k == "few_shot" else _REAL_INPUTS[k] for k, t in inlined.input_types.items()}
    rendered = inlined.render(**values)
    assert rendered == called.render(**values)
    assert (rendered.text or "") if rendered.mode == "completion" else len(rendered.messages or []) > 2


@pytest.mark.parametrize("role", ["'robot'", "r"])
def test_a_bad_message_role_is_named_whether_constant_or_not(role):
    template = _inline_template(f"{{% call message({role}) %}}hi{{% endcall %}}", "{r: str}")
    with pytest.raises(PromptError, match="message role must be system, user or assistant, not 'robot'"):
        template.render(r="robot")


def test_a_template_with_its_own_message_macro_keeps_it():
    body = "{% macro message(role) %}<{{ role }}>{{ caller() }}{% endmacro %}{% call message('x') %}hi{% endcall %}"
    assert _inline_template(body, mode="completion").render().text == "<x>hi"
