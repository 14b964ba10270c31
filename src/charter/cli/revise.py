"""`charter revise`: SL-CAI critique -> revision over a prompts file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from charter.cli import common
from charter.cli.derive import task_command
from charter.tasks.base import run_task
from charter.tasks.revise import REVISE, ReviseConfig

if TYPE_CHECKING:  # the session imports the runner and DuckDB: not for `charter --help`
    from charter.session import RunSummary


def print_summary(summary: RunSummary, db: Path) -> None:
    """One line per fact on stderr; exit 1 when some items still failed."""
    verb = "resumed" if summary.resumed else "started"
    typer.echo(
        f"run {summary.run_name} ({verb}): {summary.completed} done, {summary.skipped} already done, "
        f"{summary.failed} failed; {summary.calls} calls, {summary.cache_hits} cache hits, "
        f"{summary.usage_text()}, {summary.seconds:.1f}s -> {db}",
        err=True,
    )
    for error in summary.errors[:5]:
        typer.echo(f"  failed: {error}", err=True)
    if summary.failed:
        typer.echo("  run the same command again to retry what failed", err=True)
        raise typer.Exit(1)


@task_command(REVISE)
def revise_cmd(config: ReviseConfig) -> None:
    """SL-CAI: answer each prompt, then critique and revise it --rounds times."""
    summary = run_task(REVISE, config, progress=common.progress_enabled())
    print_summary(summary, config.db)


def register(app: typer.Typer) -> None:
    """Add `revise` to the app."""
    app.command("revise")(revise_cmd)
