"""`charter merge`: combine databases written by shards (or separate runs) into one file."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `merge` to the app."""

    @app.command("merge")
    def merge_cmd(
        out: Path = typer.Argument(..., help="DuckDB file to merge into (created if missing)."),
        inputs: list[Path] = typer.Argument(
            ..., metavar="DB...", help="Databases to merge in (e.g. one per --shard)."
        ),
    ) -> None:
        """Merge charter databases without duplicates; same-named runs become one run; safe to repeat."""
        from charter.merge import merge_databases

        summary = merge_databases(out, list(inputs))
        added = ", ".join(f"{t} +{n}" for t, n in sorted(summary.rows_added.items()) if n) or "no new rows"
        typer.echo(
            f"merged {len(summary.inputs)} file(s) into {out}: {summary.runs_added} run(s) added, "
            f"{summary.runs_merged} merged by name; {added}",
            err=True,
        )
