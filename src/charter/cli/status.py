"""`charter status DB`: progress, rates, tokens, cost and errors of each run, also while one writes."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from charter.cli import common

_STEP_SQL = """
    SELECT step, count(*) AS calls, count(*) FILTER (WHERE error IS NOT NULL) AS errors,
           count(*) FILTER (WHERE cached) AS cached, sum(prompt_tokens) AS prompt_tokens,
           sum(completion_tokens) AS completion_tokens, sum(cost_usd) AS cost_usd,
           min(created_at) AS first_at, max(created_at) AS last_at
    FROM calls WHERE run_id = ? GROUP BY step ORDER BY min(created_at), step
"""


def run_status(db: Path) -> list[dict[str, Any]]:
    """One dict per run, oldest first: status, items done of total, calls, tokens, cost, per step."""
    from charter.store.store import open_read_only

    con = open_read_only(db)
    try:
        tables = {
            str(r[0]) for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        run_cols = {
            str(r[0])
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs'"
            ).fetchall()
        }
        # Files written before `charter status` existed have no item totals: show what there is.
        extra = ", ".join(
            c if c in run_cols else f"NULL AS {c}" for c in ("total_items", "done_table", "done_column")
        )
        cur = con.execute(
            f"SELECT run_id, name, command, status, started_at, finished_at, {extra} FROM runs "
            "ORDER BY started_at, name"
        )
        cols = [d[0] for d in cur.description or []]
        runs = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
        out = []
        for run in runs:
            done = None
            table, column = run.pop("done_table"), run.pop("done_column")
            if table in tables and column:
                done = con.execute(
                    f'SELECT count(DISTINCT "{column}") FROM "{table}" WHERE run_id = ?', [run["run_id"]]
                ).fetchone()[0]  # type: ignore[index]
            step_cur = con.execute(_STEP_SQL, [run["run_id"]])
            step_cols = [d[0] for d in step_cur.description or []]
            steps = [dict(zip(step_cols, row, strict=True)) for row in step_cur.fetchall()]
            out.append(_summarise(run, done, steps))
            if "batch_jobs" in tables:
                from charter.backends.batch import batch_status

                out[-1]["batches"] = batch_status(con, run["run_id"])
        return out
    finally:
        con.close()


def _summarise(run: dict[str, Any], done: int | None, steps: list[dict[str, Any]]) -> dict[str, Any]:
    total = run.pop("total_items")
    calls = sum(s["calls"] for s in steps)
    last = max((s["last_at"] for s in steps), default=None)
    end = run["finished_at"] or last
    elapsed = (end - run["started_at"]).total_seconds() if end and run["started_at"] else None
    rate = calls / elapsed * 60 if elapsed and elapsed > 0 else None
    items_rate = done / elapsed if done and elapsed and elapsed > 0 else None
    eta = None
    if run["status"] == "running" and total is not None and done is not None and items_rate:
        eta = max(total - done, 0) / items_rate
    return {
        **run,
        "items_done": done,
        "items_total": total,
        "calls": calls,
        "errors": sum(s["errors"] for s in steps),
        "cached": sum(s["cached"] for s in steps),
        "prompt_tokens": sum(int(s["prompt_tokens"] or 0) for s in steps),
        "completion_tokens": sum(int(s["completion_tokens"] or 0) for s in steps),
        "cost_usd": _cost([s["cost_usd"] for s in steps]),
        "calls_per_minute": rate,
        "elapsed_s": elapsed,
        "eta_s": eta,
        "steps": [{k: v for k, v in s.items() if k not in ("first_at", "last_at")} for s in steps],
    }


def _cost(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def format_status(runs: list[dict[str, Any]]) -> list[str]:
    """The text `charter status` prints: a header line per run, then one line per step."""
    lines = []
    for run in runs:
        done, total = run["items_done"], run["items_total"]
        if total:
            progress = f"{done or 0}/{total} items ({100 * (done or 0) / total:.0f}%)"
        else:
            progress = f"{done} items" if done is not None else "items ?"
        parts = [f"{progress}, {run['calls']} calls ({run['cached']} cached, {run['errors']} errors)"]
        if run["calls_per_minute"] is not None:
            parts.append(f"{run['calls_per_minute']:.1f} calls/min")
        parts.append(f"tokens {run['prompt_tokens']} in / {run['completion_tokens']} out")
        parts.append(f"cost {_money(run['cost_usd'])}")
        parts.append(f"elapsed {_duration(run['elapsed_s'])}")
        if run["eta_s"] is not None:
            parts.append(f"ETA {_duration(run['eta_s'])}")
        lines.append(f"{run['name']} ({run['command']}, {run['status']}): " + ", ".join(parts))
        for step in run["steps"]:
            lines.append(
                f"  {step['step']}: {step['calls']} calls, {step['errors']} errors, {step['cached']} cached, "
                f"tokens {int(step['prompt_tokens'] or 0)} in / {int(step['completion_tokens'] or 0)} out, "
                f"cost {_money(step['cost_usd'])}"
            )
        if run.get("batches"):
            from charter.backends.batch import batch_line

            lines.append(batch_line(run["batches"]))
    return lines


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def register(app: typer.Typer) -> None:
    """Add `status` to the app."""

    @app.command("status")
    def status_cmd(
        db: Path = typer.Argument(..., help="DuckDB file (may be one a run is writing right now)."),
        fmt: str = typer.Option("text", "--format", help="text | json"),
    ) -> None:
        """Progress, rates, tokens, cost and errors per run and step (works while a run writes)."""
        if fmt not in ("text", "json"):
            raise common.UsageError(f"--format {fmt!r}: expected text or json")
        runs = run_status(db)
        if fmt == "json":
            typer.echo(json.dumps(runs, default=_jsonable, ensure_ascii=False, indent=2))
            return
        if not runs:
            typer.echo(f"no runs in {db}")
        for line in format_status(runs):
            typer.echo(line)
