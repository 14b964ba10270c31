"""`charter eval hhh`: the paper's HHH evaluation of a feedback model or a trained reward model."""

from __future__ import annotations

from pathlib import Path

import typer

from charter.cli import common
from charter.cli.revise import print_summary
from charter.runner_options import RunnerOptions


def register(app: typer.Typer) -> None:
    """Add the `eval` command group to the app."""
    evals = typer.Typer(help="Evaluations: the paper's HHH comparisons.", no_args_is_help=True)
    app.add_typer(evals, name="eval")
    _register_compare(evals)

    @evals.command("hhh")
    def hhh_cmd(
        db: Path = typer.Option(
            ..., "--db", help="DuckDB file to write the results to (created if missing)."
        ),
        model: str | None = typer.Option(
            None, "--model", "-m", help="Feedback model: any LiteLLM model string, or local/<path-or-hub-id>."
        ),
        reward_model: Path | None = typer.Option(
            None, "--reward-model", help="A reward model from charter train reward (scores both transcripts)."
        ),
        method: str = typer.Option(
            "logprobs",
            "--method",
            help="logprobs (multiple choice) | cot | cot-ensemble (the paper's Fig. 4).",
        ),
        cot_samples: int = typer.Option(
            4, "--cot-samples", min=1, help="Reasoning samples for cot-ensemble."
        ),
        eval_file: Path | None = typer.Option(
            None,
            "--file",
            help="Another eval file in the paper's format (default: the 438 shipped with charter).",
        ),
        few_shot: bool = typer.Option(
            False,
            "--few-shot/--no-few-shot",
            help="Prepend the paper's few-shot examples (off: the eval is zero-shot).",
        ),
        mode: str | None = typer.Option(
            None,
            "--mode",
            help="chat | completion (default: completion for text-completion-* and local models).",
        ),
        plot: Path | None = typer.Option(
            None, "--plot", help="Reliability diagram PNG (default: RUN-NAME-reliability.png beside --db)."
        ),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N comparisons."),
        seed: int = typer.Option(0, "--seed", help="Seed for the bootstrap interval and retries."),
        run_name: str | None = common.RunNameOpt,
        api_base: list[str] | None = common.ApiBasesOpt,
        param: list[str] | None = common.ParamOpt,
        concurrency: int = common.ConcurrencyOpt,
        max_retries: int = common.MaxRetriesOpt,
        rpm: float | None = common.RpmOpt,
        prompts_dir: str | None = common.PromptsDirOpt,
    ) -> None:
        """Accuracy (95% bootstrap interval) and calibration on the HHH comparisons; rows in eval_results."""
        from charter.evals.hhh import EvalError, eval_hhh

        if mode not in (None, "chat", "completion"):
            raise common.UsageError(f"--mode {mode!r}: expected chat or completion")
        try:
            summary = eval_hhh(
                db=db,
                model=model,
                method=method,  # type: ignore[arg-type]
                reward_model=reward_model,
                eval_file=eval_file,
                cot_samples=cot_samples,
                few_shot=few_shot,
                mode=mode,  # type: ignore[arg-type]
                limit=limit,
                seed=seed,
                run_name=run_name,
                api_base=common.api_bases(api_base),
                params=common.parse_params(param),
                options=RunnerOptions(
                    concurrency=concurrency, max_retries=max_retries, requests_per_minute=rpm
                ),
                prompts_dir=prompts_dir,
                progress=common.progress_enabled(),
            )
        except EvalError as exc:
            raise common.UsageError(str(exc)) from None
        acc = summary.accuracy
        scored = acc.n if acc else 0
        if acc is not None:
            typer.echo(
                f"accuracy {acc.value:.3f} (95% CI {acc.low:.3f}-{acc.high:.3f}) on {acc.n} comparisons; "
                f"ECE {summary.ece:.3f}; {summary.ties} ties (counted wrong); run {summary.run_name}"
            )
            for b in summary.bins:
                typer.echo(
                    f"  P(answer) {b.low:.1f}-{b.high:.1f}: {b.count:>3} answers, "
                    f"predicted {b.mean_predicted:.3f}, right {b.frequency:.3f}"
                )
            target = plot or db.parent / f"{summary.run_name}-reliability.png"
            _write_plot(summary.bins, target)
            typer.echo(f"  reliability diagram -> {target}", err=True)
        if summary.unscored:
            typer.echo(
                f"  {summary.unscored} comparisons gave no usable answer (see eval_results.status)", err=True
            )
        print_summary(summary, db)
        if summary.unscored > scored:
            typer.echo(
                "charter: error: most comparisons gave no usable answer; the model cannot be evaluated",
                err=True,
            )
            raise typer.Exit(1)


