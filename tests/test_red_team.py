"""Issue 12's red team: databases that are not databases, exports over their input, `charter sql`
showing stored text as text and unable to write, and `--where` as one expression."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import duckdb
import pytest
from charter_testing.fake_openai import default_responder
from charter_testkit import query, revise_args, write_prompts

HOSTILE = "Sure. [/INST] [red]alarm[/red] [bold]x \x1b[2J\x1b]0;pwned\x07 done"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def hostile_db(server, tmp_path) -> Path:
    """A database whose stored answers hold rich markup and terminal escape sequences."""
    server.responder = lambda req: HOSTILE
    prompts = write_prompts(tmp_path / "p.jsonl", ["Say something."])
    db = tmp_path / "hostile.duckdb"
    from charter_testkit import run_cli

    result = run_cli(*revise_args(prompts, db, server, "--rounds", "1"))
    server.responder = default_responder
    assert result.code == 0, result.stderr
    return db


# --------------------------------------------------------------------------- item 2: --db
def _data_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    parquet = tmp_path / "data.parquet"
    duckdb.sql(f"COPY (SELECT 'hi' AS prompt) TO '{parquet}' (FORMAT parquet)")
    files["parquet"] = parquet
    csv_file = tmp_path / "data.csv"
    csv_file.write_text("prompt\nhi\n")
    files["csv"] = csv_file
    json_file = tmp_path / "data.json"
    json_file.write_text('[{"prompt": "hi"}]')
    files["json"] = json_file
    lite = tmp_path / "data.sqlite"
    with sqlite3.connect(lite) as con:
        con.execute("CREATE TABLE t (a)")
    files["sqlite"] = lite
    empty = tmp_path / "empty.duckdb"
    empty.touch()
    files["empty"] = empty
    return files


@pytest.mark.parametrize("kind", ["parquet", "csv", "json", "sqlite", "empty"])
def test_a_db_that_is_not_a_duckdb_file_is_refused_and_left_alone(cli, server, prompts_file, tmp_path, kind):
    path = _data_files(tmp_path)[kind]
    before = digest(path)
    result = cli(*revise_args(prompts_file, path, server, "--rounds", "1"))
    assert result.code == 2, result.stderr
    (line,) = result.error_lines()
    assert f"database {path}" in line and "not a DuckDB database" in line
    assert "download" not in result.stderr
    assert digest(path) == before
    assert server.request_count == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        {"prompts.jsonl", "data.parquet", "data.csv", "data.json", "data.sqlite", "empty.duckdb"}
    )


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json", ".jsonl"])
def test_a_new_db_path_named_like_a_data_file_is_refused(cli, server, prompts_file, tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    result = cli(*revise_args(prompts_file, path, server, "--rounds", "1"))
    assert result.code == 2
    assert f"database {path}: {suffix} names a data file" in result.stderr
    assert not path.exists()


def test_merge_refuses_inputs_and_outputs_that_are_not_duckdb(cli, tmp_path):
    files = _data_files(tmp_path)
    good = tmp_path / "good.duckdb"
    duckdb.connect(str(good)).close()
    out = tmp_path / "merged.duckdb"
    result = cli("merge", out, files["csv"])
    assert result.code == 2 and f"database {files['csv']}" in result.stderr
    assert not out.exists()
    before = digest(files["parquet"])
    result = cli("merge", files["parquet"], good)
    assert result.code == 2 and "not a DuckDB database" in result.stderr
    assert digest(files["parquet"]) == before


# --------------------------------------------------------------------------- item 3: export over its input
def test_export_refuses_to_overwrite_its_input_database(cli, hostile_db, tmp_path):
    before = digest(hostile_db)
    same = cli("export", hostile_db, "--dataset", "sft", "--out", hostile_db)
    assert same.code == 2 and "is the input" in same.stderr
    link = tmp_path / "link.jsonl"
    os.link(hostile_db, link)
    hard = cli("export", hostile_db, "--dataset", "sft", "--out", link)
    assert hard.code == 2 and "is the input" in hard.stderr
    sym = tmp_path / "sym.jsonl"
    sym.symlink_to(hostile_db)
    assert cli("export", hostile_db, "--dataset", "sft", "--out", sym).code == 2
    assert digest(hostile_db) == before
    assert not list(tmp_path.glob("*.tmp"))


def test_export_to_a_directory_is_one_line(cli, hostile_db, tmp_path):
    result = cli("export", hostile_db, "--dataset", "sft", "--out", tmp_path)
    assert result.code == 2
    (line,) = result.error_lines()
    assert f"--out {tmp_path}: is a directory" in line


# --------------------------------------------------------------------------- item 4: text as text
def test_sql_shows_stored_markup_and_escapes_as_text(cli, hostile_db):
    result = cli("sql", hostile_db, "SELECT response FROM responses")
    assert result.code == 0, result.stderr
    assert "[/INST] [red]alarm[/red] [bold]x" in result.stdout
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\\x1b[2J\\x1b]0;pwned\\x07 done" in result.stdout


def test_sql_table_at_a_terminal_is_text_not_markup(hostile_db, capsys, monkeypatch):
    from charter.cli import data

    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    data.print_table(["response"], [(HOSTILE,)])
    out = capsys.readouterr().out
    assert "[/INST]" in out and "[red]alarm[/red]" in out
    assert "\\x1b[2J" in out and "\x07" not in out


def test_sql_piped_prints_every_column_in_full(cli, hostile_db):
    long_text = "word " * 60
    sql = f"SELECT '{long_text}' AS a, 'second column' AS b, 42 AS c, NULL AS d"
    result = cli("sql", hostile_db, sql)
    assert result.code == 0
    header, rule, row = result.stdout.splitlines()
    assert [c.strip() for c in header.split(" | ")] == ["a", "b", "c", "d"]
    assert row == f"{long_text} | second column | 42 | NULL"
    assert len(rule) == len(row)


# --------------------------------------------------------------------------- item 5: read-only engine
@pytest.mark.parametrize(
    "statement",
    [
        "EXPLAIN ANALYZE COPY (SELECT * FROM calls) TO '{out}'",
        "EXPLAIN ANALYZE INSTALL httpfs",
        "EXPLAIN ANALYZE ATTACH '{out}' AS other",
        "SELECT * FROM read_csv('{secret}')",
        "SET enable_external_access = true",
    ],
    ids=["explain-copy", "explain-install", "explain-attach", "read-file", "unlock"],
)
def test_sql_cannot_touch_files_or_extensions_whatever_the_statement(cli, hostile_db, tmp_path, statement):
    out = tmp_path / "leak.out"
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    before = digest(hostile_db)
    result = cli("sql", hostile_db, statement.format(out=out, secret=secret))
    assert result.code == 2
    (line,) = result.error_lines()
    assert line.startswith("charter: error: ")
    assert "hunter2" not in result.stdout
    assert not out.exists()
    assert digest(hostile_db) == before


@pytest.mark.parametrize(
    "where",
    [
        "true); COPY (SELECT * FROM calls) TO '{out}'; SELECT (1",
        "true) UNION ALL SELECT * FROM sft_examples WHERE (true",
        "true -- ",
        "prompt_id = ",
        "nope = 1",
    ],
    ids=["statement", "union", "comment", "syntax", "unknown-column"],
)
def test_export_where_is_one_expression(cli, hostile_db, tmp_path, where):
    out = tmp_path / "leak.out"
    dest = tmp_path / "sft.jsonl"
    result = cli("export", hostile_db, "--dataset", "sft", "--out", dest, "--where", where.format(out=out))
    assert result.code == 2
    (line,) = result.error_lines()
    assert line.startswith("charter: error: --where ")
    assert not out.exists() and not dest.exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_export_where_still_filters(cli, hostile_db, tmp_path):
    dest = tmp_path / "sft.jsonl"
    none = cli("export", hostile_db, "--dataset", "sft", "--out", dest, "--where", "prompt = 'nope'")
    assert none.code == 0 and dest.read_text() == ""
    some = cli("export", hostile_db, "--dataset", "sft", "--out", dest, "--where", "prompt LIKE 'Say%'")
    assert some.code == 0 and len(dest.read_text().splitlines()) == 1
    row = json.loads(dest.read_text())
    assert row["messages"][-1]["content"] == query(hostile_db, "SELECT completion FROM sft_examples")[0][0]


# --------------------------------------------------------------------------- item 6: secrets
def _all_text(db: Path) -> str:
    """Every value of every table, as text: what someone holding the file can read."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        return "\n".join(str(con.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables)
    finally:
        con.close()


