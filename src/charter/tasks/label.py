"""The label task (RL-CAI AI feedback): its options, run by `charter.rl.run_label`."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BeforeValidator, model_validator

from charter.config import API_BASES, Mode, PathText, TaskConfig, option, parse_clamp
from charter.labels import DEFAULT_MIN_OPTION_MASS
from charter.tasks.base import CALL_OPTIONS, Task


def label_method(name: str) -> Any:
    """The installed label method called `name` (`register_label_methods`, the core's `logprobs`
    and `cot` included); an unknown name is a ValueError that lists the installed ones."""
    from charter.plugins import get_label_methods

    methods = get_label_methods()
    if name not in methods:
        raise ValueError(
            f"--method {name!r}: expected one of {', '.join(sorted(methods))} (the installed label methods)"
        )
    return methods[name]


def _method(value: str) -> str:
    label_method(value)
    return value


def _runs(value: Any) -> Any:
    # `--from-run` repeated (a list), once, or not at all (the CLI gives an empty list).
    if isinstance(value, (list, tuple)):
        return list(value) or None
    return value


class LabelConfig(TaskConfig):
    """`charter label`: label every unlabeled pair with the feedback model's soft preference."""

    constitution: PathText = option("anthropic-rl", "Name or path.")
    method: Annotated[str, AfterValidator(_method)] = option(
        "logprobs",
        "logprobs (multiple choice) | cot (chain of thought) | a plugin's (charter plugins lists them).",
    )
    ensemble: int = option(1, "Principles drawn per pair; labels averaged.", ge=1)
    swap: bool = option(
        False, "Also ask with the options swapped and average (cancels position bias).", "--swap/--no-swap"
    )
    clamp: Annotated[tuple[float, float] | None, BeforeValidator(parse_clamp)] = option(
        None, "Clamp probabilities to LOW,HIGH (default 0.4,0.6 for cot, none for logprobs).", cli_type="str"
    )
    few_shot: bool = option(True, "Prepend the paper's few-shot examples.", "--few-shot/--no-few-shot")
    votes: int = option(1, "Without log-probabilities: sample K answers and use the vote share.", ge=1)
    max_parse_retries: int = option(2, "Re-asks (new sample) when an answer names no option.", ge=0)
    top_logprobs: int | None = option(
        None, "Alternatives per position (default 20 chat, 5 completion).", ge=1
    )
    min_option_mass: float = option(
        DEFAULT_MIN_OPTION_MASS,
        "Read a logprob label only where (A) and (B) hold this much probability at the answer "
        "position; below it the answer is parsed.",
        ge=0.0,
        le=1.0,
    )
    cot_samples: int = option(
        1, "With --method cot: K reasoning samples (temperature 1), clamped, then averaged.", ge=1
    )
    mode: Mode | None = option(
        None, "chat | completion (default: completion for text-completion-* and local models, else chat)."
    )
    template: str | None = option(None, "Prompt template name to use instead.")
    from_run: Annotated[str | list[str] | None, BeforeValidator(_runs)] = option(
        None, "Only pairs of this sample run (name or id). Repeatable.", metavar="NAME", cli_type="list"
    )
    max_flagged: float = option(
        0.5,
        "Fail (exit 1, run status 'flagged') when more than this fraction of pairs get no label.",
        ge=0.0,
        le=1.0,
    )

    cli_overrides: ClassVar[dict[str, dict[str, Any]]] = {
        "db": {"help": "DuckDB file holding pairs (from charter sample)."},
        "api_base": API_BASES,
    }

    @model_validator(mode="after")
    def _sampling(self) -> LabelConfig:
        if self.cot_samples != 1 and not self.takes_samples:
            raise ValueError("--cot-samples samples chains of thought: it needs --method cot")
        if self.cot_samples > 1 and self.votes > 1:
            raise ValueError("--cot-samples and --votes both sample the reasoning: give one of them")
        return self

    @property
    def takes_samples(self) -> bool:
        """The method samples several chains of thought (`--cot-samples`)."""
        return "cot_samples" in label_method(self.method).options

    @property
    def runs(self) -> list[str] | None:
        """`from_run` as a list (None: the pairs of every sample run)."""
        return [self.from_run] if isinstance(self.from_run, str) else self.from_run


LABEL = Task(
    name="label",
    config=LabelConfig,
    runner="charter.rl:run_label",
    cli_order=(
        "db",
        "model",
        "constitution",
        "method",
        "ensemble",
        "swap",
        "clamp",
        "few_shot",
        "votes",
        "max_parse_retries",
        "top_logprobs",
        "min_option_mass",
        "cot_samples",
        "mode",
        "template",
        "from_run",
        "seed",
        "limit",
        "run_name",
        "api_base",
        "router",
        "shard",
        "executor",
        "shards",
        *CALL_OPTIONS,
        "max_flagged",
    ),
)
