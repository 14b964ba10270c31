"""The LiteLLM backend: any LiteLLM model string, chat or completion mode, with log-probabilities.

litellm is imported lazily (it takes seconds and, without LITELLM_LOCAL_MODEL_COST_MAP, reaches for
the network). We never use litellm's own retries or cache: the runner owns both, so every backend
retries and caches the same way (and litellm's cache crashes on hits, BerriAI/litellm#42195).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Any

from charter.backends.base import BackendError, Completion, CompletionRequest, TokenLogprob, choice_text

# The parameter policy lives in params.py; these names stay importable from here.
from charter.backends.params import CHARTER_PARAMS, CLIENT_PARAMS, SECRET_PARAMS, split_params

__all__ = ["CHARTER_PARAMS", "CLIENT_PARAMS", "SECRET_PARAMS", "LiteLLMBackend", "split_params"]

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}


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


def classify_error(exc: Exception) -> BackendError:
    """Map a litellm/openai/httpx exception to a `BackendError` that says whether to retry."""
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
    if isinstance(exc, fatal_types):
        retryable = False
    elif isinstance(exc, retryable_types) or (isinstance(status, int) and status in RETRYABLE_STATUS):
        retryable = True
    elif isinstance(exc, litellm.BadRequestError):
        retryable = False
    else:
        # Unparseable bodies, dropped connections and other transport trouble surface as
        # assorted exception types; trying again is the safe default for those.
        retryable = not isinstance(exc, (ValueError, TypeError, KeyError)) or "json" in str(exc).lower()
    return backend_error(exc, retryable)


def backend_error(exc: Exception, retryable: bool) -> BackendError:
    """`exc` as a `BackendError`: its type and first line, its HTTP status and Retry-After if any."""
    status = getattr(exc, "status_code", None)
    text = str(exc).strip()
    message = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
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
        timeout: float = 600.0,
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
            raise classify_error(exc) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        return self._parse(request, response, latency_ms)

    async def aclose(self) -> None:
        """Close litellm's HTTP clients bound to the current event loop."""
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
