"""`charter train length-bias`: how far do the labels just prefer the longer response?

Fits P(chosen wins) = sigmoid(w * (tokens(chosen) - tokens(rejected)) / 100 + b) to the soft labels by
gradient descent, with the base model's tokenizer counting tokens, and writes OUT/length_bias.json.
A large `w` with high accuracy means the feedback model rewards length rather than the principles.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter.trainers import TrainerSpec


@dataclass
class LengthBiasOptions:
    """Set with --param: steps=, learning_rate=."""

    steps: int = 200
    learning_rate: float = 0.5


def _text(turns: Any) -> str:
    return " ".join(t["content"] for t in turns) if isinstance(turns, list) else str(turns)


def train(
    rows: list[dict[str, Any]], model: str, out: Path, options: LengthBiasOptions, *, callbacks: Any = ()
) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    diffs = [
        (len(tokenizer(_text(r["chosen"]))["input_ids"]) - len(tokenizer(_text(r["rejected"]))["input_ids"]))
        / 100
        for r in rows
    ]
    labels = [float(r["chosen_prob"]) for r in rows]
    w = b = 0.0
    loss = 0.0
    for _ in range(options.steps):
        grad_w = grad_b = loss = 0.0
        for x, y in zip(diffs, labels, strict=True):
            p = 1 / (1 + math.exp(-(w * x + b)))
            loss -= y * math.log(max(p, 1e-12)) + (1 - y) * math.log(max(1 - p, 1e-12))
            grad_w += (p - y) * x
            grad_b += p - y
        w -= options.learning_rate * grad_w / len(rows)
        b -= options.learning_rate * grad_b / len(rows)
    accuracy = sum((w * x + b > 0) == (y > 0.5) for x, y in zip(diffs, labels, strict=True)) / len(rows)
    out.mkdir(parents=True, exist_ok=True)
    result = {"weight": w, "bias": b, "final_loss": loss / len(rows), "accuracy": accuracy}
    (out / "length_bias.json").write_text(json.dumps(result), encoding="utf-8")
    return {**result, "train_rows": len(rows), "steps": options.steps}


TRAINER = TrainerSpec(
    kind="length-bias",
    options=LengthBiasOptions,
    source="preference_pairs",
    train=train,
    help="How far the labels prefer the longer response: a logistic fit on the length difference.",
    highlights=("weight", "accuracy"),
)
