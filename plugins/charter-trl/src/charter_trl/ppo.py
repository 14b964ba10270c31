"""RL-CAI: PPO against the preference model, with a KL penalty to the SFT policy.

This is the only module that imports `trl.experimental.ppo`: TRL 1.13 removed PPO, so keeping it
isolated here means it can move (or be vendored) without touching the other trainers.
"""

from __future__ import annotations

import copy
import os
import random
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from .common import (
    Conversation,
    _eos_ids,
    add_pad_token,
    as_conversation,
    build_config,
    chat_ids,
    fit_embeddings,
    last_logged,
    load_model,
    load_reward_model,
    load_tokenizer,
    precision_name,
    same_vocabulary,
    save_trained,
    seed_everything,
    to_jsonable,
    validate_extra,
)
from .options import PPOOptions, paper_deviations
from .reward import score

with warnings.catch_warnings():
    # We pin TRL 1.12 and import experimental PPO on purpose (see the module docstring).
    warnings.filterwarnings("ignore", message=".*importing from 'trl.experimental'")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

__all__ = ["PPOOptions", "generate_responses", "train_ppo"]


class _Prompt(NamedTuple):
    prompt_id: str | None
    messages: Conversation


def _normalize_prompts(prompts: Iterable[Any], what: str) -> list[_Prompt]:
    out: list[_Prompt] = []
    for i, prompt in enumerate(prompts):
        prompt_id = None
        if isinstance(prompt, Mapping):  # a row such as {"prompt_id", "prompt"} or {"id", "messages"}
            raw_id = prompt.get("prompt_id", prompt.get("id"))
            prompt_id = None if raw_id is None else str(raw_id)
            prompt = prompt.get("messages", prompt.get("prompt"))
        messages = as_conversation(prompt, "user", what=f"{what} {i}")
        if not messages:
            raise ValueError(f"{what} {i}: empty conversation")
        if messages[-1]["role"] == "assistant":
            raise ValueError(f"{what} {i}: a PPO prompt must not end with an assistant turn")
        out.append(_Prompt(prompt_id, messages))
    return out


