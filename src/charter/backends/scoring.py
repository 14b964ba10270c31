"""Exact option scores through the runner: `ScoringBackend` wraps a backend that can score options."""

from __future__ import annotations

import time

from charter.backends.base import Backend, BackendError, Completion, CompletionRequest, TokenLogprob

SCORE_PARAM = "score_options"
SCORE_OPTIONS = [" (A)", " (B)"]


class ScoringBackend:
    """Routes `score_options` through the runner like any call (cached, retried, stored in `calls`).

    A request whose params carry `score_options: [...]` is answered by the wrapped backend's
    `score_options(prompt, options)`, returned as a one-token completion whose top log-probabilities
    are the exact option scores; everything else goes to the wrapped backend unchanged.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.can_score = callable(getattr(inner, "score_options", None))

    async def complete(self, request: CompletionRequest) -> Completion:
        options = request.params.get(SCORE_PARAM)
        if options is None:
            return await self.inner.complete(request)
        if not self.can_score or request.prompt is None:
            raise BackendError("this backend cannot score options", retryable=False)
        started = time.perf_counter()
        scores = await self.inner.score_options(request.prompt, list(options))  # type: ignore[attr-defined]
        best = max(range(len(options)), key=lambda i: scores[i])
        top = {str(o): float(s) for o, s in zip(options, scores, strict=True)}
        return Completion(
            texts=[str(options[best])],
            logprobs=[[TokenLogprob(token=str(options[best]), logprob=float(scores[best]), top=top)]],
            finish_reasons=["stop"],
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()
