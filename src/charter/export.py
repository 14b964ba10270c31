"""Exporting datasets from the store: SFT and preference data in TRL or hf-cai shape, jsonl or parquet."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import duckdb

from charter.inputs import check_output_path, started
from charter.store.store import open_read_only
from charter.store.where import where_sql

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


# The round whose revision is a prompt's final response: the last one that asked for a revision
# (later "no change" rounds carry it over), else the last round.
_FINAL_ROUND = """
    SELECT * FROM revisions
    QUALIFY row_number() OVER (
        PARTITION BY run_id, prompt_id
        ORDER BY (needs_revision OR revision_call_id IS NOT NULL) DESC, round DESC
    ) = 1
"""
# Final revisions, with critique and revision taken from the round that produced the final response
# (rows stored before that was so held round 1's critique next to the final revision).
FINAL_ONLY_SQL = f"""
    SELECT s.run_id, s.prompt_id, s.prompt, s.completion, s.messages, s.init_prompt, s.init_response,
           coalesce(f.critique_request, s.critic_prompt) AS critic_prompt,
           coalesce(f.critique, s.critic_response) AS critic_response,
           coalesce(f.revision_request, s.revision_prompt) AS revision_prompt,
           coalesce(f.revision, s.revision_response) AS revision_response
    FROM sft_examples s
    LEFT JOIN ({_FINAL_ROUND}) f ON f.run_id = s.run_id AND f.prompt_id = s.prompt_id
"""
# Every round's revision as its own example (the paper trains on all of them), with the columns of
# `sft_examples` (critic_* and revision_* from that round) plus round, principle, needs_revision,
# critique, revision and prompt_messages (the conversation before the answer).
ALL_ROUNDS_SQL = """
    SELECT r.run_id, r.prompt_id, r.round, r.principle, r.needs_revision, r.critique, r.revision,
           p.prompt, p.messages AS prompt_messages, r.revision AS completion,
           p.prompt AS init_prompt, coalesce(a.response, '') AS init_response,
           r.critique_request AS critic_prompt, r.critique AS critic_response,
           r.revision_request AS revision_prompt, r.revision AS revision_response
    FROM revisions r
    JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id
    LEFT JOIN responses a ON a.run_id = r.run_id AND a.prompt_id = r.prompt_id
"""
# A round that kept the previous text (a "no change" verdict) repeats an example: keep its first round.
ALL_ROUNDS_DISTINCT = ("run_id", "prompt_id", "revision")


def _all_rounds_messages(row: dict[str, Any]) -> dict[str, Any]:
    messages = [*_json(row["prompt_messages"]), {"role": "assistant", "content": row["revision"]}]
    return {**row, "messages": messages}


def _sft_trl_all_rounds(row: dict[str, Any]) -> dict[str, Any]:
    return _sft_trl(_all_rounds_messages(row))


def _sft_hf_cai_all_rounds(row: dict[str, Any]) -> dict[str, Any]:
    return _sft_hf_cai(_all_rounds_messages(row))


EXPORTERS: dict[str, dict[str, _Exporter]] = {
    "sft": {
        "trl": (FINAL_ONLY_SQL, _sft_trl),
        "hf-cai": (FINAL_ONLY_SQL, _sft_hf_cai),
    },
}
# `--dataset sft` without `--final-only`: every round (the default).
_ALL_ROUNDS: dict[str, _Exporter] = {
    "trl": (ALL_ROUNDS_SQL, _sft_trl_all_rounds),
    "hf-cai": (ALL_ROUNDS_SQL, _sft_hf_cai_all_rounds),
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
    _ensure_registered()
    if dataset not in EXPORTERS:
        raise ValueError(f"--dataset {dataset!r}: expected one of {', '.join(sorted(EXPORTERS))}")
    if schema not in EXPORTERS[dataset]:
        raise ValueError(f"--schema {schema!r}: expected one of {', '.join(sorted(EXPORTERS[dataset]))}")
    if final_only and dataset != "sft":
        raise ValueError("--final-only applies to --dataset sft only")
    all_rounds = dataset == "sft" and not final_only
    sql, transform = _ALL_ROUNDS[schema] if all_rounds else EXPORTERS[dataset][schema]
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
        from charter.rl_export import choose_label_run

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


def _ensure_registered() -> None:
    # Preference exporters live with the labeling code; importing it registers them.
    with contextlib.suppress(ImportError):
        import charter.rl_export  # noqa: F401
