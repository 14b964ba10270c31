"""What GRPO and RLOO share: online RL on prompts, rewarded by a scorer (reward model or judge).

`grpo.py` and `rloo.py` each name their TRL trainer and config and call `train_online`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

from accelerate import PartialState
from datasets import Dataset
from transformers import PreTrainedModel, TrainerCallback

from .common import (
    build_config,
    last_logged,
    load_model,
    load_tokenizer,
    precision_name,
    save_trained,
    seed_everything,
    to_jsonable,
    validate_extra,
)
from .options import OnlineOptions
from .scorers import Scorer, reward_function

__all__ = ["check_groups", "train_kind", "train_online"]


def check_groups(kind: str, options: OnlineOptions) -> None:
    """`batch_size` counts completions: it must hold whole groups of `num_generations` (TRL's rule)."""
    if options.num_generations < 2:
        raise ValueError(
            f"{kind} compares completions to the same prompt: num_generations must be at least 2, "
            f"got {options.num_generations}"
        )
    local = options.batch_size * options.gradient_accumulation_steps
    if local % options.num_generations:
        raise ValueError(
            f"{kind}: --batch-size x gradient_accumulation_steps ({local}) must be a multiple of "
            f"num_generations ({options.num_generations}): each step scores whole groups of completions"
        )


def _eval(
    model: PreTrainedModel, tokenizer: Any, prompts: Sequence[Any], options: OnlineOptions
) -> list[str]:
    from .ppo import generate_responses

    if not prompts:
        return []
    return generate_responses(
        model,
        tokenizer,
        [p.messages for p in prompts],
        max_new_tokens=options.max_completion_length,
        temperature=options.eval_temperature,
        batch_size=options.eval_batch_size,
        max_prompt_length=options.max_prompt_length,
    )


def train_online(
    kind: str,
    trainer_class: type,
    config_class: type,
    prompts: Iterable[Any],
    policy_model: str | os.PathLike[str],
    scorer: Scorer,
    out_dir: str | os.PathLike[str],
    options: OnlineOptions,
    *,
    eval_prompts: Iterable[Any] | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
) -> dict[str, Any]:
    """Train `policy_model` with `trainer_class` (GRPOTrainer or RLOOTrainer), rewarded by `scorer`.

    `prompts` are what `train_ppo` takes (conversations, strings, or rows with `prompt_id`). The
    held-out prompts (or `eval_prompts`) are answered before and after training and those answers
    scored together: by the reward model one by one, by the judge head to head (before vs after).
    Returns JSON-safe metrics with `mean_reward_before`, `mean_reward_after`, `samples_before`,
    `samples_after`, `reward_history` (TRL's logged mean reward per logging step) and, for the
    judge, `judge_stats`.
    """
    from .ppo import _normalize_prompts, _split_eval

    validate_extra(config_class, options.extra)  # fail before any loading or writing
    check_groups(kind, options)
    if scorer.relative and PartialState().num_processes > 1:
        # TRL hands each process its own slice of the completions, which can split a group, and the
        # judge compares whole groups (and writes to one database file).
        raise ValueError(
            f"{kind} with the judge runs in one process; use --reward-model under accelerate launch"
        )
    started = time.perf_counter()
    seed_everything(options.seed)
    all_prompts = _normalize_prompts(prompts, "prompt")
    if not all_prompts:
        raise ValueError(f"no prompts to train {kind} on")
    if eval_prompts is not None:
        train_prompts, held_out, eval_on_train = (
            all_prompts,
            _normalize_prompts(eval_prompts, "eval prompt"),
            False,
        )
    else:
        train_prompts, held_out, eval_on_train = _split_eval(all_prompts, options)  # type: ignore[arg-type]

    tokenizer = load_tokenizer(policy_model, trust_remote_code=options.trust_remote_code)
    policy = load_model(policy_model, dtype=options.dtype, trust_remote_code=options.trust_remote_code)
    device = PartialState().device
    before = _eval(cast(PreTrainedModel, cast(Any, policy).to(device)), tokenizer, held_out, options)

    trl_fields: dict[str, Any] = {
        "num_generations": options.num_generations,
        "max_completion_length": options.max_completion_length,
        "temperature": options.temperature,
        "log_completions": False,  # rich tables on the terminal; the samples go to the database
    }
    args: Any
    args, resolved = build_config(config_class, options, out_dir, **trl_fields)
    dataset = Dataset.from_list([{"prompt": p.messages} for p in train_prompts])
    trainer = trainer_class(
        model=policy,
        reward_funcs=[reward_function(scorer)],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks or []),
    )
    trainer.train()
    save_trained(trainer, out_dir)
    trained = cast(PreTrainedModel, trainer.accelerator.unwrap_model(trainer.model))
    after = _eval(trained, tokenizer, held_out, options)

    mean_before = mean_after = None
    samples_before: list[dict[str, Any]] = []
    samples_after: list[dict[str, Any]] = []
    if held_out:
        # Scored together: the judge compares each prompt's answer before with its answer after.
        scores = scorer.rewards([p.messages for p in held_out] * 2, [*before, *after])
        n = len(held_out)
        for texts, rewards, out in ((before, scores[:n], samples_before), (after, scores[n:], samples_after)):
            for p, text, reward in zip(held_out, texts, rewards, strict=True):
                out.append(
                    {"prompt_id": p.prompt_id, "prompt": p.messages, "response": text, "reward": reward}
                )
        mean_before, mean_after = sum(scores[:n]) / n, sum(scores[n:]) / n

    history = trainer.state.log_history
    metrics: dict[str, Any] = {
        "kind": kind,
        "train_rows": len(train_prompts),
        "eval_rows": len(held_out),
        "eval_on_train_prompts": eval_on_train,
        "steps": trainer.state.global_step,
        "num_generations": options.num_generations,
        "reward": scorer.describe(),
        "relative_reward": scorer.relative,
        "mean_reward_before": mean_before,
        "mean_reward_after": mean_after,
        "reward_delta": None if mean_before is None or mean_after is None else mean_after - mean_before,
        "reward_history": [float(e["reward"]) for e in history if "reward" in e],
        "final_reward": last_logged(history, "reward"),
        "final_loss": last_logged(history, "loss"),
        "final_kl": last_logged(history, "kl"),
        "samples_before": samples_before,
        "samples_after": samples_after,
        "precision": precision_name(args),
        "device": str(trainer.accelerator.device),
        "runtime_s": round(time.perf_counter() - started, 3),
        "trl_config": resolved,
    }
    stats = getattr(scorer, "stats", None)
    if stats is not None:
        metrics["judge_stats"] = dict(stats)
    return cast(dict[str, Any], to_jsonable(metrics))


def train_kind(
    kind: str,
    prompts: Iterable[Any],
    policy_model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: OnlineOptions,
    *,
    reward_model: str | os.PathLike[str] | None = None,
    judge: Any = None,
    db: str | os.PathLike[str] | None = None,
    eval_prompts: Iterable[Any] | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
) -> dict[str, Any]:
    """`train_grpo` or `train_rloo` (by `kind`) with the reward model at `reward_model`, or else the
    judge (`JudgeSettings`) storing its calls in `db`: what `run_training` dispatches to."""
    import importlib

    scorer: Scorer
    if reward_model is not None:
        from .scorers import RewardModelScorer

        scorer = RewardModelScorer(reward_model, batch_size=options.eval_batch_size)
    else:
        from .judge import ConstitutionalJudge, as_settings

        if db is None:
            raise ValueError("the judge stores its calls in a database: give db")
        scorer = ConstitutionalJudge(db, as_settings(judge))
    train = getattr(importlib.import_module(f"charter_trl.{kind}"), f"train_{kind}")
    return cast(
        dict[str, Any],
        train(
            prompts, policy_model, scorer, out_dir, options, eval_prompts=eval_prompts, callbacks=callbacks
        ),
    )
