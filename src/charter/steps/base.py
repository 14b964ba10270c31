"""Steps and chains: `Respond() >> CritiqueRevise(constitution, rounds=4)`.

A step renders a typed prompt, asks the runner for a completion and parses it into a typed record.
It is an async callable over a state object; `>>` composes steps into a `Chain`, which is a step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Literal, TypeVar

from charter.backends.base import CompletionRequest
from charter.prompts import PromptTemplate, RenderedPrompt, load_prompt
from charter.runner import CallResult, Runner

S = TypeVar("S")


@dataclass
class StepContext:
    """What a step needs besides its state: the runner, the model, the mode, and a seeded RNG."""

    runner: Runner
    model: str
    mode: Literal["chat", "completion"] = "chat"
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    few_shot: bool = True
    prompts_dir: str | None = None
    # Templates are parsed and compiled once per run, not once per item (compiling is ~30 ms).
    _templates: dict[str, PromptTemplate] = field(default_factory=dict, init=False, repr=False, compare=False)

    def rng(self, item_id: str, purpose: str = "") -> random.Random:
        """An RNG seeded by (seed, item, purpose): the same draws at any concurrency or shard."""
        return random.Random(f"{self.seed}:{item_id}:{purpose}")

    def prompt(self, name: str) -> PromptTemplate:
        """Load a template (honouring --prompts-dir and CHARTER_PROMPTS_PATH overrides), once per run."""
        template = self._templates.get(name)
        if template is None:
            template = self._templates[name] = load_prompt(name, self.prompts_dir)
        return template

    def request(
        self, rendered: RenderedPrompt, *, n: int = 1, sample_index: int = 0, **params: Any
    ) -> CompletionRequest:
        """Turn a rendered prompt into a request with the user's params, the template's stops and `params`."""
        merged = {**self.params, **params}
        if rendered.stop and "stop" not in self.params:
            merged["stop"] = list(rendered.stop)
        return CompletionRequest(
            model=self.model,
            mode=rendered.mode,
            messages=rendered.messages,
            prompt=rendered.text,
            params=merged,
            n=n,
            sample_index=sample_index,
        )

    async def complete(self, step: str, rendered: RenderedPrompt, **kwargs: Any) -> CallResult:
        """Render-to-answer in one go: build the request, call through the runner, and strip a
        returned stop string from the end of each choice (see `strip_stop`)."""
        request = self.request(rendered, **kwargs)
        result = await self.runner.call(step, request)
        stops = _stop_list(request.params.get("stop"))
        texts = [strip_stop(text, stops) for text in result.completion.texts]
        if texts == result.completion.texts:
            return result
        return replace(result, completion=result.completion.model_copy(update={"texts": texts}))


def _stop_list(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list | tuple):
        return [s for s in stop if isinstance(s, str) and s]
    return []


def strip_stop(text: str, stops: list[str]) -> str:
    """`text` without a stop string at its end (the longest that matches).

    Some servers (transformers serve among them) include the matched stop string in the text they
    return; others cut before it. Stripping here, where the request's stop list is known, gives every
    step the same text whatever the server does. The `calls` row keeps the server's raw text.
    """
    for stop in sorted(stops, key=len, reverse=True):
        if text.endswith(stop):
            return text[: -len(stop)]
    return text


class Step(Generic[S]):
    """One unit of work over a state. Subclasses implement `run`."""

    name = "step"

    async def run(self, state: S, ctx: StepContext) -> S:
        """Transform `state`; make model calls through `ctx`."""
        raise NotImplementedError

    async def __call__(self, state: S, ctx: StepContext) -> S:
        return await self.run(state, ctx)

    def __rshift__(self, other: Step[S]) -> Chain[S]:
        return Chain([*_steps(self), *_steps(other)])

    def describe(self) -> dict[str, Any]:
        """The step's configuration, recorded in `runs.config`."""
        return {"step": self.name}


class Chain(Step[S]):
    """Steps run one after another over the same state."""

    name = "chain"

    def __init__(self, steps: list[Step[S]]) -> None:
        self.steps = steps

    async def run(self, state: S, ctx: StepContext) -> S:
        for step in self.steps:
            state = await step.run(state, ctx)
        return state

    def describe(self) -> dict[str, Any]:
        return {"chain": [s.describe() for s in self.steps]}


def _steps(step: Step[S]) -> list[Step[S]]:
    return list(step.steps) if isinstance(step, Chain) else [step]
