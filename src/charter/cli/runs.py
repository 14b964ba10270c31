"""`charter runs DB` (what each run did) and `charter runs rm NAME --db DB` (remove one run's rows)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from charter.cli import common

# What a run of each command produced, as (label, SQL counting it for run_id = ?).
_OUTPUTS: dict[str, list[tuple[str, str]]] = {
    "revise": [("examples", "SELECT count(*) FROM sft_examples WHERE run_id = ?")],
    "sample": [("pairs", "SELECT count(*) FROM pairs WHERE run_id = ?")],
    "label": [
        ("labeled", "SELECT count(*) FROM pair_labels WHERE run_id = ? AND status = 'ok'"),
        ("flagged", "SELECT count(*) FROM pair_labels WHERE run_id = ? AND status <> 'ok'"),
    ],
    "eval": [
        ("evaluated", "SELECT count(*) FROM eval_items WHERE run_id = ?"),
        ("correct", "SELECT count(*) FROM eval_items WHERE run_id = ? AND correct"),
    ],
    "compare": [("pairs", "SELECT count(*) FROM pairs WHERE run_id = ?")],
}
COLUMNS = [
    "name",
    "command",
    "model",
    "status",
    "items",
    "calls",
    "failed",
    "tokens",
    "cost_usd",
    "started",
    "finished",
]


def list_runs(db: Path) -> list[dict[str, Any]]:
    """One dict per run in `db`, oldest first: name, command, model, status, outputs, calls, tokens, cost."""
    from charter.store.store import open_read_only

    con = open_read_only(db)
    try:
        rows = con.execute(
            "SELECT r.run_id, r.name, r.command, r.config, r.status, r.started_at, r.finished_at, "
            "count(c.call_id), count(c.error), coalesce(sum(c.prompt_tokens + c.completion_tokens), 0), "
            "sum(c.cost_usd) FROM runs r LEFT JOIN calls c ON c.run_id = r.run_id AND NOT c.cached "
            "GROUP BY ALL ORDER BY r.started_at, r.name"
        ).fetchall()
        out = []
        for run_id, name, command, config, status, started, finished, calls, failed, tokens, cost in rows:
            counts = {label: _count(con, sql, run_id) for label, sql in _OUTPUTS.get(command, [])}
            model = (json.loads(config) if config else {}).get("model")
            out.append(
                {
                    "run_id": run_id,
                    "name": name,
                    "command": command,
                    "model": model,
                    "status": status,
                    "items": ", ".join(f"{v} {k}" for k, v in counts.items()),
                    "calls": int(calls),
                    "failed": int(failed),
                    "tokens": int(tokens),
                    "cost_usd": None if cost is None else round(float(cost), 6),
                    "started": str(started)[:19] if started else None,
                    "finished": str(finished)[:19] if finished else None,
                }
            )
        return out
    finally:
        con.close()


def run_rows(db: Path, name: str) -> tuple[str, dict[str, int]]:
    """The id of run `name` (a name or id) and how many rows each table holds for it."""
    from charter.store.store import open_read_only

    con = open_read_only(db)
    try:
        found = con.execute("SELECT run_id FROM runs WHERE name = ? OR run_id = ?", [name, name]).fetchone()
        if found is None:
            names = [str(r[0]) for r in con.execute("SELECT name FROM runs ORDER BY started_at").fetchall()]
            known = f" (runs: {', '.join(names)})" if names else " (it has no runs)"
            raise common.UsageError(f"{db}: no run named {name!r}{known}")
        run_id = str(found[0])
        counts = {
            table: _count(con, f'SELECT count(*) FROM "{table}" WHERE run_id = ?', run_id)
            for table in _run_tables(con)
        }
        return run_id, counts
    finally:
        con.close()


def _count(con: Any, sql: str, run_id: str) -> int:
    row = con.execute(sql, [run_id]).fetchone()
    return int(row[0]) if row else 0


def _run_tables(con: Any) -> list[str]:
    """Every table with a run_id column (new tables are covered too), `runs` itself last."""
    tables = [
        str(r[0])
        for r in con.execute(
            "SELECT DISTINCT c.table_name FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_schema, table_name) "
            "WHERE c.column_name = 'run_id' AND t.table_type = 'BASE TABLE' AND c.table_schema = 'main' "
            "ORDER BY 1"
        ).fetchall()
        # training_runs.run_id names a training run, not one of `runs`.
        if r[0] not in ("runs", "training_runs")
    ]
    return [*tables, "runs"]


def remove_run(db: Path, run_id: str) -> dict[str, int]:
    """Delete every row of run `run_id` in one transaction; returns the rows removed per table."""
    from charter.store.store import Store

    with Store(db) as store:
        con = store.con
        removed: dict[str, int] = {}
        con.execute("BEGIN")
        try:
            for table in _run_tables(con):
                row = con.execute(f'DELETE FROM "{table}" WHERE run_id = ? RETURNING 1', [run_id]).fetchall()
                removed[table] = len(row)
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        return removed


def _print_table(rows: list[dict[str, Any]]) -> None:
    """Plain aligned text, never cut to the terminal's width."""
    cells = [COLUMNS] + [["" if r[c] is None else str(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    for row in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def register(app: typer.Typer) -> None:
    """Add `runs` to the app."""

    @app.command("runs")
    def runs_cmd(
        args: list[str] = typer.Argument(
            ...,
            metavar="DB | rm NAME...",
            help="DB to list its runs, or: rm NAME... (with --db DB) to remove runs.",
        ),
        db: Path | None = typer.Option(
            None, "--db", help="DuckDB file (for rm; or give it first: rm DB NAME)."
        ),
        yes: bool = typer.Option(False, "--yes", "-y", help="rm without asking."),
        fmt: str = typer.Option("table", "--format", help="table | json | jsonl"),
    ) -> None:
        """List the runs in a database, or remove runs with `charter runs rm NAME --db DB`."""
        if fmt not in ("table", "json", "jsonl"):
            raise common.UsageError(f"--format {fmt!r}: expected table, json or jsonl")
        if args[0] != "rm":
            if len(args) != 1 or db is not None:
                raise common.UsageError("usage: charter runs DB, or charter runs rm NAME --db DB")
            rows = list_runs(Path(args[0]))
            if fmt == "json":
                typer.echo(json.dumps(rows, indent=2))
            elif fmt == "jsonl":
                for row in rows:
                    typer.echo(json.dumps(row))
            elif rows:
                _print_table(rows)
            else:
                typer.echo(f"{args[0]}: no runs", err=True)
            return
        names = args[1:]
        if db is None and len(names) >= 2:
            db, names = Path(names[0]), names[1:]
        if db is None or not names:
            raise common.UsageError("usage: charter runs rm NAME... --db DB")
        found = [(name, *run_rows(db, name)) for name in names]  # every name checked before any delete
        for name, _, counts in found:
            detail = ", ".join(f"{n} {t}" for t, n in counts.items() if n)
            typer.echo(f"run {name}: {detail}", err=True)
        if not yes:
            if not sys.stdin.isatty():
                raise common.UsageError("charter runs rm: not a terminal to ask; pass --yes to remove")
            if not typer.confirm("remove these rows?", err=True):
                raise typer.Exit(1)
        for name, run_id, _ in found:
            removed = remove_run(db, run_id)
            typer.echo(f"removed run {name}: {sum(removed.values())} rows", err=True)
