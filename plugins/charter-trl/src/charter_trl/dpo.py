"""DPO on AI-feedback preference pairs: the RL-free alternative to reward model + PPO."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from datasets import Dataset
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from .common import (
    DEFAULT_CHAT_TEMPLATE,
    build_config,
    finish_metrics,
    last_logged,
    load_model,
    load_tokenizer,
    log_summary,
    normalize_pairs,
    save_trained,
    seed_everything,
    validate_extra,
)
from .options import DPOOptions

__all__ = ["DPOOptions", "train_dpo"]


def train_dpo(
    pairs: Iterable[Mapping[str, Any]],
    model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: DPOOptions | None = None,
    *,
    callbacks: Sequence[TrainerCallback] | None = None,
) -> dict[str, Any]:
    """Train `model` with DPO on preference pairs and write model + tokenizer to `out_dir`.

    `pairs` have the shape `train_reward` takes; `chosen_prob` only filters (pairs below
    `min_chosen_prob` are dropped). The reference model is loaded explicitly from the same path.
    `callbacks` are passed to the TRL trainer.
    Returns JSON-safe metrics: `final_loss`, `train_rows`, `dropped_rows`, `final_reward_accuracy`,
    `final_reward_margin`, ...
    """
    options = config or DPOOptions()
    validate_extra(DPOConfig, options.extra)  # fail before any loading or writing
    started = time.perf_counter()
    seed_everything(options.seed)
    normalized = normalize_pairs(pairs)
    kept = [p for p in normalized if p["chosen_prob"] >= options.min_chosen_prob]
    if not kept:
        raise ValueError(f"no pairs left with chosen_prob >= {options.min_chosen_prob}")

    tokenizer = load_tokenizer(model, trust_remote_code=options.trust_remote_code)
    default_template = tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    args, resolved = build_config(
        DPOConfig, options, out_dir, beta=options.beta, max_length=options.max_length
    )
    policy = load_model(model, dtype=options.dtype, trust_remote_code=options.trust_remote_code)
    # Loaded here rather than by TRL so a missing model fails with our one-line error, offline.
    ref_model = load_model(model, dtype=options.dtype, trust_remote_code=options.trust_remote_code)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in kept])

    trainer = DPOTrainer(
        model=policy,
        ref_model=ref_model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks or []),
    )
    result = trainer.train()
    save_trained(trainer, out_dir)

    history = trainer.state.log_history
    metrics: dict[str, Any] = {
        "kind": "dpo",
        "train_rows": len(kept),
        "dropped_rows": len(normalized) - len(kept),
        "beta": args.beta,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        **log_summary(history),
        "final_reward_accuracy": last_logged(history, "rewards/accuracies"),
        "final_reward_margin": last_logged(history, "rewards/margins"),
    }
    return finish_metrics(
        metrics, trainer, result, resolved, default_template=default_template, started=started
    )
