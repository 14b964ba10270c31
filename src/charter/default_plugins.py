"""The core's own plugin: registered through the `charter` entry point like any third party's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from charter.hookspecs import hookimpl


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Every model string LiteLLM knows goes to the LiteLLM backend."""
    from charter.backends.litellm_backend import LiteLLMBackend

    register("", LiteLLMBackend)
