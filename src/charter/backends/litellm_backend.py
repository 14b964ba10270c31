"""The LiteLLM backend: any LiteLLM model string, chat or completion mode, with log-probabilities.

litellm is imported lazily (it takes seconds and, without LITELLM_LOCAL_MODEL_COST_MAP, reaches for
the network). We never use litellm's own retries or cache: the runner owns both, so every backend
retries and caches the same way (and litellm's cache crashes on hits, BerriAI/litellm#42195).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from typing import Any

from charter.backends.base import BackendError, Completion, CompletionRequest, TokenLogprob, choice_text

# The parameter policy lives in params.py; these names stay importable from here.
from charter.backends.params import CHARTER_PARAMS, CLIENT_PARAMS, SECRET_PARAMS, split_params

__all__ = ["CHARTER_PARAMS", "CLIENT_PARAMS", "SECRET_PARAMS", "LiteLLMBackend", "split_params"]

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}
# Seconds to wait for one answer (LiteLLM's and openai's default is 600: a hung server then stalls
# a run for ten minutes per item). `--param timeout=SECONDS` overrides it.
DEFAULT_TIMEOUT = 120.0


@functools.lru_cache(maxsize=1)
def import_litellm() -> Any:
    """Import litellm once, quietly, with its network-touching and per-call extras turned off."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    litellm.drop_params = False
    # Per-call logging callbacks cost CPU on every request and we store everything ourselves.
    litellm.callbacks = []
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.turn_off_message_logging = True
    from charter.plugins import call_litellm_setup

    call_litellm_setup(litellm)
    return litellm


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = (
        getattr(exc, "litellm_response_headers", None)
        or getattr(response, "headers", None)
        or getattr(exc, "headers", None)
        or {}
    )
    try:
        value = headers.get("retry-after") or headers.get("Retry-After")
    except AttributeError:
        return None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def classify_error(
    exc: Exception, *, endpoint: str | None = None, timeout: float | None = None
) -> BackendError:
    """Map a litellm/openai/httpx exception to a `BackendError` that says what happened and whether to retry.

    `endpoint` and `timeout` (when known) go into the message of connection failures and timeouts.
    """
    if isinstance(exc, BackendError):
        return exc
    litellm = import_litellm()
    status = getattr(exc, "status_code", None)
    retryable_types: tuple[type[BaseException], ...] = (
        litellm.RateLimitError,
        litellm.APIConnectionError,
        litellm.Timeout,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.BadGatewayError,
        TimeoutError,
        ConnectionError,
    )
    fatal_types: tuple[type[BaseException], ...] = (
        litellm.AuthenticationError,
        litellm.NotFoundError,
        litellm.PermissionDeniedError,
        litellm.ContextWindowExceededError,
        litellm.ContentPolicyViolationError,
        litellm.UnsupportedParamsError,
    )
    known = explain_failure(exc, endpoint=endpoint, timeout=timeout)
    if known is not None:
        return backend_error(exc, known[1], message=known[0])
    if isinstance(exc, fatal_types):
        retryable = False
    elif isinstance(exc, litellm.BadRequestError):
        # Includes "LLM Provider NOT provided" (an unknown provider): asking again cannot help.
        retryable = False
    elif isinstance(exc, retryable_types) or (isinstance(status, int) and status in RETRYABLE_STATUS):
        retryable = True
    else:
        # Unparseable bodies, dropped connections and other transport trouble surface as
        # assorted exception types; trying again is the safe default for those.
        retryable = not isinstance(exc, (ValueError, TypeError, KeyError)) or "json" in str(exc).lower()
    return backend_error(exc, retryable, endpoint=endpoint)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from (the client libraries wrap the socket's error)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# Texts of errors raised before any request left (no key configured); LiteLLM reports them as
# InternalServerError, the openai client as a bare OpenAIError.
_NO_KEY = re.compile(r"missing credentials|missing [\w ]{0,30}api[ _]key", re.IGNORECASE)


def explain_failure(
    exc: BaseException, *, endpoint: str | None = None, timeout: float | None = None
) -> tuple[str, bool] | None:
    """(message, retryable) for failures known by what happened, not by the client's wording.

    Connection refused (retryable: a server may be starting), DNS failure (retryable only when
    the resolver said "try again"), TLS (not retryable), timeout (retryable, naming the endpoint
    and the seconds), HTTP 401/403 and a missing key (not retryable). None for anything else.
    """
    where = endpoint or "the endpoint"
    chain = list(_causes(exc))
    for cause in chain:
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused: nothing is listening at {where} (is the server running?)", True
        if isinstance(cause, socket.gaierror):
            host = _host(endpoint) or "the endpoint's host"
            temporary = cause.errno == getattr(socket, "EAI_AGAIN", None)
            return f"DNS lookup failed for {host}: {cause.strerror or cause}", temporary
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS: the certificate of {where} is not trusted: {cause.verify_message or cause}", False
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake with {where} failed: {cause.reason or cause}", False
    status = getattr(exc, "status_code", None)
    if status in (401, 403):
        detail = server_message(exc) or _first_line(exc)
        what = "authentication failed" if status == 401 else "permission denied"
        at = f" at {endpoint}" if endpoint else ""
        return f"{what}{at} (HTTP {status}): {detail}; check the API key", False
    if _NO_KEY.search(str(exc)):
        return f"no API key: {_first_line(exc)}", False
    if any(isinstance(c, TimeoutError) or "timeout" in type(c).__name__.lower() for c in chain):
        seconds = f" within {timeout:g} s" if timeout else ""
        return f"timed out: no answer from {where}{seconds} (raise it with --param timeout=SECONDS)", True
    return None


def _host(endpoint: str | None) -> str | None:
    if not endpoint:
        return None
    from urllib.parse import urlparse

    return urlparse(endpoint).hostname


def _first_line(exc: BaseException) -> str:
    """The first line of `exc`'s text without LiteLLM's "litellm.SomeError: " prefix."""
    text = re.sub(r"^(litellm\.\w+:\s*)+", "", str(exc).strip())
    return text.splitlines()[0] if text else type(exc).__name__


def _message_in(body: Any) -> str | None:
    """The human-readable message in an error body: OpenAI's `error.message`, FastAPI's `detail`, ..."""
    if isinstance(body, str):
        return body.strip() or None
    if isinstance(body, list):  # FastAPI validation errors: [{"loc": [...], "msg": "..."}]
        parts = [str(item.get("msg")) for item in body if isinstance(item, dict) and item.get("msg")]
        return "; ".join(parts) or None
    if not isinstance(body, dict):
        return None
    for key in ("error", "detail", "message", "msg"):
        if key in body:
            found = _message_in(body[key])
            if found:
                return found
    return None


def server_message(exc: BaseException) -> str | None:
    """What the server said in its error body, whatever its shape (OpenAI's, FastAPI's, plain text)."""
    for cause in _causes(exc):
        found = _message_in(getattr(cause, "body", None))
        if found:
            return found
        response = getattr(cause, "response", None)
        if response is None:
            continue
        try:
            found = _message_in(response.json())
        except Exception:
            try:
                found = _message_in(str(response.text))
            except Exception:
                found = None
        if found:
            return found
    return None


def backend_error(
    exc: Exception, retryable: bool, *, message: str | None = None, endpoint: str | None = None
) -> BackendError:
    """`exc` as a `BackendError`: its type and first line (or the server's own message), HTTP status, Retry-After."""
    status = getattr(exc, "status_code", None)
    if message is None:
        text = str(exc).strip()
        message = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
        said = server_message(exc) if isinstance(status, int) else None
        if said and said not in message:
            where = f" from {endpoint}" if endpoint else ""
            message = f"{type(exc).__name__} (HTTP {status}{where}): {said}"
    return BackendError(
        message[:500],
        retryable=retryable,
        retry_after=_retry_after(exc),
        status=status if isinstance(status, int) else None,
    )


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _chat_logprobs(choice: Any) -> list[TokenLogprob] | None:
    lp = getattr(choice, "logprobs", None)
    content = _field(lp, "content") if lp is not None else None
    if not content:
        return None
    out = []
    for item in content:
        top = {
            str(_field(t, "token")): float(_field(t, "logprob")) for t in _field(item, "top_logprobs") or []
        }
        out.append(
            TokenLogprob(token=str(_field(item, "token")), logprob=float(_field(item, "logprob")), top=top)
        )
    return out


def _text_logprobs(choice: Any) -> list[TokenLogprob] | None:
    lp = getattr(choice, "logprobs", None)
    if lp is None:
        return None
    get = lp.get if isinstance(lp, dict) else lambda k: getattr(lp, k, None)
    tokens = get("tokens") or []
    token_logprobs = get("token_logprobs") or []
    tops = get("top_logprobs") or []
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


class LiteLLMBackend:
    """Calls any LiteLLM model: `acompletion` in chat mode, `atext_completion` in completion mode."""

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        client_options: dict[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.name = model
        self.model = model
        self.client_options = {k: v for k, v in (client_options or {}).items() if k not in CHARTER_PARAMS}
        self._cost_known: bool | None = None
        if api_base:
            self.client_options["api_base"] = api_base
        self.client_options.setdefault("timeout", timeout)
        # Local OpenAI-compatible servers (vLLM, the test server) need no key, but the openai
        # client insists on one; give a placeholder only when the user set none anywhere.
        # (Not for hosted_vllm/: litellm falls back to HOSTED_VLLM_API_KEY, then a placeholder, itself.)
        if (
            "api_base" in self.client_options
            and "api_key" not in self.client_options
            and not os.environ.get("OPENAI_API_KEY")
            and not model.startswith("hosted_vllm/")
        ):
            self.client_options["api_key"] = "no-key"

    async def complete(self, request: CompletionRequest) -> Completion:
        """One request through litellm, no litellm retries; errors become `BackendError`."""
        litellm = import_litellm()
        params = dict(request.params)
        if request.n != 1:
            params["n"] = request.n
        started = time.perf_counter()
        try:
            if request.mode == "chat":
                response = await litellm.acompletion(
                    model=request.model,
                    messages=request.messages,
                    num_retries=0,
                    **self.client_options,
                    **params,
                )
            else:
                response = await litellm.atext_completion(
                    model=request.model,
                    prompt=request.prompt,
                    num_retries=0,
                    **self.client_options,
                    **params,
                )
        except Exception as exc:
            raise classify_error(
                exc, endpoint=self.client_options.get("api_base"), timeout=self.client_options.get("timeout")
            ) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        return self._parse(request, response, latency_ms)

    async def aclose(self) -> None:
        """Close litellm's HTTP clients bound to the current event loop."""
        if "litellm" not in sys.modules:
            return  # never imported, so no clients; importing it only to close nothing costs seconds
        litellm = import_litellm()
        # Closing is best effort: a failure here must not fail a finished run.
        with contextlib.suppress(Exception):
            await litellm.close_litellm_async_clients()

    def _parse(self, request: CompletionRequest, response: Any, latency_ms: float) -> Completion:
        choices = sorted(response.choices, key=lambda c: getattr(c, "index", 0) or 0)
        if not choices:
            raise BackendError("the backend returned no choices", retryable=True)
        texts: list[str] = []
        logprobs: list[list[TokenLogprob]] = []
        have_logprobs = False
        for i, choice in enumerate(choices):
            if request.mode == "chat":
                message = getattr(choice, "message", None)
                tools = bool(getattr(message, "tool_calls", None))
                text = choice_text(getattr(message, "content", None), i, has_tool_calls=tools)
                lp = _chat_logprobs(choice)
            else:
                text = choice_text(getattr(choice, "text", None), i)
                lp = _text_logprobs(choice)
            texts.append(text)
            logprobs.append(lp or [])
            have_logprobs = have_logprobs or bool(lp)
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        return Completion(
            texts=texts,
            logprobs=logprobs if have_logprobs else None,
            finish_reasons=[getattr(c, "finish_reason", None) for c in choices],
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=self._cost(prompt_tokens, completion_tokens),
            latency_ms=latency_ms,
        )

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        # Computed from usage with litellm's price table; unknown models (local servers) cost None,
        # and whether the table knows the model is found out once, not on every call.
        if self._cost_known is False:
            return None
        try:
            litellm = import_litellm()
            p, c = litellm.cost_per_token(
                model=self.model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
            cost: float | None = float(p + c)
        except Exception:
            cost = None
        if self._cost_known is None:
            self._cost_known = cost is not None
        return cost
