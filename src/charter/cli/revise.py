"""`charter revise`: SL-CAI critique -> revision over a prompts file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from charter.cli import common, scale
from charter.runner import RunnerOptions
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


def register(app: typer.Typer) -> None:
    """Add `revise` to the app."""

    @app.command("revise")
    def revise_cmd(
        prompts: str = typer.Argument(
            ..., help="Prompts file (.jsonl, .txt, .csv, .parquet) or - for stdin."
        ),
        db: Path = typer.Option(..., "--db", help="DuckDB file to write (created if missing)."),
        model: str = common.ModelOpt,
        constitution: str = typer.Option("anthropic-sl", "--constitution", help="Name or path."),
        rounds: int = typer.Option(4, "--rounds", min=0, help="Critique -> revision rounds per prompt."),
        seed: int = typer.Option(0, "--seed", help="Seed for the principle draws."),
        mode: str = typer.Option(
            "chat", "--mode", help="chat | completion (the paper's Human/Assistant format)."
        ),
        few_shot: bool = typer.Option(
            True, "--few-shot/--no-few-shot", help="Prepend the constitution's few-shot examples."
        ),
        respond_few_shot: bool = typer.Option(
            False,
            "--respond-few-shot",
            help="Completion mode: put the few-shot critique transcripts in front of the first answer too "
            "(default: the plain answer, as in the paper).",
        ),
        always_revise: bool = typer.Option(
            False,
            "--always-revise",
            help="Revise every round, even when a chat critique ends 'Verdict: no change' (as the paper does).",
        ),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N prompts."),
        run_name: str | None = common.RunNameOpt,
        api_base: list[str] | None = common.ApiBasesOpt,
        router: str | None = common.RouterOpt,
        shard: str | None = common.ShardOpt,
        executor: str | None = common.ExecutorOpt,
        shards: int | None = common.ShardsOpt,
        param: list[str] | None = common.ParamOpt,
        concurrency: int = common.ConcurrencyOpt,
        max_retries: int = common.MaxRetriesOpt,
        rpm: float | None = common.RpmOpt,
        prompts_dir: str | None = common.PromptsDirOpt,
    ) -> None:
        """SL-CAI: answer each prompt, then critique and revise it --rounds times."""
        from charter.sl import revise

        if mode not in ("chat", "completion"):
            raise common.UsageError(f"--mode {mode!r}: expected chat or completion")
        chosen_mode: Literal["chat", "completion"] = "chat" if mode == "chat" else "completion"
        summary = scale.run_command(
            revise,
            prompts,
            db=db,
            executor=executor,
            shards=shards,
            model=model,
            constitution=constitution,
            rounds=rounds,
            seed=seed,
            mode=chosen_mode,
            few_shot=few_shot,
            respond_few_shot=respond_few_shot,
            always_revise=always_revise,
            limit=limit,
            run_name=run_name,
            api_base=common.api_bases(api_base),
            params=common.with_router(common.parse_params(param), router, model),
            shard=shard,
            options=RunnerOptions(concurrency=concurrency, max_retries=max_retries, requests_per_minute=rpm),
            prompts_dir=prompts_dir,
            progress=common.progress_enabled(),
        )
        print_summary(summary, db)
