"""`charter report DB --out report.html`: one self-contained HTML page to look at a run."""

from __future__ import annotations

from pathlib import Path

import typer

from charter.cli import common


def register(app: typer.Typer) -> None:
    """Add `report` to the app."""

    @app.command("report")
    def report_cmd(
        db: Path = typer.Argument(..., help="DuckDB file."),
        out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write."),
        run: list[str] | None = typer.Option(
            None, "--run", help="Only this run (name or id; a training run's id too). Repeatable."
        ),
        max_examples: int = typer.Option(
            12, "--max-examples", min=0, help="Revised prompts shown side by side, round by round."
        ),
    ) -> None:
        """Write an HTML report: calls, cost, principles, revisions with diffs, labels, training, rewards."""
        from charter.report import ReportError, build_report

        try:
            result = build_report(db, out, runs=run or None, max_examples=max_examples)
        except ReportError as exc:
            raise common.UsageError(str(exc)) from None
        except ImportError as exc:
            raise common.UsageError(
                f"charter report needs matplotlib ({exc}); install it with: pip install 'charter[report]'"
            ) from None
        typer.echo(
            f"wrote {result.out} ({result.bytes / 1024:.0f} KiB): {len(result.sections)} sections, "
            f"{len(result.figures)} pictures",
            err=True,
        )
