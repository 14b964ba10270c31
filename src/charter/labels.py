"""Reading a multiple-choice answer: soft labels from log-probabilities, or a parsed/voted answer.

The paper's label is the normalised probability of the continuations " (A)" and " (B)" after "The
answer is:". An API gives the top alternatives at each generated position, and tokenizers split the
answer differently (" (A)" as one token, " (" + "A" + ")", "(A", " A", ...). `read_answer` finds the
position where the letter is actually given - right after the last answer prefix ("The answer is:",
"So the answer is:", "Answer:") in the generated text, else at the start of the generation (the prompt
ended with the prefix), else right after the first "(" that opens an option - and sums the probability
of every spelling of each option *at that position only*. The summed mass of both options there is the
evidence: below `min_mass` the position is not an answer the model was sure it was giving (a letter
inside a word, garbage before the answer) and no probability is read from it; the caller then falls
back to the parsed text (`parse_answer`), recorded as such, never guessed.

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
#: Below this summed probability of both options at the answer position, no logprob label is read.
DEFAULT_MIN_OPTION_MASS = 0.5

# "A", " A", "(A", " (A)", "A)", "(A).", "**A**" ... - a bare letter, optionally in parentheses or bold.
_OPTION_TOKEN = re.compile(r"^\s*[(\[*]*\s*([AB])\s*[)\]*]*\s*[.:]?\s*$")
# The prefix the letter follows; the last one in a text is the answer (reasoning may quote others).
_ANSWER_PREFIX = re.compile(r"(?i:\bthe\s+answer\s+is\b\s*:?|\banswer\s*:)")
# A token (or its part after the prefix) that gives no content yet: spaces, an opening "(" or markup.
_OPENING = re.compile(r"^[\s(\[*\"'`]*$")
# An opening parenthesis followed by an option letter that is not the start of a word ("(As" is not).
_PAREN_LETTER = re.compile(r"\(\s*([AB])(?![A-Za-z])")


def option_of(token: str) -> Option | None:
    """The option a token stands for ("A" for " (A)", "(A", "A", ...), or None ("As", " (", ...)."""
    match = _OPTION_TOKEN.match(token)
    if not match:
        return None
    return "A" if match.group(1) == "A" else "B"


@dataclass
class Reading:
    """What the log-probabilities say at the answer position.

    `position` is the index of the generated token where the letter is given and `token` the token
    generated there (both None when no such position was found); `mass` the unnormalised probability
    of both options there; `prob_a` the normalised P(A), or None when `mass` is below the minimum.
    """

    position: int | None = None
    token: str | None = None
    mass: float = 0.0
    prob_a: float | None = None

    @property
    def letter(self) -> Option | None:
        """The more probable option, when a probability was read."""
        if self.prob_a is None:
            return None
        return "A" if self.prob_a >= 0.5 else "B"


@dataclass
class OptionProbs:
    """Normalised option probabilities read at one generated position."""

    prob_a: float
    position: int
    mass: float  # the summed (unnormalised) probability of both options there
    token: str = ""  # the token generated there

    @property
    def prob_b(self) -> float:
        return 1.0 - self.prob_a


def _first_content(tokens: Sequence[TokenLogprob], starts: list[int], anchor: int) -> int | None:
    """The first token that gives content at or after character `anchor` (skipping " (", spaces)."""
    for i, tok in enumerate(tokens):
        end = starts[i] + len(tok.token)
        if end <= anchor:
            continue
        if not _OPENING.match(tok.token[max(0, anchor - starts[i]) :]):
            return i
    return None


def _token_at(starts: list[int], tokens: Sequence[TokenLogprob], offset: int) -> int | None:
    for i, tok in enumerate(tokens):
        if starts[i] <= offset < starts[i] + len(tok.token):
            return i
    return None


def _mass_at(tok: TokenLogprob, head: str) -> tuple[float, float]:
    """The summed probability of every spelling of A and of B among the alternatives of `tok`.

    The generated token counts as an alternative too (some servers leave it out of the top list).
    `head` is text before the answer that the generated token also holds (a token like ": (A"): an
    alternative that starts with the same text is read without it.
    """
    alternatives = dict(tok.top)
    if tok.token not in alternatives and math.isfinite(tok.logprob):
        alternatives[tok.token] = tok.logprob
    mass = {"A": 0.0, "B": 0.0}
    for text, logprob in alternatives.items():
        if head and text.startswith(head):
            text = text[len(head) :]
        option = option_of(text)
        if option is not None and math.isfinite(logprob):
            mass[option] += math.exp(logprob)
    return mass["A"], mass["B"]


def read_answer(
    tokens: Sequence[TokenLogprob],
    *,
    min_mass: float = DEFAULT_MIN_OPTION_MASS,
    after_prefix: bool = False,
) -> Reading:
    """Read P(A) at the position where the generated text gives its option letter.

    Candidates, in order: the first content token after the last answer prefix ("So the answer is:")
    in the text; when there is none (and `after_prefix` is False: a multiple-choice answer, whose
    prompt ends with the prefix), the first content token of the generation, then the letter right
    after the first opening "(". The first candidate whose option mass reaches `min_mass` (and is
    above 0) gives the probability; otherwise the reading carries the evidence of the best candidate
    and no probability.
    """
    starts: list[int] = []
    offset = 0
    for tok in tokens:
        starts.append(offset)
        offset += len(tok.token)
    text = "".join(tok.token for tok in tokens)
    candidates: list[tuple[int, int]] = []  # (token index, character offset where the answer starts)
    prefixes = list(_ANSWER_PREFIX.finditer(text))
    if prefixes:
        anchor = prefixes[-1].end()
        found = _first_content(tokens, starts, anchor)
        if found is not None:
            candidates.append((found, anchor))
    elif not after_prefix:
        found = _first_content(tokens, starts, 0)
        if found is not None:
            candidates.append((found, 0))
        paren = _PAREN_LETTER.search(text)
        if paren is not None:
            at = _token_at(starts, tokens, paren.start(1))
            if at is not None and all(at != c for c, _ in candidates):
                candidates.append((at, paren.start(1)))
    best = Reading()
    for index, anchor in candidates:
        tok = tokens[index]
        head = tok.token[: max(0, anchor - starts[index])]
        mass_a, mass_b = _mass_at(tok, head)
        total = mass_a + mass_b
        if total > 0 and total >= min_mass:
            return Reading(index, tok.token, total, mass_a / total)
        if best.position is None or total > best.mass:
            best = Reading(index, tok.token, total, None)
    return best


def read_scores(tok: TokenLogprob) -> Reading:
    """Exact option scores (log-probabilities of the whole continuations " (A)" / " (B)", as the
    `score_options` backends give them in `tok.top`), normalised without underflow. No minimum mass:
    the scores are of the options themselves, not of one generated position."""
    scores: dict[str, float] = {}
    for text, logprob in tok.top.items():
        option = option_of(text)
        if option is not None and math.isfinite(logprob):
            scores[option] = logprob
    if "A" not in scores or "B" not in scores:
        return Reading(0, tok.token, sum(math.exp(v) for v in scores.values()))
    gap = max(-700.0, min(700.0, scores["B"] - scores["A"]))
    mass = math.exp(scores["A"]) + math.exp(scores["B"])
    return Reading(0, tok.token, mass, 1.0 / (1.0 + math.exp(gap)))


def option_probs(
    tokens: Sequence[TokenLogprob], min_mass: float = DEFAULT_MIN_OPTION_MASS
) -> OptionProbs | None:
    """Soft label read at the answer position (`read_answer`), or None when none could be read."""
    reading = read_answer(tokens, min_mass=min_mass)
    if reading.prob_a is None or reading.position is None:
        return None
    return OptionProbs(reading.prob_a, reading.position, reading.mass, reading.token or "")


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


def stated_answer(text: str) -> Option | None:
    """The option of the last explicit answer line ("So the answer is: (B)") in a text, or None."""
    found = _ANSWER_PATTERNS[0].findall(text)
    if not found:
        return None
    return "A" if found[-1] == "A" else "B"


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
    "DEFAULT_MIN_OPTION_MASS",
    "OPTIONS",
    "CoTExample",
    "Option",
    "OptionProbs",
    "Reading",
    "clamp",
    "fill_cot_example",
    "frame_principle",
    "option_of",
    "option_probs",
    "parse_answer",
    "parse_transcript",
    "read_answer",
    "read_scores",
    "split_cot_example",
    "stated_answer",
]
