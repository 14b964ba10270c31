"""Shared CLI plumbing: the error types that mean "bad input" (exit 2) and option parsing."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import typer
from pydantic import BaseModel

from charter import config
from charter.config import CallConfig, TaskConfig, cli_spec
from charter.tasks.revise import ReviseConfig


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user's input or invocation is wrong: one line on stderr, exit 2.

    A function, imported when an error is being handled: the modules defining them pull in
    pydantic, Jinja and DuckDB, which `charter --help` must not pay for.
    """
    from charter.constitution import ConstitutionError
    from charter.inputs import InputError
    from charter.prompts import PromptError
    from charter.store.store import StoreError

    return (InputError, PromptError, ConstitutionError, StoreError, ValueError)


def __getattr__(name: str) -> object:
    # `USER_ERRORS` stays importable (as the tuple), built on first use.
    if name == "USER_ERRORS":
        return user_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class UsageError(ValueError):
    """A bad option value; exits 2 with its message."""


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `charter: error: message` to stderr and exit."""
    typer.echo(f"charter: error: {message}", err=True)
    raise typer.Exit(code)


# Parsed where the options are declared (charter.config); here for the commands that still
# declare their own options (eval, train).
parse_params = config.parse_params
parse_clamp = config.parse_clamp


def progress_enabled() -> bool:
    """Show progress bars only to a person at a terminal; a log gets a line every 30 s instead."""
    if sys.stderr.isatty():
        return True
    from charter.session import enable_progress_lines

    enable_progress_lines()
    return False


def typer_option(config_cls: type[BaseModel], name: str, help: str | None = None) -> Any:
    """The typer Option of a Config field: its flags, metavar, help, default and range."""
    info = config_cls.model_fields[name]
    spec = {**cli_spec(config_cls, name), **getattr(config_cls, "cli_overrides", {}).get(name, {})}
    default: Any = ... if info.is_required() else info.default
    if spec.get("type") == "list" and default == {}:
        default = None
    extra: dict[str, Any] = {"help": help or spec.get("help") or info.description or ""}
    for item in info.metadata:
        for attr, key in (("ge", "min"), ("le", "max")):
            if getattr(item, attr, None) is not None:
                extra[key] = getattr(item, attr)
    if spec.get("metavar"):
        extra["metavar"] = spec["metavar"]
    if spec.get("argument"):
        return typer.Argument(default, help=extra["help"])
    return typer.Option(default, *spec["flags"], **extra)


# Options every model-calling command takes (the contract's names), as CallConfig declares them;
# commands whose options are not derived from a task Config yet (eval, prompts) use these.
ModelOpt = typer_option(CallConfig, "model")
ApiBaseOpt = typer_option(CallConfig, "api_base")
ApiBasesOpt = typer_option(ReviseConfig, "api_base")
RouterOpt = typer_option(CallConfig, "router")
ShardOpt = typer_option(TaskConfig, "shard")
ExecutorOpt = typer_option(TaskConfig, "executor")
ShardsOpt = typer_option(TaskConfig, "shards")
ParamOpt = typer_option(CallConfig, "params")
ConcurrencyOpt = typer_option(CallConfig, "concurrency")
MaxRetriesOpt = typer_option(CallConfig, "max_retries")
RpmOpt = typer_option(CallConfig, "rpm")
RunNameOpt = typer_option(TaskConfig, "run_name")
PromptsDirOpt = typer_option(CallConfig, "prompts_dir")


def api_bases(values: list[str] | None) -> str | list[str] | None:
    """One --api-base as a string (the usual case), several as a list (the Router backend)."""
    if not values:
        return None
    return values[0] if len(values) == 1 else list(values)


def with_router(params: dict[str, Any], router: str | None, model: str | None = None) -> dict[str, Any]:
    """Add --router FILE to the backend params (checked here, with --model, so a bad file exits 2
    before any run)."""
    if router is None:
        return params
    from charter.backends.router import check_router_model, load_router_config

    config = load_router_config(router)
    if model is not None:
        check_router_model(config, model, router)
    return {**params, "router": router}
