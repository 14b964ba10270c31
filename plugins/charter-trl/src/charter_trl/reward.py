"""The paper's preference model: a scalar reward head trained on soft AI-feedback labels.

RL-CAI labels each pair with `chosen_prob`, the feedback model's normalised probability that the
chosen response is better. Training on that probability (soft-label cross-entropy) rather than on a
hard 0/1 label is what Bai et al. (2022) do, and keeps the reward model calibrated.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from .common import (
    DEFAULT_CHAT_TEMPLATE,
    Conversation,
    add_pad_token,
    build_config,
    chat_ids,
    finish_metrics,
    inference_device,
    load_reward_model,
    load_tokenizer,
    log_summary,
    normalize_pairs,
    save_trained,
    seed_everything,
    unwrap,
    validate_extra,
)
from .options import RewardOptions

__all__ = ["RewardOptions", "score", "soft_label_loss", "train_reward"]

_PROB_COLUMN = "chosen_prob"


def soft_label_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, p: torch.Tensor, *, reduction: str = "mean"
) -> torch.Tensor:
    """Soft-label preference loss `-(p*log σ(r_c - r_r) + (1-p)*log σ(r_r - r_c))`.

    `p` is the probability that the chosen response is better; with `p = 1` this is the standard
    Bradley-Terry loss `-log σ(r_c - r_r)`. `reduction` is `"mean"`, `"sum"` or `"none"`.
    """
    p = p.to(dtype=r_chosen.dtype, device=r_chosen.device)
    margin = r_chosen - r_rejected
    losses = -(p * F.logsigmoid(margin) + (1.0 - p) * F.logsigmoid(-margin))
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    raise ValueError(f"unknown reduction {reduction!r}; use 'mean', 'sum' or 'none'")


@dataclass
class _PreferenceCollatorWithProbs(DataCollatorForPreference):
    """TRL's preference collator, also batching `chosen_prob` (which it would otherwise drop)."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        if examples and _PROB_COLUMN in examples[0]:
            batch[_PROB_COLUMN] = torch.tensor([float(e[_PROB_COLUMN]) for e in examples], dtype=torch.float)
        return batch


class _SoftLabelRewardTrainer(RewardTrainer):
    """RewardTrainer whose loss uses each pair's `chosen_prob` unless `hard_labels` is set."""

    def __init__(self, *args: Any, hard_labels: bool = False, **kwargs: Any) -> None:
        self.hard_labels = hard_labels
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self) -> None:
        # remove_unused_columns keeps only the "signature" columns; add ours so it reaches the collator.
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and _PROB_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, _PROB_COLUMN]

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        probs = inputs.pop(_PROB_COLUMN, None)
        # TRL's compute_loss does the forward pass and logs accuracy/margins; we keep that and only
        # swap the loss when soft labels apply.
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if not self.hard_labels and probs is not None:
            rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            loss = soft_label_loss(rewards_chosen, rewards_rejected, probs)
            center = getattr(self.args, "center_rewards_coefficient", None)
            if center is not None:
                loss = loss + center * torch.mean((rewards_chosen + rewards_rejected) ** 2)
        return (loss, outputs) if return_outputs else loss


