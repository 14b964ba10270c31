"""Options declared once: `CallConfig` (how a run reaches its model) and the pieces task configs use.

Every task (`charter.tasks`) has one pydantic Config whose fields carry their help text, default,
range and validation. The CLI options are derived from those fields (`charter.cli.derive`), the
pipeline YAML steps are validated by them (`charter.pipeline`) and the Python API builds one before
it runs (`charter.rl.label(...)` is `LabelConfig(...)` + `run_label`), as TRL derives its CLI from
its `XConfig` dataclasses. So each option is written down here (or in its task's module) once.

A field's CLI spelling lives in its `json_schema_extra["cli"]`: the flags, metavar and the CLI type
when it differs from the field's (a repeatable `--param KEY=VALUE` for the `params` mapping).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from charter.errors import error_msg

if TYPE_CHECKING:
    from charter.backends.base import Backend
    from charter.runner import RunnerOptions
    from charter.session import CallSettings


class ConfigError(ValueError):
    """A config value that does not validate: one line naming the option (`--clamp '2': ...`)."""


def option(
    default: Any = ...,
    help: str = "",
    *flags: str,
    metavar: str | None = None,
    cli_type: Literal["list", "str"] | None = None,
    cli_name: str | None = None,
    argument: bool = False,
    ge: float | None = None,
    le: float | None = None,
) -> Any:
    """A Config field with its CLI spelling: `option(2, "Responses per prompt.", "--n", ge=2)`.

    `flags` default to `--field-name`; `cli_type="list"` makes a repeatable option, `"str"` a text
    option the field's validator parses (`--clamp 0.4,0.6`); `cli_name` is the command's parameter
    name when it differs (`param` for `params`); `argument` makes it positional.
    """
    cli: dict[str, Any] = {"flags": list(flags), "metavar": metavar, "type": cli_type, "name": cli_name}
    cli["argument"] = argument
    return Field(default, description=help, ge=ge, le=le, json_schema_extra={"cli": cli})


def one_of(*choices: str, what: str | None = None) -> BeforeValidator:
    """A validator accepting only `choices`, with the message the CLI always gave (`expected a or b`)."""
    words = " or ".join(choices) if len(choices) <= 2 else ", ".join(choices[:-1]) + " or " + choices[-1]

    def check(value: Any) -> Any:
        if value is not None and value not in choices:
            raise ValueError(f"expected {what or words}")
        return value

    return BeforeValidator(check)


def _text(value: Any) -> Any:
    return str(value) if isinstance(value, PathLike) else value


# A file name or a name: a `pathlib.Path` from Python callers is taken as its text.
PathText = Annotated[str, BeforeValidator(_text)]

Mode = Annotated[Literal["chat", "completion"], one_of("chat", "completion")]


def _params(value: Any) -> Any:
    """`params` from the API or YAML (a mapping) or from the CLI (`--param key=value` strings)."""
    if value is None:
        return {}
    if isinstance(value, (list, tuple)):
        return parse_params(list(value))
    return value


def parse_params(values: list[str] | None) -> dict[str, Any]:
    """`--param key=value` pairs; values are parsed as JSON when they parse (numbers, lists, bools)."""
    params: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r}: expected key=value")
        try:
            params[key.strip()] = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            params[key.strip()] = raw
    from charter.backends.params import check_params

    check_params(params)
    return params


def parse_clamp(text: Any) -> Any:
    """`--clamp 0.4,0.6` (or YAML's `"0.4,0.6"`) -> (0.4, 0.6); a pair passes through."""
    if not isinstance(text, str):
        return text
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--clamp {text!r}: expected two numbers like 0.4,0.6") from None
    if not 0 <= low <= high <= 1:
        raise ValueError(f"--clamp {text!r}: need 0 <= low <= high <= 1")
    return low, high


def _api_base(value: Any) -> Any:
    """One --api-base as a string (the usual case), several as a list (the Router backend)."""
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        return value[0] if len(value) == 1 else list(value)
    return value


class CallConfig(BaseModel):
    """How a run reaches its model: shared by every task (revise, sample, label, eval)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: str = option(
        ..., "Any LiteLLM model string, or local/<path-or-hub-id>.", "--model", "-m", metavar="MODEL"
    )
    api_base: Annotated[str | list[str] | None, BeforeValidator(_api_base)] = option(
        None, "Base URL of an OpenAI-compatible (or other) endpoint.", "--api-base", metavar="URL"
    )
    # Commands that can spread calls over several endpoints take --api-base more than once
    # (LiteLLM's Router balances and fails over between them), or --router FILE.
    router: PathText | None = option(
        None,
        "LiteLLM Router config (YAML/JSON: model_list, router_settings); --model names a group.",
        "--router",
        metavar="FILE",
    )
    params: Annotated[dict[str, Any], BeforeValidator(_params)] = option(
        {},
        "key=value passed to the backend (JSON values parsed). Repeatable.",
        "--param",
        metavar="KEY=VALUE",
        cli_type="list",
        cli_name="param",
    )
    concurrency: int = option(16, "Backend requests in flight at once.", metavar="N", ge=1)
    max_retries: int = option(6, "Retries per call on 429/5xx/timeouts.", metavar="N", ge=0)
    rpm: float | None = option(None, "Requests-per-minute limit (off by default).", metavar="RPM", ge=0.001)
    batch: bool = option(
        False,
        "Through the provider's batch API (about half the price, answers within 24h); "
        "the same command resumes a killed run without resubmitting.",
    )
    seed: int = option(0, "Seed for the principle draws, pair choice and few-shot order.")
    prompts_dir: PathText | None = option(
        None, "Directory with .jinja templates overriding built-ins by name.", metavar="DIR"
    )

    # Per-command CLI spelling where one shared option reads differently (`--seed` of revise draws only
    # principles; revise repeats --api-base): {field: {"help": ..., "type": ...}}.
    cli_overrides: ClassVar[dict[str, dict[str, Any]]] = {}
    # The fields that reach a model: optional in a pipeline step (they fall back to `defaults`).
    call_fields: ClassVar[tuple[str, ...]] = (
        "model",
        "api_base",
        "router",
        "params",
        "concurrency",
        "max_retries",
        "rpm",
        "batch",
        "seed",
        "prompts_dir",
    )

    @model_validator(mode="after")
    def _check_call(self) -> CallConfig:
        from charter.backends.params import check_params

        check_params(self.params)
        if self.router is not None:
            from charter.backends.router import check_router_model, load_router_config

            check_router_model(load_router_config(self.router), self.model, self.router)
        return self

    def backend_params(self) -> dict[str, Any]:
        """The backend's params: `params`, plus `router` (the Router backend reads it from there)."""
        return {**self.params, "router": self.router} if self.router is not None else dict(self.params)

    def runner_options(self) -> RunnerOptions:
        """The runner's options: concurrency, retries and rate limit."""
        from charter.runner import RunnerOptions

        return RunnerOptions(
            concurrency=self.concurrency,
            max_retries=self.max_retries,
            requests_per_minute=self.rpm,
            batch=self.batch,
        )

    def settings(
        self,
        *,
        mode: Literal["chat", "completion"],
        few_shot: bool,
        backend: Backend | None = None,
        progress: bool = False,
        options: RunnerOptions | None = None,
    ) -> CallSettings:
        """The run-time call settings: these options plus what only exists at run time (a backend
        object, whether to draw a progress bar, RunnerOptions beyond the three options here)."""
        from charter.session import CallSettings

        return CallSettings(
            model=self.model,
            api_base=self.api_base,
            params=self.backend_params(),
            options=options or self.runner_options(),
            mode=mode,
            seed=self.seed,
            few_shot=few_shot,
            prompts_dir=self.prompts_dir,
            backend=backend,
            progress=progress,
        )

    def recorded(self) -> dict[str, Any]:
        """The call options a run records in `runs.config` (no secrets)."""
        from charter.backends.params import public_params, redact

        return {
            "model": self.model,
            "api_base": redact(self.api_base),
            "params": public_params(self.backend_params()),
        }


def _shard(value: Any) -> Any:
    """`i/n` or `auto` (read from the Slurm or Kubernetes environment now) as the text `i/n`."""
    from charter.shard import resolve_shard

    shard = resolve_shard(value)  # raises on a malformed i/n, or `auto` outside a scheduler
    return None if shard is None else str(shard)


# Commands that can spread calls over several endpoints repeat --api-base (LiteLLM's Router).
API_BASES: dict[str, Any] = {
    "type": "list",
    "help": "Base URL of an OpenAI-compatible (or other) endpoint. Repeat it to spread calls over "
    "several endpoints (LiteLLM Router; --param endpoint_concurrency=N is each one's share).",
}


class TaskConfig(CallConfig):
    """A task's run: the database, the run's name and how many items, plus the call options."""

    db: Path = option(..., "DuckDB file to write (created if missing).", "--db")
    run_name: str | None = option(None, "Name of the run (default: derived from the inputs).", metavar="NAME")
    limit: int | None = option(None, "Only the first N prompts (sample) or pairs (label).", ge=1)
    # Scale-out: one shard of n in this process, or every shard on an executor (charter.shard).
    shard: Annotated[str | None, BeforeValidator(_shard)] = option(
        None,
        "i/n: only the items whose id hashes to shard i of n (merge with charter merge); auto: i and n "
        "from a Slurm array (SLURM_ARRAY_TASK_*) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX, "
        "CHARTER_SHARD_COUNT).",
        metavar="I/N|auto",
    )
    executor: str | None = option(
        None,
        "Run every shard on this executor (ray: pip install charter-ray) and merge them into --db.",
        metavar="NAME",
    )
    shards: int | None = option(
        None, "With --executor: how many shards (default: the executor's CPUs).", metavar="N", ge=1
    )

    @model_validator(mode="after")
    def _check_scale(self) -> TaskConfig:
        if self.executor is None and self.shards is not None:
            raise ValueError("--shards N runs the shards on an executor: give --executor NAME too (e.g. ray)")
        if self.executor is not None and self.shard is not None:
            raise ValueError(
                "--shard picks the one shard this process runs; with --executor, --shards N says how many to run"
            )
        return self


def cli_spec(config: type[BaseModel], name: str) -> dict[str, Any]:
    """A field's CLI spelling: flags (default `--name`), metavar, type, parameter name, argument."""
    info = config.model_fields[name]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    cli: dict[str, Any] = dict(cast(dict[str, Any], extra.get("cli") or {}))
    cli["flags"] = list(cli.get("flags") or []) or ["--" + name.replace("_", "-")]
    cli["name"] = cli.get("name") or name
    return cli


def validate(
    config: type[BaseModel],
    values: dict[str, Any],
    flag: Callable[[str], str] | None = None,
) -> Any:
    """`config(**values)`, or a `ConfigError` with one line naming the option and the value.

    `flag(field)` spells a field for the message (the CLI's `--clamp`); by default the API's and
    the CLI's spelling is the same, `--field-name`.
    """
    try:
        return config.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(describe_error(config, exc, flag)) from None


def describe_error(
    config: type[BaseModel], exc: ValidationError, flag: Callable[[str], str] | None = None
) -> str:
    """The first error of `exc` as `--option 'value': message` (+N more)."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    msg = error_msg(err)
    loc = err["loc"]
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    if msg.startswith("--"):
        return f"{msg}{more}"  # the validator named the option itself (`--clamp '2': ...`)
    if loc and isinstance(loc[0], str) and loc[0] in config.model_fields:
        name = loc[0]
        spelled = flag(name) if flag is not None else cli_spec(config, name)["flags"][0].split("/")[0]
        return f"{spelled} {err.get('input')!r}: {msg}{more}"
    return f"{msg}{more}"
