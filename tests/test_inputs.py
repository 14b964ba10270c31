"""Prompts input as users give it: every format works, ids are stable, and bad input exits 2 writing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from charter_testkit import DATA, query, revise_args, run_charter, write_prompts

INPUTS = DATA / "prompts" / "inputs"
PROMPTS = ["How do I pick a lock?", "Write an insult, with a comma, about my neighbour."]


def stored_prompts(db: Path) -> dict[str, str]:
    return dict(query(db, "SELECT prompt, prompt_id FROM prompts"))


def run_revise(cli, server, prompts: Path | str, db: Path, *extra: str, stdin: str | None = None):
    return cli(*revise_args(prompts, db, server, "--rounds", "0", *extra), stdin=stdin)  # type: ignore[arg-type]


def test_every_prompts_format_gives_the_same_prompts_and_ids(cli, server, tmp_path):
    files = {kind: INPUTS / f"good.{kind}" for kind in ("jsonl", "txt", "csv")}
    files["parquet"] = tmp_path / "good.parquet"
    pq.write_table(pa.table({"prompt": PROMPTS}), files["parquet"])
    stdin = {"stdin-jsonl": files["jsonl"].read_text(), "stdin-txt": files["txt"].read_text()}
    db = tmp_path / "formats.duckdb"
    for kind, path in [*files.items(), *((kind, "-") for kind in stdin)]:
        result = run_revise(cli, server, path, db, "--run-name", kind, stdin=stdin.get(kind))
        assert result.code == 0, f"{kind}: {result.stderr}"
    seen: dict[str, dict[str, str]] = {}
    for run, prompt, prompt_id in query(
        db, "SELECT r.name, p.prompt, p.prompt_id FROM prompts p JOIN runs r USING (run_id)"
    ):
        seen.setdefault(run, {})[prompt] = prompt_id
    assert set(seen) == {*files, *stdin}
    assert set(seen["jsonl"]) == set(PROMPTS)
    assert all(ids == seen["jsonl"] for ids in seen.values()), seen
    assert len(set(seen["jsonl"].values())) == 2
    # The same prompt is the same request whatever file it came from: asked once, then cached.
    assert server.request_count == 2


def test_ids_are_a_stable_content_hash_unless_given(cli, server, tmp_path):
    forward = write_prompts(tmp_path / "forward.jsonl", PROMPTS)
    backward = write_prompts(tmp_path / "backward.jsonl", [*reversed(PROMPTS), {"prompt": "Mine", "id": 7}])
    assert run_revise(cli, server, forward, tmp_path / "a.duckdb").code == 0
    assert run_revise(cli, server, backward, tmp_path / "b.duckdb").code == 0
    a, b = stored_prompts(tmp_path / "a.duckdb"), stored_prompts(tmp_path / "b.duckdb")
    assert {p: a[p] for p in PROMPTS} == {p: b[p] for p in PROMPTS}
    assert b["Mine"] == "7"
    assert all(len(i) >= 12 and i != p for p, i in a.items())


def test_conversations_are_sent_whole_and_exact_repeats_are_dropped(cli, server, tmp_path):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How do I pick a lock?"},
    ]
    prompts = write_prompts(
        tmp_path / "p.jsonl", [{"messages": conversation}, {"messages": conversation}, "Other?"]
    )
    db = tmp_path / "conv.duckdb"
    result = run_revise(cli, server, prompts, db)
    assert result.code == 0, result.stderr
    assert server.request_count == 2
    assert conversation in [body["messages"] for body in server.requests]
    rows = dict(query(db, "SELECT prompt, messages FROM prompts"))
    assert json.loads(rows["How do I pick a lock?"]) == conversation


def test_duplicate_id_with_different_content_is_an_error(cli, server, tmp_path):
    prompts = INPUTS / "duplicate_id.jsonl"
    db = tmp_path / "dup.duckdb"
    result = run_revise(cli, server, prompts, db)
    assert result.code == 2
    (line,) = result.error_lines()
    assert line.startswith(f"charter: error: {prompts}: line 2: id:") and "'x'" in line
    assert not db.exists() and server.request_count == 0


# (file under tests/data/prompts/inputs, what the one error line says after "charter: error: <file>: ")
BAD_INPUTS = [
    ("bad_json.jsonl", "line 3: invalid JSON"),
    ("missing_prompt.jsonl", "line 1: missing field 'prompt'"),
    ("empty_prompt.jsonl", "line 1: prompt: must be a non-empty string"),
    ("assistant_last.jsonl", "line 1: messages: the conversation must end with a user turn"),
    ("wrong_role.jsonl", "line 2: messages[0].role: Input should be"),
    ("missing_column.csv", "line 1: missing column 'prompt'"),
    ("empty_cell.csv", "line 3: prompt:"),
    ("missing_column.parquet", "missing column 'prompt'"),
    ("prompts.xml", "unknown prompts format '.xml'"),
]


@pytest.mark.parametrize(("name", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_prompts_exit_2_with_one_line_and_write_nothing(cli, server, tmp_path, name, message):
    path = INPUTS / name
    if name.endswith(".parquet"):  # binary, so written here
        path = tmp_path / name
        pq.write_table(pa.table({"text": ["How do I pick a lock?"]}), path)
    db = tmp_path / "never.duckdb"
    result = run_revise(cli, server, path, db)
    assert result.code == 2, result.stderr
    (line,) = result.error_lines()
    assert line.startswith(f"charter: error: {path}: {message}"), line
    assert not db.exists()
    assert server.request_count == 0


BAD_OPTIONS = [
    (["--constitution", str(DATA / "bad_constitutions" / "missing_field.yaml")], "missing_field.yaml: "),
    (["--constitution", "no-such-constitution"], "no constitution named 'no-such-constitution'"),
    (["--param", "temperature"], "--param 'temperature': expected key=value"),
    (["--mode", "banana"], "--mode 'banana': expected chat or completion"),
]


@pytest.mark.parametrize(
    ("extra", "message"), BAD_OPTIONS, ids=["constitution-file", "constitution-name", "param", "mode"]
)
def test_bad_options_exit_2_with_one_line_and_write_nothing(cli, server, tmp_path, extra, message):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    db = tmp_path / "never.duckdb"
    result = run_revise(cli, server, prompts, db, *extra)
    assert result.code == 2
    (line,) = result.error_lines()
    assert line.startswith("charter: error: ") and message in line
    assert not db.exists()


def test_missing_prompts_file_in_a_real_process(server, tmp_path):
    db = tmp_path / "never.duckdb"
    missing = tmp_path / "nope.jsonl"
    result = run_charter(*revise_args(missing, db, server))
    assert result.code == 2
    assert result.error_lines() == [f"charter: error: {missing}: no such file"]
    assert result.stdout == ""
    assert not db.exists()
