"""`charter sample` (response pairs) and `charter label` (AI-feedback soft labels): RL-CAI."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer

from charter.cli import common
from charter.cli.derive import task_command
from charter.cli.revise import print_summary
from charter.tasks.base import run_task
from charter.tasks.label import LABEL, LabelConfig
from charter.tasks.sample import SAMPLE, SampleConfig

if TYPE_CHECKING:  # the session imports the runner and DuckDB: not for `charter --help`
    from charter.session import RunSummary


def _finish(summary: RunSummary, db: Path, lines: list[str], *, nothing_done: bool = False) -> None:
    """The summary and the command's own lines; exit 1 when items failed or the run did nothing useful."""
    try:
        print_summary(summary, db)
    finally:
        for line in lines:
            typer.echo(line, err=True)
    if nothing_done:
        raise typer.Exit(1)


@task_command(SAMPLE)
def sample_cmd(config: SampleConfig) -> None:
    """RL-CAI: sample --n responses per prompt and store the pairs to label.

    Uses the backend's n parameter (one request per prompt) and falls back to separate
    requests when the backend returns fewer choices or refuses it; --param n_supported=false
    skips n altogether.
    """
    from charter.rl import SampleSummary

    summary = cast(SampleSummary, run_task(SAMPLE, config, progress=common.progress_enabled()))
    lines = [f"  {summary.pairs} pairs stored for labeling"]
    if summary.prompts_without_pairs:
        lines.append(
            f"  {summary.prompts_without_pairs} prompts gave identical responses (no pair); "
            "raise --temperature or --n"
        )
        # Some servers ignore temperature: `transformers serve` decodes greedily unless the
        # model's generation config has do_sample=true.
        lines.append(
            "  if they all match, the server may decode greedily whatever the temperature "
            "(transformers serve does unless the model's generation_config.json sets do_sample)"
        )
    _finish(summary, config.db, lines)


@task_command(LABEL)
def label_cmd(config: LabelConfig) -> None:
    """RL-CAI: label every unlabeled pair in DB with the feedback model's soft preference."""
    from charter.rl import LabelSummary

    summary = cast(LabelSummary, run_task(LABEL, config, progress=common.progress_enabled()))
    sources = ", ".join(f"{k} {v}" for k, v in sorted((summary.sources or {}).items()))
    lines = [f"  {summary.labeled} pairs labeled ({sources or 'none'})"]
    if summary.flagged:
        lines.append(
            f"  {summary.flagged} pairs flagged: no readable answer after retries; see "
            f"SELECT * FROM pair_labels WHERE status <> 'ok' AND run_id = '{summary.run_id}'"
        )
    if summary.total == 0:
        lines.append("  no pairs to label in this database: run charter sample first")
    elif summary.too_many_flagged:
        share = summary.flagged / (summary.labeled + summary.flagged)
        lines.append(
            f"  most pairs got no label ({share:.0%} flagged > --max-flagged {summary.max_flagged:g}): "
            f"run recorded as '{summary.status}'; check the feedback model and its prompt"
        )
    _finish(summary, config.db, lines, nothing_done=summary.total == 0 or summary.too_many_flagged)


def register(app: typer.Typer) -> None:
    """Add `sample` and `label` to the app."""
    app.command("sample")(sample_cmd)
    app.command("label")(label_cmd)
