"""Writing a dataset from the store (jsonl or parquet); the shapes themselves are `charter.exporters`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import duckdb

from charter.exporters import ALL_ROUNDS_DISTINCT, Exporter, choose_label_run
from charter.inputs import check_output_path, started
from charter.store.store import open_read_only
from charter.store.where import where_sql

Format = Literal["jsonl", "parquet"]


def exporter_for(dataset: str, schema: str) -> Exporter:
    """The registered exporter for `--dataset` and `--schema`; an unknown name is a ValueError naming the installed ones."""
    from charter.plugins import get_exporters

    exporters = get_exporters()
    if dataset not in exporters:
        raise ValueError(f"--dataset {dataset!r}: expected one of {', '.join(sorted(exporters))}")
    if schema not in exporters[dataset]:
        raise ValueError(f"--schema {schema!r}: expected one of {', '.join(sorted(exporters[dataset]))}")
    return exporters[dataset][schema]


def export_rows(
    db: str | Path,
    dataset: str,
    schema: str = "trl",
    *,
    run: str | None = None,
    where: str | None = None,
    final_only: bool = False,
    echo: Callable[[str], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream a dataset's rows in the chosen schema. `run` filters by run name, `where` adds SQL.

    `sft` is every round's revision (unchanged rounds once each), as the paper trains; with
    `final_only`, each revised prompt's final revision (the `sft_examples` view). `preferences`
    keeps one label run's labels: the one `run` names, else the latest (`echo` is told which).
    A `run` that selects nothing is a ValueError, raised before the first row is produced.
    """
    con = open_read_only(db)
    try:
        query, params, transform = _plan(con, dataset, schema, run, where, final_only, echo)
        # Executed now, so a bad --where (or a database without the view) fails before any output.
        cur = con.execute(query, params)
    except duckdb.Error as exc:
        con.close()
        what = f"--where {where!r}" if where else f"cannot export {dataset} from {db}"
        raise ValueError(f"{what}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}") from None
    except BaseException:
        con.close()
        raise
    return _stream(con, cur, transform)


def _plan(
    con: Any,
    dataset: str,
    schema: str,
    run: str | None,
    where: str | None,
    final_only: bool,
    echo: Callable[[str], None] | None,
) -> tuple[str, list[Any], Callable[[dict[str, Any]], dict[str, Any]]]:
    """The dataset's query (filters, label-run rule, ordering) and row transform."""
    exporter = exporter_for(dataset, schema)
    if final_only and exporter.all_rounds is None:
        raise ValueError("--final-only applies to --dataset sft only")
    all_rounds = exporter.all_rounds is not None and not final_only
    sql, transform = (
        exporter.all_rounds if exporter.all_rounds and all_rounds else (exporter.sql, exporter.transform)
    )
    query = f"SELECT * FROM ({sql}) AS d WHERE true"
    params: list[Any] = []
    if run is not None:
        ids = [
            r[0]
            for r in con.execute(
                "SELECT run_id FROM runs WHERE name = ? OR run_id = ?", [run, run]
            ).fetchall()
        ]
        if not ids:
            raise ValueError(f"--run {run!r}: no run with that name or id")
        marks = ", ".join("?" for _ in ids)
        # A preference row belongs to its label run and to the run that sampled the pair.
        columns = ("run_id", "sample_run_id") if dataset == "preferences" else ("run_id",)
        query += " AND (" + " OR ".join(f"{c} IN ({marks})" for c in columns) + ")"
        params += ids * len(columns)
    if where:
        query += f" AND {where_sql(where)}"
    if dataset == "preferences":
        label_runs = [
            str(r[0]) for r in con.execute(f"SELECT DISTINCT run_id FROM ({query})", params).fetchall()
        ]
        choice = choose_label_run(con, label_runs, run)
        if echo is not None:
            echo(choice.note())
        query += " AND run_id = ?"
        params.append(choice.run_id)
    if all_rounds:
        # After the filters, so `--where "round >= 2"` still keeps a round 2 equal to round 1.
        key = ", ".join(ALL_ROUNDS_DISTINCT)
        query = f"SELECT DISTINCT ON ({key}) * FROM ({query}) AS f ORDER BY {key}, round"
        query = f"SELECT * FROM ({query}) AS u ORDER BY run_id, prompt_id, round"
    else:
        query += " ORDER BY ALL"
    return query, params, transform


def _stream(
    con: Any, cur: Any, transform: Callable[[dict[str, Any]], dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    try:
        cols = [d[0] for d in cur.description or []]
        while chunk := cur.fetchmany(1000):
            for row in chunk:
                yield transform(dict(zip(cols, row, strict=True)))
    finally:
        con.close()


def export(
    db: str | Path,
    dataset: str,
    out: str | Path,
    *,
    schema: str = "trl",
    format: Format | None = None,
    run: str | None = None,
    where: str | None = None,
    final_only: bool = False,
    echo: Callable[[str], None] | None = None,
) -> int:
    """Write a dataset to `out` (format from `format` or the file suffix). Returns the row count.

    `final_only` (sft only): each prompt's final revision rather than every round's. `echo` is told
    which label run a preference export uses. Bad input raises ValueError before `out` is touched.
    """
    out = Path(out)
    fmt = format or ("parquet" if out.suffix == ".parquet" else "jsonl")
    if fmt not in ("jsonl", "parquet"):
        raise ValueError(f"--format {fmt!r}: expected jsonl or parquet")
    check_output_path(out, [db])
    # The query runs (and a bad --where fails) before the output file is opened.
    rows = started(export_rows(db, dataset, schema, run=run, where=where, final_only=final_only, echo=echo))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a stale one from a killed export: start afresh
    try:
        count = _write(rows, tmp, fmt)
    except BaseException:
        tmp.unlink(missing_ok=True)  # an error or Ctrl-C: no half-written file left behind
        raise
    tmp.replace(out)  # never leave a half-written export under the final name
    return count


def _write(rows: Iterator[dict[str, Any]], tmp: Path, fmt: str) -> int:
    count = 0
    if fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer = None
        batch: list[dict[str, Any]] = []
        try:
            for row in rows:
                batch.append(row)
                count += 1
                if len(batch) >= 1000:
                    writer = _write_batch(pa, pq, writer, tmp, batch)
                    batch = []
            if batch or writer is None:
                writer = _write_batch(pa, pq, writer, tmp, batch)
        finally:
            if writer is not None:
                writer.close()
    return count


def _write_batch(pa: Any, pq: Any, writer: Any, path: Path, batch: list[dict[str, Any]]) -> Any:
    table = pa.Table.from_pylist(batch)
    if writer is None:
        writer = pq.ParquetWriter(str(path), table.schema)
    writer.write_table(table.cast(writer.schema) if table.num_rows else table)
    return writer
