"""The OpenAI-compatible fast path: `openai/`, `hosted_vllm/` and `text-completion-openai/` models
with an api_base are posted straight to the endpoint (a lean HTTP client + json) instead of
`litellm.acompletion`.

Why: for these providers LiteLLM sends the request body unchanged, but spends several milliseconds of
CPU per call on things charter does itself or does not need (parameter mapping, response rebuilding,
cost calculation, logging hooks), and the openai client still ~2 ms on request options and response
wrappers. On a busy event loop that, not the server, caps throughput. Neither litellm nor openai is
imported on this path (importing litellm alone takes seconds); the cost comes from LiteLLM's price
table read as data (backends/pricing.py).

Transports (CHARTER_HTTP_TRANSPORT): by default a plain `http://` endpoint gets charter's own
keep-alive HTTP/1.1 client (backends/http.py: a local server, where the client's CPU is what caps a
run) and an `https://` one gets aiohttp. `aiohttp` sends everything through aiohttp; `openai`
through the openai client (`httpx`: with its default httpx transport).

What stays the same: the request body (the same JSON LiteLLM sends for these providers), the parsed
`Completion` (texts, logprobs, finish reasons, token counts, cost from LiteLLM's price table) and
the error classification (`BackendError.retryable`, `status`, `retry_after`). A request this path
does not know how to send exactly as LiteLLM would (a parameter outside the plain OpenAI set, chat
mode on a completion-only provider) goes to the LiteLLM backend instead.

Switch it off with `--param charter_fast_path=false` or `CHARTER_FAST_PATH=0`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from charter.backends import pricing
from charter.backends.base import (
    BackendError,
    Completion,
    CompletionRequest,
    TokenLogprob,
    choice_text,
    with_member,
)
from charter.backends.http import HTTPClient
from charter.backends.litellm_backend import (
    DEFAULT_TIMEOUT,
    RETRYABLE_STATUS,
    LiteLLMBackend,
    backend_error,
    explain_failure,
)

# Model-string prefix -> (provider name, the env vars LiteLLM reads for its key and base URL).
FAST_PROVIDERS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "openai/": ("openai", ("OPENAI_API_KEY",), ("OPENAI_BASE_URL", "OPENAI_API_BASE")),
    "text-completion-openai/": ("openai", ("OPENAI_API_KEY",), ("OPENAI_BASE_URL", "OPENAI_API_BASE")),
    "hosted_vllm/": ("hosted_vllm", ("HOSTED_VLLM_API_KEY",), ("HOSTED_VLLM_API_BASE",)),
}
# Request parameters LiteLLM passes through unchanged for these providers (checked against the
# bodies it sends in tests/test_scale.py); anything else goes through LiteLLM.
_COMMON = {
    "temperature",
    "top_p",
    "n",
    "stop",
    "max_tokens",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "logprobs",
    "user",
}
CHAT_PARAMS = frozenset(_COMMON | {"top_logprobs"})
COMPLETION_PARAMS = frozenset(_COMMON)

ENV_SWITCH = "CHARTER_FAST_PATH"


def fast_path_enabled(client_options: dict[str, Any] | None = None) -> bool:
    """Off when `--param charter_fast_path=false` or the env var CHARTER_FAST_PATH is 0/false/no/off."""
    value = (client_options or {}).get("charter_fast_path")
    if value is None:
        value = os.environ.get(ENV_SWITCH, "1")
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def fast_prefix(model: str) -> str | None:
    """The fast-path prefix `model` starts with, if any."""
    return next((p for p in FAST_PROVIDERS if model.startswith(p)), None)


def resolve_api_base(model: str, api_base: str | None, client_options: dict[str, Any]) -> str | None:
    """The base URL LiteLLM would use for `model` (explicit option first, then the provider's env)."""
    prefix = fast_prefix(model)
    explicit = api_base or client_options.get("api_base") or client_options.get("base_url")
    if explicit or prefix is None:
        return str(explicit) if explicit else None
    for var in FAST_PROVIDERS[prefix][2]:
        if os.environ.get(var):
            return os.environ[var]
    return None


def make_backend(
    model: str, *, api_base: str | None = None, client_options: dict[str, Any] | None = None, **kw: Any
) -> Any:
    """Backend factory for the fast-path prefixes: the fast backend when it applies, else LiteLLM."""
    options = dict(client_options or {})
    base = resolve_api_base(model, api_base, options)
    if base and fast_path_enabled(options):
        return OpenAIFastBackend(model, api_base=base, client_options=options, **kw)
    return LiteLLMBackend(model, api_base=api_base, client_options=options, **kw)


def classify_openai_error(
    exc: Exception, *, endpoint: str | None = None, timeout: float | None = None
) -> BackendError:
    """Map an aiohttp/`openai`/httpx/JSON exception to a `BackendError`, as `classify_error` maps LiteLLM's."""
    status_errors: tuple[type[BaseException], ...] = (APIStatusError,)
    openai = sys.modules.get("openai")  # its errors exist only once it is imported (the SDK transport)
    if openai is not None:
        status_errors += (openai.APIStatusError,)
    if isinstance(exc, BackendError):
        return exc
    known = explain_failure(exc, endpoint=endpoint, timeout=timeout)
    if known is not None:
        return backend_error(exc, known[1], message=known[0])
    retryable = True
    if isinstance(exc, status_errors):
        # LiteLLM: auth/permission/not-found/bad-request are fatal, 429/5xx and friends retry.
        status = getattr(exc, "status_code", None)
        retryable = status in RETRYABLE_STATUS or (isinstance(status, int) and status >= 500)
    # Everything else retries: dropped connections, and a truncated or malformed body
    # (JSON, Unicode, missing keys; LiteLLM reports these as InternalServerError: retried).
    return backend_error(exc, retryable, endpoint=endpoint)


TRANSPORTS = ("auto", "aiohttp", "openai", "httpx")


def transport_setting() -> str:
    """CHARTER_HTTP_TRANSPORT, checked: one of `TRANSPORTS` (ValueError naming them otherwise)."""
    chosen = os.environ.get("CHARTER_HTTP_TRANSPORT", "auto").strip().lower() or "auto"
    if chosen not in TRANSPORTS:
        raise ValueError(f"CHARTER_HTTP_TRANSPORT={chosen!r}: one of {', '.join(TRANSPORTS)}")
    return chosen


def transport_for(api_base: str) -> str:
    """The transport CHARTER_HTTP_TRANSPORT picks for `api_base`: "http" (charter's own client),
    "aiohttp" or "openai" (the SDK; its httpx transport with `httpx`)."""
    chosen = transport_setting()
    if chosen == "auto":
        return "http" if api_base.lower().startswith("http://") else "aiohttp"
    return "openai" if chosen == "httpx" else chosen


class OpenAIFastBackend:
    """OpenAI-compatible endpoints behind the `Backend` interface: charter's HTTP client (http://) or
    aiohttp (https://) + json by default, `openai.AsyncOpenAI` with CHARTER_HTTP_TRANSPORT=openai."""

    def __init__(
        self,
        model: str,
        *,
        api_base: str,
        client_options: dict[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        prefix = fast_prefix(model)
        if prefix is None:
            raise ValueError(f"{model}: the fast path serves {', '.join(FAST_PROVIDERS)} models")
        self.name = model
        self.model = model
        self.prefix = prefix
        self.remote_model = model[len(prefix) :]
        self.provider = prefix.rstrip("/")  # LiteLLM's provider name, for its price table
        self.api_base = api_base
        options = dict(client_options or {})
        self.fallback = LiteLLMBackend(model, api_base=api_base, client_options=options, timeout=timeout)
        key_vars = FAST_PROVIDERS[prefix][1]
        self._api_key = str(
            options.get("api_key")
            or next((os.environ[v] for v in key_vars if os.environ.get(v)), None)
            or ("fake-api-key" if prefix == "hosted_vllm/" else "no-key")
        )
        headers: dict[str, str] = {}
        for name in ("headers", "extra_headers"):
            if isinstance(options.get(name), dict):
                headers.update({str(k): str(v) for k, v in options[name].items()})
        # `--param Authorization=...` (any case) is a header, as it is for LiteLLM's clients.
        for key, value in options.items():
            if key.lower() == "authorization":
                headers["Authorization"] = str(value)
        self._headers = headers
        self._organization = options.get("organization")
        self._timeout = float(options.get("timeout", timeout))
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, Any]] = {}
        # The headers the openai client sends that a server may look at (the rest are its telemetry).
        lean = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        if self._organization:
            lean["OpenAI-Organization"] = str(self._organization)
        self._lean_headers = {**lean, **headers}
        self._transport = transport_for(api_base)
        self._base = api_base.rstrip("/")

    # -- clients ---------------------------------------------------------------------------
    def _client(self) -> Any:
        """One client per event loop (neither aiohttp's nor httpx's can cross loops)."""
        loop = asyncio.get_running_loop()
        entry = self._clients.get(id(loop))
        if entry is not None and entry[0] is loop:
            return entry[1]
        if self._transport == "http":
            client: Any = HTTPClient(self._base, self._lean_headers, self._timeout)
        elif self._transport == "aiohttp":
            client = self._lean_session()
        else:
            client = self._openai_client()
        self._clients[id(loop)] = (loop, client)
        return client

    def _lean_session(self) -> Any:
        """The aiohttp transport (https:// by default): an aiohttp session."""
        import aiohttp

        return aiohttp.ClientSession(
            # No pool limit of its own: the runner's --concurrency bounds the requests in flight.
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers=self._lean_headers,
        )

    def _openai_client(self) -> Any:
        """The SDK transport: `openai.AsyncOpenAI`, its own retries off."""
        import openai

        return openai.AsyncOpenAI(
            base_url=self.api_base,
            api_key=self._api_key,
            organization=self._organization,
            default_headers=self._headers or None,
            timeout=self._timeout,
            max_retries=0,  # the runner retries
            http_client=_http_client(self._timeout),
        )

    async def aclose(self) -> None:
        """Close the clients of the current loop (and LiteLLM's, if the fallback was used)."""
        loop = asyncio.get_running_loop()
        entry = self._clients.pop(id(loop), None)
        if entry is not None:
            await entry[1].close()
        await self.fallback.aclose()

    # -- calls -----------------------------------------------------------------------------
    def handles(self, request: CompletionRequest) -> bool:
        """True when this request can be sent exactly as LiteLLM would send it."""
        if request.mode == "chat":
            if self.prefix == "text-completion-openai/":
                return False
            allowed = CHAT_PARAMS
        else:
            allowed = COMPLETION_PARAMS
        return all(k in allowed for k in request.params)

    async def complete(self, request: CompletionRequest) -> Completion:
        """One request through the openai client; errors become `BackendError` (no client retries)."""
        if not self.handles(request):
            return await self.fallback.complete(request)
        chat = request.mode == "chat"
        body: dict[str, Any] = {"model": self.remote_model}
        if chat:
            path = "/chat/completions"
        else:
            path = "/completions"
            body["prompt"] = request.prompt
        body.update(request.params)
        if request.n != 1:
            body["n"] = request.n
        # The client is made (and its modules imported) before the clock starts: latency_ms is the
        # request's own time, even for a run's first calls.
        try:
            client = self._client()
        except ValueError as exc:  # an endpoint URL or header the client refuses: no retry can help
            raise BackendError(str(exc), retryable=False) from exc
        if self._transport == "openai":
            if chat:
                body["messages"] = request.messages
        else:
            # The body as JSON bytes, the messages' text (encoded once per request) spliced in.
            text = json.dumps(body)
            payload = (with_member(text, "messages", request.messages_json()) if chat else text).encode()
        started = time.perf_counter()
        try:
            if self._transport == "http":
                data = await _post_http(client, path, payload)
            elif self._transport == "aiohttp":
                data = await _post_json(client, self._base + path, payload)
            else:
                # cast_to=object: the JSON as plain dicts, skipping the SDK's response models.
                data = await client.post(path, cast_to=object, body=body)
            completion = self._parse(request, data)
        except BackendError:
            raise
        except Exception as exc:
            raise classify_openai_error(exc, endpoint=self.api_base, timeout=self._timeout) from exc
        completion.latency_ms = (time.perf_counter() - started) * 1000
        return completion

    def _parse(self, request: CompletionRequest, data: dict[str, Any]) -> Completion:
        if not isinstance(data, dict) or "choices" not in data:
            error = data.get("error") if isinstance(data, dict) else None
            raise BackendError(
                f"unexpected response from {self.api_base}: {str(error or data)[:300]}", retryable=True
            )
        choices = sorted(data["choices"] or [], key=lambda c: c.get("index") or 0)
        if not choices:
            raise BackendError("the backend returned no choices", retryable=True)
        texts: list[str] = []
        logprobs: list[list[TokenLogprob]] = []
        have_logprobs = False
        chat = request.mode == "chat"
        for i, choice in enumerate(choices):
            if chat:
                message = choice.get("message") or {}
                text = choice_text(message.get("content"), i, has_tool_calls=bool(message.get("tool_calls")))
                lp = _chat_logprobs(choice.get("logprobs"))
            else:
                text = choice_text(choice.get("text"), i)
                lp = _text_logprobs(choice.get("logprobs"))
            texts.append(text)
            logprobs.append(lp or [])
            have_logprobs = have_logprobs or bool(lp)
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        return Completion(
            texts=texts,
            logprobs=logprobs if have_logprobs else None,
            finish_reasons=[c.get("finish_reason") for c in choices],
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            # From LiteLLM's price table read as data: importing litellm here would stall the
            # event loop for seconds mid-run (and every call's latency_ms with it).
            cost_usd=pricing.cost_usd(self.provider, self.remote_model, prompt_tokens, completion_tokens),
        )


class APIStatusError(Exception):
    """An HTTP error answer of the lean transport, shaped as the openai client's exception is:
    `status_code`, the parsed `body` and the `headers` (Retry-After), so it is classified alike."""

    def __init__(self, status_code: int, body: Any, headers: Any) -> None:
        super().__init__(f"Error code: {status_code} - {body}")
        self.status_code = status_code
        self.body = body
        self.headers = headers


# The openai client's exception class per status: `calls.error` starts with the class name
# ("RateLimitError: Error code: 429 - ..."), and users grep for it, whichever transport answered.
_SDK_NAMES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}
_STATUS_ERRORS: dict[str, type[APIStatusError]] = {}


