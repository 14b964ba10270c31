"""Rewards for online RL and `charter serve-reward`: the trained reward model, or the judge.

A scorer has `rewards(prompts, responses) -> list[float]` (prompts are conversations, responses
the assistant texts) and `relative` (True when rewards only compare responses to the same prompt,
as the judge's do). `reward_function(scorer)` adapts one to TRL's `reward_funcs` signature.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

from .common import Conversation

__all__ = ["RewardModelScorer", "Scorer", "reward_function"]


class Scorer(Protocol):
    """What GRPO/RLOO and `serve-reward` score with."""

    relative: bool

    def rewards(
        self, prompts: Sequence[Sequence[Mapping[str, Any]]], responses: Sequence[str]
    ) -> list[float]:
        """One reward per (prompt, response)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What a training run records about its reward."""
        ...


class RewardModelScorer:
    """A reward model from `charter train reward`, loaded once, scoring as it was trained.

    Conversations are tokenized with the chat template exactly as the reward trainer did
    (`charter_trl.reward.score` does the same, loading the model on every call).
    """

    relative = False

    def __init__(
        self, model_dir: str | os.PathLike[str], *, batch_size: int = 8, max_length: int | None = None
    ):
        from .common import inference_device, load_reward_model, load_tokenizer

        self.model_dir = str(model_dir)
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = load_tokenizer(self.model_dir)
        model = load_reward_model(self.model_dir)
        model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = cast(Any, model).to(inference_device()).eval().requires_grad_(False)

    def describe(self) -> dict[str, Any]:
        return {"reward_model": self.model_dir}

    def rewards(
        self, prompts: Sequence[Sequence[Mapping[str, Any]]], responses: Sequence[str]
    ) -> list[float]:
        from .reward import _rewards

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        conversations: list[Conversation] = [
            [{"role": str(m["role"]), "content": str(m["content"])} for m in p]
            + [{"role": "assistant", "content": r}]
            for p, r in zip(prompts, responses, strict=True)
        ]
        return _rewards(
            self.model, self.tokenizer, conversations, batch_size=self.batch_size, max_length=self.max_length
        )

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """Rewards for whole rendered texts (prompt + response with the template already applied)."""
        import torch

        scores: list[float] = []
        device = next(self.model.parameters()).device
        pad_id = self.tokenizer.pad_token_id
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                ids = [
                    self.tokenizer(t, add_special_tokens=False)["input_ids"][-(self.max_length or 10**9) :]
                    for t in texts[start : start + self.batch_size]
                ]
                width = max(1, *(len(x) for x in ids))
                input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(ids), width), dtype=torch.long)
                for row, token_ids in enumerate(ids):
                    input_ids[row, : len(token_ids)] = torch.tensor(token_ids, dtype=torch.long)
                    attention[row, : len(token_ids)] = 1
                logits = self.model(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False
                ).logits
                scores.extend(float(x) for x in logits.squeeze(-1).float().cpu())
        return scores


def _text(value: Any) -> str:
    """A completion as TRL passes it: a string, or a list of messages (conversational)."""
    if isinstance(value, str):
        return value
    return "".join(str(m.get("content", "")) for m in value if m.get("role") == "assistant")


def _conversation(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return [dict(m) for m in value]


def reward_function(scorer: Scorer) -> Callable[..., list[float]]:
    """`scorer` as a TRL reward function (`reward_funcs=[...]` of GRPOTrainer/RLOOTrainer).

    It also logs the judge's running counts (comparisons, unreadable, calls, cache hits) as metrics.
    """

    def charter_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        rewards = scorer.rewards([_conversation(p) for p in prompts], [_text(c) for c in completions])
        log_metric = kwargs.get("log_metric")
        stats = getattr(scorer, "stats", None)
        if log_metric is not None and stats:
            for name, value in stats.items():
                log_metric(f"judge/{name}", float(value))
        return rewards

    return charter_reward
