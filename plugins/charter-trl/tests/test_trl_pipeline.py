"""`charter run` with train steps: the whole SL -> RL loop from examples/cai-loop.yaml on a tiny
model, and export files that are not overwritten without --force (issue 16 item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from charter_trl_testdata import query_dicts, run_cli

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.timeout(900)  # about a minute alone; much more when the machine is busy
def test_cai_loop_example_runs_end_to_end(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "CHARTER_BASE_MODEL": str(tiny_model),
        "CHARTER_LIMIT": "4",
        "CHARTER_TRAIN_STEPS": "2",
        "CHARTER_PPO_STEPS": "1",
        "CHARTER_FEW_SHOT": "false",
        "HF_HUB_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(name, value)
    pipeline = REPO / "examples" / "cai-loop.yaml"
    result = run_cli("run", pipeline, "--db", "cai.duckdb")
    assert result.code == 0, result.stderr
    assert [line.split(":")[0] for line in result.stderr.splitlines() if line.startswith("step ")] == [
        f"step {i} {kind}"
        for i, kind in enumerate(["revise", "train", "sample", "label", "export", "train", "train"], start=1)
    ]
    runs = query_dicts(
        Path("cai.duckdb"), "SELECT kind, status, train_rows, config FROM training_runs ORDER BY started_at"
    )
    assert [(r["kind"], r["status"]) for r in runs] == [("sft", "done"), ("reward", "done"), ("ppo", "done")]
    assert runs[0]["train_rows"] == 4  # the revise step's 4 prompts
    ppo_config = json.loads(runs[2]["config"])
    assert ppo_config["reward_model"] == str((tmp_path / "ckpt" / "reward").resolve())
    assert Path("prefs.jsonl").stat().st_size > 0
    for out in ("sl-cai", "reward", "rl-cai"):
        assert (tmp_path / "ckpt" / out / "charter-train.log").is_file()

    # Again: the export file exists, and without a terminal to ask, only --force overwrites it.
    result = run_cli("run", pipeline, "--db", "cai.duckdb")
    assert result.code == 2
    assert "prefs.jsonl exists; pass --force to overwrite it" in result.stderr
    assert len(query_dicts(Path("cai.duckdb"), "SELECT * FROM training_runs")) == 3  # nothing ran
