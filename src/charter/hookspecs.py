"""The plugin contract. Plugins are modules registered under the `charter` entry-point group.

The core registers its own backend, constitutions, prompts and commands through these same hooks
(see `charter.default_plugins`), so a third-party plugin has exactly the powers the core has.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import typer

    from charter.backends.base import Backend

hookspec = pluggy.HookspecMarker("charter")
hookimpl = pluggy.HookimplMarker("charter")

BackendFactory = Callable[..., "Backend"]
"""`factory(model, *, api_base=None, params=None, **options) -> Backend`."""


@hookspec
def register_backends(register: Callable[[str, BackendFactory], None]) -> None:
    """Register backend factories by model-string prefix, e.g. `register("local/", make_local)`.

    The longest matching prefix wins; the prefix "" is the fallback (the core's LiteLLM backend).
    """


@hookspec
def litellm_setup(litellm: Any) -> None:
    """Called once, right after charter imports litellm lazily: add custom providers here."""


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add sub-commands to the `charter` CLI (e.g. `charter train`)."""


@hookspec
def register_constitution_dirs() -> list[Path]:
    """Directories holding extra `<name>.yaml` constitutions."""
    return []


@hookspec
def register_prompt_dirs() -> list[Path]:
    """Directories holding extra `<name>.jinja` prompt templates (searched after user overrides)."""
    return []


@hookspec
def register_label_methods(register: Callable[[str, Any], None]) -> None:
    """Register labeling methods by the name `charter label --method` takes, e.g.
    `register("logprobs", LabelMC)`: a `charter.steps.label.Labeler` subclass, called with the
    label options (constitution, ensemble, swap, clamp, votes, ...)."""


@hookspec
def register_exporters(register: Callable[[Any], None]) -> None:
    """Register export shapes: `register(charter.exporters.Exporter(dataset, schema, sql, transform))`;
    `charter export --dataset D --schema S` writes them."""


@hookspec
def register_trainers(register: Callable[[str, Any], None]) -> None:
    """Register trainers by kind (`sft`, `reward`, `ppo`, `dpo`, ...): `register(kind, spec)` with a
    `charter_trl.spec.TrainerSpec`; `charter train <kind>` is built from them."""


@hookspec
def register_executors(register: Callable[[str, Any], None]) -> None:
    """Register `--executor NAME` factories: `register("ray", factory)`, `factory() -> ShardExecutor`
    (see `charter.shard`), which runs a command's shards and hands back each one's database."""
