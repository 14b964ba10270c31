"""RL-CAI steps: `SamplePairs` (responses to compare), `LabelMC` and `LabelCoT` (AI-feedback labels).

`SamplePairs` asks the policy for N responses per prompt (the backend's `n` when it has one, separate
requests otherwise; `sample_index` keeps the request cache from collapsing them) and pairs them up.

`LabelMC` and `LabelCoT` label one pair: a feedback principle is drawn per comparison (seeded, with
replacement; `ensemble=K` draws K and averages), the question is asked (and with `swap=True` asked
again with the options swapped, cancelling position bias), and the soft label is read from, in order
of preference, the backend's exact `score_options`, the top log-probabilities at the answer, or the
parsed text (`votes=k` samples and counts instead). Where the answer came from is recorded as
`label_source` (`scores` | `logprobs` | `vote` | `parsed`). Log-probabilities are read at the position
where the letter is given (`charter.labels.read_answer`), and only when both options hold at least
`min_option_mass` there; the evidence (position, token, mass) is stored with every query. An answer
that cannot be read is retried with a new `sample_index` and, if it still cannot, the pair is flagged
`status='unparsed'` with the raw text: nothing is dropped, nothing becomes a silent 0.5.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from charter.backends.base import Backend, BackendError, Completion, CompletionRequest, TokenLogprob
from charter.constitution import Constitution, Principle, load_constitution
from charter.labels import (
    DEFAULT_MIN_OPTION_MASS,
    Reading,
    clamp,
    fill_cot_example,
    parse_answer,
    parse_transcript,
    read_answer,
    read_scores,
    split_cot_example,
    stated_answer,
)
from charter.prompts import RenderedPrompt
from charter.records import PromptRecord, messages_to_dicts
from charter.runner import CallFailed, CallResult
from charter.steps.base import Step, StepContext
from charter.steps.sl import respond_prompt

# Weakest evidence wins when a label combines several answers.
_SOURCE_RANK: dict[str, int] = {"scores": 0, "logprobs": 1, "vote": 2, "parsed": 3}
SCORE_PARAM = "score_options"
SCORE_OPTIONS = [" (A)", " (B)"]
PairStrategy = str  # "all" | "adjacent" | a number of pairs drawn at random


# --- sampling -------------------------------------------------------------------------------------


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


def _fallback_ok(exc: CallFailed) -> bool:
    # A request the backend refuses outright (400/422, litellm's UnsupportedParamsError) may work
    # without the parameter; anything retryable or an auth problem would fail the same way.
    cause = exc.__cause__
    return isinstance(cause, BackendError) and not cause.retryable and cause.status in (None, 400, 422)


@dataclass
class _Draw:
    text: str
    call_id: str
    choice_index: int


class _NSampler:
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
    ) -> list[_Draw]:
        draws: list[_Draw] = []
        use_n = k > 1 and self.n_supported is not False and self._learned is not False
        if use_n:
            try:
                result = await ctx.complete(step, rendered, n=k, **params)
            except CallFailed as exc:
                if self.n_supported is True or not _fallback_ok(exc):
                    raise
                self._learned = False
            else:
                texts = result.completion.texts[:k]
                draws.extend(_Draw(t, result.call_id, i) for i, t in enumerate(texts))
                if len(texts) < k and self.n_supported is None:
                    self._learned = False
        while len(draws) < k:
            result = await ctx.complete(step, rendered, sample_index=len(draws), **params)
            draws.append(_Draw(result.completion.text, result.call_id, 0))
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
        self._sampler = _NSampler(n_supported)

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


# --- labeling -------------------------------------------------------------------------------------


class FeedbackQuery(BaseModel):
    """One question put to the feedback model (one attempt or vote), as stored in `feedback_queries`."""

    member: int
    principle: str
    swapped: bool
    kind: str  # mc | cot | vote
    attempt: int
    call_id: str | None = None
    reasoning_call_id: str | None = None
    text: str | None = None
    answer: str | None = None  # the option as presented, A or B
    prob_a: float | None = None  # P(the pair's response_a), whatever the presented order
    label_source: str | None = None
    # The evidence of a log-probability reading: where the letter was read, what was generated there,
    # and the probability of both options there before normalising (NULL when nothing was read).
    answer_position: int | None = None
    answer_token: str | None = None
    option_mass: float | None = None
    # Chain of thought: the answer the reasoning stated, and whether a re-ask contradicted it.
    stated_answer: str | None = None
    contradicts: bool | None = None
    cot_sample: int | None = None  # which of the --cot-samples reasoning samples


class PairItem(BaseModel):
    """One pair being labeled, and its label once done."""

    pair_id: str
    prompt: PromptRecord
    response_a: str
    response_b: str
    principles: list[str] = Field(default_factory=list)
    prob_a: float | None = None
    prob_a_unclamped: float | None = None
    reasoning: str | None = None
    label_source: str | None = None
    status: str = "pending"
    raw_text: str | None = None
    queries: list[FeedbackQuery] = Field(default_factory=list)

    @property
    def call_ids(self) -> list[str]:
        """Every call behind the label (reasoning and answer calls, in query order)."""
        ids: list[str] = []
        for q in self.queries:
            for cid in (q.reasoning_call_id, q.call_id):
                if cid and cid not in ids:
                    ids.append(cid)
        return ids


@dataclass
class _Answer:
    """What one (member, order) query concluded."""

    ok: bool
    probs: list[float] = field(default_factory=list)  # P(A) as presented: one, or one per CoT sample
    source: str | None = None
    reasoning: str | None = None
    queries: list[FeedbackQuery] = field(default_factory=list)


@dataclass
class _Read:
    """One answer call read: P(A) as presented, where it came from, the letter, the evidence."""

    result: CallResult
    prob_a: float | None = None
    source: str | None = None
    answer: str | None = None
    evidence: Reading | None = None


@dataclass
class _Question:
    """One question about a pair: its ensemble member, principle, option order and few-shot."""

    item: PairItem
    member: int
    principle: Principle
    swapped: bool
    few_shot: Any


@dataclass
class _Try:
    """One attempt at a (member, order) query: what it read (P(A) as presented) and its record."""

    prob_a: float | None
    source: str | None
    query: FeedbackQuery
    reasoning: str | None = None
    rendered: RenderedPrompt | None = None  # the question asked (multiple choice: the votes reuse it)


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


def _defaults(ctx: StepContext, values: dict[str, Any]) -> dict[str, Any]:
    """Step defaults that the user's own --param values override."""
    return {k: v for k, v in values.items() if k not in ctx.params}


