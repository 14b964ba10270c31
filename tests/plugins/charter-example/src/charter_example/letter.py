"""`charter label --method letter`: a hard label from the letter the feedback model writes.

The paper's multiple-choice question, but the label is the written answer (P(A) = 1 or 0), never the
log-probabilities: a baseline to compare the soft labels with.
"""

from __future__ import annotations

from typing import Any

from charter.labels import parse_answer
from charter.runner import CallResult
from charter.steps.base import StepContext
from charter.steps.label import Labeler, LabelRead


class LabelLetter(Labeler):
    """Ask the multiple-choice question; the label is the letter in the answer's text."""

    name = "label_letter"
    method = "letter"

    def template_name(self, mode: str) -> str:
        return "label-mc-paper" if mode == "completion" else "label-mc-chat"

    def few_shot(self, ctx: StepContext, rng: Any) -> None:
        return None

    def read(self, result: CallResult, *, after_prefix: bool, parse: Any = parse_answer) -> LabelRead:
        letter = parse(result.completion.text)
        if letter is None:
            return LabelRead(result)  # unreadable: the labeler asks again, then flags the pair
        return LabelRead(result, 1.0 if letter == "A" else 0.0, "parsed", letter)
