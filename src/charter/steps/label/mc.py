"""`LabelMC`: the paper's multiple-choice label, read from the log-probabilities of " (A)" / " (B)"."""

from __future__ import annotations

from typing import Any, ClassVar

from charter.labels import parse_answer, parse_transcript
from charter.steps.base import StepContext
from charter.steps.label.base import _Answer, _defaults, _Labeler, _Question, _Try, _vote
from charter.steps.label.records import FeedbackQuery


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