def _write_plot(bins: list, path: Path) -> None:  # type: ignore[type-arg]
    try:
        from charter.report.plots import reliability_plot
    except ImportError:  # matplotlib is the 'report' extra
        typer.echo(
            "  (no reliability diagram: matplotlib is not installed; pip install 'charter[report]')", err=True
        )
        return
    figure = reliability_plot([(b.mean_predicted, b.frequency, b.count) for b in bins])
    if figure is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(figure.png)


def _register_compare(evals: typer.Typer) -> None:
    @evals.command("compare")
    def compare_cmd(
        db: Path = typer.Option(
            ...,
            "--db",
            help="DuckDB file for the answers and judgements (use one of its own, not the training DB).",
        ),
        prompts: str = typer.Option(..., "--prompts", help="Prompts file the policies answer."),
        policy: list[str] = typer.Option(
            ..., "--policy", help="NAME=MODEL: a model string or a checkpoint directory. At least two."
        ),
        judge: str = typer.Option(..., "--judge", help="The feedback model that compares the answers."),
        constitution: str = typer.Option(
            "anthropic-rl", "--constitution", help="Feedback principles for harmlessness (name or path)."
        ),
        helpful: str | None = typer.Option(None, "--helpful-principle", help="The helpfulness question."),
        name: str = typer.Option("compare", "--name", help="Prefix of the runs this comparison writes."),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N prompts."),
        seed: int = typer.Option(0, "--seed", help="Seed for principle draws and the bootstrap."),
        api_base: list[str] | None = typer.Option(
            None, "--api-base", help="Endpoint of the policies (API models); repeat it for several (Router)."
        ),
        judge_api_base: list[str] | None = typer.Option(
            None, "--judge-api-base", help="Endpoint of the judge; repeat it for several (Router)."
        ),
        param: list[str] | None = common.ParamOpt,
        judge_param: list[str] | None = typer.Option(
            None, "--judge-param", help="key=value for the judge's requests. Repeatable."
        ),
        concurrency: int = common.ConcurrencyOpt,
        max_retries: int = common.MaxRetriesOpt,
        fmt: str = typer.Option("text", "--format", help="text | json"),
    ) -> None:
        """Win rates and Elo of two or more policies judged by a feedback model (harmless and helpful)."""
        from charter.evals.compare import HELPFUL, compare, results_json
        from charter.evals.hhh import EvalError

        if fmt not in ("text", "json"):
            raise common.UsageError(f"--format {fmt!r}: expected text or json")
        try:
            results = compare(
                db=db, prompts=prompts, policies=policy, judge=judge, constitution=constitution,
                helpful_principle=helpful or HELPFUL, name=name, limit=limit, seed=seed,
                api_base=common.api_bases(api_base), judge_api_base=common.api_bases(judge_api_base),
                params=common.parse_params(param),
                judge_params=common.parse_params(judge_param),
                options=RunnerOptions(concurrency=concurrency, max_retries=max_retries),
                progress=common.progress_enabled(),
            )  # fmt: skip
        except EvalError as exc:
            raise common.UsageError(str(exc)) from None
        except RuntimeError as exc:
            typer.echo(f"charter: error: {exc}; run the same command again to resume", err=True)
            raise typer.Exit(1) from None
        if fmt == "json":
            typer.echo(results_json(results))
            return
        for r in results:
            typer.echo(f"{r.criterion}: {r.comparisons} judged comparisons (label run {r.label_run})")
            for (a, b), p in r.win_rates.items():
                typer.echo(f"  {a} beats {b}: {p:.3f}")
            for rating in sorted(r.ratings, key=lambda x: -x.elo):
                typer.echo(
                    f"  Elo {rating.policy:<16} {rating.elo:+7.1f}  (95% CI {rating.low:+.1f} to {rating.high:+.1f})"
                )
