"""Reading a multiple-choice answer: soft labels from log-probabilities, or a parsed/voted answer.

The paper's label is the normalised probability of the continuations " (A)" and " (B)". An API gives
us the top alternatives at each generated position, and tokenizers split the answer differently
(" (A)" as one token, " (" + "A" + ")", "(A", " A", ...). `option_probs` finds the first generated
position whose alternatives contain an option token in any of those forms, sums the probability mass
of every variant per option there, and normalises. When there are no log-probabilities the answer is
parsed from the text (`parse_answer`) and recorded as such, never guessed.

Also here: turning the paper's few-shot material (Human/Assistant transcripts, chain-of-thought
examples with a "{}" slot for the principle) into template inputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from charter.backends.base import TokenLogprob

Option = Literal["A", "B"]
OPTIONS: tuple[Option, Option] = ("A", "B")

# "A", " A", "(A", " (A)", "A)", "(A)." ... - a bare letter, optionally in parentheses.
_OPTION_TOKEN = re.compile(r"^\s*\(?\s*([AB])\s*\)?\s*[.:]?\s*$")


def option_of(token: str) -> Option | None:
    """The option a token stands for ("A" for " (A)", "(A", "A", ...), or None."""
    match = _OPTION_TOKEN.match(token)
    if not match:
        return None
    return "A" if match.group(1) == "A" else "B"


@dataclass
class OptionProbs:
    """Normalised option probabilities read at one generated position."""

    prob_a: float
    position: int
    mass: float  # the summed (unnormalised) probability of both options there

    @property
    def prob_b(self) -> float:
        return 1.0 - self.prob_a


def option_probs(tokens: Sequence[TokenLogprob]) -> OptionProbs | None:
    """Soft label from the first position whose top alternatives name an option, else None.

    The token actually generated counts as an alternative too (some servers leave it out of the top
    list). Probability mass is summed per option over every variant at that position, then the two
    are normalised to sum to 1. An option missing from the top alternatives gets no mass there.
    """
    for position, tok in enumerate(tokens):
        alternatives = dict(tok.top)
        if tok.token not in alternatives and math.isfinite(tok.logprob):
            alternatives[tok.token] = tok.logprob
        mass = {"A": 0.0, "B": 0.0}
        for text, logprob in alternatives.items():
            option = option_of(text)
            if option is not None and math.isfinite(logprob):
                mass[option] += math.exp(logprob)
        total = mass["A"] + mass["B"]
        if total > 0:
            return OptionProbs(prob_a=mass["A"] / total, position=position, mass=total)
    return None


_ANSWER_PATTERNS = [
    # "So the answer is: (B)", "The answer is B", "Answer: (A)" (the letters are case-sensitive)
    re.compile(r"(?i:answer)(?:\s+(?i:is))?\s*:?\s*\**\s*\(?\s*([AB])\b"),
    # "option (B) is the best response", "Option A is better"
    re.compile(
        r"(?i:option)\s*\(?([AB])\)?\s+(?i:is)\s+(?:(?i:the|clearly|much)\s+)?"
        r"(?i:best|better|preferable|preferred)"
    ),
    # "I choose (A)", "I would choose option (B)", "I prefer A"
    re.compile(r"\b(?i:choose|pick|prefer|select)\s+(?:(?i:option)\s*)?\(?([AB])\b"),
]
_LEADING = re.compile(r"^[\W_]*(?:\(([AB])\)|([AB])(?:[).:*]|\s*$))")
_MENTION = re.compile(r"\(([AB])\)")


def parse_answer(text: str) -> Option | None:
    """The option a free-text answer settles on, or None when it does not say clearly.

    Tried in order: an explicit "answer is (X)" (the last one wins), "option (X) is the best/better",
    "I choose (X)", an answer that starts with the option ("(A)", "B.", "**A**"), and finally a text
    that mentions exactly one of "(A)" / "(B)".
    """
    for pattern in _ANSWER_PATTERNS:
        found = pattern.findall(text)
        if found:
            return "A" if found[-1] == "A" else "B"
    leading = _LEADING.match(text.strip())
    if leading:
        return "A" if (leading.group(1) or leading.group(2)) == "A" else "B"
    mentioned = {m for m in _MENTION.findall(text)}
    if len(mentioned) == 1:
        return "A" if mentioned.pop() == "A" else "B"
    return None


def clamp(prob: float, bounds: tuple[float, float] | None) -> float:
    """Clamp a probability to [low, high] (the paper clamps CoT labels to [0.4, 0.6])."""
    if bounds is None:
        return prob
    low, high = bounds
    return min(max(prob, low), high)


# --- the paper's few-shot material ----------------------------------------------------------------

_TURN = re.compile(r"\n\n(?=(?:Human|Assistant):)")


def parse_transcript(text: str) -> list[dict[str, str]]:
    """`"\\n\\nHuman: q\\n\\nAssistant:"` -> `[{"role": "user", "content": "q"}]`.

    The paper's prompts end with an empty "Assistant:" turn (the slot for the response): it is
    dropped. Content is kept as it is (the paper has turns with leading spaces), minus the single
    space after the colon.
    """
    messages: list[dict[str, str]] = []
    for part in _TURN.split("\n\n" + text.lstrip("\n")):
        if not part:
            continue
        speaker, sep, content = part.partition(":")
        if not sep or speaker not in ("Human", "Assistant"):
            raise ValueError(f"not a Human/Assistant transcript: {part[:60]!r}")
        content = content.removeprefix(" ")
        role = "user" if speaker == "Human" else "assistant"
        messages.append({"role": role, "content": content})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"].strip():
        messages.pop()
    return messages


def frame_principle(principle: str) -> str:
    """A bare principle in the paper's instruction framing, `"\\n<principle> Options:"`."""
    return f"\n{principle} Options:"