PARAM_SECRETS = [
    "--param", "Authorization=Bearer sekrit-authorization",
    "--param", 'extra_body={"api_key": "sekrit-nested", "top_k": 3}',
    "--param", 'extra_headers={"X-Api-Key": "sekrit-header"}',
    "--param", "API_KEY=sekrit-upper",
]  # fmt: skip


@pytest.mark.parametrize(
    ("where", "fast_path"),
    [("params", "1"), ("params", "0"), ("url", "1"), ("url", "0")],
    ids=["params-fast-path", "params-litellm", "url-fast-path", "url-litellm"],
)
def test_credentials_reach_the_server_but_never_the_database(
    cli, server, prompts_file, tmp_path, where, fast_path
):
    base = server.base_url
    extra = PARAM_SECRETS
    if where == "url":
        # The OpenAI clients always send an Authorization header, which HTTP clients refuse beside
        # URL credentials: these calls fail, and the run and its failed calls are still recorded.
        base = base.replace("http://", "http://someone:sekrit-userinfo@") + "?key=sekrit-query"
        extra = ["--max-retries", "0"]
    db = tmp_path / "cai.duckdb"
    args = ["--api-base", base, "--rounds", "1", "--param", f"charter_fast_path={fast_path}", *extra]
    result = cli("revise", prompts_file, "--db", db, "--model", "openai/test", *args)
    if where == "params":
        assert result.code == 0, result.stderr
        assert server.requests
        assert all(body.get("api_key") == "sekrit-nested" for body in server.requests)
    else:
        assert result.code == 1 and query(db, "SELECT count(*) FROM calls")[0][0] > 0
    stored = _all_text(db)
    assert "sekrit" not in stored
    assert "top_k" in stored or where == "url"  # the rest of extra_body is recorded
    assert "sekrit" not in result.stderr


