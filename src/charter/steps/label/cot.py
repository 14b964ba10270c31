"""`LabelCoT`: chain-of-thought labels ("Let's think step by step"), clamped as the paper does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from charter.constitution import Constitution
from charter.labels import fill_cot_example, parse_answer, split_cot_example, stated_answer
from charter.runner import CallResult
from charter.steps.base import StepContext
from charter.steps.label.base import Labeler, LabelRead, Query, _Answer, _defaults, _Try, _vote
from charter.steps.label.records import FeedbackQuery


@dataclass
class _Thought:
    """One chain of thought and the answer read from it (or from the re-ask after it)."""

    reasoning_call: CallResult
    reasoning: str
    read: LabelRead
    stated: str | None  # the answer the reasoning itself gives, as presented
    contradicts: bool | None  # the re-ask's answer differs from `stated` (None: no re-ask)


class LabelCoT(Labeler):
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
    query_kind = "cot"
    options: ClassVar[tuple[str, ...]] = ("cot_samples",)
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
        q: Query,
        sample_index: int,
        reasoning_params: dict[str, Any],
    ) -> _Thought:
        question = self.render(ctx, q, reasoning=None)
        one_call = question.mode == "chat"
        logprobs = self._logprob_params(ctx, "chat", self.reasoning_top_logprobs) if one_call else {}
        thought = await self._generate(
            ctx, "label_reasoning", question, sample_index, logprobs, **reasoning_params
        )
        reasoning = thought.completion.text.strip()
        if one_call:
            read = self.read(thought, after_prefix=True, parse=stated_answer)
            if read.prob_a is not None:
                return _Thought(thought, reasoning, read, stated_answer(reasoning), None)
        # No answer line (chat), or the paper's two steps (completion): ask "So the answer is:".
        follow_up = self.render(ctx, q, reasoning=reasoning)
        answer_params = _defaults(ctx, {"max_tokens": 8, "temperature": 0.0})
        read = await self._read(ctx, "label_answer", follow_up, 0, **answer_params)
        stated = parse_answer(reasoning)
        if read.prob_a is None and stated is not None:
            # The answer call said nothing usable: the reasoning may say it.
            read = LabelRead(read.result, 1.0 if stated == "A" else 0.0, "parsed", stated, read.evidence)
            return _Thought(thought, reasoning, read, stated, None)
        contradicts = None if stated is None or read.answer is None else read.answer != stated
        return _Thought(thought, reasoning, read, stated, contradicts)

    async def _attempt(
        self,
        ctx: StepContext,
        q: Query,
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
        q: Query,
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
