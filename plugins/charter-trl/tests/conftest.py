"""Fixtures for the charter-trl tests: tiny random models built offline in tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from charter_trl_testdata import make_pairs

# Nothing here may touch the network (TRL also sends telemetry unless told not to).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from charter_transformers.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def reward_model(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A reward model trained a few steps from the tiny base (shared by the scoring and PPO tests)."""
    from charter_trl import RewardOptions, train_reward

    out = tmp_path_factory.mktemp("rm") / "reward"
    train_reward(make_pairs(), tiny_model, out, RewardOptions(max_steps=4, batch_size=4, learning_rate=1e-3))
    return out
