"""RLOO (TRL's RLOOTrainer): REINFORCE with a leave-one-out baseline, against a reward model or the judge.

Registered as the trainer kind `rloo`: `KIND`, `OPTIONS` and `train_rloo` are all a registry needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from transformers import TrainerCallback
from trl import RLOOConfig, RLOOTrainer

from .online import train_online
from .options import RLOOOptions
from .scorers import Scorer

__all__ = ["CONFIG", "KIND", "OPTIONS", "RLOOOptions", "train_rloo"]

KIND = "rloo"
OPTIONS = RLOOOptions
CONFIG = RLOOConfig


def train_rloo(
    prompts: Iterable[Any],
    policy_model: str | os.PathLike[str],
    scorer: Scorer,
    out_dir: str | os.PathLike[str],
    config: RLOOOptions | None = None,
    *,
    eval_prompts: Iterable[Any] | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
) -> dict[str, Any]:
    """RLOO-train `policy_model` on `prompts`, rewarded by `scorer` (see `online.train_online`)."""
    return train_online(
        KIND,
        RLOOTrainer,
        RLOOConfig,
        prompts,
        policy_model,
        scorer,
        out_dir,
        config or RLOOOptions(),
        eval_prompts=eval_prompts,
        callbacks=callbacks,
    )
