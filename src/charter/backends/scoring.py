"""Exact option scores through the runner: `ScoringBackend` wraps a backend that can score options."""

from __future__ import annotations

import time

from charter.backends.base import Backend, BackendError, Completion, CompletionRequest, Scorer, TokenLogprob

# The options a multiple-choice label scores.
SCORE_OPTIONS = [" (A)", " (B)"]


class ScoringBackend:
    """Routes `score_options` through the runner like any call (cached, retried, stored in `calls`).

    A request with `score_options` is answered by the wrapped backend's (a `Scorer`)
    `score_options(prompt, options)`, returned as a one-token completion whose top log-probabilities
    are the exact option scores; everything else goes to the wrapped backend unchanged.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.can_score = isinstance(inner, Scorer)

    async def complete(self, request: CompletionRequest) -> Completion:
        options = request.score_options
        if options is None:
            return await self.inner.complete(request)
        if not isinstance(self.inner, Scorer) or request.prompt is None:
            raise BackendError("this backend cannot score options", retryable=False)
        started = time.perf_counter()
        scores = await self.inner.score_options(request.prompt, list(options))
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