def fill_cot_example(example: str, principle: str) -> str:
    """A chain-of-thought few-shot example with its principle filled in, starting with one blank line.

    The published examples mark the principle with "{}" and were filled with the instruction strings
    of RLMadisonInstructions.json ("\\n<principle> Options:"); their leading newlines vary ("\\n\\n",
    "\\n", none), so each is normalised to start with "\\n\\n" like the question that follows them.
    """
    return "\n\n" + example.lstrip("\n").replace("{}", frame_principle(principle), 1)


_COT_EXAMPLE = re.compile(
    r"Human: Consider the following conversation between a human(?: \(H\))? and an assistant(?: \(A\))?:\n\n"
    r"(?P<conversation>.*?)\n\n\{\}\n \(A\) \[\[\[(?P<a>.*?)\]\]\]\n \(B\) \[\[\[(?P<b>.*?)\]\]\]\n\n"
    r"Assistant: Let's think step by step:(?P<reasoning>.*?)\n\nHuman:\nSo the answer is: \((?P<answer>[AB])\)\s*$",
    re.DOTALL,
)
_COT_TURN = re.compile(r"\n\n(?=[HA]: )")


@dataclass
class CoTExample:
    """A chain-of-thought few-shot example taken apart (for the chat template)."""

    conversation: list[dict[str, str]]
    responses: list[str]
    reasoning: str
    answer: Option


def split_cot_example(example: str) -> CoTExample:
    """Take a paper chain-of-thought example apart; ValueError when it has another shape."""
    match = _COT_EXAMPLE.search(example)
    if not match:
        raise ValueError(f"not a chain-of-thought example in the paper's format: {example[:60]!r}")
    conversation = []
    for part in _COT_TURN.split(match["conversation"]):
        speaker, _, content = part.partition(": ")
        conversation.append({"role": "user" if speaker == "H" else "assistant", "content": content})
    answer: Option = "A" if match["answer"] == "A" else "B"
    return CoTExample(conversation, [match["a"], match["b"]], match["reasoning"].strip(), answer)


__all__ = [
    "OPTIONS",
    "CoTExample",
    "Option",
    "OptionProbs",
    "clamp",
    "fill_cot_example",
    "frame_principle",
    "option_of",
    "option_probs",
    "parse_answer",
    "parse_transcript",
    "split_cot_example",
]