class _Labeler(Step[PairItem]):
    """What LabelMC and LabelCoT share: principle draws, few-shot, swap, ensemble, aggregation."""

    method = "label"

    def __init__(
        self,
        constitution: Constitution | str = "anthropic-rl",
        *,
        ensemble: int = 1,
        swap: bool = False,
        clamp: tuple[float, float] | None = None,
        votes: int = 1,
        max_parse_retries: int = 2,
        top_logprobs: int | None = None,
        template: str | None = None,
        min_option_mass: float = DEFAULT_MIN_OPTION_MASS,
    ) -> None:
        self.constitution = load_constitution(constitution) if isinstance(constitution, str) else constitution
        if not self.constitution.feedback_principles:
            raise ValueError(f"constitution {self.constitution.name} has no feedback principles")
        if ensemble < 1:
            raise ValueError("ensemble must be >= 1")
        if votes < 1:
            raise ValueError("votes must be >= 1")
        if max_parse_retries < 0:
            raise ValueError("max_parse_retries must be >= 0")
        if clamp is not None and not 0 <= clamp[0] <= clamp[1] <= 1:
            raise ValueError(f"clamp {clamp}: need 0 <= low <= high <= 1")
        if not 0 <= min_option_mass <= 1:
            raise ValueError(f"--min-option-mass {min_option_mass}: expected a probability in [0, 1]")
        self.ensemble = ensemble
        self.swap = swap
        self.clamp = clamp
        self.votes = votes
        self.max_parse_retries = max_parse_retries
        self.top_logprobs = top_logprobs
        self.template = template
        self.min_option_mass = min_option_mass
        self._vote_sampler = _NSampler()
        self._no_logprobs = False

    # Independent samples per (member, order), averaged after clamping (LabelCoT's `cot_samples`).
    samples = 1

    # -- what subclasses provide --------------------------------------------------------------
    def template_name(self, mode: str) -> str:
        raise NotImplementedError

    def few_shot(self, ctx: StepContext, rng: Any) -> Any:
        raise NotImplementedError

    # Request defaults for an attempt (the user's --param values override them).
    attempt_params: ClassVar[dict[str, Any]] = {}

    async def _attempt(
        self,
        ctx: StepContext,
        q: _Question,
        attempt: int,
        params: dict[str, Any],
        sample: int,
    ) -> _Try:
        raise NotImplementedError

    async def _votes(
        self,
        ctx: StepContext,
        q: _Question,
        queries: list[FeedbackQuery],
        first: _Try,
    ) -> _Answer:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    async def ask(self, q: _Question, ctx: StepContext) -> _Answer:
        """One (member, order) answer: one question, or `samples` of them drawn at temperature 1.

        Each sample is asked until it can be read (`max_parse_retries` re-asks). Sample `s` numbers
        its attempts from `s * (max_parse_retries + 1)`, so every question asked for this (member,
        order) has its own attempt and `sample_index` and the request cache keeps them apart.
        """
        base = _defaults(ctx, self.attempt_params)
        if self.samples == 1:
            return await self._ask_sample(ctx, q, base, 0)
        base = {**base, **_defaults(ctx, {"temperature": 1.0})}
        answers = await asyncio.gather(*(self._ask_sample(ctx, q, base, s) for s in range(self.samples)))
        queries = [q for a in answers for q in a.queries]
        readable = [(s, a) for s, a in enumerate(answers) if a.ok]
        if not readable:
            return _Answer(False, queries=queries)
        reasonings = [f"[sample {s + 1}] {a.reasoning}" for s, a in readable if a.reasoning is not None]
        return _Answer(
            True,
            [p for _, a in readable for p in a.probs],
            max((a.source or "parsed" for _, a in readable), key=_SOURCE_RANK.__getitem__),
            "\n\n".join(reasonings) if reasonings else None,
            queries,
        )

    async def _ask_sample(
        self,
        ctx: StepContext,
        q: _Question,
        base: dict[str, Any],
        sample: int,
    ) -> _Answer:
        """Ask until the answer can be read; with `votes > 1` a parsed answer is settled by a vote."""
        queries: list[FeedbackQuery] = []
        first = sample * (self.max_parse_retries + 1)
        for retry in range(self.max_parse_retries + 1):
            params = self._retry_params(ctx, retry, base)
            got = await self._attempt(ctx, q, first + retry, params, sample)
            queries.append(got.query)
            if got.source == "parsed" and self.votes > 1:
                return await self._votes(ctx, q, queries, got)
            if got.prob_a is not None:
                return _Answer(True, [got.prob_a], got.source, got.reasoning, queries)
        return _Answer(False, queries=queries)

    def _template(self, ctx: StepContext) -> str:
        return self.template or self.template_name(ctx.mode)

    def templates(self, mode: str) -> list[str]:
        """The prompt templates this step renders in `mode` (loaded up front by `run_chain`)."""
        return [self.template or self.template_name(mode)]

    def _render(
        self,
        ctx: StepContext,
        q: _Question,
        **extra: Any,
    ) -> RenderedPrompt:
        item = q.item
        responses = [item.response_b, item.response_a] if q.swapped else [item.response_a, item.response_b]
        return ctx.prompt(self._template(ctx)).render(
            conversation=messages_to_dicts(item.prompt.messages),
            principle=q.principle.feedback,
            responses=responses,
            few_shot=q.few_shot,
            **extra,
        )

    def _logprob_params(self, ctx: StepContext, mode: str, top: int | None = None) -> dict[str, Any]:
        if self._no_logprobs:
            return {}
        if mode == "chat":
            return _defaults(ctx, {"logprobs": True, "top_logprobs": self.top_logprobs or top or 20})
        return _defaults(ctx, {"logprobs": self.top_logprobs or top or 5})

    def _can_score(self, ctx: StepContext, rendered: RenderedPrompt) -> bool:
        return rendered.mode == "completion" and bool(getattr(ctx.runner.backend, "can_score", False))

    async def _generate(
        self,
        ctx: StepContext,
        step: str,
        rendered: RenderedPrompt,
        sample_index: int,
        logprobs: dict[str, Any],
        **params: Any,
    ) -> CallResult:
        """One call with the log-probability parameters `logprobs`; a backend that refuses them is
        asked again without (and not asked for them again: the answers are then parsed)."""
        wanted = {**logprobs, **params}
        try:
            return await ctx.complete(step, rendered, sample_index=sample_index, **wanted)
        except CallFailed as exc:
            if self._no_logprobs or not _fallback_ok(exc) or not logprobs:
                raise
            self._no_logprobs = True
            wanted = {k: v for k, v in wanted.items() if k not in ("logprobs", "top_logprobs")}
            return await ctx.complete(step, rendered, sample_index=sample_index, **wanted)

    def _reading(self, result: CallResult, *, after_prefix: bool, parse: Any = parse_answer) -> _Read:
        """P(A) at the answer position when the options hold `min_option_mass` there, else parsed."""
        completion = result.completion
        evidence = None
        if completion.logprobs and completion.logprobs[0]:
            evidence = read_answer(
                completion.logprobs[0], min_mass=self.min_option_mass, after_prefix=after_prefix
            )
            if evidence.prob_a is not None:
                return _Read(result, evidence.prob_a, "logprobs", evidence.letter, evidence)
        answer = parse(completion.text)
        if answer is None:
            return _Read(result, evidence=evidence)
        return _Read(result, 1.0 if answer == "A" else 0.0, "parsed", answer, evidence)

    async def _read(
        self, ctx: StepContext, step: str, rendered: RenderedPrompt, attempt: int, **params: Any
    ) -> _Read:
        """Ask for the answer to `rendered` and read it (exact scores where the backend has them)."""
        if self._can_score(ctx, rendered):
            scoring: dict[str, Any] = {SCORE_PARAM: SCORE_OPTIONS}
            result = await ctx.runner.call(step, ctx.request(rendered, **scoring))
            if result.completion.logprobs and result.completion.logprobs[0]:
                scored = read_scores(result.completion.logprobs[0][0])
                if scored.prob_a is not None:
                    return _Read(result, scored.prob_a, "scores", scored.letter, scored)
        result = await self._generate(
            ctx, step, rendered, attempt, self._logprob_params(ctx, rendered.mode), **params
        )
        return self._reading(result, after_prefix=False)

    def _retry_params(self, ctx: StepContext, attempt: int, base: dict[str, Any]) -> dict[str, Any]:
        # A retry must be able to come out differently: sample it unless the user fixed a temperature.
        if attempt > 0 and "temperature" not in ctx.params:
            return {**base, "temperature": 1.0}
        return base

    async def run(self, state: PairItem, ctx: StepContext) -> PairItem:
        rng = ctx.rng(state.pair_id, "principles")
        principles = self.constitution.sample(rng, k=self.ensemble, kind="feedback")
        orders = [False, True] if self.swap else [False]
        jobs: list[_Question] = []
        for member, principle in enumerate(principles):
            few_shot = (
                self.few_shot(ctx, ctx.rng(state.pair_id, f"few-shot:{member}")) if ctx.few_shot else None
            )
            for swapped in orders:
                jobs.append(_Question(state, member, principle, swapped, few_shot))
        answers = await asyncio.gather(*(self.ask(job, ctx) for job in jobs))
        state.principles = [p.name for p in principles]
        state.queries = [q for a in answers for q in a.queries]
        texts = [q.text for q in state.queries if q.text is not None]
        reasonings = []
        for job, answer in zip(jobs, answers, strict=True):
            if answer.reasoning is not None:
                swapped_note = ", options swapped" if job.swapped else ""
                head = f"[{job.principle.name}{swapped_note}] " if len(jobs) > 1 else ""
                reasonings.append(head + answer.reasoning)
        state.reasoning = "\n\n".join(reasonings) if reasonings else None
        if not all(a.ok for a in answers):
            state.status = "unparsed"
            state.raw_text = "\n\n".join(texts)
            state.label_source = None
            return state
        unclamped, clamped = [], []  # per query, P(response_a) in the pair's own order
        for job, answer in zip(jobs, answers, strict=True):
            own = [1.0 - p if job.swapped else p for p in answer.probs]
            unclamped.append(sum(own) / len(own))
            # Each sample is clamped before averaging, as the paper's ensembled CoT does.
            clamped.append(sum(clamp(p, self.clamp) for p in own) / len(own))
        state.prob_a_unclamped = sum(unclamped) / len(unclamped)
        state.prob_a = sum(clamped) / len(clamped)
        state.label_source = max((a.source or "parsed" for a in answers), key=_SOURCE_RANK.__getitem__)
        state.status = "ok"
        state.raw_text = "\n\n".join(texts) if texts else None
        return state

    def _query(
        self,
        q: _Question,
        kind: str,
        attempt: int,
        result: CallResult | _Draw,
        answer: str | None,
        prob_a: float | None,
        source: str | None,
        reasoning_call: CallResult | None = None,
        *,
        evidence: Reading | None = None,
        stated: str | None = None,
        contradicts: bool | None = None,
        sample: int | None = None,
    ) -> FeedbackQuery:
        """One query's record; `prob_a` as presented, stored in the pair's own order."""
        return FeedbackQuery(
            member=q.member,
            principle=q.principle.name,
            swapped=q.swapped,
            kind=kind,
            attempt=attempt,
            call_id=result.call_id,
            reasoning_call_id=reasoning_call.call_id if reasoning_call else None,
            text=result.text if isinstance(result, _Draw) else result.completion.text,
            answer=answer,
            prob_a=None if prob_a is None else (1.0 - prob_a if q.swapped else prob_a),
            label_source=source,
            answer_position=evidence.position if evidence else None,
            answer_token=evidence.token if evidence else None,
            option_mass=evidence.mass if evidence and evidence.position is not None else None,
            stated_answer=stated,
            contradicts=contradicts,
            cot_sample=sample,
        )

    def _read_query(
        self,
        q: _Question,
        kind: str,
        attempt: int,
        read: _Read,
        **extra: Any,
    ) -> FeedbackQuery:
        """`_query` for an answer call that was read."""
        return self._query(
            q,
            kind,
            attempt,
            read.result,
            read.answer,
            read.prob_a,
            read.source,
            evidence=read.evidence,
            **extra,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "method": self.method,
            "constitution": self.constitution.name,
            "constitution_hash": self.constitution.content_hash(),
            "ensemble": self.ensemble,
            "swap": self.swap,
            "clamp": list(self.clamp) if self.clamp else None,
            "votes": self.votes,
            "max_parse_retries": self.max_parse_retries,
            "top_logprobs": self.top_logprobs,
            "template": self.template,
            "min_option_mass": self.min_option_mass,
        }


