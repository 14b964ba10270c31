"""The `charter` entry point of charter-trl: the trainers by kind, and the `train` and `demo` commands.

The trainers are wrapped so that loading the plugin (which `charter --help` does) does not import
torch or TRL; they load on the first call. The commands import only typer until they run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from charter.hookspecs import hookimpl

TRAINERS = {
    "sft": "train_sft",
    "reward": "train_reward",
    "ppo": "train_ppo",
    "dpo": "train_dpo",
    "grpo": "train_grpo",
    "rloo": "train_rloo",
}


def _lazy(kind: str, name: str) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(f"charter_trl.{kind}"), name)(*args, **kwargs)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"charter_trl.{kind}.{name}, imported on first call."
    return run


@hookimpl
def register_trainers(register: Callable[[str, Any], None]) -> None:
    """Register `sft`, `reward`, `ppo`, `dpo`, `grpo` and `rloo`."""
    for kind, name in TRAINERS.items():
        register(kind, _lazy(kind, name))


@hookimpl
def register_commands(app: Any) -> None:
    """Add `charter train sft|reward|ppo|dpo` and `charter demo`."""
    from charter_trl.cli import register

    register(app)
