"""The sample task (RL-CAI response pairs): its options, run by `charter.rl.run_sample`."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, model_validator

from charter.config import API_BASES, Mode, PathText, TaskConfig, option, parse_params
from charter.tasks.base import CALL_OPTIONS, Task


def _pairs(value: str | int) -> str | int:
    from charter.steps.sample_pairs import parse_pair_strategy

    return parse_pair_strategy(value)


class SampleConfig(TaskConfig):
    """`charter sample`: sample `n` responses per prompt and store the pairs to label."""

    prompts: PathText | None = option(None, "Prompts file (.jsonl, .txt, .csv, .parquet) or - for stdin.")
    from_run: str | None = option(None, "Take the prompts of an earlier revise/sample run (name or id).")
    n: int = option(2, "Responses per prompt.", ge=2)
    temperature: float | None = option(1.0, "Sampling temperature.", ge=0.0)
    pairs: Annotated[str | int, AfterValidator(_pairs)] = option(
        "all", "Which pairs of the --n responses: all | adjacent | K (K drawn at random).", cli_type="str"
    )
    n_supported: bool | None = option(
        None, "Use the backend's n parameter (default: yes; --param n_supported=false turns it off)."
    )
    system: str | None = option(None, "System message for chat mode.")
    mode: Mode = option("chat", "chat | completion (Human/Assistant format).")

    cli_overrides: ClassVar[dict[str, dict[str, Any]]] = {"api_base": API_BASES}

    @model_validator(mode="before")
    @classmethod
    def _n_supported(cls, data: Any) -> Any:
        # `--param n_supported=false` is the switch's older spelling: it leaves the backend params.
        params = data.get("params") if isinstance(data, dict) else None
        if isinstance(params, (list, tuple)):
            params = parse_params(list(params))
        if isinstance(params, dict) and "n_supported" in params:
            params = dict(params)
            value = _bool_text(params.pop("n_supported"))
            data = {**data, "params": params}
            if data.get("n_supported") is None:
                data["n_supported"] = value
        return data

    @model_validator(mode="after")
    def _one_source(self) -> SampleConfig:
        if (self.prompts is None) == (self.from_run is None):
            raise ValueError("give exactly one of --prompts PROMPTS or --from-run NAME")
        return self


def _bool_text(value: Any) -> bool | None:
    if isinstance(value, bool) or value is None:
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"--param n_supported={value!r}: expected true or false")


SAMPLE = Task(
    name="sample",
    config=SampleConfig,
    runner="charter.rl:run_sample",
    cli_order=(
        "db",
        "model",
        "prompts",
        "from_run",
        "n",
        "temperature",
        "pairs",
        "system",
        "seed",
        "mode",
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
