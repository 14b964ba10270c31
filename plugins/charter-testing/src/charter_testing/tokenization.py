"""Replies for the fake server tokenized the way real models tokenize them.

Real servers return one entry per *model token*, and real byte-level BPE tokenizers split an answer
like " (A)" into " (", "A", ")", put the leading space on some tokens and not others, and have tokens
such as "As" or " Answer" that begin with an option letter. `BPEReplies` trains such a tokenizer in
memory with the `tokenizers` library (nothing is downloaded) and turns a reply text into a
`FakeReply` whose tokens are that tokenizer's, with top log-probabilities per position::

    bpe = BPEReplies.train()
    bpe.split(" (A)")                                  # [' (', 'A', ')']
    server.responder = lambda req: bpe.answer("So the answer is: (B)", {"A": 0.2, "B": 0.8})

`tokenizers` is a test dependency (it comes with transformers); it is imported only here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from charter_testing.fake_openai import DEFAULT_LOGPROB, FakeReply, FakeToken

__all__ = ["DEFAULT_CORPUS", "Alternatives", "BPEReplies"]

#: Per position: (index, token text) -> extra top alternatives (text -> probability), or None.
Alternatives = Callable[[int, str], "dict[str, float] | None"]

# Text like a feedback model's answers: " (" before many different characters (so it becomes a token
# of its own, as in GPT-2's vocabulary), words that start with A or B, and the answer lines.
DEFAULT_CORPUS: tuple[str, ...] = (
    "So the answer is: (A)",
    "So the answer is: (B)",
    "The answer is: (A)",
    "The answer is: (B)",
    "As an Answer, option (A) is kind (see (1), (2) and (x)) but (B) is not.",
    "Assistant: Both are fine (mostly) (sort of) (I think) and the Answer is long.",
    "Because A and B (each) differ (a lot), the best is (B); As before, (A) declines.",
    "Option (A) declines politely and offers help; option (B) gives harmful detail.",
)
# A letter that stands alone (not inside a word such as "As" or "Bob").
_LETTER = re.compile(r"(?<![A-Za-z])[AB](?![A-Za-z])")


class BPEReplies:
    """Split reply texts with a real BPE tokenizer and attach top log-probabilities per token."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 300) -> BPEReplies:
        """A byte-level BPE (GPT-2 style pre-tokenizer) trained in memory on `corpus`."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        # Repeated so the merges reflect the corpus's frequencies rather than ties.
        tokenizer.train_from_iterator(list(corpus) * 20, trainer)
        return cls(tokenizer)

    def split(self, text: str) -> list[str]:
        """The token texts of `text` (they concatenate to `text`: taken from the encoding's offsets)."""
        encoding = self.tokenizer.encode(text)
        pieces: list[str] = []
        at = 0
        for _, end in encoding.offsets:
            if end > at:
                pieces.append(text[at:end])
                at = end
        if at < len(text):
            pieces.append(text[at:])
        return pieces

    def reply(self, text: str, alternatives: Alternatives | None = None) -> FakeReply:
        """`text` as a reply with this tokenizer's tokens; `alternatives` adds top entries per position.

        The token generated at a position keeps the probability `alternatives` gives it, else
        `DEFAULT_LOGPROB` (a confident token, as most positions of a greedy answer are).
        """
        tokens = []
        for i, piece in enumerate(self.split(text)):
            extra = alternatives(i, piece) if alternatives is not None else None
            top = {piece: DEFAULT_LOGPROB}
            for alt, prob in (extra or {}).items():
                top[alt] = math.log(prob) if prob > 0 else -math.inf
            tokens.append(FakeToken(piece, {k: v for k, v in top.items() if math.isfinite(v)}))
        return FakeReply(text, tokens=tokens)

    def answer(
        self,
        text: str,
        probs: dict[str, float],
        alternatives: Alternatives | None = None,
    ) -> FakeReply:
        """`text` whose last stand-alone option letter carries `probs` ({"A": 0.2, "B": 0.8}).

        At that letter's token each option is spelled like the token itself (" (B)" gives " (A)" and
        " (B)", "B" gives "A" and "B"), as a real tokenizer's alternatives would be.
        """
        letters = list(_LETTER.finditer(text))
        if not letters:
            raise ValueError(f"no option letter in {text!r}")
        target = letters[-1].start()
        pieces = self.split(text)
        starts = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
        index = next(i for i, s in enumerate(starts) if s <= target < s + len(pieces[i]))
        piece = pieces[index]
        inner = target - starts[index]

        def spelled(i: int, token: str) -> dict[str, float] | None:
            extra = dict(alternatives(i, token) or {}) if alternatives is not None else {}
            if i == index:
                for option, prob in probs.items():
                    extra[piece[:inner] + option + piece[inner + 1 :]] = prob
            return extra or None

        return self.reply(text, spelled)
