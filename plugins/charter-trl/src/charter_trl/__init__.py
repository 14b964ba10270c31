"""charter-trl: SFT, reward-model, PPO, DPO, GRPO and RLOO trainers for charter data.

Each trainer takes plain rows (the shapes of charter's `sft_examples` / `preference_pairs` views),
a model path or hub id and an output directory, writes a loadable model + tokenizer there and
returns a JSON-safe metrics dict::

    from charter_trl import SFTOptions, train_sft
    metrics = train_sft(rows, "Qwen/Qwen2.5-0.5B-Instruct", "out/sft", SFTOptions(max_steps=100))

`run_training(kind, db=..., model=..., out=..., **options)` does the same from a charter database
and records the run in `training_runs` (what `charter train` calls); `run_demo` is `charter demo`.

Names are imported lazily: `import charter_trl` (and the options) stay cheap, and torch/TRL load
on first use of a trainer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .options import DPOOptions, GRPOOptions, PPOOptions, RewardOptions, RLOOOptions, SFTOptions, TrainOptions

if TYPE_CHECKING:
    from .common import ModelLoadError
    from .demo import run_demo
    from .dpo import train_dpo
    from .grpo import train_grpo
    from .judge import ConstitutionalJudge, JudgeSettings
    from .ppo import train_ppo
    from .reward import score, soft_label_loss, train_reward
    from .rloo import train_rloo
    from .scorers import RewardModelScorer
    from .sft import train_sft
    from .training import TrainingFailed, run_training

_LAZY = {
    "ModelLoadError": "common",
    "train_sft": "sft",
    "train_reward": "reward",
    "soft_label_loss": "reward",
    "score": "reward",
    "train_ppo": "ppo",
    "train_dpo": "dpo",
    "train_grpo": "grpo",
    "train_rloo": "rloo",
    "ConstitutionalJudge": "judge",
    "JudgeSettings": "judge",
    "RewardModelScorer": "scorers",
    "run_training": "training",
    "TrainingFailed": "training",
    "run_demo": "demo",
}

__all__ = [
    "ConstitutionalJudge",
    "DPOOptions",
    "GRPOOptions",
    "JudgeSettings",
    "ModelLoadError",
    "PPOOptions",
    "RLOOOptions",
    "RewardModelScorer",
    "RewardOptions",
    "SFTOptions",
    "TrainOptions",
    "TrainingFailed",
    "run_demo",
    "run_training",
    "score",
    "soft_label_loss",
    "train_dpo",
    "train_grpo",
    "train_ppo",
    "train_reward",
    "train_rloo",
    "train_sft",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'charter_trl' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
