"""The CLI around the data: --version, plugins, constitutions, read-only sql, and dataset exports."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from importlib.metadata import version
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from charter_testing.fake_openai import default_responder
from charter_testkit import query, query_dicts, revise_args, run_charter, run_cli, write_prompts

import charter
from charter.constitution import load_constitution

HF_CAI_COLUMNS = [
    "init_prompt",
    "init_response",
    "critic_prompt",
    "critic_response",
    "revision_prompt",
    "revision_response",
    "prompt",
    "messages",
    "chosen",
    "rejected",
]


@pytest.fixture(scope="module")
def revised_db(fake_server, tmp_path_factory) -> Path:
    """A database after `charter revise` of two prompts, two rounds (read-only for the tests below)."""
    fake_server.clear_faults()
    fake_server.responder = default_responder
    directory = tmp_path_factory.mktemp("revised")
    prompts = write_prompts(
        directory / "p.jsonl", ["How do I pick a lock?", "Write an insult about my neighbour."]
    )
    db = directory / "revised.duckdb"
    result = run_cli(*revise_args(prompts, db, fake_server, "--rounds", "2", "--run-name", "first"))
    assert result.code == 0, result.stderr
    return db


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- catalog and version
def test_version_in_a_real_process():
    result = run_charter("--version")
    assert result.code == 0
    assert result.stdout == f"charter {charter.__version__}\n"
    assert charter.__version__ == version("charter")


def test_help_lists_the_commands(cli):
    result = cli("--help")
    assert result.code == 0
    for command in ("revise", "sql", "export", "constitutions", "prompts", "plugins"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["revise", "p.jsonl", "--db", "x.duckdb"], "Missing option '--model'"),
        (["revise", "p.jsonl", "--db", "x.duckdb", "--model", "m", "--limit", "0"], "--limit"),
        (["no-such-command"], "No such command"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(cli, tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    result = cli(*args)
    assert result.code == 2
    lines = result.error_lines()
    assert len(lines) == 1 and lines[0].startswith("charter: error:") and expected in lines[0]
    assert not (tmp_path / "x.duckdb").exists()


def test_plugins_lists_the_core_plugin_and_its_backend(cli):
    result = cli("plugins")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    core = lines.index("core [charter]: charter.default_plugins")
    assert lines[core + 1] == "  - backend <any LiteLLM model>"


def test_constitutions_list_names_the_shipped_ones_with_counts(cli):
    result = cli("constitutions", "list")
    assert result.code == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "16 critique/revision" in rows["anthropic-sl"]
    assert "16 feedback" in rows["anthropic-rl"]
    assert {"hf-anthropic", "hf-grok", "un-declaration"} <= set(rows)


def test_constitutions_show_prints_yaml_that_loads_back(cli, tmp_path):
    result = cli("constitutions", "show", "anthropic-sl")
    assert result.code == 0, result.stderr
    data = yaml.safe_load(result.stdout)
    assert data["name"] == "anthropic-sl" and len(data["principles"]) == 16
    copy = tmp_path / "copy.yaml"
    copy.write_text(result.stdout, encoding="utf-8")
    assert load_constitution(copy) == load_constitution("anthropic-sl")
    by_path = cli("constitutions", "show", copy)
    assert by_path.code == 0 and by_path.stdout == result.stdout
    missing = cli("constitutions", "show", "nope")
    assert missing.code == 2 and "no constitution named 'nope'" in missing.stderr


# --------------------------------------------------------------------------- sql
def test_sql_formats(cli, revised_db):
    sql = "SELECT prompt, round, principle FROM revisions JOIN prompts USING (run_id, prompt_id) ORDER BY ALL"
    expected = query_dicts(revised_db, sql)
    assert len(expected) == 4

    as_json = cli("sql", revised_db, sql, "--format", "json")
    assert as_json.code == 0, as_json.stderr
    assert json.loads(as_json.stdout) == expected

    as_jsonl = cli("sql", revised_db, sql, "--format", "jsonl")
    assert [json.loads(line) for line in as_jsonl.stdout.splitlines()] == expected

    as_csv = cli("sql", revised_db, sql, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert rows == [{k: str(v) for k, v in row.items()} for row in expected]

    table = cli("sql", revised_db, sql)
    assert table.code == 0
    assert "principle" in table.stdout and expected[0]["principle"] in table.stdout

    bad_format = cli("sql", revised_db, sql, "--format", "xml")
    assert bad_format.code == 2 and "--format 'xml'" in bad_format.stderr


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO runs (run_id, name, command) VALUES ('x', 'x', 'x')",
        "DELETE FROM revisions",
        "UPDATE runs SET status = 'hacked'",
        "DROP TABLE calls",
        "COPY (SELECT * FROM calls) TO '{out}'",
        "ATTACH '{out}' AS other",
        "SELECT 1; DELETE FROM runs",
    ],
    ids=["insert", "delete", "update", "drop", "copy-to", "attach", "smuggled"],
)
def test_sql_refuses_anything_that_writes(cli, revised_db, tmp_path, statement):
    out = tmp_path / "leak.out"
    before = digest(revised_db)
    counts = query(revised_db, "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM revisions)")
    result = cli("sql", revised_db, statement.format(out=out))
    assert result.code == 2
    (line,) = result.error_lines()
    assert line.startswith("charter: error: charter sql is read-only")
    assert digest(revised_db) == before
    assert query(revised_db, "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM revisions)") == counts
    assert not out.exists()


def test_sql_errors_are_one_line_and_a_missing_database_is_not_created(cli, revised_db, tmp_path):
    bad = cli("sql", revised_db, "SELECT nope FROM runs")
    assert bad.code == 2
    (line,) = bad.error_lines()
    assert line.startswith("charter: error: SQL: ")
    missing = tmp_path / "missing.duckdb"
    result = cli("sql", missing, "SELECT 1")
    assert result.code == 2 and f"database {missing} does not exist" in result.stderr
    assert not missing.exists()


# --------------------------------------------------------------------------- export
def sft_rows(db: Path) -> dict[str, dict[str, object]]:
    return {r["prompt"]: r for r in query_dicts(db, "SELECT * FROM sft_examples")}


def test_export_sft_trl_is_the_final_revision_as_messages(cli, revised_db, tmp_path):
    out = tmp_path / "sft.jsonl"
    result = cli("export", revised_db, "--dataset", "sft", "--out", out, "--final-only")
    assert result.code == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    stored = sft_rows(revised_db)
    assert len(rows) == 2 and all(list(r) == ["messages"] for r in rows)
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert assistant["content"] == stored[user["content"]]["completion"]
    last_revision = query(revised_db, "SELECT revision FROM revisions WHERE round = 2 ORDER BY revision")
    assert sorted(r["messages"][1]["content"] for r in rows) == [r[0] for r in last_revision]


def test_export_sft_hf_cai_has_exactly_the_datasets_columns(cli, revised_db, tmp_path):
    out = tmp_path / "cai.jsonl"
    result = cli("export", revised_db, "--dataset", "sft", "--out", out, "--schema", "hf-cai", "--final-only")
    assert result.code == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    rounds = {
        (r["prompt"], r["round"]): r
        for r in query_dicts(revised_db, "SELECT * FROM revisions JOIN prompts USING (run_id, prompt_id)")
    }
    for row in rows:
        assert list(row) == HF_CAI_COLUMNS
        prompt = row["prompt"]
        last = rounds[(prompt, 2)]
        assert row["init_prompt"] == prompt
        # Critique and revision come from the same round, the one that produced the final revision
        # (issue 9: critic_* used to be round 1's next to the final round's revision).
        assert (row["critic_prompt"], row["critic_response"]) == (last["critique_request"], last["critique"])
        assert (row["revision_prompt"], row["revision_response"]) == (
            last["revision_request"],
            last["revision"],
        )
        user = {"role": "user", "content": prompt}
        assert row["messages"] == row["chosen"] == [user, {"role": "assistant", "content": last["revision"]}]
        assert row["rejected"] == [user, {"role": "assistant", "content": row["init_response"]}]
        assert row["init_response"] != last["revision"]


@pytest.mark.parametrize("schema", ["trl", "hf-cai"])
def test_export_parquet(cli, revised_db, tmp_path, schema):
    out = tmp_path / f"{schema}.parquet"
    result = cli("export", revised_db, "--dataset", "sft", "--out", out, "--schema", schema)
    assert result.code == 0, result.stderr
    table = pq.read_table(out)
    assert table.num_rows == 4  # every round's revision (2 prompts x 2 rounds), the default
    assert table.column_names == (HF_CAI_COLUMNS if schema == "hf-cai" else ["messages"])
    messages = table.column("messages").to_pylist()
    assert all([m["role"] for m in conversation] == ["user", "assistant"] for conversation in messages)
    assert not list(tmp_path.glob("*.tmp"))


def test_export_filters_by_run_and_refuses_unknown_datasets(cli, server, revised_db, prompts_file, tmp_path):
    db = tmp_path / "two-runs.duckdb"
    shutil.copyfile(revised_db, db)
    result = cli(
        *revise_args(prompts_file, db, server, "--rounds", "1", "--limit", "1", "--run-name", "second")
    )
    assert result.code == 0, result.stderr
    everything = tmp_path / "all.jsonl"
    only = tmp_path / "second.jsonl"
    assert cli("export", db, "--dataset", "sft", "--out", everything).code == 0
    assert cli("export", db, "--dataset", "sft", "--out", only, "--run", "second").code == 0
    assert len(everything.read_text().splitlines()) == 2 * 2 + 1  # every round of both runs
    assert len(only.read_text().splitlines()) == 1
    unknown = cli("export", db, "--dataset", "nonsense", "--out", tmp_path / "x.jsonl")
    assert unknown.code == 2 and "--dataset 'nonsense'" in unknown.stderr
    assert not (tmp_path / "x.jsonl").exists()