def _vote(letters: list[str | None]) -> float | None:
    a = letters.count("A")
    b = letters.count("B")
    return a / (a + b) if a + b else None


class LabelMC(_Labeler):
    """The paper's multiple-choice label: P(" (A)") vs P(" (B)") after "The answer is:".

    Completion mode uses `label-mc-paper` (byte for byte the paper's prompt), chat mode
    `label-mc-chat`. Few-shot: the constitution's multiple-choice examples, each with its own drawn
    principle and a seeded choice of which option is the better one.
    """

    name = "label_mc"
    method = "logprobs"
    attempt_params: ClassVar[dict[str, Any]] = {"max_tokens": 8, "temperature": 0.0}

    def template_name(self, mode: str) -> str:
        return "label-mc-paper" if mode == "completion" else "label-mc-chat"

    def few_shot(self, ctx: StepContext, rng: Any) -> list[dict[str, Any]] | None:
        examples = self.constitution.few_shot.multiple_choice
        if not examples:
            return None
        out = []
        for ex in examples:
            principle = self.constitution.sample(rng, k=1, kind="feedback")[0]
            chosen_first = rng.random() < 0.5
            out.append(
                {
                    "conversation": parse_transcript(ex.conversation),
                    "principle": principle.feedback,
                    "responses": [ex.chosen, ex.rejected] if chosen_first else [ex.rejected, ex.chosen],
                    "answer": "A" if chosen_first else "B",
                }
            )
        return out

    async def _attempt(
        self,
        ctx: StepContext,
        q: _Question,
        attempt: int,
        params: dict[str, Any],
        sample: int,
    ) -> _Try:
        rendered = self._render(ctx, q)
        read = await self._read(ctx, "label", rendered, attempt, **params)
        query = self._read_query(q, "mc", attempt, read)
        return _Try(read.prob_a, read.source, query, rendered=rendered)

    async def _votes(
        self,
        ctx: StepContext,
        q: _Question,
        queries: list[FeedbackQuery],
        first: _Try,
    ) -> _Answer:
        assert first.rendered is not None
        rendered = first.rendered
        params = _defaults(ctx, {"max_tokens": 8, "temperature": 1.0})
        draws = await self._vote_sampler.draw(ctx, "label_vote", rendered, self.votes, **params)
        letters: list[str | None] = []
        for j, d in enumerate(draws):
            letter = parse_answer(d.text)
            letters.append(letter)
            prob = None if letter is None else float(letter == "A")
            queries.append(self._query(q, "vote", j, d, letter, prob, "vote"))
        prob_a = _vote(letters)
        return _Answer(prob_a is not None, [] if prob_a is None else [prob_a], "vote", None, queries)


