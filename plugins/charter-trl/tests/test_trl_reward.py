"""The soft-label preference model: loss, training, evaluation, scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from charter_trl import RewardOptions, score, soft_label_loss, train_reward
from charter_trl_testdata import BAD, GOOD, make_pairs
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def test_soft_label_loss_matches_hand_computation() -> None:
    r_c, r_r, p = torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.8])
    sigmoid = 1 / (1 + math.exp(-1.0))
    expected = -(0.8 * math.log(sigmoid) + 0.2 * math.log(1 - sigmoid))
    assert soft_label_loss(r_c, r_r, p).item() == pytest.approx(expected, rel=1e-6)


def test_soft_label_loss_with_p_one_is_bradley_terry() -> None:
    r_c, r_r = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([0.1, 0.5, -1.0])
    bt = -F.logsigmoid(r_c - r_r).mean()
    assert soft_label_loss(r_c, r_r, torch.ones(3)).item() == pytest.approx(bt.item(), rel=1e-6)
    per_pair = soft_label_loss(r_c, r_r, torch.full((3,), 0.5), reduction="none")
    assert per_pair.shape == (3,) and bool((per_pair >= math.log(2) - 1e-6).all())


def test_reward_trains_evaluates_and_scores(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "rm"
    metrics = train_reward(
        make_pairs(), tiny_model, out, RewardOptions(max_steps=6, batch_size=4, learning_rate=1e-3)
    )
    json.dumps(metrics)
    assert metrics["loss"] == "soft_labels"
    assert metrics["train_rows"] == 11 and metrics["eval_rows"] == 1  # 10% of 12, at least one
    for key in ("eval_accuracy", "eval_soft_ce", "eval_ece", "eval_brier", "final_loss"):
        assert isinstance(metrics[key], float), key
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    AutoTokenizer.from_pretrained(out)

    prompt = [{"role": "user", "content": "Can you help me?"}]
    good = [*prompt, {"role": "assistant", "content": GOOD}]
    bad = [*prompt, {"role": "assistant", "content": BAD}]
    scores = score(out, [good, bad, good])
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    assert scores[0] == pytest.approx(scores[2], abs=1e-5)  # batching/padding does not change a score
    assert scores[0] == pytest.approx(score(out, [good])[0], abs=1e-5)
    assert scores[0] > scores[1]  # lr 1e-3 on trivially separable pairs learns the difference


def test_chosen_prob_reaches_the_loss(tiny_model: Path, tmp_path: Path) -> None:
    def losses(pairs: list[dict], **options: object) -> list[float]:
        config = RewardOptions(max_steps=3, batch_size=4, logging_steps=1, eval_fraction=0.0, **options)  # type: ignore[arg-type]
        return train_reward(pairs, tiny_model, tmp_path / "rm", config)["loss_history"]

    soft_one = losses(make_pairs(chosen_prob=1.0))
    hard = losses(make_pairs(chosen_prob=0.7), hard_labels=True)
    uncertain = losses(make_pairs(chosen_prob=0.5))

    # p = 1 through the trainer is TRL's own Bradley-Terry loss, step for step (same seed, same data);
    # hard labels ignore chosen_prob altogether.
    assert soft_one == pytest.approx(hard, rel=1e-5)
    # With p = 0.5 every pair's loss is at least log 2 (equality at r_c == r_r); BT's is not.
    assert uncertain[0] != pytest.approx(soft_one[0], rel=1e-4)
    assert all(loss >= math.log(2) - 1e-6 for loss in uncertain)
