"""Resolving a model string to a backend through the plugins' registered prefixes."""

from __future__ import annotations

from typing import Any

from charter.backends.base import Backend
from charter.backends.params import split_params


def get_backend(
    model: str, *, api_base: str | list[str] | None = None, params: dict[str, Any] | None = None
) -> Backend:
    """The backend for `model`: the longest registered prefix wins, LiteLLM is the fallback.

    `params` are the user's `--param`s; only client options (api_key, headers, timeout, ...) are
    used here; request parameters travel with each `CompletionRequest`. Several api bases, or a
    `router` option (`--router FILE`), select the `router/` backend (LiteLLM's Router) for `model`.
    """
    from charter.plugins import backend_factories

    _, client = split_params(params or {})
    factories = backend_factories()
    if isinstance(api_base, (list, tuple)):
        bases = [str(b) for b in api_base if b]
        if len(bases) > 1 or client.get("router") is not None:
            return factories["router/"](model, api_base=bases, client_options=client)
        api_base = bases[0] if bases else None
    elif client.get("router") is not None:
        return factories["router/"](model, api_base=api_base, client_options=client)
    for prefix in sorted(factories, key=len, reverse=True):
        if prefix and model.startswith(prefix):
            return factories[prefix](model, api_base=api_base, client_options=client)
    if "" in factories:
        return factories[""](model, api_base=api_base, client_options=client)
    from charter.backends.litellm_backend import LiteLLMBackend

    return LiteLLMBackend(model, api_base=api_base, client_options=client)
