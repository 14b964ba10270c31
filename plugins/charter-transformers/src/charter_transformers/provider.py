"""The litellm custom provider `local`: `litellm.acompletion(model="local/<path-or-id>", ...)`.

How litellm hands a request to a `CustomLLM` (litellm 1.x):
- the model arrives without the `local/` prefix; request parameters (OpenAI ones and anything
  else, e.g. `device`) arrive in `optional_params`, together with litellm's own `max_retries`;
- `text_completion`/`atext_completion` wraps the prompt as one user message and calls the same
  `completion`/`acompletion` with `litellm_params["text_completion"] = True`. litellm's conversion
  of a chat response back to a text completion drops log-probabilities, so for text completions we
  return a `TextCompletionResponse` ourselves, which litellm passes through untouched;
- any exception raised here reaches the caller rewrapped as `litellm.APIConnectionError` (its
  message prefixed, the original not chained for `acompletion`), so each `BackendError` is also
  recorded in `raised_errors()` for `LocalBackend` to re-raise as it was.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from litellm import CustomLLM
from litellm.types.utils import (
    ChatCompletionTokenLogprob,
    ChoiceLogprobs,
    Choices,
    Logprobs,
    Message,
    ModelResponse,
    TextChoices,
    TextCompletionResponse,
    TopLogprob,
    Usage,
)

from charter.backends.base import BackendError
from charter_transformers.engine import Engine, GenerationJob, GenerationResult, get_engine
from charter_transformers.loading import LoadedModel, get_model
from charter_transformers.tokens import encode_chat, encode_text

PROVIDER = "local"
DEFAULT_MAX_TOKENS = 256

# Parameters that choose how the model is loaded or batched rather than what is generated.
LOAD_PARAMS = ("device", "dtype")
BATCH_PARAMS = ("batch_window_ms", "max_batch_size", "max_batch_tokens")
# `generate` settings that hold for a whole batch: requests group by them.
GENERATE_PARAMS = ("repetition_penalty", "no_repeat_ngram_size", "min_new_tokens")
# Sent by litellm or harmless OpenAI fields with no meaning for a local model.
IGNORED_PARAMS = ("max_retries", "user", "stream_options", "metadata", "extra_body", "suffix")
# Accepted only at their no-op values.
NEUTRAL_PARAMS: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0, None),
    "presence_penalty": (0, 0.0, None),
    "echo": (False, None),
    "best_of": (1, None),
    "stream": (False, None),
}
SAMPLING_PARAMS = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "seed",
    "stop",
    "logprobs",
    "top_logprobs",
)
SUPPORTED_PARAMS = frozenset((*SAMPLING_PARAMS, *LOAD_PARAMS, *BATCH_PARAMS, *GENERATE_PARAMS))

_raised: contextvars.ContextVar[list[BackendError] | None] = contextvars.ContextVar(
    "charter_transformers_raised", default=None
)


def raised_errors() -> list[BackendError]:
    """Start recording the `BackendError`s this provider raises in the current context.

    The list is shared by reference, so errors raised in a copied context (litellm runs parts of a
    call in executor threads and tasks) still land in it.
    """
    errors: list[BackendError] = []
    _raised.set(errors)
    return errors


def _record(error: BackendError) -> BackendError:
    errors = _raised.get()
    if errors is not None:
        errors.append(error)
    return error


@dataclass
class _Plan:
    """A request resolved against its model: the job to run and how to shape the answer."""

    model: str
    text_mode: bool
    engine: Engine
    job: GenerationJob


def _as_int(params: dict[str, Any], name: str, default: int | None) -> int | None:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise BackendError(f"parameter {name!r} must be an integer, got {value!r}", retryable=False)
    return int(value)


def _as_float(params: dict[str, Any], name: str, default: float) -> float:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BackendError(f"parameter {name!r} must be a number, got {value!r}", retryable=False)
    return float(value)


def check_params(params: dict[str, Any]) -> None:
    """Refuse parameters a local model cannot honour, naming them (typos included)."""
    bad = sorted(
        name
        for name, value in params.items()
        if name not in SUPPORTED_PARAMS
        and name not in IGNORED_PARAMS
        and not (name in NEUTRAL_PARAMS and value in NEUTRAL_PARAMS[name])
    )
    if bad:
        raise BackendError(
            f"unsupported parameter(s) for local models: {', '.join(bad)} "
            f"(supported: {', '.join(sorted(SUPPORTED_PARAMS))})",
            retryable=False,
        )


def make_job(prompt_ids: list[int], params: dict[str, Any], *, text_mode: bool) -> GenerationJob:
    """A `GenerationJob` from OpenAI-style request parameters."""
    check_params(params)
    stop = params.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    logprobs_param = params.get("logprobs")
    top = _as_int(params, "top_logprobs", None)
    logprobs: int | None
    if text_mode and isinstance(logprobs_param, int) and not isinstance(logprobs_param, bool):
        logprobs = logprobs_param  # legacy completions: logprobs=k alternatives per token
    elif logprobs_param:
        logprobs = top or 0  # chat: logprobs=true, top_logprobs=k
    else:
        logprobs = None
    max_tokens = _as_int(params, "max_tokens", None) or _as_int(params, "max_completion_tokens", None)
    n = _as_int(params, "n", 1) or 1
    if max_tokens is not None and max_tokens < 1:
        raise BackendError("parameter 'max_tokens' must be at least 1", retryable=False)
    if n < 1:
        raise BackendError("parameter 'n' must be at least 1", retryable=False)
    temperature = _as_float(params, "temperature", 1.0)
    top_p = _as_float(params, "top_p", 1.0)
    if temperature < 0 or not 0 < top_p <= 1:
        raise BackendError("need temperature >= 0 and 0 < top_p <= 1", retryable=False)
    batch_params: list[tuple[str, Hashable]] = []
    if params.get("repetition_penalty") is not None:
        batch_params.append(("repetition_penalty", _as_float(params, "repetition_penalty", 1.0)))
    for name in ("min_new_tokens", "no_repeat_ngram_size"):
        if params.get(name) is not None:
            batch_params.append((name, _as_int(params, name, 0)))
    return GenerationJob(
        prompt_ids=prompt_ids,
        n=n,
        max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
        temperature=temperature,
        top_p=top_p,
        top_k=_as_int(params, "top_k", 0) or 0,
        seed=_as_int(params, "seed", None),
        stop=tuple(s for s in stops if s),
        logprobs=logprobs,
        batch_params=tuple(sorted(batch_params)),
    )


def engine_for(model: str, params: dict[str, Any]) -> tuple[LoadedModel, Engine]:
    """Load (or reuse) the model for these params and apply any batching settings they carry."""
    device = params.get("device")
    dtype = params.get("dtype")
    loaded = get_model(model, device=str(device) if device else None, dtype=str(dtype) if dtype else None)
    engine = get_engine(loaded)
    engine.configure(
        window_ms=params.get("batch_window_ms"),
        max_batch_size=params.get("max_batch_size"),
        max_batch_tokens=params.get("max_batch_tokens"),
    )
    return loaded, engine


def _plan(model: str, messages: list[dict[str, Any]], params: dict[str, Any], text_mode: bool) -> _Plan:
    check_params(params)  # before loading: a typo should not cost a model load
    loaded, engine = engine_for(model, params)
    if text_mode and (len(messages) != 1 or not isinstance(messages[0].get("content"), str)):
        raise BackendError("local models take one text prompt per completion request", retryable=False)
    with loaded.tokenizer_lock:
        if text_mode:
            prompt_ids = encode_text(loaded.tokenizer, messages[0]["content"], loaded.eos_token_ids)
        else:
            prompt_ids = encode_chat(loaded.tokenizer, messages, model)
    return _Plan(model, text_mode, engine, make_job(prompt_ids, params, text_mode=text_mode))


def _usage(result: GenerationResult) -> Usage:
    return Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


def _text_response(plan: _Plan, result: GenerationResult, prompt: str) -> TextCompletionResponse:
    choices = []
    for index, choice in enumerate(result.choices):
        logprobs = None
        if choice.logprobs is not None:
            logprobs = Logprobs(
                tokens=[t.token for t in choice.logprobs],
                token_logprobs=[t.logprob for t in choice.logprobs],
                top_logprobs=[dict(t.top) for t in choice.logprobs],
                text_offset=[len(prompt) + o for o in choice.text_offsets or []],
            )
        choices.append(
            TextChoices(index=index, text=choice.text, finish_reason=choice.finish_reason, logprobs=logprobs)
        )
    return TextCompletionResponse(
        id=f"cmpl-{uuid.uuid4().hex}",
        object="text_completion",
        created=int(time.time()),
        model=plan.model,
        choices=choices,
        usage=_usage(result),
    )


def _bytes(token: str) -> list[int]:
    # Partial UTF-8 tokens are spelled "bytes:\\xe2\\x80" (see tokens.token_text).
    if token.startswith("bytes:"):
        return list(bytes.fromhex(token.removeprefix("bytes:").replace("\\x", "")))
    return list(token.encode())


def _chat_response(plan: _Plan, result: GenerationResult, model_response: ModelResponse) -> ModelResponse:
    choices = []
    for index, choice in enumerate(result.choices):
        logprobs = None
        if choice.logprobs is not None:
            logprobs = ChoiceLogprobs(
                content=[
                    ChatCompletionTokenLogprob(
                        token=t.token,
                        logprob=t.logprob,
                        bytes=_bytes(t.token),
                        top_logprobs=[TopLogprob(token=s, logprob=v, bytes=_bytes(s)) for s, v in t.top],
                    )
                    for t in choice.logprobs
                ]
            )
        choices.append(
            Choices(
                index=index,
                finish_reason=choice.finish_reason,
                message=Message(role="assistant", content=choice.text),
                logprobs=logprobs,
            )
        )
    model_response.choices = choices  # type: ignore[assignment]
    model_response.model = plan.model
    model_response.created = int(time.time())
    model_response.usage = _usage(result)  # type: ignore[attr-defined]
    return model_response


def _shape(
    plan: _Plan, result: GenerationResult, messages: list[dict[str, Any]], model_response: ModelResponse
) -> ModelResponse | TextCompletionResponse:
    if plan.text_mode:
        return _text_response(plan, result, messages[0]["content"])
    return _chat_response(plan, result, model_response)


@contextmanager
def _backend_errors(model: str) -> Iterator[None]:
    """Record each `BackendError` raised inside; anything else becomes one, naming the model."""
    try:
        yield
    except BackendError as exc:
        _record(exc)
        raise
    except Exception as exc:
        message = f"local model {model!r} failed: {type(exc).__name__}: {exc}"[:500]
        raise _record(BackendError(message, retryable=False)) from exc


async def respond(
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    text_mode: bool,
    model_response: ModelResponse | None = None,
) -> ModelResponse | TextCompletionResponse:
    """Generate for one request without blocking the loop and shape the answer as litellm would.

    Loading and tokenizing run in a thread, generation in the batching engine's worker thread. In
    text mode `messages` is the one user message holding the prompt (as litellm wraps it).
    `LocalBackend` calls this directly; litellm's `acompletion` through the provider ends here too.
    """
    with _backend_errors(model):
        plan = await asyncio.to_thread(_plan, model, messages, params, text_mode)
        result = await plan.engine.generate(plan.job)
    return _shape(plan, result, messages, model_response if model_response is not None else ModelResponse())


class LocalProvider(CustomLLM):
    """litellm's view of in-process Hugging Face models (registered as provider `local`)."""

    def completion(  # type: ignore[override]
        self,
        model: str,
        messages: list,
        api_base: str,
        custom_prompt_dict: dict,
        model_response: ModelResponse,
        print_verbose: Any,
        encoding: Any,
        api_key: Any,
        logging_obj: Any,
        optional_params: dict,
        acompletion: Any = None,
        litellm_params: Any = None,
        logger_fn: Any = None,
        headers: Any = None,
        timeout: Any = None,
        client: Any = None,
    ) -> Any:
        """Blocking generation (litellm.completion / litellm.text_completion)."""
        text_mode = bool((litellm_params or {}).get("text_completion"))
        with _backend_errors(model):
            plan = _plan(model, messages, dict(optional_params), text_mode)
            result = plan.engine.submit(plan.job).result()
        return _shape(plan, result, messages, model_response)

    async def acompletion(  # type: ignore[override]
        self,
        model: str,
        messages: list,
        api_base: str,
        custom_prompt_dict: dict,
        model_response: ModelResponse,
        print_verbose: Any,
        encoding: Any,
        api_key: Any,
        logging_obj: Any,
        optional_params: dict,
        acompletion: Any = None,
        litellm_params: Any = None,
        logger_fn: Any = None,
        headers: Any = None,
        timeout: Any = None,
        client: Any = None,
    ) -> Any:
        """Generation without blocking the loop: loading and tokenizing in a thread, then the
        batching engine's worker thread."""
        text_mode = bool((litellm_params or {}).get("text_completion"))
        return await respond(model, messages, dict(optional_params), text_mode, model_response)

    def streaming(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise _record(BackendError("local models do not stream; call without stream=True", retryable=False))

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise _record(BackendError("local models do not stream; call without stream=True", retryable=False))


_provider: LocalProvider | None = None


def register_provider(litellm: Any) -> None:
    """Add the `local` provider to `litellm.custom_provider_map` (once)."""
    global _provider
    if any(item.get("provider") == PROVIDER for item in litellm.custom_provider_map):
        return
    if _provider is None:
        _provider = LocalProvider()
    litellm.custom_provider_map = [
        *litellm.custom_provider_map,
        {"provider": PROVIDER, "custom_handler": _provider},
    ]
