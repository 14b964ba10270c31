"""Several endpoints behind LiteLLM's Router: load balancing, per-endpoint concurrency and failover.

Two ways in:

- `--api-base URL` given more than once: one deployment per URL, all serving `--model`;
  `--param endpoint_concurrency=N` is each one's share: the Router weighs its picks by the
  limits, and the backend keeps at most their sum in flight (extra requests wait; none is rejected).
- `--router FILE` (YAML or JSON): a LiteLLM Router config, `model_list` (each entry `model_name` +
  `litellm_params`, as in LiteLLM's proxy config) and optional `router_settings` (any `Router(...)`
  argument, e.g. `routing_strategy`); `--model` names the `model_name` group to use.

Who retries what (so the two never fight): the Router fails over *across endpoints* within one
runner attempt — a failed request goes at once to another endpoint (`num_retries` = the number of
endpoints, no sleeping in the Router) and an endpoint that keeps failing is cooled down — and
only when every endpoint it tried failed does the error reach the runner, which backs off (with
jitter, honouring Retry-After) and tries again, up to `--max-retries`. `calls.attempts` counts
runner attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from charter.backends.base import BackendError, Completion, CompletionRequest
from charter.backends.litellm_backend import DEFAULT_TIMEOUT, LiteLLMBackend, classify_error, import_litellm
from charter.backends.params import CHARTER_PARAMS, SECRET_PARAMS, redact

ROUTER_PREFIX = "router/"
# Router defaults for charter: fail over at once, leave backoff to the runner.
DEFAULT_SETTINGS: dict[str, Any] = {
    "routing_strategy": "simple-shuffle",
    "retry_after": 0,
    # An endpoint that fails twice in a minute sits out `cooldown_time` seconds, so the Router's
    # retries go to the others (its picks are random: a retry can land on the same endpoint).
    "allowed_fails": 1,
    "cooldown_time": 10,
}


class RouterConfigError(ValueError):
    """A router config file that cannot be used (exit status 2)."""


def load_router_config(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Read a router config (YAML or JSON file, or a dict) and check its shape."""
    if isinstance(source, dict):
        data: Any = source
        where = "router config"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise RouterConfigError(f"{where}: no such router config file")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:
            raise RouterConfigError(
                f"{where}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"
            ) from None
    if not isinstance(data, dict) or not isinstance(data.get("model_list"), list) or not data["model_list"]:
        raise RouterConfigError(f"{where}: needs a non-empty 'model_list'")
    unknown = sorted(str(k) for k in data if k not in ("model_list", "router_settings"))
    if unknown:
        raise RouterConfigError(
            f"{where}: unknown key {unknown[0]!r}; a router config has 'model_list' and 'router_settings'"
        )
    for i, entry in enumerate(data["model_list"]):
        if (
            not isinstance(entry, dict)
            or not entry.get("model_name")
            or not isinstance(entry.get("litellm_params"), dict)
            or not entry["litellm_params"].get("model")
        ):
            raise RouterConfigError(
                f"{where}: model_list[{i}]: needs 'model_name' and 'litellm_params' with a 'model'"
            )
    settings = data.get("router_settings") or {}
    if not isinstance(settings, dict):
        raise RouterConfigError(f"{where}: 'router_settings' must be a mapping")
    known = _router_arguments()
    for key in settings:
        if known and key not in known:
            raise RouterConfigError(f"{where}: router_settings.{key}: not an argument of litellm.Router")
    return {"model_list": data["model_list"], "router_settings": settings}


def check_router_model(config: dict[str, Any], model: str, where: str) -> None:
    """Raise `RouterConfigError` unless `model` (without `router/`) is a model_name in `config`."""
    group = model[len(ROUTER_PREFIX) :] if model.startswith(ROUTER_PREFIX) else model
    names = sorted({str(e["model_name"]) for e in config["model_list"]})
    if group not in names:
        raise RouterConfigError(f"{where}: --model {group!r} is not a model_name in it ({', '.join(names)})")


def _router_arguments() -> set[str]:
    """The keyword arguments `litellm.Router` accepts (what router_settings may set)."""
    import inspect

    import_litellm()
    from litellm import Router

    return {n for n in inspect.signature(Router.__init__).parameters if n != "self"}


