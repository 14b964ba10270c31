"""Issue 12 item 8: every bad input is exit 2, one line on stderr naming the thing, nothing written.

Each case builds its inputs in an empty directory and runs one command; afterwards the directory
holds exactly what the case put there (no database, no export, no .tmp) and the server saw nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from charter_testing.fake_openai import FakeOpenAIServer
from charter_testkit import CHAT_MODEL, write_prompts

from charter import inputs


@dataclass
class Case:
    """A command line made from (directory, server), and what its one error line must contain."""

    id: str
    args: Callable[[Path, FakeOpenAIServer], list[Any]]
    message: str
    stdin: str | None = None


def _revise(*extra: Any, prompts: str = "p.jsonl") -> Callable[[Path, FakeOpenAIServer], list[Any]]:
    def build(d: Path, server: FakeOpenAIServer) -> list[Any]:
        source = prompts if prompts == "-" else d / prompts
        if prompts == "p.jsonl":
            write_prompts(d / "p.jsonl", ["How do I pick a lock?"])
        model = ["--model", CHAT_MODEL, "--api-base", server.base_url]
        return ["revise", source, "--db", d / "cai.duckdb", *model, "--rounds", "1", *extra]

    return build


def _write(name: str, text: str | bytes, then: Callable[[Path, FakeOpenAIServer], list[Any]]) -> Any:
    def build(d: Path, server: FakeOpenAIServer) -> list[Any]:
        target = d / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            target.write_bytes(text)
        else:
            target.write_text(text, encoding="utf-8")
        return then(d, server)

    return build


def _template(front: str, body: str = '{% call message("user") %}hi{% endcall %}') -> str:
    return f"---\n{front}\n---\n{body}\n"


RESPOND = "mode: chat\ninputs:\n  conversation: list[Message]\n  system: str | None"
NESTED = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
ROUTER_OK = (
    "model_list:\n  - model_name: m\n    litellm_params: {model: openai/x, api_base: http://127.0.0.1:9}\n"
)

CASES = [
    Case("empty-file", _write("empty.jsonl", "", _revise(prompts="empty.jsonl")), "empty.jsonl: no prompts"),
    Case("blank-lines", _write("blank.txt", "\n\n  \n", _revise(prompts="blank.txt")), "blank.txt: no prompts"),
    Case("empty-stdin", _revise(prompts="-"), "<stdin>: no prompts", stdin=""),
    Case("nested-json", _write("deep.jsonl", NESTED, _revise(prompts="deep.jsonl")), "nested too deeply"),
    Case("front-matter-list", _write("t/respond-chat.jinja", _template("- a\n- b"), _revise("--prompts-dir", "t")),
         "front matter must be a mapping"),
    Case("stop-number", _write("t/respond-chat.jinja", _template(RESPOND + "\nstop: 5"), _revise("--prompts-dir", "t")),
         "stop: must be a string or a list"),
    Case("unknown-parser", _write("t/respond-chat.jinja", _template(RESPOND + "\noutput: nope"),
         _revise("--prompts-dir", "t")), "output: unknown output parser 'nope'"),
    Case("render-error", _write("t/respond-chat.jinja", _template(RESPOND, "{{ 1 // 0 }}"),
         _revise("--prompts-dir", "t")), "rendering with sample inputs: ZeroDivisionError"),
    Case("bad-role", _write("t/respond-chat.jinja", _template(RESPOND, '{% call message("robot") %}x{% endcall %}'),
         _revise("--prompts-dir", "t")), "message role must be system, user or assistant"),
    Case("param-timeout-list", _revise("--param", "timeout=[1]"), "--param timeout=[1]: must be a positive number"),
    Case("param-timeout-text", _revise("--param", "timeout=abc"), '--param timeout="abc": must be a positive'),
    Case("param-stop-number", _revise("--param", "stop=5"), "--param stop=5: must be a string or a list"),
    Case("router-unknown-key", _write("r.yaml", ROUTER_OK + "surprise: 1\n", _revise("--router", "r.yaml")),
         "unknown key 'surprise'"),
    Case("router-unknown-setting", _write("r.yaml", ROUTER_OK + "router_settings: {retries_please: 3}\n",
         _revise("--router", "r.yaml")), "router_settings.retries_please: not an argument of litellm.Router"),
    Case("router-without-model", _write("r.yaml", ROUTER_OK, _revise("--router", "r.yaml")),
         "--model 'openai/test' is not a model_name in it (m)"),
    Case("db-is-csv", _write("cai.duckdb", "prompt\nhi\n", _revise()), "not a DuckDB database"),
    Case("merge-csv", _write("in.csv", "prompt\nhi\n", lambda d, s: ["merge", d / "out.duckdb", d / "in.csv"]),
         "in.csv: a file of another format, not a DuckDB database"),
]  # fmt: skip


def _names(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_exit_2_one_line_and_nothing_written(cli, server, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)  # relative paths in the cases (--prompts-dir t, --router r.yaml)
    args = case.args(tmp_path, server)
    before = _names(tmp_path)
    result = cli(*args, stdin=case.stdin)
    assert result.code == 2, result.stderr
    (line,) = result.error_lines()
    assert line.startswith("charter: error: ") and case.message in line, line
    assert "Traceback" not in result.stderr
    assert _names(tmp_path) == before  # no database, no export, no .tmp
    assert server.request_count == 0


def test_a_csv_field_over_the_limit_is_a_clean_error_and_a_long_one_is_a_prompt(
    cli, server, tmp_path, monkeypatch
):
    long_prompt = "word " * 40_000  # 200 KB: over Python's default 128 KiB field limit
    (tmp_path / "long.csv").write_text(f'prompt\n"{long_prompt}"\n', encoding="utf-8")
    scan = inputs.scan_prompts(inputs.PromptSource.open(tmp_path / "long.csv"))
    assert scan.count == 1
    monkeypatch.setattr(inputs, "CSV_FIELD_LIMIT", 1024)
    db = tmp_path / "cai.duckdb"
    result = cli(
        "revise", tmp_path / "long.csv", "--db", db, "--model", CHAT_MODEL, "--api-base", server.base_url
    )
    assert result.code == 2
    (line,) = result.error_lines()
    assert "long.csv: line 2: not valid CSV: field larger than field limit" in line
    assert not db.exists()


def test_a_pipeline_checks_every_step_before_step_1_writes(cli, server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "respond-chat.jinja").write_text(_template(RESPOND, "{{ 1 // 0 }}"))
    steps = [
        {"revise": {"prompts": "p.jsonl", "rounds": 1}},
        {"sample": {"from_run": "revise", "prompts_dir": "t"}},
        {"export": {"dataset": "sft", "out": "sft.jsonl", "where": "true); SELECT (1"}},
        {"export": {"dataset": "sft", "out": "."}},
        {"label": {"params": {"timeout": "soon"}}},
    ]
    defaults = {"model": CHAT_MODEL, "api_base": server.base_url}
    expected = [
        "steps[1].sample.prompts_dir: ",  # the broken template in it
        "steps[2].export.where: --where",
        "steps[3].export.out: . : is a directory".replace(" : ", ": "),
        'steps[4].label.params: timeout="soon": must be a positive number',
    ]
    for upto, message in enumerate(expected, start=2):
        pipeline = tmp_path / "pipe.yaml"
        body = {"db": "cai.duckdb", "defaults": defaults, "steps": steps[: upto + 1]}
        if upto > 2:  # each later case fixes the earlier problems
            body["steps"][1] = {"sample": {"from_run": "revise"}}
        if upto > 3:
            body["steps"][2] = {"export": {"dataset": "sft", "out": "sft.jsonl"}}
        if upto > 4:
            body["steps"][3] = {"export": {"dataset": "sft", "out": "sft2.jsonl"}}
        pipeline.write_text(json.dumps(body))
        result = cli("run", pipeline)
        assert result.code == 2, result.stderr
        (line,) = result.error_lines()
        assert message in line, line
        assert not (tmp_path / "cai.duckdb").exists()
        assert server.request_count == 0