def _prompt_ids(
    tokenizer: PreTrainedTokenizerBase, messages: Conversation, max_length: int | None
) -> list[int]:
    ids = chat_ids(tokenizer, messages, add_generation_prompt=True)
    if max_length is not None and len(ids) > max_length:
        ids = ids[-max_length:]  # keep the end: the latest turn and the generation prompt
    return ids


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Conversation],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int = 8,
    max_prompt_length: int | None = None,
) -> list[str]:
    """Sample (or, with `temperature=0`, greedily decode) one assistant response per prompt."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    eos = _eos_ids(model, tokenizer)
    responses: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = [_prompt_ids(tokenizer, p, max_prompt_length) for p in prompts[start : start + batch_size]]
        width = max(len(ids) for ids in batch)
        # Left padding so every prompt ends where generation starts.
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
            if temperature > 0
            else {"do_sample": False}
        )
        output = cast(Any, model).generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos,
            **sampling,
        )
        for row in output[:, width:]:
            responses.append(str(tokenizer.decode(row, skip_special_tokens=True)).strip())
    if was_training:
        model.train()
    return responses


def _samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[_Prompt],
    reward_model_dir: str,
    options: PPOOptions,
) -> tuple[list[dict[str, Any]], float | None]:
    if not prompts:
        return [], None
    responses = generate_responses(
        model,
        tokenizer,
        [p.messages for p in prompts],
        max_new_tokens=options.response_length,
        temperature=options.eval_temperature,
        batch_size=options.eval_batch_size,
        max_prompt_length=options.max_prompt_length,
    )
    rewards = score(
        reward_model_dir,
        [[*p.messages, {"role": "assistant", "content": r}] for p, r in zip(prompts, responses, strict=True)],
        batch_size=options.eval_batch_size,
    )
    samples = [
        {"prompt_id": p.prompt_id, "prompt": p.messages, "response": r, "reward": s}
        for p, r, s in zip(prompts, responses, rewards, strict=True)
    ]
    return samples, sum(rewards) / len(rewards)


def _split_eval(prompts: list[_Prompt], options: PPOOptions) -> tuple[list[_Prompt], list[_Prompt], bool]:
    """Hold out up to `eval_count` prompts when enough remain to train on; else evaluate on train prompts."""
    if options.eval_count <= 0:
        return prompts, [], False
    n_eval = min(options.eval_count, len(prompts) // 5)
    if n_eval == 0:
        return prompts, prompts[: options.eval_count], True
    order = list(range(len(prompts)))
    random.Random(options.seed).shuffle(order)
    held = set(order[:n_eval])
    train = [p for i, p in enumerate(prompts) if i not in held]
    return train, [p for i, p in enumerate(prompts) if i in held], False


def train_ppo(
    prompts: Iterable[Any],
    policy_model: str | os.PathLike[str],
    reward_model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: PPOOptions | None = None,
    *,
    eval_prompts: Iterable[Any] | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
) -> dict[str, Any]:
    """PPO-train `policy_model` (normally the SFT model) against a reward model from `train_reward`.

    `prompts` are conversations (lists of `{role, content}` not ending with an assistant turn; a bare
    string is one user turn), or rows `{"prompt_id"|"id", "prompt"|"messages"}` whose id is carried
    into the samples. The value model starts from the reward model; the reference model for the KL
    penalty (`kl_coef`) is a frozen copy of the starting policy. Responses to `eval_prompts`
    (default: a held-out slice of `prompts`) are generated and scored before and after training.
    Returns JSON-safe metrics including `mean_reward_before`, `mean_reward_after`, `samples_before`
    and `samples_after` (lists of `{prompt_id, prompt, response, reward}`; `prompt_id` is None
    unless given). `callbacks` are passed to the TRL trainer.
    """
    options = config or PPOOptions()
    validate_extra(PPOConfig, options.extra)  # fail before any loading or writing
    started = time.perf_counter()
    seed_everything(options.seed)
    reward_dir = str(reward_model_dir)

    all_prompts = _normalize_prompts(prompts, "prompt")
    if not all_prompts:
        raise ValueError("no prompts to train PPO on")
    if eval_prompts is not None:
        train_prompts, held_out, eval_on_train = (
            all_prompts,
            _normalize_prompts(eval_prompts, "eval prompt"),
            False,
        )
    else:
        train_prompts, held_out, eval_on_train = _split_eval(all_prompts, options)

    tokenizer = load_tokenizer(policy_model, trust_remote_code=options.trust_remote_code)
    reward_tokenizer = load_tokenizer(reward_dir, trust_remote_code=options.trust_remote_code)
    # PPOTrainer feeds the policy's token ids straight into the reward and value models.
    if not same_vocabulary(reward_tokenizer, tokenizer):
        raise ValueError(
            f"the reward model at {reward_dir!r} uses a different tokenizer than the policy; PPO scores "
            "token ids directly, so train the reward model from the same base model"
        )
    deviations = paper_deviations(options)
    if deviations and PartialState().is_main_process:
        said = ", ".join(f"{k} {v['value']} (paper: {v['paper']})" for k, v in deviations.items())
        from .output import terminal

        print(f"charter: warning: PPO settings differ from the paper's: {said}", file=terminal(), flush=True)
    policy = load_model(policy_model, dtype=options.dtype, trust_remote_code=options.trust_remote_code)
    # Before the reference copy, so policy and reference share the new pad row.
    added_pad = add_pad_token(tokenizer, [policy])
    original_generation_config = copy.deepcopy(policy.generation_config)
    samples_before, mean_before = _samples(
        policy.to(PartialState().device), tokenizer, held_out, reward_dir, options
    )

    # The frozen reference for the KL penalty: the policy as it is before any PPO update.
    ref_policy = copy.deepcopy(policy).eval().requires_grad_(False)
    reward_model = load_reward_model(reward_dir, dtype=options.dtype).eval().requires_grad_(False)
    value_model = load_reward_model(reward_dir, dtype=options.dtype)
    for model in (reward_model, value_model):
        fit_embeddings(model, tokenizer)

    world = PartialState().num_processes
    local_batch = options.batch_size * options.gradient_accumulation_steps
    if local_batch > len(train_prompts):
        # PPOTrainer's dataloader drops the last ragged batch; with fewer prompts than one batch it would
        # loop forever waiting for one.
        raise ValueError(
            f"PPO needs at least batch_size x gradient_accumulation_steps = {local_batch} training prompts, "
            f"got {len(train_prompts)}; lower --batch-size"
        )
    total_episodes = options.total_episodes
    if total_episodes is None and options.max_steps is not None and options.max_steps > 0:
        total_episodes = options.max_steps * local_batch * world

    trl_fields: dict[str, Any] = {
        "response_length": options.response_length,
        "stop_token": "eos",
        "kl_coef": options.kl_coef,
        "num_ppo_epochs": options.num_ppo_epochs,
        "num_mini_batches": options.num_mini_batches,
        "temperature": options.temperature,
        "missing_eos_penalty": options.missing_eos_penalty,
        "total_episodes": total_episodes,
        # generate_completions() prints rich tables mid-training; we sample before/after ourselves.
        "num_sample_generations": 0,
        "local_rollout_forward_batch_size": max(options.batch_size, 1),
        "per_device_eval_batch_size": options.eval_batch_size,
        # The paths PPOConfig defaults to (pythia-160m) are never read: the models are passed in.
        "sft_model_path": str(policy_model),
        "reward_model_path": reward_dir,
    }
    args, resolved = build_config(PPOConfig, options, out_dir, **trl_fields)

    def encode(messages: Conversation) -> dict[str, list[int]]:
        return {"input_ids": _prompt_ids(tokenizer, messages, options.max_prompt_length)}

    train_dataset = Dataset.from_list([encode(p.messages) for p in train_prompts])
    eval_dataset = Dataset.from_list([encode(p.messages) for p in (held_out or train_prompts)])

    original_padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # PPOTrainer's collator pads queries; generation needs them left-padded
    try:
        trainer = PPOTrainer(
            args=args,
            processing_class=tokenizer,
            model=policy,
            ref_model=ref_policy,
            reward_model=reward_model,
            value_model=value_model,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            callbacks=list(callbacks or []),
        )
        trainer.train()
    finally:
        tokenizer.padding_side = original_padding_side

    trained = cast(PreTrainedModel, trainer.accelerator.unwrap_model(trainer.model).policy)
    # PPO rewrote the generation config for its rollouts (stop token, sampling); ship the original.
    trained.generation_config = original_generation_config
    save_trained(trainer, out_dir)  # PPOTrainer.save_model writes the policy only
    samples_after, mean_after = _samples(trained, tokenizer, held_out, reward_dir, options)

    history = trainer.state.log_history
    policy_loss = last_logged(history, "loss/policy_avg")
    value_loss = last_logged(history, "loss/value_avg")
    metrics: dict[str, Any] = {
        "kind": "ppo",
        "train_rows": len(train_prompts),
        "eval_rows": len(held_out),
        "eval_on_train_prompts": eval_on_train,
        "episodes": getattr(trainer.state, "episode", None),
        "steps": trainer.state.global_step,
        "mean_reward_before": mean_before,
        "mean_reward_after": mean_after,
        "reward_delta": (mean_after - mean_before)
        if mean_before is not None and mean_after is not None
        else None,
        # What PPO minimises: clipped policy loss + vf_coef x value loss (last update).
        "final_loss": (policy_loss + args.vf_coef * value_loss)
        if policy_loss is not None and value_loss is not None
        else None,
        "final_policy_loss": policy_loss,
        "final_value_loss": value_loss,
        "final_kl": last_logged(history, "objective/kl"),
        "final_score": last_logged(history, "objective/scores"),
        "pad_token": tokenizer.pad_token,
        "pad_token_added": added_pad,
        "paper_deviations": deviations,
        "final_rlhf_reward": last_logged(history, "objective/rlhf_reward"),
        "score_history": [float(e["objective/scores"]) for e in history if "objective/scores" in e],
        "samples_before": samples_before,
        "samples_after": samples_after,
        "precision": precision_name(args),
        "device": str(trainer.accelerator.device),
        "runtime_s": round(time.perf_counter() - started, 3),
        "trl_config": resolved,
    }
    return to_jsonable(metrics)
