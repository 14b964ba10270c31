"""Checks on a model string, its endpoint and its key that need no call: run before anything is written.

A typo in `--model`, a missing `local/` directory, a hosted provider without its API key or an
`--api-base` that is not a URL would otherwise fail every item of a run (after the database and a
run record were created, and after retries). These checks turn each into one line and exit 2.

LiteLLM takes seconds to import, so it is asked only about model strings charter cannot judge
itself (not `local/`, `router/`, or the OpenAI-compatible fast-path prefixes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from charter.backends.params import SECRET_PARAMS, split_params


class PreflightError(ValueError):
    """A model string, endpoint or key that cannot work (bad input: exit 2, nothing written)."""


# Prefixes charter knows without LiteLLM -> the environment variables that can hold their key.
_OPENAI_KEYS = ("OPENAI_API_KEY",)
_KNOWN_KEY_VARS = {"openai/": _OPENAI_KEYS, "text-completion-openai/": _OPENAI_KEYS}


def check_model(
    model: str, *, api_base: str | list[str] | None = None, params: dict[str, Any] | None = None
) -> None:
    """Raise `PreflightError` when `model` with this endpoint and these params cannot be called."""
    from charter.plugins import backend_factories

    if not model or not model.strip():
        raise PreflightError("--model is empty")
    bases = [api_base] if isinstance(api_base, str) else [b for b in (api_base or []) if b]
    for base in bases:
        check_endpoint(str(base))
    _, client = split_params(params or {})
    if client.get("router") is not None or len(bases) > 1:
        return  # the router config was checked on its own; its entries name their own models
    if client.get("api_base"):
        check_endpoint(str(client["api_base"]))
        bases = [str(client["api_base"])]
    factories = backend_factories()
    prefix = next((p for p in sorted(factories, key=len, reverse=True) if p and model.startswith(p)), None)
    if model.startswith("local/"):
        if prefix != "local/":
            raise PreflightError(
                f"--model {model!r}: local/ models run in process with the charter-transformers plugin, "
                "which is not installed (pip install charter-transformers)"
            )
        _check_local(model.removeprefix("local/"))
        return
    if prefix is not None and prefix not in ("openai/", "text-completion-openai/", "hosted_vllm/"):
        return  # a plugin's backend: it knows its own model strings
    from charter.backends.openai_fast import transport_setting

    try:  # read when the first call is made, after the database is open: checked here instead
        transport_setting()
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    has_key = any(client.get(k) for k in SECRET_PARAMS)
    if model.startswith("hosted_vllm/"):
        if not bases and not os.environ.get("HOSTED_VLLM_API_BASE"):
            raise PreflightError(
                f"--model {model!r}: hosted_vllm/ models need --api-base URL (the vLLM server)"
            )
        return
    for known, key_vars in _KNOWN_KEY_VARS.items():
        if model.startswith(known):
            if not bases and not _env_base() and not has_key and not any(os.environ.get(v) for v in key_vars):
                raise PreflightError(
                    f"--model {model!r}: no API key: set {' or '.join(key_vars)}, pass --param api_key=KEY, "
                    "or give --api-base URL for a local OpenAI-compatible server"
                )
            return
    _check_with_litellm(model, bases[0] if bases else None, has_key)


def check_endpoint(base: str) -> None:
    """An `--api-base` must be an http(s) URL with a host (`localhost:8000` alone is not)."""
    url = urlparse(base)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise PreflightError(
            f"--api-base {base!r}: expected an http:// or https:// URL, e.g. http://localhost:8000/v1"
        )
    try:
        url.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise PreflightError(f"--api-base {base!r}: the port is not a number from 0 to 65535") from None


def _env_base() -> str | None:
    return os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")


def _check_local(name: str) -> None:
    """`local/<dir>` must exist; something that is not a hub id ("ns/name") must be a path that exists."""
    if not name:
        raise PreflightError("--model 'local/': needs a path or hub id: local/<path-or-hub-id>")
    path = Path(name).expanduser()
    if path.exists():
        return
    # A hub repo's GGUF file, <namespace>/<repo>/<file>.gguf, is looked up in the HF cache by the
    # plugin (charter_transformers.gguf), which says itself when it is not there.
    hub_gguf = (
        name.lower().endswith(".gguf") and name.count("/") == 2 and not name.startswith((".", "/", "~"))
    )
    # What looks like a path (./x, /x, ~/x, a/b/c) cannot be a hub id, so it had to exist here.
    if not hub_gguf and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise PreflightError(f"--model 'local/{name}': no such file or directory: {path.absolute()}")


def _check_with_litellm(model: str, api_base: str | None, has_key: bool) -> None:
    from charter.backends.litellm_backend import import_litellm

    litellm = import_litellm()
    try:
        _, provider, _, _ = litellm.get_llm_provider(model, api_base=api_base)
    except Exception:
        head = model.split("/", 1)[0] if "/" in model else model
        raise PreflightError(
            f"--model {model!r}: LiteLLM knows no provider {head!r}; use provider/model "
            "(e.g. openai/gpt-4o-mini, anthropic/claude-3-5-haiku-latest, hosted_vllm/NAME with --api-base; "
            "list: https://docs.litellm.ai/docs/providers), or local/<path> for an in-process model"
        ) from None
    if api_base or has_key:
        return
    try:
        env = litellm.validate_environment(model)
    except Exception:
        return  # LiteLLM could not tell; the call will
    missing = [str(k) for k in env.get("missing_keys") or []]
    # Only plain API keys: providers with other credential chains (AWS profiles, Google ADC, a
    # default local base URL) report variables that are not required in practice.
    if (
        missing
        and not env.get("keys_in_environment")
        and all(k.endswith(("_API_KEY", "_TOKEN")) for k in missing)
    ):
        raise PreflightError(
            f"--model {model!r}: no API key for {provider}: set {' or '.join(missing)} "
            "or pass --param api_key=KEY"
        )
