"""Synthetic rows for the charter-trl tests (a uniquely named module, importable from tests)."""

from __future__ import annotations

from typing import Any

GOOD = "yes thanks hello world, use strong passwords"
BAD = "no"


def make_pairs(n: int = 12, chosen_prob: float = 0.9) -> list[dict[str, Any]]:
    """Pairs whose chosen and rejected texts are trivially told apart (long/polite vs "no")."""
    return [
        {
            "prompt": [{"role": "user", "content": f"Can you help me with question {i}?"}],
            "chosen": [{"role": "assistant", "content": GOOD}],
            "rejected": [{"role": "assistant", "content": BAD}],
            "chosen_prob": chosen_prob,
        }
        for i in range(n)
    ]


def make_sft_rows(n: int = 12) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"How do I stay safe online? ({i})"},
                {"role": "assistant", "content": "Use strong passwords and keep software updated."},
            ]
        }
        for i in range(n)
    ]
