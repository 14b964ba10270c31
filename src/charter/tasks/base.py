"""`Task`: one stage's Config class, its run function and the order of its CLI options."""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from charter.config import TaskConfig

if TYPE_CHECKING:
    from charter.session import RunSummary

# The call options every command lists last, in this order (`--param` ... `--prompts-dir`).
CALL_OPTIONS = ("params", "concurrency", "max_retries", "rpm", "batch", "prompts_dir")

# Keyword arguments of the Python API that are not options: they exist only while a run runs.
RUNTIME = ("backend", "progress", "options")


@dataclass(frozen=True)
class Task:
    """A stage of the pipeline (revise, sample, label).

    `runner` names the function that runs a validated config as "module:function": the function's
    module imports steps, backends and the store, which the CLI loads only when a command runs.
    `cli_order` lists the fields that are options of the command, in `--help` order.
    """

    name: str
    config: type[TaskConfig]
    runner: str
    cli_order: tuple[str, ...]

    def from_api(self, values: dict[str, Any]) -> tuple[TaskConfig, dict[str, Any]]:
        """A Python call's keyword arguments as (validated config, run-time arguments).

        Run-time arguments are what a config cannot hold: `backend`, `progress`, `options`
        (RunnerOptions), and `db` / `constitution` given as objects (a Store, a Constitution),
        which the config records by path and name. A `router` inside `params` (as older callers
        pass it) becomes the `router` option.
        """
        from charter.config import validate
        from charter.constitution import Constitution
        from charter.store.store import Store

        values = dict(values)
        runtime = {k: values.pop(k) for k in RUNTIME if k in values}
        db = values.get("db")
        if isinstance(db, Store):
            runtime["db"], values["db"] = db, db.path
        constitution = values.get("constitution")
        if isinstance(constitution, Constitution):
            runtime["constitution"], values["constitution"] = constitution, constitution.name
        params = dict(values.get("params") or {})
        if "router" in params:
            values.setdefault("router", params.pop("router"))
        values["params"] = params
        return validate(self.config, values), runtime

    def call(self, values: dict[str, Any]) -> Any:
        """Validate a Python call's keyword arguments (see `from_api`) and run them."""
        config, runtime = self.from_api(values)
        return self.run(config, **runtime)

    def signature(self, positional: tuple[str, ...] = ()) -> inspect.Signature:
        """The Python API's signature, derived from the config (what `help()` and IDEs show)."""
        params: list[inspect.Parameter] = []
        fields = self.config.model_fields
        for name in (*positional, *(n for n in fields if n not in positional)):
            info = fields[name]
            kind = (
                inspect.Parameter.POSITIONAL_OR_KEYWORD
                if name in positional
                else inspect.Parameter.KEYWORD_ONLY
            )
            default = inspect.Parameter.empty if info.is_required() else info.default
            if name in positional and default is inspect.Parameter.empty and params:
                default = None
            params.append(inspect.Parameter(name, kind, default=default))
        for name, default in (("backend", None), ("progress", False), ("options", None)):
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default))
        return inspect.Signature(params)

    def run(self, config: TaskConfig, **runtime: Any) -> Any:
        """Run `config` (an instance of `self.config`); `runtime` is backend=, progress=, options=."""
        if not isinstance(config, self.config):
            raise TypeError(f"{self.name}: expected a {self.config.__name__}, got {type(config).__name__}")
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module), function)(config, **runtime)


def run_task(task: Task, config: TaskConfig, *, progress: bool) -> RunSummary:
    """Run `config` in this process, or every one of its shards on `config.executor` (merged into
    `config.db`, one summary) when `--executor` is given."""
    if config.executor is None:
        return cast("RunSummary", task.run(config, progress=progress))
    if getattr(config, "prompts", None) == "-":
        raise ValueError("--executor: the shards cannot read stdin (-); give the prompts as a file")
    # The shards' bars would interleave in the executor's log: no progress inside them.
    from charter.shard import run_sharded

    job = functools.partial(_run_one_shard, task.name, config)
    return run_sharded(job, db=config.db, executor=config.executor, shards=config.shards)


def _run_one_shard(task_name: str, config: TaskConfig, *, db: Path, shard: object) -> RunSummary:
    """One shard of `config` into `db` (what an executor runs on a worker: module-level, picklable)."""
    from charter.tasks import get_task

    part = config.model_copy(update={"db": db, "shard": str(shard), "executor": None, "shards": None})
    return cast("RunSummary", get_task(task_name).run(part))