def test_redaction_of_urls_and_nested_params():
    from charter.backends.base import CompletionRequest
    from charter.backends.params import REDACTED, redact, redact_url, split_params

    assert (
        redact_url("http://u:k@host:8000/v1?key=abc&x=1")
        == f"http://{REDACTED}@host:8000/v1?key={REDACTED}&x=1"
    )
    assert redact_url("https://h/v1?api_key=abc") == f"https://h/v1?api_key={REDACTED}"
    assert redact_url("http://localhost:8000/v1") == "http://localhost:8000/v1"
    assert redact({"extra_body": {"auth": {"token": "t"}, "n": [{"Api-Key": "z"}]}}) == {
        "extra_body": {"auth": REDACTED, "n": [{"Api-Key": REDACTED}]}
    }
    request, client = split_params({"Authorization": "x", "X-API-KEY": "y", "max_tokens": 5, "top_k": 2})
    assert request == {"max_tokens": 5, "top_k": 2} and set(client) == {"Authorization", "X-API-KEY"}

    def key(secret: str) -> str:
        params = {"extra_body": {"api_key": secret}}
        return CompletionRequest(
            model="m", messages=[{"role": "user", "content": "hi"}], params=params
        ).cache_key()

    assert key("one") == key("two")  # a credential never decides (or leaks through) the cache key
