"""What a trainer is to charter: a `TrainerSpec`, registered by kind through `register_trainers`.

`charter train KIND` is built from the registered specs (`charter.plugins.get_trainers()`, the hook's
one reader): charter-trl registers `sft`, `reward`, `ppo` and `dpo` this way, and a third party's
trainer is one more spec. Kept free of torch and TRL: a spec's callables import them when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The views a trainer can read its rows from (charter-trl reads each one the same way for every kind).
SOURCES = ("revisions", "sft_examples", "preference_pairs", "prompts")


@dataclass(frozen=True)
class TrainerSpec:
    """One trainer: what `charter train KIND` runs.

    - `options`: a dataclass of the trainer's options (`--param key=value` sets any field; an
      `extra` field, when present, collects the rest for the underlying library's config).
    - `source`: the view its rows come from (one of `SOURCES`); `read_rows(db, selection, **inputs)`
      reads them instead when given, returning `(rows, notes)`.
    - `train(rows, model, out, options, callbacks=..., **inputs) -> metrics` trains and writes `out`.
    - `highlights`: the metric keys the CLI's summary line shows.
    - `inputs`: the extra inputs it takes besides the rows (`mix`, `reward_model`, `eval_prompts`,
      `all_rounds`); giving one to a trainer that does not take it is bad input.
    - `command`: the typer command (its options) of `charter train KIND`.
    - `library_config`: returns the library's config class whose fields `--param` may also set.
    """

    kind: str
    options: type
    source: str
    train: Callable[..., dict[str, Any]]
    help: str = ""
    highlights: tuple[str, ...] = ()
    inputs: frozenset[str] = field(default_factory=frozenset)
    read_rows: Callable[..., tuple[list[dict[str, Any]], dict[str, Any]]] | None = None
    command: Callable[..., None] | None = None
    library_config: Callable[[], type] | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(
                f"trainer {self.kind!r}: source {self.source!r} is not one of {', '.join(SOURCES)}"
            )


def get_trainer(kind: str) -> TrainerSpec:
    """The registered trainer `kind`; an unknown kind is a ValueError naming the installed ones."""
    from charter.plugins import get_trainers

    trainers = get_trainers()
    if kind not in trainers:
        installed = ", ".join(sorted(trainers)) or "none (pip install charter-trl)"
        raise ValueError(f"unknown training kind {kind!r}; expected one of {installed}")
    spec = trainers[kind]
    if not isinstance(spec, TrainerSpec):
        raise ValueError(
            f"trainer {kind!r} is registered as {type(spec).__name__}, not a charter.trainers.TrainerSpec"
        )
    return spec


__all__ = ["SOURCES", "TrainerSpec", "get_trainer"]
