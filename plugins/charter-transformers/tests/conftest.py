"""Shared fixtures: one tiny random model per session (built offline), and no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-style model directory with a chat template."""
    from charter_transformers.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "m")


@pytest.fixture
def model_string(tiny_model: Path) -> str:
    return f"local/{tiny_model}"
