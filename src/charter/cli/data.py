"""`charter sql` (read-only queries) and `charter export` (datasets for training)."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

import typer

from charter.cli import common

# Statement types a read-only query may use; the rest are refused with a clear message before they
# run. The guarantee is the engine's (`open_read_only`: a read-only file, no external access, its
# configuration locked): `EXPLAIN ANALYZE COPY ... TO` is an EXPLAIN and still cannot write.
_READ_ONLY_TYPES = {"SELECT", "EXPLAIN"}


def run_sql(db: Path, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run a read-only query against `db`; refuse anything that writes."""
    import duckdb

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
        except duckdb.PermissionException as exc:
            raise common.UsageError(f"charter sql is read-only: {_first_line(exc)}") from None
        except Exception as exc:
            raise common.UsageError(f"SQL: {_first_line(exc)}") from None
        cols = [d[0] for d in cur.description or []]
        return cols, cur.fetchall()
    finally:
        con.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# Control characters (C0 but newline, DEL, C1) would move the cursor, recolour or retitle the
# terminal: stored model text is shown with them escaped, never interpreted.
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def visible(value: Any, *, one_line: bool = False) -> str:
    """A cell as plain text: NULL for None, control characters escaped (`\\x1b`), `\\n` if `one_line`."""
    text = "NULL" if value is None else str(value)
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    return text.replace("\n", "\\n") if one_line else text


def plain_table(cols: list[str], rows: list[tuple[Any, ...]]) -> str:
    """Every column in full, aligned, one line per row: for pipes and files (no width to fit)."""
    from rich.cells import cell_len

    cells = [[visible(c, one_line=True) for c in cols]]
    cells += [[visible(v, one_line=True) for v in row] for row in rows]
    widths = [max(cell_len(r[i]) for r in cells) for i in range(len(cols))]

    def line(row: list[str]) -> str:
        return " | ".join(c + " " * (w - cell_len(c)) for c, w in zip(row, widths, strict=True)).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def print_table(cols: list[str], rows: list[tuple[Any, ...]]) -> None:
    """A rich table at a terminal, a plain full-width table otherwise; stored text is never markup."""
    if not sys.stdout.isatty():
        if cols:
            typer.echo(plain_table(cols, rows))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Text objects, not strings: rich would read "[/INST]" or "[red]" in an answer as markup.
    table = Table(show_lines=False)
    for col in cols:
        table.add_column(Text(visible(col)))
    for row in rows:
        table.add_row(*(Text(visible(v)) for v in row))
    Console(width=max(80, min(200, Console().width))).print(table)


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
            print_table(cols, rows)

    @app.command("export")
    def export_cmd(
        db: Path = typer.Argument(..., help="DuckDB file."),
        dataset: str | None = typer.Option(
            None, "--dataset", help="sft | preferences (--format hf writes both, split)."
        ),
        out: Path = typer.Option(
            ..., "--out", help="Output file (.jsonl or .parquet), or a directory for --format hf."
        ),
        fmt: str | None = typer.Option(
            None, "--format", help="jsonl | parquet | hf (a datasets DatasetDict; default: from --out)."
        ),
        schema: str = typer.Option(
            "trl", "--schema", help="trl | hf-cai | a plugin's (charter plugins lists them)"
        ),
        run: str | None = typer.Option(None, "--run", help="Only rows of this run (name or id)."),
        where: str | None = typer.Option(None, "--where", help="Extra SQL filter on the dataset's columns."),
        final_only: bool = typer.Option(
            False, "--final-only", help="sft: each prompt's final revision only (default: every round's)."
        ),
        test_fraction: float = typer.Option(
            0.1, "--test-fraction", help="--format hf: share of conversations in the test splits."
        ),
        seed: int = typer.Option(0, "--seed", help="--format hf: seed of the train/test split."),
        push_to_hub: str | None = typer.Option(
            None, "--push-to-hub", help="--format hf: upload the dataset to this Hub repo (needs HF_TOKEN)."
        ),
        private: bool = typer.Option(False, "--private", help="--push-to-hub: create the repo private."),
    ) -> None:
        """Write a training dataset (TRL or hf-cai columns) from the database."""
        from charter.export import export

        if fmt not in (None, "jsonl", "parquet", "hf"):
            raise common.UsageError(f"--format {fmt!r}: expected jsonl, parquet or hf")
        if fmt == "hf":
            _export_hf(
                db, out, dataset, schema, run, where, final_only, test_fraction, seed, push_to_hub, private
            )
            return
        if dataset is None:
            raise common.UsageError("--dataset is required (sft or preferences), unless --format hf")
        if push_to_hub is not None:
            raise common.UsageError("--push-to-hub goes with --format hf")
        count = export(
            db, dataset, out, schema=schema, format=fmt, run=run, where=where,  # type: ignore[arg-type]
            final_only=final_only, echo=lambda line: typer.echo(line, err=True),
        )  # fmt: skip
        typer.echo(f"wrote {count} {dataset} rows to {out}", err=True)


def _export_hf(
    db: Path,
    out: Path,
    dataset: str | None,
    schema: str,
    run: str | None,
    where: str | None,
    final_only: bool,
    test_fraction: float,
    seed: int,
    push_to_hub: str | None,
    private: bool,
) -> None:
    """`charter export --format hf`: both datasets in the four cai-conversation-harmless splits."""
    from charter.hf_dataset import HubError, export_hf
    from charter.store.store import open_read_only

    if dataset is not None:
        raise common.UsageError("--format hf writes sft and preferences together; leave out --dataset")
    from charter.export import exporter_for

    for each in ("sft", "preferences"):
        try:
            exporter_for(each, schema)
        except ValueError as exc:
            raise common.UsageError(f"{exc} (--format hf writes sft and preferences)") from None
    open_read_only(db).close()  # a missing or non-DuckDB --db is bad input before anything else
    try:
        result = export_hf(
            db, out, run=run, where=where, final_only=final_only, test_fraction=test_fraction, seed=seed,
            push_to_hub=push_to_hub, private=private, echo=lambda line: typer.echo(line, err=True),
        )  # fmt: skip
    except HubError as exc:
        typer.echo(f"charter: error: {exc} (the dataset is written in {out})", err=True)
        raise typer.Exit(1) from None
    for note in result.notes:
        typer.echo(f"  {note}", err=True)
    counts = ", ".join(f"{split} {n}" for split, n in result.counts.items())
    typer.echo(f"wrote a DatasetDict to {out}: {counts}; card {out / 'README.md'}", err=True)
    if result.pushed_to:
        typer.echo(f"pushed to {result.pushed_to}", err=True)
