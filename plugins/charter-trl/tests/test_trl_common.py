"""Config building, `extra` validation and model-loading errors (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from charter_trl import (
    DPOOptions,
    ModelLoadError,
    PPOOptions,
    RewardOptions,
    SFTOptions,
    train_dpo,
    train_ppo,
    train_reward,
    train_sft,
)
from charter_trl.common import as_conversation, build_config, normalize_pairs
from charter_trl_testdata import make_pairs, make_sft_rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU defaults")
def test_cpu_config_is_fp32_without_checkpointing(tmp_path: Path) -> None:
    from trl import SFTConfig

    config, resolved = build_config(SFTConfig, SFTOptions(max_steps=3, seed=7), tmp_path)
    assert config.bf16 is False and config.fp16 is False
    assert config.gradient_checkpointing is False
    assert config.report_to == [] and config.save_strategy == "no"
    assert config.seed == 7 and config.max_steps == 3
    json.dumps(resolved)


def test_extra_sets_any_trl_field_and_wins(tmp_path: Path) -> None:
    from trl import DPOConfig

    options = DPOOptions(beta=0.1, extra={"beta": 0.3, "warmup_steps": 2, "gradient_checkpointing": False})
    config, resolved = build_config(DPOConfig, options, tmp_path, beta=options.beta)
    assert config.beta == 0.3 and config.warmup_steps == 2
    assert resolved["warmup_steps"] == 2


@pytest.mark.parametrize("trainer", ["sft", "reward", "ppo", "dpo"])
def test_unknown_extra_key_is_a_value_error_naming_it(trainer: str, tiny_model: Path, tmp_path: Path) -> None:
    extra = {"learning_rat": 1e-3}
    with pytest.raises(ValueError, match=r"'learning_rat'.*did you mean 'learning_rate'"):
        if trainer == "sft":
            train_sft(make_sft_rows(), tiny_model, tmp_path / "o", SFTOptions(extra=extra))
        elif trainer == "reward":
            train_reward(make_pairs(), tiny_model, tmp_path / "o", RewardOptions(extra=extra))
        elif trainer == "ppo":
            prompts = [p["prompt"] for p in make_pairs()]
            train_ppo(prompts, tiny_model, tiny_model, tmp_path / "o", PPOOptions(extra=extra))
        else:
            train_dpo(make_pairs(), tiny_model, tmp_path / "o", DPOOptions(extra=extra))
    assert not (tmp_path / "o").exists()


def test_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError) as info:
        train_sft(make_sft_rows(), missing, tmp_path / "o", SFTOptions(max_steps=1))
    message = str(info.value)
    assert "\n" not in message and str(missing) in message and "HF_HUB_OFFLINE" in message

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="exists but has no loadable"):
        train_sft(make_sft_rows(), empty, tmp_path / "o", SFTOptions(max_steps=1))


def test_rows_accept_json_text_and_bare_strings() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert as_conversation(json.dumps(messages), "user", what="x") == messages
    assert as_conversation("hi", "user", what="x") == messages
    pairs = normalize_pairs([{"prompt": "q", "chosen": "a", "rejected": "b"}])
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "a"}]
    assert pairs[0]["chosen_prob"] == 1.0  # no soft label means a hard one
    with pytest.raises(ValueError, match="chosen_prob"):
        normalize_pairs([{"prompt": "q", "chosen": "a", "rejected": "b", "chosen_prob": 1.5}])


def test_options_are_json_safe() -> None:
    options = PPOOptions(kl_coef=0.2, extra={"whiten_rewards": True})
    assert json.loads(json.dumps(options.to_dict()))["kl_coef"] == 0.2
