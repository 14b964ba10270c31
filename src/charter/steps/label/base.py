"""What every labeling method shares (`Labeler`): `LabelMC` and `LabelCoT` label one pair: a feedback principle is drawn per comparison (seeded, with
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
from dataclasses import replace
from typing import Any, ClassVar

from charter.backends.scoring import SCORE_OPTIONS
from charter.constitution import Constitution, load_constitution
from charter.labels import DEFAULT_MIN_OPTION_MASS, Reading, clamp, parse_answer, read_answer, read_scores
from charter.prompts import RenderedPrompt
from charter.records import messages_to_dicts
from charter.runner import CallFailed, CallResult
from charter.steps.base import Step, StepContext
from charter.steps.label.query import _SOURCE_RANK, LabelRead, Query, _Answer, _Try
from charter.steps.label.records import FeedbackQuery, PairItem
from charter.steps.sample_pairs import Draw, NSampler, fallback_ok


def _defaults(ctx: StepContext, values: dict[str, Any]) -> dict[str, Any]:
    """Step defaults that the user's own --param values override."""
    return {k: v for k, v in values.items() if k not in ctx.params}


class Labeler(Step[PairItem]):
    """A labeling method: what LabelMC, LabelCoT and a plugin's method share (principle draws,
    few-shot, swap, ensemble, retries, votes, aggregation into one soft label).

    A method registers its subclass under `method` (the `register_label_methods` hook) and provides
    `template_name(mode)` and `few_shot(ctx, rng)`; by default each attempt renders the question
    (`render`), asks it (exact scores where the backend has a `Scorer`, else log-probabilities) and
    reads the answer (`read`). Override `read` to read answers another way, or `_attempt` for a
    different conversation (LabelCoT reasons first). Keyword options beyond the common ones are
    named in `options` (LabelCoT: `cot_samples`).
    """

    method = "label"
    # Method-specific keyword options `charter label` passes on (the common ones always go).
    options: ClassVar[tuple[str, ...]] = ()

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
        self._vote_sampler = NSampler()
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

    # The `kind` of this method's answer queries in `feedback_queries`.
    query_kind = "mc"

    async def _attempt(
        self,
        ctx: StepContext,
        q: Query,
        attempt: int,
        params: dict[str, Any],
        sample: int,
    ) -> _Try:
        """One attempt: render the question, ask it and read the answer."""
        rendered = self.render(ctx, q)
        read = await self._read(ctx, "label", rendered, attempt, **params)
        query = self._read_query(q, self.query_kind, attempt, read)
        return _Try(read.prob_a, read.source, query, rendered=rendered)

    async def _votes(
        self,
        ctx: StepContext,
        q: Query,
        queries: list[FeedbackQuery],
        first: _Try,
    ) -> _Answer:
        """`votes` samples of the same question at temperature 1; P(A) is the share that says A."""
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

    # -- shared --------------------------------------------------------------------------------
    async def ask(self, q: Query, ctx: StepContext) -> _Answer:
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
        q: Query,
        base: dict[str, Any],
        sample: int,
    ) -> _Answer:
        """Ask until the answer can be read; with `votes > 1` a parsed answer is settled by a vote."""
        queries: list[FeedbackQuery] = []
        first = sample * (self.max_parse_retries + 1)
        for retry in range(self.max_parse_retries + 1):
            params = self._retry_params(ctx, retry, base)
            got = await self._attempt(ctx, replace(q, attempt=first + retry), first + retry, params, sample)
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

    def render(
        self,
        ctx: StepContext,
        q: Query,
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
            if self._no_logprobs or not fallback_ok(exc) or not logprobs:
                raise
            self._no_logprobs = True
            wanted = {k: v for k, v in wanted.items() if k not in ("logprobs", "top_logprobs")}
            return await ctx.complete(step, rendered, sample_index=sample_index, **wanted)

    def read(self, result: CallResult, *, after_prefix: bool, parse: Any = parse_answer) -> LabelRead:
        """Read one answer call: P(A) at the answer position when the options hold `min_option_mass` there, else parsed."""
        completion = result.completion
        evidence = None
        if completion.logprobs and completion.logprobs[0]:
            evidence = read_answer(
                completion.logprobs[0], min_mass=self.min_option_mass, after_prefix=after_prefix
            )
            if evidence.prob_a is not None:
                return LabelRead(result, evidence.prob_a, "logprobs", evidence.letter, evidence)
        answer = parse(completion.text)
        if answer is None:
            return LabelRead(result, evidence=evidence)
        return LabelRead(result, 1.0 if answer == "A" else 0.0, "parsed", answer, evidence)

    async def _read(
        self, ctx: StepContext, step: str, rendered: RenderedPrompt, attempt: int, **params: Any
    ) -> LabelRead:
        """Ask for the answer to `rendered` and read it (exact scores where the backend has them)."""
        if self._can_score(ctx, rendered):
            scoring = ctx.request(rendered).model_copy(update={"score_options": SCORE_OPTIONS})
            result = await ctx.runner.call(step, scoring)
            if result.completion.logprobs and result.completion.logprobs[0]:
                scored = read_scores(result.completion.logprobs[0][0])
                if scored.prob_a is not None:
                    return LabelRead(result, scored.prob_a, "scores", scored.letter, scored)
        result = await self._generate(
            ctx, step, rendered, attempt, self._logprob_params(ctx, rendered.mode), **params
        )
        return self.read(result, after_prefix=False)

    def _retry_params(self, ctx: StepContext, attempt: int, base: dict[str, Any]) -> dict[str, Any]:
        # A retry must be able to come out differently: sample it unless the user fixed a temperature.
        if attempt > 0 and "temperature" not in ctx.params:
            return {**base, "temperature": 1.0}
        return base

    async def run(self, state: PairItem, ctx: StepContext) -> PairItem:
        rng = ctx.rng(state.pair_id, "principles")
        principles = self.constitution.sample(rng, k=self.ensemble, kind="feedback")
        orders = [False, True] if self.swap else [False]
        jobs: list[Query] = []
        for member, principle in enumerate(principles):
            few_shot = (
                self.few_shot(ctx, ctx.rng(state.pair_id, f"few-shot:{member}")) if ctx.few_shot else None
            )
            for swapped in orders:
                jobs.append(Query(state, member, principle, swapped, few_shot))
        if len(jobs) == 1:  # the default (no ensemble, no swap): no task and gathering future per pair
            answers = [await self.ask(jobs[0], ctx)]
        else:
            answers = list(await asyncio.gather(*(self.ask(job, ctx) for job in jobs)))
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
        q: Query,
        kind: str,
        attempt: int,
        result: CallResult | Draw,
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
            text=result.text if isinstance(result, Draw) else result.completion.text,
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
        q: Query,
        kind: str,
        attempt: int,
        read: LabelRead,
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