@dataclass
class _Thought:
    """One chain of thought and the answer read from it (or from the re-ask after it)."""

    reasoning_call: CallResult
    reasoning: str
    read: _Read
    stated: str | None  # the answer the reasoning itself gives, as presented
    contradicts: bool | None  # the re-ask's answer differs from `stated` (None: no re-ask)


class LabelCoT(_Labeler):
    """Chain-of-thought label: "Let's think step by step:", then P(A)/P(B) after "So the answer is:".

    Chat mode asks for the reasoning to end with "So the answer is: (A)" / "(B)" and reads the
    probabilities at that line's letter from the same call's log-probabilities: one call per query.
    Only a reasoning without an answer line is followed by a second question ("reply with (A) or (B)
    only"); its answer is stored next to what the reasoning said, flagged (`contradicts`) when they
    differ. Completion mode keeps the paper's two steps: the reasoning stops at "\\n\\nHuman:" and
    "So the answer is:" is the Human's next turn, so its answer is always a second call. Without
    usable log-probabilities the answer is parsed. Probabilities are clamped (the paper: [0.4, 0.6]);
    `cot_samples=K` draws K reasonings at temperature 1 and averages their clamped probabilities
    (the paper's ensembled CoT).
    """

    name = "label_cot"
    method = "cot"
    attempt_params: ClassVar[dict[str, Any]] = {"max_tokens": 512}
    # Alternatives per position on the reasoning call (it is long: a smaller default keeps calls small).
    reasoning_top_logprobs = 5

    def __init__(
        self, constitution: Constitution | str = "anthropic-rl", *, cot_samples: int = 1, **kwargs: Any
    ) -> None:
        kwargs.setdefault("clamp", (0.4, 0.6))
        super().__init__(constitution, **kwargs)
        if cot_samples < 1:
            raise ValueError(f"--cot-samples {cot_samples}: expected at least 1")
        if cot_samples > 1 and self.votes > 1:
            raise ValueError("--cot-samples and --votes both sample the reasoning: give one of them")
        self.samples = cot_samples

    def template_name(self, mode: str) -> str:
        return "label-cot-paper" if mode == "completion" else "label-cot-chat"

    def few_shot(self, ctx: StepContext, rng: Any) -> list[Any] | None:
        examples = self.constitution.few_shot.chain_of_thought
        if not examples:
            return None
        principles = [self.constitution.sample(rng, k=1, kind="feedback")[0] for _ in examples]
        if ctx.mode == "completion":
            return [
                fill_cot_example(ex, p.feedback or "") for ex, p in zip(examples, principles, strict=True)
            ]
        out = []
        for ex, p in zip(examples, principles, strict=True):
            parts = split_cot_example(ex)
            out.append(
                {
                    "conversation": parts.conversation,
                    "principle": p.feedback,
                    "responses": parts.responses,
                    "reasoning": parts.reasoning,
                    "answer": parts.answer,
                }
            )
        return out

    async def _reason_and_answer(
        self,
        ctx: StepContext,
        q: _Question,
        sample_index: int,
        reasoning_params: dict[str, Any],
    ) -> _Thought:
        question = self._render(ctx, q, reasoning=None)
        one_call = question.mode == "chat"
        logprobs = self._logprob_params(ctx, "chat", self.reasoning_top_logprobs) if one_call else {}
        thought = await self._generate(
            ctx, "label_reasoning", question, sample_index, logprobs, **reasoning_params
        )
        reasoning = thought.completion.text.strip()
        if one_call:
            read = self._reading(thought, after_prefix=True, parse=stated_answer)
            if read.prob_a is not None:
                return _Thought(thought, reasoning, read, stated_answer(reasoning), None)
        # No answer line (chat), or the paper's two steps (completion): ask "So the answer is:".
        follow_up = self._render(ctx, q, reasoning=reasoning)
        answer_params = _defaults(ctx, {"max_tokens": 8, "temperature": 0.0})
        read = await self._read(ctx, "label_answer", follow_up, 0, **answer_params)
        stated = parse_answer(reasoning)
        if read.prob_a is None and stated is not None:
            # The answer call said nothing usable: the reasoning may say it.
            read = _Read(read.result, 1.0 if stated == "A" else 0.0, "parsed", stated, read.evidence)
            return _Thought(thought, reasoning, read, stated, None)
        contradicts = None if stated is None or read.answer is None else read.answer != stated
        return _Thought(thought, reasoning, read, stated, contradicts)

    async def _attempt(
        self,
        ctx: StepContext,
        q: _Question,
        attempt: int,
        params: dict[str, Any],
        sample: int,
    ) -> _Try:
        t = await self._reason_and_answer(ctx, q, attempt, params)
        query = self._read_query(
            q,
            "cot",
            attempt,
            t.read,
            reasoning_call=t.reasoning_call,
            stated=t.stated,
            contradicts=t.contradicts,
            sample=sample,
        )
        return _Try(t.read.prob_a, t.read.source, query, reasoning=t.reasoning)

    async def _votes(
        self,
        ctx: StepContext,
        q: _Question,
        queries: list[FeedbackQuery],
        first: _Try,
    ) -> _Answer:
        # The first chain of thought counts as vote 0; votes-1 more are sampled (sample_index 1000+j
        # keeps them apart from the retries' indexes).
        params = _defaults(ctx, {"max_tokens": 512, "temperature": 1.0})
        letters: list[str | None] = [None if first.prob_a is None else ("A" if first.prob_a >= 0.5 else "B")]
        for j in range(1, self.votes):
            t = await self._reason_and_answer(ctx, q, 1000 + j, params)
            prob_a = t.read.prob_a
            letter = None if prob_a is None else ("A" if prob_a >= 0.5 else "B")
            letters.append(letter)
            queries.append(
                self._query(
                    q,
                    "vote",
                    j,
                    t.read.result,
                    letter,
                    prob_a,
                    "vote",
                    t.reasoning_call,
                    evidence=t.read.evidence,
                    stated=t.stated,
                    contradicts=t.contradicts,
                )
            )
        prob_a = _vote(letters)
        return _Answer(
            prob_a is not None, [] if prob_a is None else [prob_a], "vote", first.reasoning, queries
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "cot_samples": self.samples}


def stored_prompt(prompt_id: Any, messages: str | list[Any]) -> PromptRecord:
    """A prompt read back from the `prompts` table (`messages` as JSON text or already a list)."""
    parsed = json.loads(messages) if isinstance(messages, str) else messages
    return PromptRecord(prompt_id=str(prompt_id), messages=parsed)


def new_pair(row: dict[str, Any]) -> PairItem:
    """The labeling state for one stored pair (a row of pairs joined with prompts)."""
    return PairItem(
        pair_id=row["pair_id"],
        prompt=stored_prompt(row["prompt_id"], row["messages"]),
        response_a=row["response_a"],
        response_b=row["response_b"],
    )


__all__ = [
    "FeedbackQuery",
    "LabelCoT",
    "LabelMC",
    "PairItem",
    "SampleItem",
    "SamplePairs",
    "ScoringBackend",
    "choose_pairs",
    "new_pair",
    "pair_id_for",
    "stored_prompt",
]
