"""`charter sample` (response pairs) and `charter label` (AI-feedback soft labels): RL-CAI."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from charter.cli import common, scale
from charter.cli.revise import print_summary
from charter.runner import RunnerOptions
from charter.session import RunSummary

SeedOpt = typer.Option(0, "--seed", help="Seed for the principle draws, pair choice and few-shot order.")
LimitOpt = typer.Option(None, "--limit", min=1, help="Only the first N prompts (sample) or pairs (label).")


def _mode(value: str | None) -> Literal["chat", "completion"] | None:
    if value is None:
        return None
    if value not in ("chat", "completion"):
        raise common.UsageError(f"--mode {value!r}: expected chat or completion")
    return "chat" if value == "chat" else "completion"


def _finish(summary: RunSummary, db: Path, lines: list[str], *, nothing_done: bool = False) -> None:
    """The summary and the command's own lines; exit 1 when items failed or the run did nothing useful."""
    try:
        print_summary(summary, db)
    finally:
        for line in lines:
            typer.echo(line, err=True)
    if nothing_done:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `sample` and `label` to the app."""

    @app.command("sample")
    def sample_cmd(
        db: Path = typer.Option(..., "--db", help="DuckDB file to write (created if missing)."),
        model: str = common.ModelOpt,
        prompts: str | None = typer.Option(
            None, "--prompts", help="Prompts file (.jsonl, .txt, .csv, .parquet) or - for stdin."
        ),
        from_run: str | None = typer.Option(
            None, "--from-run", help="Take the prompts of an earlier revise/sample run (name or id)."
        ),
        n: int = typer.Option(2, "--n", min=2, help="Responses per prompt."),
        temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="Sampling temperature."),
        pairs: str = typer.Option(
            "all", "--pairs", help="Which pairs of the --n responses: all | adjacent | K (K drawn at random)."
        ),
        system: str | None = typer.Option(None, "--system", help="System message for chat mode."),
        seed: int = SeedOpt,
        mode: str = typer.Option("chat", "--mode", help="chat | completion (Human/Assistant format)."),
        limit: int | None = LimitOpt,
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
        """RL-CAI: sample --n responses per prompt and store the pairs to label.

        Uses the backend's n parameter (one request per prompt) and falls back to separate
        requests when the backend returns fewer choices or refuses it; --param n_supported=false
        skips n altogether.
        """
        from charter.rl import sample

        if (prompts is None) == (from_run is None):
            raise common.UsageError("give exactly one of --prompts PROMPTS or --from-run NAME")
        summary = scale.run_command(
            sample,
            prompts,
            db=db,
            model=model,
            from_run=from_run,
            n=n,
            temperature=temperature,
            pairs=pairs,
            system=system,
            seed=seed,
            mode=_mode(mode) or "chat",
            limit=limit,
            run_name=run_name,
            api_base=common.api_bases(api_base),
            params=common.with_router(common.parse_params(param), router, model),
            shard=shard,
            executor=executor,
            shards=shards,
            options=RunnerOptions(concurrency=concurrency, max_retries=max_retries, requests_per_minute=rpm),
            prompts_dir=prompts_dir,
            progress=common.progress_enabled(),
        )
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
        _finish(summary, db, lines)

    @app.command("label")
    def label_cmd(
        db: Path = typer.Option(..., "--db", help="DuckDB file holding pairs (from charter sample)."),
        model: str = common.ModelOpt,
        constitution: str = typer.Option("anthropic-rl", "--constitution", help="Name or path."),
        method: str = typer.Option(
            "logprobs", "--method", help="logprobs (multiple choice) | cot (chain of thought)."
        ),
        ensemble: int = typer.Option(
            1, "--ensemble", min=1, help="Principles drawn per pair; labels averaged."
        ),
        swap: bool = typer.Option(
            False,
            "--swap/--no-swap",
            help="Also ask with the options swapped and average (cancels position bias).",
        ),
        clamp: str | None = typer.Option(
            None,
            "--clamp",
            help="Clamp probabilities to LOW,HIGH (default 0.4,0.6 for cot, none for logprobs).",
        ),
        few_shot: bool = typer.Option(
            True, "--few-shot/--no-few-shot", help="Prepend the paper's few-shot examples."
        ),
        votes: int = typer.Option(
            1, "--votes", min=1, help="Without log-probabilities: sample K answers and use the vote share."
        ),
        max_parse_retries: int = typer.Option(
            2, "--max-parse-retries", min=0, help="Re-asks (new sample) when an answer names no option."
        ),
        top_logprobs: int | None = typer.Option(
            None, "--top-logprobs", min=1, help="Alternatives per position (default 20 chat, 5 completion)."
        ),
        min_option_mass: float = typer.Option(
            0.5,
            "--min-option-mass",
            min=0.0,
            max=1.0,
            help="Read a logprob label only where (A) and (B) hold this much probability at the answer "
            "position; below it the answer is parsed.",
        ),
        cot_samples: int = typer.Option(
            1,
            "--cot-samples",
            min=1,
            help="With --method cot: K reasoning samples (temperature 1), clamped, then averaged.",
        ),
        mode: str | None = typer.Option(
            None,
            "--mode",
            help="chat | completion (default: completion for text-completion-* and local models, else chat).",
        ),
        template: str | None = typer.Option(None, "--template", help="Prompt template name to use instead."),
        from_run: list[str] | None = typer.Option(
            None, "--from-run", metavar="NAME", help="Only pairs of this sample run (name or id). Repeatable."
        ),
        seed: int = SeedOpt,
        limit: int | None = LimitOpt,
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
        max_flagged: float = typer.Option(
            0.5,
            "--max-flagged",
            min=0.0,
            max=1.0,
            help="Fail (exit 1, run status 'flagged') when more than this fraction of pairs get no label.",
        ),
    ) -> None:
        """RL-CAI: label every unlabeled pair in DB with the feedback model's soft preference."""
        from charter.rl import METHODS, label

        if method not in METHODS:
            raise common.UsageError(f"--method {method!r}: expected logprobs or cot")
        if cot_samples > 1 and method != "cot":
            raise common.UsageError("--cot-samples samples chains of thought: it needs --method cot")
        if cot_samples > 1 and votes > 1:
            raise common.UsageError("--cot-samples and --votes both sample the reasoning: give one of them")
        summary = scale.run_command(
            label,
            db=db,
            model=model,
            constitution=constitution,
            method="cot" if method == "cot" else "logprobs",
            ensemble=ensemble,
            swap=swap,
            clamp=common.parse_clamp(clamp) if clamp is not None else None,
            few_shot=few_shot,
            votes=votes,
            max_parse_retries=max_parse_retries,
            top_logprobs=top_logprobs,
            min_option_mass=min_option_mass,
            cot_samples=cot_samples,
            mode=_mode(mode),
            template=template,
            from_run=from_run or None,
            seed=seed,
            limit=limit,
            run_name=run_name,
            api_base=common.api_bases(api_base),
            params=common.with_router(common.parse_params(param), router, model),
            shard=shard,
            executor=executor,
            shards=shards,
            options=RunnerOptions(concurrency=concurrency, max_retries=max_retries, requests_per_minute=rpm),
            prompts_dir=prompts_dir,
            progress=common.progress_enabled(),
            max_flagged=max_flagged,
        )
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
        _finish(summary, db, lines, nothing_done=summary.total == 0 or summary.too_many_flagged)
