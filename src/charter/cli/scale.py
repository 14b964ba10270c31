"""Scale-out on the command line: `charter merge`, and running a command sharded (`--shard`, `--executor`)."""

from __future__ import annotations

import functools
import glob
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import typer

from charter.cli.common import UsageError

if TYPE_CHECKING:
    from charter.session import RunSummary

S = TypeVar("S", bound="RunSummary")


def run_command(
    fn: Callable[..., S],
    *args: Any,
    db: Path,
    shard: str | None,
    executor: str | None,
    shards: int | None,
    **kwargs: Any,
) -> S:
    """`fn(*args, db=db, shard=shard, **kwargs)` in this process, or all of its shards on `executor`
    (merged into `db`) when `--executor` is given."""
    if executor is None:
        if shards is not None:
            raise UsageError("--shards N runs the shards on an executor: give --executor NAME too (e.g. ray)")
        return fn(*args, db=db, shard=shard, **kwargs)
    if shard is not None:
        raise UsageError(
            "--shard picks the one shard this process runs; with --executor, --shards N says how many to run"
        )
    if "-" in args or kwargs.get("prompts") == "-":
        raise UsageError("--executor: the shards cannot read stdin (-); give the prompts as a file")
    from charter.shard import run_sharded

    kwargs["progress"] = False  # the shards' bars would interleave in the executor's log
    job = functools.partial(fn, *args, **kwargs)
    # The combined summary has the type of the shards' own (SampleSummary for sample, ...).
    return cast(S, run_sharded(job, db=db, executor=executor, shards=shards))


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
