"""The core's own plugin: registered through the `charter` entry point like any third party's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from charter.hookspecs import hookimpl


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Every model string LiteLLM knows goes to the LiteLLM backend."""
    from charter.backends.litellm_backend import LiteLLMBackend
    from charter.backends.openai_fast import FAST_PROVIDERS, make_backend

    register("", LiteLLMBackend)
    # OpenAI-compatible endpoints with an api_base skip litellm's per-call overhead (same results).
    for prefix in FAST_PROVIDERS:
        register(prefix, make_backend)
    # Several endpoints behind LiteLLM's Router (also chosen by get_backend for --router FILE or a
    # repeated --api-base, whatever the model string).
    from charter.backends.router import ROUTER_PREFIX, make_router_backend

    register(ROUTER_PREFIX, make_router_backend)


@hookimpl
def register_label_methods(register: Callable[[str, Any], None]) -> None:
    """The paper's two: multiple choice from log-probabilities, and chain of thought."""
    from charter.steps.label import LabelCoT, LabelMC

    register(LabelMC.method, LabelMC)
    register(LabelCoT.method, LabelCoT)


@hookimpl
def register_exporters(register: Callable[[Any], None]) -> None:
    """SFT and preference data in TRL's and hf-cai's shapes."""
    from charter.exporters import CORE_EXPORTERS

    for exporter in CORE_EXPORTERS:
        register(exporter)
