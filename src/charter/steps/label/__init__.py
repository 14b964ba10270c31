"""Labeling steps: the shared `Labeler` machinery, `LabelMC` (multiple choice) and `LabelCoT`."""

from charter.steps.label.cot import LabelCoT
from charter.steps.label.mc import LabelMC
from charter.steps.label.records import FeedbackQuery, PairItem, new_pair, stored_prompt

__all__ = ["FeedbackQuery", "LabelCoT", "LabelMC", "PairItem", "new_pair", "stored_prompt"]
