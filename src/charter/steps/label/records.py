"""What labeling reads and writes: a pair being labeled (`PairItem`) and each question put to the
feedback model about it (`FeedbackQuery`, a row of `feedback_queries`)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from charter.records import PromptRecord


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
