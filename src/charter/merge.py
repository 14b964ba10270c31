"""Scale-out across machines: `--shard` (charter.shard) splits a run, `merge_databases` (`charter merge`) joins the files.

Sharding is by a hash of each item's id (a prompt's id is a hash of its content unless the file
gives one), so every machine computes the same split with no coordination: shards are disjoint and
together complete. Each shard writes its own DuckDB file; the run name (and so the run id) does not
depend on the shard, so the shards' runs merge back into one run.

Merging is generic over the tables in the schema: every table of the output's schema that an input
has is copied, rows already present (by primary key, or whole-row equality for a table without one)
are skipped, so merging the same file twice changes nothing. Runs are matched by name: a run of an
input that has the same name as an output run becomes that run (its rows are re-labelled with the
output's run id in every `run_id` / `*_run_id` column).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charter.store.store import Store, StoreError, check_db_path

__all__ = ["MergeSummary", "merge_databases"]

# How to combine the status of two runs with the same name: the least finished one wins.
_STATUS_RANK = {"done": 0, "running": 1, "interrupted": 2, "failed": 3}


@dataclass
class MergeSummary:
    """What `merge_databases` did: rows added per table (0 for a repeated merge) and runs matched."""

    out: str
    inputs: list[str]
    rows_added: dict[str, int] = field(default_factory=dict)
    runs_merged: int = 0
    runs_added: int = 0


def _tables(con: Any, catalog: str) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = ? AND table_schema = 'main' "
        "AND table_type = 'BASE TABLE' ORDER BY table_name",
        [catalog],
    ).fetchall()
    return [str(r[0]) for r in rows]


def _columns(con: Any, catalog: str, table: str) -> list[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_catalog = ? AND table_schema = 'main' "
        "AND table_name = ? ORDER BY ordinal_position",
        [catalog, table],
    ).fetchall()
    return [str(r[0]) for r in rows]


def _keyed_tables(con: Any, catalog: str) -> set[str]:
    rows = con.execute(
        "SELECT DISTINCT table_name FROM duckdb_constraints() WHERE database_name = ? "
        "AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')",
        [catalog],
    ).fetchall()
    return {str(r[0]) for r in rows}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _is_run_ref(column: str) -> bool:
    return column == "run_id" or column.endswith("_run_id")


def _merge_run_rows(out: Any, src_runs: list[dict[str, Any]], summary: MergeSummary) -> dict[str, str]:
    """Insert or combine the input's runs; returns {input run_id: output run_id}."""
    mapping: dict[str, str] = {}
    for run in src_runs:
        existing = out.execute(
            "SELECT run_id, config, started_at, finished_at, status FROM runs WHERE name = ?", [run["name"]]
        ).fetchone()
        if existing is None:
            run_id = run["run_id"]
            if out.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone():
                # The id is taken by a run of another name: give this one a fresh, stable id.
                run_id = hashlib.sha256(f"{run['name']}\0{run_id}".encode()).hexdigest()[:16]
            cols = list(run)
            values = [run_id if c == "run_id" else run[c] for c in cols]
            out.execute(
                f"INSERT INTO runs ({', '.join(_quote(c) for c in cols)}) VALUES ({', '.join('?' for _ in cols)})",
                values,
            )
            mapping[run["run_id"]] = run_id
            summary.runs_added += 1
            continue
        run_id, config, _started, _finished, status = existing
        mapping[run["run_id"]] = str(run_id)
        summary.runs_merged += 1
        merged_status = max(
            [str(status), str(run.get("status") or "done")], key=lambda s: _STATUS_RANK.get(s, 1)
        )
        merged_config = _merge_configs(config, run.get("config"))
        out.execute(
            "UPDATE runs SET started_at = least(started_at, coalesce(?, started_at)), "
            "finished_at = CASE WHEN finished_at IS NULL OR ? IS NULL THEN NULL "
            "ELSE greatest(finished_at, ?) END, status = ?, config = ? WHERE run_id = ?",
            [
                run.get("started_at"),
                run.get("finished_at"),
                run.get("finished_at"),
                merged_status,
                merged_config,
                run_id,
            ],
        )
    return mapping


def _merge_configs(ours: Any, theirs: Any) -> Any:
    """Shards of one run differ only in `shard`: the merged run is no longer one shard of anything."""
    try:
        a = json.loads(ours) if isinstance(ours, str) else ours
        b = json.loads(theirs) if isinstance(theirs, str) else theirs
    except (TypeError, ValueError):
        return ours
    if isinstance(a, dict) and isinstance(b, dict) and a.get("shard") != b.get("shard"):
        a = {k: v for k, v in a.items() if k != "shard"}
        return json.dumps(a, ensure_ascii=False)
    return ours


