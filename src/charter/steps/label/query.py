"""One question about a pair (`Query`), one answer call read (`LabelRead`), and what an attempt and a
(member, order) question concluded: the values a labeling method passes around."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from charter.constitution import Principle
from charter.labels import Reading
from charter.prompts import RenderedPrompt
from charter.runner import CallResult
from charter.steps.label.records import FeedbackQuery, PairItem

# Weakest evidence wins when a label combines several answers.
_SOURCE_RANK: dict[str, int] = {"scores": 0, "logprobs": 1, "vote": 2, "parsed": 3}


@dataclass
class _Answer:
    """What one (member, order) query concluded."""

    ok: bool
    probs: list[float] = field(default_factory=list)  # P(A) as presented: one, or one per CoT sample
    source: str | None = None
    reasoning: str | None = None
    queries: list[FeedbackQuery] = field(default_factory=list)


@dataclass
class LabelRead:
    """One answer call read (`Labeler.read`): P(A) as presented, where it came from (`scores`,
    `logprobs`, `parsed`), the letter, and the log-probability evidence (`charter.labels.Reading`:
    position, token, option mass)."""

    result: CallResult
    prob_a: float | None = None
    source: str | None = None
    answer: str | None = None
    evidence: Reading | None = None


@dataclass(frozen=True)
class Query:
    """One question about a pair (`Labeler.render` renders it): its ensemble member, principle,
    option order (`swapped`: response_b is shown as option A), few-shot examples and attempt number."""

    item: PairItem
    member: int
    principle: Principle
    swapped: bool
    few_shot: Any
    attempt: int = 0


@dataclass
class _Try:
    """One attempt at a (member, order) query: what it read (P(A) as presented) and its record."""

    prob_a: float | None
    source: str | None
    query: FeedbackQuery
    reasoning: str | None = None
    rendered: RenderedPrompt | None = None  # the question asked (multiple choice: the votes reuse it)