def status_error(status_code: int, body: Any, headers: Any) -> APIStatusError:
    """The lean transport's error for an HTTP error answer, named as the openai client names it."""
    name = _SDK_NAMES.get(status_code, "InternalServerError" if status_code >= 500 else "APIStatusError")
    cls = _STATUS_ERRORS.get(name)
    if cls is None:
        cls = APIStatusError if name == "APIStatusError" else type(name, (APIStatusError,), {})
        _STATUS_ERRORS[name] = cls
    return cls(status_code, body, headers)


def _answer(status: int, raw: bytes, headers: Any) -> Any:
    """The decoded JSON of a 2xx answer; an error answer raised as the openai client would."""
    if status >= 300:  # the openai client follows no redirect: a 3xx is an error as well
        try:
            said: Any = json.loads(raw)
        except ValueError:
            said = raw.decode("utf-8", "replace")
        # The openai client unwraps OpenAI's {"error": {...}} to its inner object.
        if isinstance(said, dict) and isinstance(said.get("error"), dict):
            said = said["error"]
        raise status_error(status, said, headers)
    return json.loads(raw)


async def _post_http(client: HTTPClient, path: str, payload: bytes) -> Any:
    """POST the JSON `payload` with charter's HTTP client and decode the answer."""
    response = await client.post(path, payload)
    return _answer(response.status, response.body, response.headers)


