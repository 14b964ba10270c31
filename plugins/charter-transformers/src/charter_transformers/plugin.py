"""charter's entry point for this distribution (group `charter`, name `transformers`).

Kept import-light: torch, transformers and litellm load only when a `local/` model is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from charter.hookspecs import hookimpl


def _make_backend(
    model: str, *, api_base: str | None = None, client_options: dict[str, Any] | None = None
) -> Any:
    from charter_transformers.backend import make_backend

    return make_backend(model, api_base=api_base, client_options=client_options)


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """`local/<path-or-hub-id>` model strings run in process (`LocalBackend`)."""
    register("local/", _make_backend)


@hookimpl
def litellm_setup(litellm: Any) -> None:
    """Register the `local` custom provider so litellm routes `local/...` to this process."""
    from charter_transformers.provider import register_provider

    register_provider(litellm)