def merge_databases(out: str | Path, inputs: list[str | Path]) -> MergeSummary:
    """Merge charter databases `inputs` into `out` (created if missing); safe to repeat.

    Raises `StoreError` for a missing input, an input that is the output, or an input with tables
    this version of charter does not know (written by a newer charter: upgrade first).
    """
    out_path = Path(out)
    if not inputs:
        raise StoreError("charter merge: give at least one input database")
    resolved = []
    for item in inputs:
        path = Path(item)
        if not path.is_file():
            raise StoreError(f"database {path} does not exist")
        if out_path.exists() and (path.resolve() == out_path.resolve() or path.samefile(out_path)):
            raise StoreError(f"{path}: an input cannot also be the output")
        check_db_path(path)
        resolved.append(path)
    check_db_path(out_path)  # before Store creates or opens it: nothing is written for a bad output
    summary = MergeSummary(out=str(out_path), inputs=[str(p) for p in resolved])
    with Store(out_path) as store:
        con = store.con
        store.flush()
        main = str(con.execute("SELECT current_database()").fetchone()[0])  # type: ignore[index]
        out_tables = [t for t in _tables(con, main) if t != "schema_version"]
        keyed = _keyed_tables(con, main)
        for number, path in enumerate(resolved):
            alias = f"charter_merge_src{number}"
            con.execute(f"ATTACH {_sql_string(str(path))} AS {alias} (READ_ONLY)")
            try:
                src_tables = [t for t in _tables(con, alias) if t != "schema_version"]
                unknown = sorted(set(src_tables) - set(out_tables))
                if unknown:
                    raise StoreError(
                        f"{path}: tables {', '.join(unknown)} are unknown to this charter version; "
                        "upgrade charter to merge this file"
                    )
                con.execute("BEGIN")
                try:
                    _merge_one(con, main, alias, src_tables, keyed, summary)
                    con.execute("COMMIT")
                except Exception:
                    con.execute("ROLLBACK")
                    raise
            finally:
                con.execute(f"DETACH {alias}")
    return summary


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _merge_one(
    con: Any, main: str, alias: str, src_tables: list[str], keyed: set[str], summary: MergeSummary
) -> None:
    mapping: dict[str, str] = {}
    if "runs" in src_tables:
        cur = con.execute(f"SELECT * FROM {alias}.runs ORDER BY started_at, run_id")
        names = [d[0] for d in cur.description]
        src_runs = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        mapping = _merge_run_rows(con, src_runs, summary)
    con.execute("CREATE OR REPLACE TEMP TABLE charter_run_map (in_id VARCHAR PRIMARY KEY, out_id VARCHAR)")
    if mapping:
        con.executemany("INSERT INTO charter_run_map VALUES (?, ?)", list(mapping.items()))
    for table in src_tables:
        if table == "runs":
            continue
        out_cols = _columns(con, main, table)
        src_cols = set(_columns(con, alias, table))
        cols = [c for c in out_cols if c in src_cols]
        if not cols:
            continue
        joins = []
        exprs = []
        for i, col in enumerate(cols):
            q = _quote(col)
            if _is_run_ref(col):
                joins.append(f"LEFT JOIN charter_run_map m{i} ON m{i}.in_id = t.{q}")
                exprs.append(f"coalesce(m{i}.out_id, t.{q}) AS {q}")
            else:
                exprs.append(f"t.{q}")
        select = f"SELECT {', '.join(exprs)} FROM {alias}.main.{_quote(table)} t {' '.join(joins)}"
        col_list = ", ".join(_quote(c) for c in cols)
        before = con.execute(f"SELECT count(*) FROM {_quote(table)}").fetchone()[0]
        if table in keyed:
            con.execute(f"INSERT OR IGNORE INTO {_quote(table)} ({col_list}) {select}")
        else:
            con.execute(
                f"INSERT INTO {_quote(table)} ({col_list}) "
                f"SELECT * FROM ({select}) EXCEPT SELECT {col_list} FROM {_quote(table)}"
            )
        after = con.execute(f"SELECT count(*) FROM {_quote(table)}").fetchone()[0]
        summary.rows_added[table] = summary.rows_added.get(table, 0) + int(after) - int(before)