_JSON_TYPE = {"Content-Type": "application/json"}


async def _post_json(session: Any, url: str, payload: bytes) -> Any:
    """POST the JSON `payload` and decode the answer: aiohttp and json only, about a third of the
    openai client's CPU per call (no request-options objects, no response wrappers)."""
    async with session.post(url, data=payload, headers=_JSON_TYPE) as response:
        raw = await response.read()
        status = response.status
        headers = response.headers
    return _answer(status, raw, headers)


def _http_client(timeout: float) -> Any:
    """For the SDK transport: its aiohttp transport (CHARTER_HTTP_TRANSPORT=openai) when it is
    there, else (or with CHARTER_HTTP_TRANSPORT=httpx) its default httpx one.

    httpx's connection pool does O(connections) work per request (hundreds of socket checks at
    concurrency 256); aiohttp's does not, which halves the client's CPU per call.
    """
    import openai

    make = getattr(openai, "DefaultAioHttpClient", None)
    if make is not None and os.environ.get("CHARTER_HTTP_TRANSPORT") != "httpx":
        try:
            return make(timeout=timeout)
        except RuntimeError:  # the SDK was installed without its aiohttp extra
            pass
    return openai.DefaultAsyncHttpxClient(timeout=timeout)


def _chat_logprobs(lp: Any) -> list[TokenLogprob] | None:
    content = lp.get("content") if isinstance(lp, dict) else None
    if not content:
        return None
    return [
        TokenLogprob(
            token=str(item.get("token")),
            logprob=float(item.get("logprob")),
            top={str(t.get("token")): float(t.get("logprob")) for t in item.get("top_logprobs") or []},
        )
        for item in content
    ]


def _text_logprobs(lp: Any) -> list[TokenLogprob] | None:
    if not isinstance(lp, dict):
        return None
    tokens = lp.get("tokens") or []
    token_logprobs = lp.get("token_logprobs") or []
    tops = lp.get("top_logprobs") or []
    out = []
    for i, token in enumerate(tokens):
        top = tops[i] if i < len(tops) and tops[i] else {}
        logprob = token_logprobs[i] if i < len(token_logprobs) else None
        out.append(
            TokenLogprob(
                token=token,
                logprob=float(logprob) if logprob is not None else float("nan"),
                top={str(k): float(v) for k, v in dict(top).items()},
            )
        )
    return out or None


__all__ = [
    "FAST_PROVIDERS",
    "OpenAIFastBackend",
    "classify_openai_error",
    "fast_path_enabled",
    "make_backend",
]
