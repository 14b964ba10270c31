"""Exporting datasets from the store: SFT and preference data in TRL or hf-cai shape, jsonl or parquet."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from charter.store.store import open_read_only

Schema = Literal["trl", "hf-cai"]
Format = Literal["jsonl", "parquet"]

# dataset -> schema -> (SQL over the contract's views, row transform)
_Exporter = tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _sft_trl(row: dict[str, Any]) -> dict[str, Any]:
    return {"messages": _json(row["messages"])}


def _sft_hf_cai(row: dict[str, Any]) -> dict[str, Any]:
    messages = _json(row["messages"])
    conversation = messages[:-1]
    return {
        "init_prompt": row["init_prompt"],
        "init_response": row["init_response"],
        "critic_prompt": row["critic_prompt"],
        "critic_response": row["critic_response"],
        "revision_prompt": row["revision_prompt"],
        "revision_response": row["revision_response"],
        "prompt": row["prompt"],
        "messages": messages,
        "chosen": messages,
        "rejected": [*conversation, {"role": "assistant", "content": row["init_response"]}],
    }


EXPORTERS: dict[str, dict[str, _Exporter]] = {
    "sft": {
        "trl": ("SELECT * FROM sft_examples", _sft_trl),
        "hf-cai": ("SELECT * FROM sft_examples", _sft_hf_cai),
    },
}


def register_exporter(
    dataset: str, schema: str, sql: str, transform: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """Add an export shape (the preference exporters register themselves this way)."""
    EXPORTERS.setdefault(dataset, {})[schema] = (sql, transform)


def export_rows(
    db: str | Path,
    dataset: str,
    schema: str = "trl",
    *,
    run: str | None = None,
    where: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream a dataset's rows in the chosen schema. `run` filters by run name, `where` adds SQL."""
    _ensure_registered()
    if dataset not in EXPORTERS:
        raise ValueError(f"--dataset {dataset!r}: expected one of {', '.join(sorted(EXPORTERS))}")
    if schema not in EXPORTERS[dataset]:
        raise ValueError(f"--schema {schema!r}: expected one of {', '.join(sorted(EXPORTERS[dataset]))}")
    sql, transform = EXPORTERS[dataset][schema]
    con = open_read_only(db)
    try:
        query = f"SELECT * FROM ({sql}) AS d WHERE true"
        params: list[Any] = []
        if run is not None:
            query += " AND run_id IN (SELECT run_id FROM runs WHERE name = ? OR run_id = ?)"
            params += [run, run]
        if where:
            query += f" AND ({where})"
        cur = con.execute(query + " ORDER BY ALL", params)
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
) -> int:
    """Write a dataset to `out` (format from `format` or the file suffix). Returns the row count."""
    out = Path(out)
    fmt = format or ("parquet" if out.suffix == ".parquet" else "jsonl")
    if fmt not in ("jsonl", "parquet"):
        raise ValueError(f"--format {fmt!r}: expected jsonl or parquet")
    rows = export_rows(db, dataset, schema, run=run, where=where)
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


def _ensure_registered() -> None:
    # Preference exporters live with the labeling code; importing it registers them.
    with contextlib.suppress(ImportError):
        import charter.rl_export  # noqa: F401
