"""`charter sql` (read-only queries) and `charter export` (datasets for training)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import typer

from charter.cli import common

# Statement types a read-only query may use; anything else (including COPY ... TO, which writes
# files, and ATTACH) is refused before it runs.
_READ_ONLY_TYPES = {"SELECT", "EXPLAIN"}


def run_sql(db: Path, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run a read-only query against `db`; refuse anything that writes."""
    from charter.store.store import open_read_only

    con = open_read_only(db)
    try:
        try:
            statements = con.extract_statements(query)
        except Exception as exc:
            raise common.UsageError(f"SQL: {str(exc).splitlines()[0]}") from None
        for statement in statements:
            kind = str(statement.type).rsplit(".", 1)[-1]
            if kind not in _READ_ONLY_TYPES:
                raise common.UsageError(f"charter sql is read-only: {kind} statements are refused")
        try:
            cur = con.execute(query)
        except Exception as exc:
            raise common.UsageError(f"SQL: {str(exc).splitlines()[0]}") from None
        cols = [d[0] for d in cur.description or []]
        return cols, cur.fetchall()
    finally:
        con.close()


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def register(app: typer.Typer) -> None:
    """Add `sql` and `export` to the app."""

    @app.command("sql")
    def sql_cmd(
        db: Path = typer.Argument(..., help="DuckDB file."),
        query: str = typer.Argument(..., help="A read-only SQL query."),
        fmt: str = typer.Option("table", "--format", help="table | csv | json | jsonl"),
    ) -> None:
        """Query the database (read-only) over the views runs, calls, revisions, sft_examples, ..."""
        if fmt not in ("table", "csv", "json", "jsonl"):
            raise common.UsageError(f"--format {fmt!r}: expected table, csv, json or jsonl")
        cols, rows = run_sql(db, query)
        if fmt == "csv":
            writer = csv.writer(sys.stdout)
            writer.writerow(cols)
            writer.writerows(rows)
        elif fmt in ("json", "jsonl"):
            records = [{c: _plain(v) for c, v in zip(cols, row, strict=True)} for row in rows]
            if fmt == "json":
                typer.echo(json.dumps(records, ensure_ascii=False, indent=2))
            else:
                for record in records:
                    typer.echo(json.dumps(record, ensure_ascii=False))
        else:
            from rich.console import Console
            from rich.table import Table

            table = Table(*cols, show_lines=False)
            for row in rows:
                table.add_row(*("NULL" if v is None else str(v) for v in row))
            Console(width=max(80, min(200, Console().width))).print(table)

    @app.command("export")
    def export_cmd(
        db: Path = typer.Argument(..., help="DuckDB file."),
        dataset: str = typer.Option(..., "--dataset", help="sft | preferences"),
        out: Path = typer.Option(..., "--out", help="Output file (.jsonl or .parquet)."),
        fmt: str | None = typer.Option(None, "--format", help="jsonl | parquet (default: from --out)."),
        schema: str = typer.Option("trl", "--schema", help="trl | hf-cai"),
        run: str | None = typer.Option(None, "--run", help="Only rows of this run (name or id)."),
        where: str | None = typer.Option(None, "--where", help="Extra SQL filter on the dataset's columns."),
        final_only: bool = typer.Option(
            False, "--final-only", help="sft: each prompt's final revision only (default: every round's)."
        ),
    ) -> None:
        """Write a training dataset (TRL or hf-cai columns) from the database."""
        from charter.export import export

        if fmt not in (None, "jsonl", "parquet"):
            raise common.UsageError(f"--format {fmt!r}: expected jsonl or parquet")
        count = export(
            db, dataset, out, schema=schema, format=fmt, run=run, where=where,  # type: ignore[arg-type]
            final_only=final_only, echo=lambda line: typer.echo(line, err=True),
        )  # fmt: skip
        typer.echo(f"wrote {count} {dataset} rows to {out}", err=True)
