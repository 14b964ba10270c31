"""The backend contract: one request in, one `Completion` (n choices) out.

A backend does no caching, retrying or storing: the runner owns those, so every backend gets them
for free and behaves the same.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field, PrivateAttr

from charter.backends.params import redact

Mode = Literal["chat", "completion"]
# The cache key's serialization (its format is the key: never change it). One encoder made once:
# json.dumps with any option builds a new JSONEncoder per call.
_KEY_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)
# `calls.request`'s serialization (as json.dumps(..., ensure_ascii=False) writes it).
_LOG_ENCODER = json.JSONEncoder(ensure_ascii=False)


def with_member(obj: str, name: str, value: str) -> str:
    """The JSON object text `obj` with the member `"name": value` (`value` already JSON) added last."""
    return f'{obj[:-1]}{", " if obj != "{}" else ""}"{name}": {value}}}'


class CompletionRequest(BaseModel):
    """What a step asks of a model: chat `messages` or a completion-mode `prompt`, plus parameters.

    `sample_index` separates repeated samples of the same request (e.g. a pair of responses at
    temperature 1) so the request cache never collapses them into one. `score_options` asks for the
    exact log-probability of each option after `prompt` instead of a generation (a `Scorer` answers).
    """

    model: str
    mode: Mode = "chat"
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    n: int = 1
    sample_index: int = 0
    score_options: list[str] | None = None
    # (the messages list encoded, its JSON text): see `messages_json`.
    _messages_text: tuple[Any, str] | None = PrivateAttr(default=None)

    def messages_json(self) -> str:
        """`messages` as JSON text (keys sorted, non-ASCII as it is; `null` without messages).

        The cache key, `calls.request` and the HTTP body all carry the messages, and a few-shot label
        request has ~4 KB of them: they are encoded once per request and that text is spliced into
        all three (three encodings were a tenth of a label call's CPU). A request's messages are not
        changed in place once it is made (every step builds a new request); a copy given other
        messages (`model_copy(update=...)`) encodes its own.
        """
        memo = self._messages_text
        if memo is not None and memo[0] is self.messages:
            return memo[1]
        text = _KEY_ENCODER.encode(self.messages)
        self._messages_text = (self.messages, text)
        return text

    def cache_key(self) -> str:
        """Hash of everything that determines the answer; credentials in params are redacted first."""
        fields: dict[str, Any] = {
            "model": self.model,
            "mode": self.mode,
            "prompt": self.prompt,
            "params": redact(self.params),
            "n": self.n,
            "sample_index": self.sample_index,
        }
        if self.score_options is not None:  # only then: every other request keeps its key
            fields["score_options"] = self.score_options
        # The bytes of the whole dict encoded with sorted keys: "messages" sorts first of them.
        rest = _KEY_ENCODER.encode(fields)
        blob = f'{{"messages": {self.messages_json()}, {rest[1:]}'
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def log_json(self) -> str:
        """`to_log()` as the JSON text `calls.request` stores (the messages' one encoding spliced in)."""
        out = self._log_fields()
        text = _LOG_ENCODER.encode(out)
        return text if self.messages is None else with_member(text, "messages", self.messages_json())

    def to_log(self) -> dict[str, Any]:
        """The JSON stored in `calls.request`: prompt or messages and parameters, no secrets."""
        out = self._log_fields()
        if self.messages is not None:
            out["messages"] = self.messages
        return out

    def _log_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "params": redact(self.params)}
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.n != 1:
            out["n"] = self.n
        if self.sample_index:
            out["sample_index"] = self.sample_index
        if self.score_options is not None:
            out["score_options"] = self.score_options
        return out


class TokenLogprob(BaseModel):
    """One generated token with the top alternatives at its position (natural-log probabilities)."""

    token: str
    logprob: float
    top: dict[str, float] = Field(default_factory=dict)


class Completion(BaseModel):
    """A backend's answer. `texts[i]` and `logprobs[i]` belong to choice i."""

    texts: list[str]
    logprobs: list[list[TokenLogprob]] | None = None
    finish_reasons: list[str | None] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    latency_ms: float = 0.0

    @property
    def text(self) -> str:
        """The first choice's text."""
        return self.texts[0]


class BackendError(RuntimeError):
    """A failed call. `retryable` tells the runner whether backing off and trying again can help."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


def choice_text(value: Any, index: int, *, has_tool_calls: bool = False) -> str:
    """The text of choice `index`, or a retryable `BackendError` when the choice carries none.

    A missing message, or `content`/`text` null without tool calls, is a malformed answer (a proxy or
    server bug): retried, and never stored as a valid empty answer, so it is never cached. An empty
    string is different: the model really answered nothing (e.g. it stopped at once), and that is
    a valid answer, stored and cached like any other.
    """
    if isinstance(value, str):
        return value
    if value is None and has_tool_calls:
        return ""
    raise BackendError(f"malformed answer: choice {index} has no text", retryable=True)


@runtime_checkable
class Backend(Protocol):
    """Anything that turns a `CompletionRequest` into a `Completion`. A backend that can also
    score options exactly is a `Scorer` too."""

    name: str

    async def complete(self, request: CompletionRequest) -> Completion:
        """Answer one request; raise `BackendError` on failure."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """A backend that scores options exactly: log p(option | prompt) for each option.

    The labeler prefers it when present (exact multiple-choice scoring, as the paper did); requests
    with `score_options` reach it through `charter.backends.scoring.ScoringBackend`, so scores are
    cached, retried and stored like any call.
    """

    async def score_options(self, prompt: str, options: list[str]) -> list[float]:
        """log p(option | prompt) for each of `options`, in order."""
        ...
