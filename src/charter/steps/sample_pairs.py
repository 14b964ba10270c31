"""`SamplePairs`: N responses per prompt from the policy, paired up for labeling.

The policy is asked for N responses per prompt (the backend's `n` when it has one, separate requests
otherwise; `sample_index` keeps the request cache from collapsing them). `NSampler` is also how the
labelers draw votes.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from charter.backends.base import BackendError
from charter.prompts import RenderedPrompt
from charter.records import PromptRecord
from charter.runner import CallFailed
from charter.steps.base import Step, StepContext
from charter.steps.sl import respond_prompt

PairStrategy = str  # "all" | "adjacent" | a number of pairs drawn at random


class SampleItem(BaseModel):
    """One prompt being sampled: its responses and the pairs made from them."""

    prompt: PromptRecord
    source_run_id: str | None = None
    responses: list[str] = Field(default_factory=list)
    call_ids: list[str] = Field(default_factory=list)
    choice_indexes: list[int] = Field(default_factory=list)
    pairs: list[tuple[int, int]] = Field(default_factory=list)


def pair_id_for(run_id: str, prompt_id: str, index_a: int, index_b: int) -> str:
    """A stable id for a pair: the same sample run, prompt and indexes give the same id."""
    return hashlib.sha256(f"{run_id}\x1f{prompt_id}\x1f{index_a}\x1f{index_b}".encode()).hexdigest()[:20]


def choose_pairs(responses: list[str], strategy: PairStrategy, rng: Any) -> list[tuple[int, int]]:
    """Index pairs to compare. Identical responses are compared once at most (by first occurrence).

    `all`: every pair; `adjacent`: (0,1), (1,2), ...; a number K: K pairs drawn at random (seeded)
    from all of them.
    """
    distinct: list[int] = []
    seen: set[str] = set()
    for i, text in enumerate(responses):
        if text not in seen:
            seen.add(text)
            distinct.append(i)
    every = list(itertools.combinations(distinct, 2))
    if strategy == "all":
        return every
    if strategy == "adjacent":
        return list(itertools.pairwise(distinct))
    k = parse_pair_strategy(strategy)
    assert isinstance(k, int)
    if k >= len(every):
        return every
    return sorted(rng.sample(every, k))


def parse_pair_strategy(value: str | int) -> str | int:
    """Validate `--pairs`: all, adjacent or a positive number."""
    text = str(value).strip()
    if text in ("all", "adjacent"):
        return text
    try:
        k = int(text)
    except ValueError:
        raise ValueError(f"--pairs {value!r}: expected all, adjacent or a number of pairs") from None
    if k < 1:
        raise ValueError(f"--pairs {value!r}: the number of pairs must be at least 1")
    return k


def fallback_ok(exc: CallFailed) -> bool:
    """Whether a refused request may work without the parameter that was refused."""
    # A request the backend refuses outright (400/422, litellm's UnsupportedParamsError) may work
    # without the parameter; anything retryable or an auth problem would fail the same way.
    cause = exc.__cause__
    return isinstance(cause, BackendError) and not cause.retryable and cause.status in (None, 400, 422)


@dataclass
class Draw:
    """One sampled text, the call it came from and its choice index in that call."""

    text: str
    call_id: str
    choice_index: int


class NSampler:
    """Draw k samples of one request: one call with `n=k` where the backend honours it, else k calls.

    Separate calls carry `sample_index` 0..k-1, so the request cache keeps every sample; a call with
    `n` that comes back with fewer choices is topped up with separate calls. Once the backend has
    shown it ignores or refuses `n`, later prompts go straight to separate calls.
    """

    def __init__(self, n_supported: bool | None = None) -> None:
        self.n_supported = n_supported
        self._learned: bool | None = None

    async def draw(
        self, ctx: StepContext, step: str, rendered: RenderedPrompt, k: int, **params: Any
    ) -> list[Draw]:
        draws: list[Draw] = []
        use_n = k > 1 and self.n_supported is not False and self._learned is not False
        if use_n:
            try:
                result = await ctx.complete(step, rendered, n=k, **params)
            except CallFailed as exc:
                if self.n_supported is True or not fallback_ok(exc):
                    raise
                self._learned = False
            else:
                texts = result.completion.texts[:k]
                draws.extend(Draw(t, result.call_id, i) for i, t in enumerate(texts))
                if len(texts) < k and self.n_supported is None:
                    self._learned = False
        while len(draws) < k:
            result = await ctx.complete(step, rendered, sample_index=len(draws), **params)
            draws.append(Draw(result.completion.text, result.call_id, 0))
        return draws


class SamplePairs(Step[SampleItem]):
    """N responses per prompt from the policy (`respond-chat` / `respond-completion`), then pairs."""

    name = "sample"

    def __init__(
        self,
        n: int = 2,
        temperature: float | None = 1.0,
        pairs: PairStrategy | int = "all",
        n_supported: bool | None = None,
        system: str | None = None,
    ) -> None:
        if n < 2:
            raise ValueError(f"n must be at least 2 to make pairs, got {n}")
        self.n = n
        self.temperature = temperature
        self.pairs = str(parse_pair_strategy(pairs))
        self.system = system
        self._sampler = NSampler(n_supported)

    def templates(self, mode: str) -> list[str]:
        """The prompt templates this step renders in `mode` (loaded up front by `run_chain`)."""
        return [f"respond-{mode}"]

    async def run(self, state: SampleItem, ctx: StepContext) -> SampleItem:
        rendered = respond_prompt(ctx, state.prompt, self.system, None)  # no few-shot when sampling
        params = {} if self.temperature is None else {"temperature": self.temperature}
        draws = await self._sampler.draw(ctx, self.name, rendered, self.n, **params)
        state.responses = [d.text.strip() for d in draws]
        state.call_ids = [d.call_id for d in draws]
        state.choice_indexes = [d.choice_index for d in draws]
        state.pairs = choose_pairs(state.responses, self.pairs, ctx.rng(state.prompt.prompt_id, "pairs"))
        return state

    def describe(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "n": self.n,
            "temperature": self.temperature,
            "pairs": self.pairs,
            "n_supported": self._sampler.n_supported,
            "system": self.system,
        }
