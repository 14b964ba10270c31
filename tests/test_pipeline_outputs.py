"""`charter run`: export files are not overwritten without --force, and train steps need charter-trl
(issue 16 item 5). The whole loop with train steps is tested in plugins/charter-trl/tests/test_trl_pipeline.py."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
from charter_testing.fake_openai import FakeOpenAIServer
from charter_testkit import CHAT_MODEL, CliResult


def _pipeline(tmp_path: Path, server: FakeOpenAIServer, prompts_file: Path, extra: str = "") -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(
        f"db: {tmp_path / 'cai.duckdb'}\n"
        f"defaults: {{model: {CHAT_MODEL}, api_base: '{server.base_url}'}}\n"
        "steps:\n"
        f"  - revise: {{prompts: {prompts_file}, rounds: 1}}\n"
        f"  - export: {{dataset: sft, out: {tmp_path / 'sft.jsonl'}}}\n" + extra,
        encoding="utf-8",
    )
    return path


def test_existing_export_needs_force(
    tmp_path: Path, server: FakeOpenAIServer, prompts_file: Path, cli: Callable[..., CliResult]
) -> None:
    pipeline = _pipeline(tmp_path, server, prompts_file)
    assert cli("run", pipeline).code == 0
    out = tmp_path / "sft.jsonl"
    out.write_text("mine\n", encoding="utf-8")
    requests = server.request_count

    result = cli("run", pipeline)  # stdin is not a terminal: nobody to ask
    assert result.code == 2
    assert result.error_lines() == [
        f"charter: error: {pipeline}: steps[1].export.out: {out} exists; pass --force to overwrite it"
    ]
    assert out.read_text(encoding="utf-8") == "mine\n" and server.request_count == requests

    result = cli("run", pipeline, "--force")
    assert result.code == 0, result.stderr
    assert out.read_text(encoding="utf-8") != "mine\n"


def test_train_step_without_charter_trl_exits_2(
    tmp_path: Path,
    server: FakeOpenAIServer,
    prompts_file: Path,
    cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "charter_trl" else real(name, *a)
    )
    pipeline = _pipeline(
        tmp_path, server, prompts_file, "  - train: {kind: sft, model: some/model, out: ckpt}\n"
    )
    result = cli("run", pipeline)
    assert result.code == 2
    assert "steps[2].train: train steps need the charter-trl plugin" in result.stderr
    assert not (tmp_path / "cai.duckdb").exists() and server.request_count == 0
