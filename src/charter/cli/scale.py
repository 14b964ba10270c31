"""Scale-out on the command line: `charter merge`, and running a command sharded (`--shard`, `--executor`)."""

from __future__ import annotations

import glob
from pathlib import Path

import typer

from charter.cli.common import UsageError


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def expand_inputs(out: Path, inputs: list[str]) -> list[Path]:
    """`charter merge`'s inputs: files as given, glob patterns (quoted, so the shell left them) expanded
    in sorted order; a pattern that matches nothing is an error, and a pattern never matches OUT."""
    paths: list[Path] = []
    for item in inputs:
        if _has_magic(item) and not Path(item).exists():
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            matches = [m for m in matches if not (out.exists() and m.resolve() == out.resolve())]
            if not matches:
                raise UsageError(f"charter merge: no database matches {item!r}")
            paths.extend(matches)
        else:
            paths.append(Path(item))
    unique: dict[Path, Path] = {}
    for path in paths:
        unique.setdefault(path.resolve(), path)  # a file named twice (a pattern and by name) merges once
    return list(unique.values())


def register(app: typer.Typer) -> None:
    """Add `merge` to the app."""

    @app.command("merge")
    def merge_cmd(
        out: Path = typer.Argument(..., help="DuckDB file to merge into (created if missing)."),
        inputs: list[str] = typer.Argument(
            ...,
            metavar="DB...",
            help="Databases to merge in (e.g. one per --shard); glob patterns such as 'parts/*.duckdb' too.",
        ),
    ) -> None:
        """Merge charter databases without duplicates; same-named runs become one run; safe to repeat."""
        from charter.merge import merge_databases

        summary = merge_databases(out, list(expand_inputs(out, list(inputs))))
        added = ", ".join(f"{t} +{n}" for t, n in sorted(summary.rows_added.items()) if n) or "no new rows"
        typer.echo(
            f"merged {len(summary.inputs)} file(s) into {out}: {summary.runs_added} run(s) added, "
            f"{summary.runs_merged} merged by name; {added}",
            err=True,
        )
