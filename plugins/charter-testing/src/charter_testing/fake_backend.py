"""An in-process fake backend for unit tests: no HTTP, registered like any plugin's backend.

    backend = FakeBackend(lambda request: "a reply")
    register_plugin(backend_plugin(backend), name="fake")   # model strings "fake/..." now reach it
    charter.sample("prompts.jsonl", db="x.duckdb", model="fake/policy", n=2)

As simonw/llm's tests register their MockModel with the plugin manager, so the code under test
resolves the model string exactly as it would for a real backend. `FakeScorer` also scores options
exactly (a `charter.backends.base.Scorer`, like charter-transformers' local models). Use the HTTP
`FakeOpenAIServer` instead where the wire format matters (LiteLLM, the fast path, retries on status).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeAlias

from charter.backends.base import Completion, CompletionRequest
from charter.hookspecs import hookimpl

Reply: TypeAlias = str | Completion
Responder: TypeAlias = Callable[[CompletionRequest], Reply]


def echo(request: CompletionRequest) -> str:
    """The default reply: the request's last message (or prompt line), echoed."""
    if request.messages:
        return f"echo: {request.messages[-1]['content']}"
    return f"echo: {(request.prompt or '').strip().splitlines()[-1:] or ''}"


class FakeBackend:
    """Answers each request with `responder(request)` (a string, or a whole `Completion`).

    A request with `n` > 1 gets `n` choices, the responder asked once per choice (`sample_index`
    tells them apart only across requests, so choice i sees `request.sample_index + i`). Every
    request is kept in `requests`, in arrival order.
    """

    def __init__(self, responder: Responder = echo, *, name: str = "fake") -> None:
        self.responder = responder
        self.name = name
        self.requests: list[CompletionRequest] = []

    async def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        await asyncio.sleep(0)  # a real backend yields to the event loop; so does this one
        replies = [
            self.responder(request.model_copy(update={"sample_index": request.sample_index + i}))
            for i in range(request.n)
        ]
        if len(replies) == 1 and isinstance(replies[0], Completion):
            return replies[0]
        texts = [r if isinstance(r, str) else r.text for r in replies]
        return Completion(texts=texts, finish_reasons=["stop"] * len(texts))


class FakeScorer(FakeBackend):
    """A `FakeBackend` that also scores options: `scores(prompt, options) -> log-probabilities`."""

    def __init__(
        self,
        scores: Callable[[str, list[str]], list[float]],
        responder: Responder = echo,
        *,
        name: str = "fake-scorer",
    ) -> None:
        super().__init__(responder, name=name)
        self.scores = scores
        self.scored: list[tuple[str, list[str]]] = []

    async def score_options(self, prompt: str, options: list[str]) -> list[float]:
        self.scored.append((prompt, list(options)))
        return self.scores(prompt, list(options))


def backend_plugin(backend: FakeBackend, prefix: str = "fake/") -> Any:
    """A plugin object whose `register_backends` sends model strings starting with `prefix` to `backend`."""

    class FakeBackendPlugin:
        @hookimpl
        def register_backends(self, register: Callable[[str, Any], None]) -> None:
            register(prefix, lambda model, **_options: backend)

    return FakeBackendPlugin()


__all__ = ["FakeBackend", "FakeScorer", "backend_plugin", "echo"]
