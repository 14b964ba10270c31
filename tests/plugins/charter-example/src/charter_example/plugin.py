"""The entry point `example`: registers one label method, one export schema and one trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from charter.hookspecs import hookimpl


@hookimpl
def register_label_methods(register: Callable[[str, Any], None]) -> None:
    from charter_example.letter import LabelLetter

    register(LabelLetter.method, LabelLetter)


@hookimpl
def register_exporters(register: Callable[[Any], None]) -> None:
    from charter_example.openai_preferences import EXPORTER

    register(EXPORTER)


@hookimpl
def register_trainers(register: Callable[[str, Any], None]) -> None:
    from charter_example.length_bias import TRAINER

    register(TRAINER.kind, TRAINER)
