"""Shared CLI plumbing: the error types that mean "bad input" (exit 2) and option parsing."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer

from charter.constitution import ConstitutionError
from charter.inputs import InputError
from charter.prompts import PromptError
from charter.store.store import StoreError

# Exceptions that mean the user's input or invocation is wrong: one line on stderr, exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    InputError,
    PromptError,
    ConstitutionError,
    StoreError,
    ValueError,
)


class UsageError(ValueError):
    """A bad option value; exits 2 with its message."""


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `charter: error: message` to stderr and exit."""
    typer.echo(f"charter: error: {message}", err=True)
    raise typer.Exit(code)


def parse_params(values: list[str] | None) -> dict[str, Any]:
    """`--param key=value` pairs; values are parsed as JSON when they parse (numbers, lists, bools)."""
    params: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {item!r}: expected key=value")
        try:
            params[key.strip()] = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            params[key.strip()] = raw
    from charter.backends.params import check_params

    check_params(params)
    return params


def parse_clamp(text: str) -> tuple[float, float]:
    """`--clamp 0.4,0.6` -> (0.4, 0.6)."""
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"--clamp {text!r}: expected two numbers like 0.4,0.6") from None
    if not 0 <= low <= high <= 1:
        raise UsageError(f"--clamp {text!r}: need 0 <= low <= high <= 1")
    return low, high


def progress_enabled() -> bool:
    """Show progress bars only to a person at a terminal; a log gets a line every 30 s instead."""
    if sys.stderr.isatty():
        return True
    from charter.session import enable_progress_lines

    enable_progress_lines()
    return False


# Options every model-calling command takes (the contract's names).
ModelOpt = typer.Option(
    ..., "--model", "-m", metavar="MODEL", help="Any LiteLLM model string, or local/<path-or-hub-id>."
)
ApiBaseOpt = typer.Option(
    None, "--api-base", metavar="URL", help="Base URL of an OpenAI-compatible (or other) endpoint."
)
# Commands that can spread calls over several endpoints take --api-base more than once (LiteLLM's
# Router balances and fails over between them), or --router FILE, and can run one shard of n.
ApiBasesOpt = typer.Option(
    None,
    "--api-base",
    metavar="URL",
    help="Base URL of an OpenAI-compatible (or other) endpoint. Repeat it to spread calls over several "
    "endpoints (LiteLLM Router; --param endpoint_concurrency=N is each one's share).",
)
RouterOpt = typer.Option(
    None,
    "--router",
    metavar="FILE",
    help="LiteLLM Router config (YAML/JSON: model_list, router_settings); --model names a group.",
)
ShardOpt = typer.Option(
    None,
    "--shard",
    metavar="I/N|auto",
    help="i/n: only the items whose id hashes to shard i of n (merge with charter merge); auto: i and n "
    "from a Slurm array (SLURM_ARRAY_TASK_*) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX, "
    "CHARTER_SHARD_COUNT).",
)
# Running all the shards from one command, on an executor a plugin registers (charter-ray: ray).
ExecutorOpt = typer.Option(
    None,
    "--executor",
    metavar="NAME",
    help="Run every shard on this executor (ray: pip install charter-ray) and merge them into --db.",
)
ShardsOpt = typer.Option(
    None,
    "--shards",
    min=1,
    metavar="N",
    help="With --executor: how many shards (default: the executor's CPUs).",
)


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


ParamOpt = typer.Option(
    None,
    "--param",
    metavar="KEY=VALUE",
    help="key=value passed to the backend (JSON values parsed). Repeatable.",
)
ConcurrencyOpt = typer.Option(
    16, "--concurrency", min=1, metavar="N", help="Backend requests in flight at once."
)
MaxRetriesOpt = typer.Option(
    6, "--max-retries", min=0, metavar="N", help="Retries per call on 429/5xx/timeouts."
)
RpmOpt = typer.Option(
    None, "--rpm", min=0.001, metavar="RPM", help="Requests-per-minute limit (off by default)."
)
RunNameOpt = typer.Option(
    None, "--run-name", metavar="NAME", help="Name of the run (default: derived from the inputs)."
)
PromptsDirOpt = typer.Option(
    None, "--prompts-dir", metavar="DIR", help="Directory with .jinja templates overriding built-ins by name."
)
