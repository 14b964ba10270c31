"""`charter run PIPELINE.yaml`: revise -> sample -> label (-> export, -> train) from one config file."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from charter.cli import common


def register(app: typer.Typer) -> None:
    """Add `run` to the app."""

    @app.command("run")
    def run_cmd(
        pipeline: Path = typer.Argument(..., help="Pipeline file (YAML); see examples/."),
        db: Path | None = typer.Option(None, "--db", help="DuckDB file (overrides the file's db)."),
        force: bool = typer.Option(
            False,
            "--force",
            help="Overwrite export files that exist (else: ask, or exit 2 without a terminal).",
        ),
    ) -> None:
        """Run the steps of a pipeline file in order (each resumes like its own command)."""
        from charter.pipeline import StepResult, run_pipeline

        def report(index: int, result: StepResult) -> None:
            summary = result.summary
            if result.kind == "train":
                if result.error is not None:
                    typer.echo(f"step {index + 1} train: {result.error}", err=True)
                else:
                    typer.echo(
                        f"step {index + 1} train: {result.rows} rows -> {result.out} "
                        f"(training run {result.run_name})",
                        err=True,
                    )
                return
            if summary is None:
                typer.echo(
                    f"step {index + 1} {result.kind}: wrote {result.rows} rows to {result.out}", err=True
                )
                return
            verb = "resumed" if summary.resumed else "started"
            typer.echo(
                f"step {index + 1} {result.kind}: run {summary.run_name} ({verb}): {summary.completed} done, "
                f"{summary.skipped} already done, {summary.failed} failed; {summary.calls} calls, "
                f"{summary.cache_hits} cache hits, {summary.usage_text()}, {summary.seconds:.1f}s",
                err=True,
            )
            for attr, text in (
                ("pairs", "pairs stored"),
                ("labeled", "pairs labeled"),
                ("flagged", "pairs flagged"),
            ):
                value = getattr(summary, attr, None)
                if value:
                    typer.echo(f"  {value} {text}", err=True)
            for error in summary.errors[:5]:
                typer.echo(f"  failed: {error}", err=True)

        def confirm(question: str) -> bool:
            return bool(typer.confirm(question, err=True))

        results = run_pipeline(
            pipeline,
            db=db,
            progress=common.progress_enabled(),
            on_step=report,
            force=force,
            confirm=confirm if sys.stdin.isatty() else None,
        )
        if not all(r.ok for r in results):
            typer.echo("charter: a step did not finish; run the same command again to resume", err=True)
            raise typer.Exit(1)
