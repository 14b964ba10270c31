"""Labeling methods: the shared `Labeler` machinery (subclass it to add a method), `LabelMC` (multiple choice) and `LabelCoT`."""

from charter.steps.label.base import Labeler, LabelRead, Query
from charter.steps.label.cot import LabelCoT
from charter.steps.label.mc import LabelMC
from charter.steps.label.records import FeedbackQuery, PairItem, new_pair, stored_prompt

__all__ = [
    "FeedbackQuery",
    "LabelCoT",
    "LabelMC",
    "LabelRead",
    "Labeler",
    "PairItem",
    "Query",
    "new_pair",
    "stored_prompt",
]
