"""The `charter` entry point of charter-trl: the trainers by kind, and the `train` and `demo` commands.

Each trainer is a `charter.trainers.TrainerSpec`; `charter train KIND` and `run_training(KIND)` look it
up in `charter.plugins.get_trainers()` like any third party's. The specs' callables import torch and
TRL on the first call, so loading the plugin (which `charter --help` does) stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from charter.hookspecs import hookimpl
from charter.trainers import TrainerSpec


def _lazy(module: str, name: str) -> Callable[..., Any]:
    def get() -> Any:
        return getattr(importlib.import_module(module), name)

    return get


def _train_sft(rows: Any, model: str, out: Any, options: Any, *, callbacks: Any = (), mix: Any = None) -> Any:
    from charter_trl.sft import train_sft

    return train_sft(rows, model, out, options, mix_rows=mix, callbacks=callbacks)


def _train_reward(
    rows: Any, model: str, out: Any, options: Any, *, callbacks: Any = (), mix: Any = None
) -> Any:
    from charter_trl.reward import train_reward

    return train_reward(rows, model, out, options, mix_pairs=mix, callbacks=callbacks)


def _train_dpo(rows: Any, model: str, out: Any, options: Any, *, callbacks: Any = ()) -> Any:
    from charter_trl.dpo import train_dpo

    return train_dpo(rows, model, out, options, callbacks=callbacks)


def _train_ppo(
    rows: Any,
    model: str,
    out: Any,
    options: Any,
    *,
    callbacks: Any = (),
    reward_model: str,
    eval_prompts: Any = None,
) -> Any:
    from charter_trl.ppo import train_ppo

    return train_ppo(rows, model, reward_model, out, options, eval_prompts=eval_prompts, callbacks=callbacks)


def _train_online(kind: str) -> Callable[..., Any]:
    def train(
        rows: Any,
        model: str,
        out: Any,
        options: Any,
        *,
        callbacks: Any = (),
        reward_model: str | None = None,
        judge: Any = None,
        db: Any = None,
        eval_prompts: Any = None,
    ) -> Any:
        from charter_trl.online import train_kind

        return train_kind(
            kind,
            rows,
            model,
            out,
            options,
            reward_model=reward_model,
            judge=judge,
            db=db,
            eval_prompts=eval_prompts,
            callbacks=callbacks,
        )

    train.__name__ = f"_train_{kind}"
    return train


def trainer_specs() -> list[TrainerSpec]:
    """charter-trl's trainers: sft, reward, ppo, dpo, and the online grpo and rloo."""
    from charter_trl import cli
    from charter_trl.options import (
        DPOOptions,
        GRPOOptions,
        PPOOptions,
        RewardOptions,
        RLOOOptions,
        SFTOptions,
    )

    # Online RL (grpo, rloo): prompts in, rewarded by a reward model (--reward-model) or the judge
    # (--judge-model).

    return [
        TrainerSpec(
            "sft",
            SFTOptions,
            "revisions",
            _train_sft,
            help="SL-CAI: supervised fine-tuning on the revisions",
            highlights=("final_loss", "loss_mode"),
            inputs=frozenset({"mix", "all_rounds"}),
            command=cli.sft_cmd,
            library_config=_lazy("trl", "SFTConfig"),
        ),
        TrainerSpec(
            "reward",
            RewardOptions,
            "preference_pairs",
            _train_reward,
            help="RL-CAI: the preference (reward) model",
            highlights=("final_loss", "eval_accuracy", "eval_ece"),
            inputs=frozenset({"mix"}),
            command=cli.reward_cmd,
            library_config=_lazy("trl", "RewardConfig"),
        ),
        TrainerSpec(
            "ppo",
            PPOOptions,
            "prompts",
            _train_ppo,
            help="RL-CAI: PPO against the reward model",
            highlights=("mean_reward_before", "mean_reward_after", "final_kl"),
            inputs=frozenset({"reward_model", "eval_prompts"}),
            command=cli.ppo_cmd,
            library_config=_lazy("charter_trl.ppo", "PPOConfig"),
        ),
        TrainerSpec(
            "dpo",
            DPOOptions,
            "preference_pairs",
            _train_dpo,
            help="DPO on preference_pairs",
            highlights=("final_loss", "final_reward_accuracy", "final_reward_margin"),
            command=cli.dpo_cmd,
            library_config=_lazy("trl", "DPOConfig"),
        ),
        *(
            TrainerSpec(
                kind,
                options,
                "prompts",
                _train_online(kind),
                help=f"Online RL-CAI: {kind.upper()}, rewarded by the reward model or the judge",
                highlights=("mean_reward_before", "mean_reward_after", "final_reward"),
                inputs=frozenset({"reward_model", "judge", "eval_prompts"}),
                command=command,
                library_config=_lazy("trl", config),
            )
            for kind, options, command, config in (
                ("grpo", GRPOOptions, cli.grpo_cmd, "GRPOConfig"),
                ("rloo", RLOOOptions, cli.rloo_cmd, "RLOOConfig"),
            )
        ),
    ]


@hookimpl
def register_trainers(register: Callable[[str, Any], None]) -> None:
    """Register `sft`, `reward`, `ppo`, `dpo`, `grpo` and `rloo`."""
    for spec in trainer_specs():
        register(spec.kind, spec)


@hookimpl
def register_commands(app: Any) -> None:
    """Add `charter train <kind>` for every registered trainer, and `charter demo`."""
    from charter_trl.cli import register

    register(app)
