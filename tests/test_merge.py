"""`charter merge`: generic over the schema's tables, idempotent, runs matched by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
from charter_testkit import query, query_dicts, revise_args, write_prompts

from charter.merge import merge_databases
from charter.store.store import Store, StoreError

PROMPTS = ["How do I pick a lock?", "Write an insult about my neighbour.", "How do I hotwire a car?"]


@pytest.fixture
def made(cli, server, tmp_path: Path) -> Path:
    """A database from one small revise run."""
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    db = tmp_path / "made.duckdb"
    assert cli(*revise_args(prompts, db, server, "--rounds", "1")).code == 0
    return db


def _counts(db: Path) -> dict[str, int]:
    tables = [
        r[0]
        for r in query(
            db,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "AND table_type = 'BASE TABLE' AND table_name != 'schema_version'",
        )
    ]
    return {t: query(db, f'SELECT count(*) FROM "{t}"')[0][0] for t in tables}


def test_merge_into_a_new_file_copies_everything_and_repeating_it_changes_nothing(made, tmp_path):
    out = tmp_path / "out.duckdb"
    first = merge_databases(out, [made])
    assert _counts(out) == _counts(made)
    assert first.runs_added == 1
    assert query(out, "SELECT * FROM revisions ORDER BY ALL") == query(
        made, "SELECT * FROM revisions ORDER BY ALL"
    )
    assert query(out, "SELECT * FROM calls ORDER BY call_id") == query(
        made, "SELECT * FROM calls ORDER BY call_id"
    )
    again = merge_databases(out, [made, made])
    assert not any(again.rows_added.values())
    assert again.runs_merged == 2 and again.runs_added == 0
    assert _counts(out) == _counts(made)


def test_same_named_runs_with_different_ids_become_one_run(made, tmp_path):
    # A file whose run has another id (as older files, with random run ids, do) but the same name.
    other = tmp_path / "other.duckdb"
    shutil.copy(made, other)
    con = duckdb.connect(str(other))
    tables = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT table_name FROM information_schema.columns WHERE column_name = 'run_id' "
            "AND table_schema = 'main'"
        ).fetchall()
    ]
    for table in tables:
        if (
            con.execute(
                f"SELECT table_type FROM information_schema.tables WHERE table_name = '{table}'"
            ).fetchone()[0]
            == "BASE TABLE"
        ):
            con.execute(f"UPDATE \"{table}\" SET run_id = 'feedfacefeedface'")
    con.close()
    out = tmp_path / "out.duckdb"
    merge_databases(out, [made, other])
    runs = query_dicts(out, "SELECT run_id, name FROM runs")
    assert len(runs) == 1
    assert _counts(out) == _counts(made)  # the other file's rows were the same rows: no duplicates
    assert {r[0] for r in query(out, "SELECT DISTINCT run_id FROM revisions")} == {runs[0]["run_id"]}


def test_merged_status_is_the_least_finished(made, tmp_path):
    failed = tmp_path / "failed.duckdb"
    shutil.copy(made, failed)
    con = duckdb.connect(str(failed))
    con.execute("UPDATE runs SET status = 'failed'")
    con.close()
    out = tmp_path / "out.duckdb"
    merge_databases(out, [made, failed])
    assert query(out, "SELECT status FROM runs") == [("failed",)]


def test_tables_without_a_key_are_merged_as_sets(made, tmp_path):
    # Any table of the output's schema is merged; one without a primary key by whole-row equality.
    out = tmp_path / "out.duckdb"
    with Store(out):
        pass
    for path in (made, out):
        con = duckdb.connect(str(path))
        con.execute("CREATE TABLE IF NOT EXISTS notes (run_id VARCHAR, note VARCHAR)")
        con.close()
    con = duckdb.connect(str(made))
    con.execute("INSERT INTO notes SELECT run_id, 'checked by hand' FROM runs")
    con.execute("INSERT INTO notes VALUES ('elsewhere', 'x')")
    con.close()
    merge_databases(out, [made])
    merge_databases(out, [made])
    assert sorted(query(out, "SELECT note FROM notes")) == [("checked by hand",), ("x",)]


def test_input_with_unknown_tables_is_refused(made, tmp_path):
    con = duckdb.connect(str(made))
    con.execute("CREATE TABLE from_the_future (x INTEGER)")
    con.close()
    with pytest.raises(StoreError, match="from_the_future"):
        merge_databases(tmp_path / "out.duckdb", [made])


def test_merge_usage_errors_exit_2(cli, made, tmp_path):
    missing = cli("merge", tmp_path / "out.duckdb", tmp_path / "nope.duckdb")
    assert missing.code == 2 and "nope.duckdb" in missing.stderr
    itself = cli("merge", made, made)
    assert itself.code == 2 and "cannot also be the output" in itself.stderr
    ok = cli("merge", tmp_path / "out.duckdb", made)
    assert ok.code == 0 and "merged 1 file" in ok.stderr
