"""GRPO (TRL's GRPOTrainer): group-relative policy optimisation against a reward model or the judge.

Registered as the trainer kind `grpo`: `KIND`, `OPTIONS` and `train_grpo` are all a registry needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from .online import train_online
from .options import GRPOOptions
from .scorers import Scorer

__all__ = ["CONFIG", "KIND", "OPTIONS", "GRPOOptions", "train_grpo"]

KIND = "grpo"
OPTIONS = GRPOOptions
CONFIG = GRPOConfig


def train_grpo(
    prompts: Iterable[Any],
    policy_model: str | os.PathLike[str],
    scorer: Scorer,
    out_dir: str | os.PathLike[str],
    config: GRPOOptions | None = None,
    *,
    eval_prompts: Iterable[Any] | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
) -> dict[str, Any]:
    """GRPO-train `policy_model` on `prompts`, rewarded by `scorer` (see `online.train_online`)."""
    return train_online(
        KIND,
        GRPOTrainer,
        GRPOConfig,
        prompts,
        policy_model,
        scorer,
        out_dir,
        config or GRPOOptions(),
        eval_prompts=eval_prompts,
        callbacks=callbacks,
    )
