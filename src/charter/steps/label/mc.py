"""`LabelMC`: the paper's multiple-choice label, read from the log-probabilities of " (A)" / " (B)"."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from charter.labels import parse_transcript
from charter.steps.base import StepContext
from charter.steps.label.base import Labeler


@functools.lru_cache(maxsize=256)
def _example_conversation(transcript: str) -> list[dict[str, str]]:
    """A few-shot example's conversation, parsed once: every pair renders the same few (read-only)."""
    return parse_transcript(transcript)


class LabelMC(Labeler):
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
                    "conversation": _example_conversation(ex.conversation),
                    "principle": principle.feedback,
                    "responses": [ex.chosen, ex.rejected] if chosen_first else [ex.rejected, ex.chosen],
                    "answer": "A" if chosen_first else "B",
                }
            )
        return out