class RouterBackend:
    """`litellm.Router` behind the `Backend` interface (chat and completion mode)."""

    def __init__(
        self,
        model: str,
        *,
        api_base: str | list[str] | None = None,
        client_options: dict[str, Any] | None = None,
        router: str | Path | dict[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        options = dict(client_options or {})
        router = router if router is not None else options.get("router")
        group = model[len(ROUTER_PREFIX) :] if model.startswith(ROUTER_PREFIX) else model
        self.name = model
        self.model = model
        self.group = group
        per_endpoint = options.get("endpoint_concurrency")
        if router is not None:
            config = load_router_config(router)
            model_list = [dict(e, litellm_params=dict(e["litellm_params"])) for e in config["model_list"]]
            settings = dict(config["router_settings"])
            if not any(e["model_name"] == group for e in model_list):
                names = sorted({str(e["model_name"]) for e in model_list})
                raise RouterConfigError(
                    f"--model {group!r} is not a model_name in the router config ({', '.join(names)})"
                )
        else:
            bases = [api_base] if isinstance(api_base, str) else list(api_base or [])
            if not bases:
                raise RouterConfigError(
                    "the router backend needs --router FILE or --api-base given more than once"
                )
            client = {k: v for k, v in options.items() if k not in CHARTER_PARAMS}
            if "api_key" not in client:
                client["api_key"] = LiteLLMBackend(group, api_base=bases[0]).client_options.get("api_key")
                if client["api_key"] is None:
                    client.pop("api_key")
            model_list = [
                {"model_name": group, "litellm_params": {**client, "model": group, "api_base": base}}
                for base in bases
            ]
            settings = {}
        limits: list[int | None] = []
        for entry in model_list:
            params = entry["litellm_params"]
            params.setdefault("timeout", options.get("timeout", timeout))
            # LiteLLM answers a request that finds its endpoint full with a 429, which also counts
            # toward cooling the endpoint down: under load the Router would fight itself and the
            # runner. So charter takes the limits over: the fleet's total caps requests in flight
            # (extra ones wait), and each endpoint's limit is its weight in the Router's shuffle.
            limit = params.pop("max_parallel_requests", None)
            if limit is None and per_endpoint is not None:
                limit = per_endpoint
            if limit is not None:
                params.setdefault("weight", int(limit))
            if entry["model_name"] == group:
                limits.append(int(limit) if limit is not None else None)
        self.endpoint_limits = limits
        self.max_in_flight: int | None = (
            sum(x for x in limits if x is not None) if limits and all(x is not None for x in limits) else None
        )
        self._gates: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}
        self.deployments = [e for e in model_list if e["model_name"] == group]
        endpoints = len(self.deployments)
        self.settings = {**DEFAULT_SETTINGS, "num_retries": endpoints if endpoints > 1 else 0, **settings}
        self._model_list = model_list
        self._router: Any = None
        self._single = LiteLLMBackend(group)  # reused for parsing and cost

    def describe(self) -> dict[str, Any]:
        """The endpoints and settings, without secrets (for logs and run configs)."""
        return {
            "group": self.group,
            "endpoints": [
                redact({k: v for k, v in e["litellm_params"].items() if k not in SECRET_PARAMS})
                for e in self.deployments
            ],
            "settings": self.settings,
        }

    def _gate(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """The fleet-wide cap on requests in flight (sum of the endpoint limits), per event loop."""
        if self.max_in_flight is None:
            return contextlib.nullcontext()
        loop = asyncio.get_running_loop()
        entry = self._gates.get(id(loop))
        if entry is None or entry[0] is not loop:
            entry = (loop, asyncio.Semaphore(self.max_in_flight))
            self._gates[id(loop)] = entry
        return entry[1]

    def _get_router(self) -> Any:
        if self._router is None:
            import_litellm()
            from litellm import Router

            self._router = Router(model_list=self._model_list, **self.settings)
        return self._router

    async def complete(self, request: CompletionRequest) -> Completion:
        """One request through the Router (which may try several endpoints); errors -> BackendError."""
        router = self._get_router()
        params = dict(request.params)
        if request.n != 1:
            params["n"] = request.n
        started = time.perf_counter()
        try:
            async with self._gate():
                if request.mode == "chat":
                    response = await router.acompletion(model=self.group, messages=request.messages, **params)
                else:
                    response = await router.atext_completion(
                        model=self.group, prompt=request.prompt, **params
                    )
        except Exception as exc:
            raise _classify(exc, self.settings) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        return self._single._parse(request, response, latency_ms)

    async def aclose(self) -> None:
        """Close litellm's HTTP clients for this loop."""
        with contextlib.suppress(Exception):
            await self._single.aclose()


def _classify(exc: Exception, settings: dict[str, Any]) -> BackendError:
    litellm = import_litellm()
    rate_limit = getattr(litellm, "RouterRateLimitError", None)
    if rate_limit is not None and isinstance(exc, rate_limit):
        # Every endpoint is cooling down: wait about that long, then the runner tries again.
        return BackendError(
            f"RouterRateLimitError: {str(exc).strip().splitlines()[0][:300]}",
            retryable=True,
            retry_after=float(settings.get("cooldown_time") or 1),
            status=429,
        )
    return classify_error(exc)


def make_router_backend(
    model: str,
    *,
    api_base: str | list[str] | None = None,
    client_options: dict[str, Any] | None = None,
    **kw: Any,
) -> RouterBackend:
    """Backend factory registered for the `router/` prefix (and used for repeated --api-base)."""
    return RouterBackend(model, api_base=api_base, client_options=client_options, **kw)