def _split(
    pairs: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    n = len(pairs)
    n_eval = 0
    if fraction > 0 and n >= 5:
        n_eval = min(n - 1, max(1, round(fraction * n)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    eval_idx = set(order[:n_eval])
    train = [p for i, p in enumerate(pairs) if i not in eval_idx]
    held_out = [p for i, p in enumerate(pairs) if i in eval_idx]
    return train, held_out


@torch.no_grad()
def _rewards(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    *,
    batch_size: int,
    max_length: int | None = None,
) -> list[float]:
    """Scalar rewards for whole conversations, tokenized exactly as RewardTrainer does."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    scores: list[float] = []
    for start in range(0, len(conversations), batch_size):
        ids: list[list[int]] = []
        for conversation in conversations[start : start + batch_size]:
            token_ids = chat_ids(tokenizer, list(conversation))
            if max_length is not None and len(token_ids) > max_length:
                token_ids = token_ids[-max_length:]  # the reward is read at the last token: keep the end
            ids.append(token_ids)
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for row, token_ids in enumerate(ids):
            input_ids[row, : len(token_ids)] = torch.tensor(token_ids, dtype=torch.long)
            attention[row, : len(token_ids)] = 1
        logits = model(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False
        ).logits
        scores.extend(float(x) for x in logits.squeeze(-1).float().cpu())
    if was_training:
        model.train()
    return scores


def score(
    model_dir: str | os.PathLike[str],
    conversations: Sequence[Sequence[Mapping[str, str]]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[float]:
    """Load a saved reward model and return one reward per conversation (batched, no grad).

    Each conversation is the full chat, ending with the assistant response being judged.
    """
    tokenizer = load_tokenizer(model_dir)
    model = load_reward_model(model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    model = cast(PreTrainedModel, cast(Any, model).to(inference_device()))
    convs = [[{"role": m["role"], "content": m["content"]} for m in c] for c in conversations]
    return _rewards(model, tokenizer, convs, batch_size=batch_size, max_length=max_length)


def _calibration(predicted: list[float], target: list[float], bins: int) -> float:
    """Expected calibration error of predicted P(chosen better) against the soft labels."""
    total = len(predicted)
    error = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, q in enumerate(predicted) if lo <= q < hi or (b == bins - 1 and q == 1.0)]
        if members:
            mean_q = sum(predicted[i] for i in members) / len(members)
            mean_p = sum(target[i] for i in members) / len(members)
            error += len(members) / total * abs(mean_q - mean_p)
    return error


def _evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[dict[str, Any]],
    options: RewardOptions,
) -> dict[str, Any]:
    keys = ("eval_accuracy", "eval_soft_ce", "eval_ece", "eval_brier", "eval_mean_margin")
    if not pairs:
        return dict.fromkeys(keys)
    chosen = _rewards(
        model, tokenizer, [p["prompt"] + p["chosen"] for p in pairs], batch_size=options.eval_batch_size
    )
    rejected = _rewards(
        model, tokenizer, [p["prompt"] + p["rejected"] for p in pairs], batch_size=options.eval_batch_size
    )
    r_c, r_r = torch.tensor(chosen), torch.tensor(rejected)
    target = torch.tensor([p["chosen_prob"] for p in pairs])
    predicted = torch.sigmoid(r_c - r_r)
    return {
        "eval_accuracy": float((r_c > r_r).float().mean()),
        "eval_soft_ce": float(soft_label_loss(r_c, r_r, target)),
        "eval_ece": _calibration(predicted.tolist(), target.tolist(), options.calibration_bins),
        "eval_brier": float(((predicted - target) ** 2).mean()),
        "eval_mean_margin": float((r_c - r_r).mean()),
    }


def train_reward(
    pairs: Iterable[Mapping[str, Any]],
    model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: RewardOptions | None = None,
    *,
    mix_pairs: Iterable[Mapping[str, Any]] | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
) -> dict[str, Any]:
    """Train a reward (preference) model from a causal LM checkpoint; write it and its tokenizer.

    `pairs` are `{"prompt": [messages], "chosen": [messages], "rejected": [messages], "chosen_prob": p}`
    (the `preference_pairs` view; strings are accepted as single turns). Returns JSON-safe metrics:
    `final_loss`, `train_rows`, `eval_rows`, `eval_accuracy` (r_chosen > r_rejected on held-out
    pairs), `eval_soft_ce`, `eval_ece` (calibration of σ(r_c - r_r) against `chosen_prob`),
    `eval_brier`, ... `callbacks` are passed to the TRL trainer.
    """
    options = config or RewardOptions()
    validate_extra(RewardConfig, options.extra)  # fail before any loading or writing
    started = time.perf_counter()
    seed_everything(options.seed)
    normalized = normalize_pairs(pairs)
    ai_count = len(normalized)
    mixed = normalize_pairs(mix_pairs) if mix_pairs is not None else []
    train_pairs, eval_pairs = _split([*normalized, *mixed], options.eval_fraction, options.seed)

    tokenizer = load_tokenizer(model, trust_remote_code=options.trust_remote_code)
    default_template = tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    args, resolved = build_config(RewardConfig, options, out_dir, max_length=options.max_length)
    # The classification head is freshly initialised: seed right before creating it.
    seed_everything(args.seed)
    reward_model = load_reward_model(model, dtype=options.dtype, trust_remote_code=options.trust_remote_code)
    # Sequence classification reads the score at the last non-pad token, so it must know the pad id,
    # and the pad must not be EOS: PPO pads with its own token and reads the score at the EOS that
    # ends the response, so training reads it there too (add_pad_token, as PPO does).
    pad_added = add_pad_token(tokenizer, [reward_model])
    reward_model.config.pad_token_id = tokenizer.pad_token_id

    trainer = _SoftLabelRewardTrainer(
        model=reward_model,
        args=args,
        train_dataset=Dataset.from_list(train_pairs),
        processing_class=tokenizer,
        data_collator=_PreferenceCollatorWithProbs(
            pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=args.pad_to_multiple_of
        ),
        hard_labels=options.hard_labels,
        callbacks=list(callbacks or []),
    )
    kept = len(cast(Dataset, trainer.train_dataset))  # RewardTrainer drops pairs longer than max_length
    result = trainer.train()
    save_trained(trainer, out_dir)
    trained = unwrap(trainer)

    metrics: dict[str, Any] = {
        "kind": "reward",
        "loss": "hard_labels" if options.hard_labels else "soft_labels",
        "pad_token": tokenizer.pad_token,
        "pad_token_added": pad_added,
        "train_rows": len(train_pairs),
        "train_rows_used": kept,
        "eval_rows": len(eval_pairs),
        "mean_chosen_prob": sum(p["chosen_prob"] for p in train_pairs) / len(train_pairs),
        "ai_pairs": ai_count,
        "mix_pairs": len(mixed),
        "mix_fraction": len(mixed) / (ai_count + len(mixed)),
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        **log_summary(trainer.state.log_history),
        **_evaluate(trained, tokenizer, eval_pairs, options),
    }
    return finish_metrics(
        metrics, trainer, result, resolved, default_template=default_template, started=started
    )
