"""The revise task (SL-CAI critique -> revision): its options, run by `charter.sl.run_revise`."""

from __future__ import annotations

from typing import Any, ClassVar

from charter.config import API_BASES, Mode, PathText, TaskConfig, option
from charter.tasks.base import CALL_OPTIONS, Task


class ReviseConfig(TaskConfig):
    """`charter revise`: answer each prompt, then critique and revise it `rounds` times."""

    prompts: PathText = option(
        ..., "Prompts file (.jsonl, .txt, .csv, .parquet) or - for stdin.", argument=True
    )
    constitution: PathText = option("anthropic-sl", "Name or path.")
    rounds: int = option(4, "Critique -> revision rounds per prompt.", ge=0)
    mode: Mode = option("chat", "chat | completion (the paper's Human/Assistant format).")
    few_shot: bool = option(True, "Prepend the constitution's few-shot examples.", "--few-shot/--no-few-shot")
    respond_few_shot: bool = option(
        False,
        "Completion mode: put the few-shot critique transcripts in front of the first answer too "
        "(default: the plain answer, as in the paper).",
    )
    always_revise: bool = option(
        False,
        "Revise every round, even when a chat critique ends 'Verdict: no change' (as the paper does).",
    )
    cli_overrides: ClassVar[dict[str, dict[str, Any]]] = {
        "seed": {"help": "Seed for the principle draws."},
        "limit": {"help": "Only the first N prompts."},
        "api_base": API_BASES,
    }


REVISE = Task(
    name="revise",
    config=ReviseConfig,
    runner="charter.sl:run_revise",
    cli_order=(
        "prompts",
        "db",
        "model",
        "constitution",
        "rounds",
        "seed",
        "mode",
        "few_shot",
        "respond_few_shot",
        "always_revise",
        "limit",
        "run_name",
        "api_base",
        "router",
        "shard",
        "executor",
        "shards",
        *CALL_OPTIONS,
    ),
)
