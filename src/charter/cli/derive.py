"""A command's options derived from its task's Config, as TRL's `make_parser` derives its CLI.

    @task_command(LABEL)
    def label_cmd(config: LabelConfig) -> None: ...

makes `label_cmd` a function whose signature typer reads: one option per field in the task's
`cli_order`, with the field's flags, metavar, help, default and range. Called by typer (or by a
test, with the same keyword arguments), it validates the values through the Config, so a bad value
is one line naming the option (exit 2), and hands the config to the body.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from charter.cli import common
from charter.config import ConfigError, TaskConfig, cli_spec, validate
from charter.tasks.base import Task

C = TypeVar("C", bound=TaskConfig)


def _scalar(annotation: Any) -> Any:
    """The CLI type of a field's annotation: `int | None` -> int, a Literal -> str."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _scalar(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _scalar(args[0]) if len(args) == 1 else str
    if origin is Literal:
        return str
    if annotation in (bool, int, float, Path):
        return annotation
    return str


def option_parameters(task: Task) -> list[inspect.Parameter]:
    """The command's parameters, in `--help` order: one typer Option (or Argument) per field."""
    config = task.config
    params = []
    for name in task.cli_order:
        info = config.model_fields[name]
        spec = {**cli_spec(config, name), **config.cli_overrides.get(name, {})}
        default: Any = None if info.is_required() else info.default
        kind = spec.get("type")
        annotation: Any
        if kind == "list":
            annotation = list[str] | None
        elif kind == "str":
            annotation = str | None if default is None else str
        else:
            annotation = _scalar(info.annotation)
            if default is None:
                annotation = annotation | None
        option = common.typer_option(config, name)
        params.append(
            inspect.Parameter(
                spec["name"], inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
            )
        )
    return params


def flag_of(task: Task) -> Callable[[str], str]:
    """The option that spells a field on this command (`params` -> `--param`)."""

    def flag(name: str) -> str:
        return str(cli_spec(task.config, name)["flags"][0]).split("/")[0]

    return flag


def config_from_options(task: Task, values: dict[str, Any]) -> TaskConfig:
    """The Config of the command's option values; a bad value is a `UsageError` naming the option."""
    by_param = {cli_spec(task.config, name)["name"]: name for name in task.cli_order}
    fields = {by_param.get(k, k): v for k, v in values.items()}
    try:
        return validate(task.config, fields, flag_of(task))  # type: ignore[no-any-return]
    except ConfigError as exc:
        raise common.UsageError(str(exc)) from None


def task_command(task: Task) -> Callable[[Callable[[Any], None]], Callable[..., None]]:
    """Turn `body(config)` into a command taking the task's options as keyword arguments."""

    def wrap(body: Callable[[Any], None]) -> Callable[..., None]:
        parameters = option_parameters(task)

        @functools.wraps(body)
        def command(**values: Any) -> None:
            for p in parameters:  # a direct call may leave options out: their defaults apply
                if p.name not in values:
                    default = p.default.default
                    if default is ...:
                        raise TypeError(f"{body.__name__}() missing required option {p.name!r}")
                    values[p.name] = default
            body(config_from_options(task, values))

        del command.__wrapped__  # typer must read the derived signature, not the body's
        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
        return command

    return wrap
