"""`charter demo` end to end on a tiny random model: revise -> SFT -> sample -> label -> RM -> PPO."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest
from charter_trl_testdata import query_dicts, run_cli


@pytest.mark.slow
def test_demo_runs_the_whole_loop_offline(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    started = time.perf_counter()
    result = run_cli("demo", "--tiny", "--out", out)
    seconds = time.perf_counter() - started
    assert result.code == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("charter demo:") and "tiny randomly initialised model" in lines[0]
    for n in range(1, 9):
        assert any(line.startswith(f"[{n}/8]") for line in lines), result.stdout
    [reward_line] = [line for line in lines if line.startswith("[7/8]")]
    assert "before PPO" in reward_line and "after" in reward_line
    print(f"demo: {seconds:.0f}s; {reward_line}")  # visible with -s

    db = out / "cai.duckdb"
    runs = query_dicts(db, "SELECT kind, status, train_rows, metrics FROM training_runs ORDER BY started_at")
    assert [(r["kind"], r["status"]) for r in runs] == [("sft", "done"), ("reward", "done"), ("ppo", "done")]
    ppo = json.loads(runs[-1]["metrics"])
    assert isinstance(ppo["mean_reward_before"], float) and isinstance(ppo["mean_reward_after"], float)
    assert (
        f"{ppo['mean_reward_before']:.4f}" in reward_line and f"{ppo['mean_reward_after']:.4f}" in reward_line
    )
    stages = query_dicts(db, "SELECT stage, count(*) AS n FROM policy_samples GROUP BY stage ORDER BY stage")
    assert stages == [{"stage": "after", "n": 4}, {"stage": "before", "n": 4}]
    counts = query_dicts(
        db,
        "SELECT (SELECT count(*) FROM sft_examples) AS sft, (SELECT count(*) FROM revisions) AS revisions, "
        "(SELECT count(*) FROM preference_pairs) AS pairs",
    )[0]
    # 8 prompts x 2 rounds; 12 sampled prompts (two identical samples would make no pair)
    assert counts["sft"] == 8 and counts["revisions"] == 16 and 8 <= counts["pairs"] <= 12
    # The demo ends with `charter eval compare`: SFT vs RL-CAI, judged both ways round, two criteria.
    compared = [line for line in lines if line.startswith("[8/8]")]
    assert len(compared) == 2 and "(harmless)" in compared[0] and "(helpful)" in compared[1]
    assert all("4 comparisons both ways round" in line and "Elo RL-CAI vs SFT" in line for line in compared)
    compare_runs = {r["name"] for r in query_dicts(out / "compare.duckdb", "SELECT name FROM runs")}
    assert len(compare_runs) == 5 and all(n.startswith("demo-compare-") for n in compare_runs)
    names = {r["name"] for r in query_dicts(db, "SELECT name FROM runs")}
    assert len(names) == 3 and all(
        n.startswith(("demo-revise-", "demo-sample-", "demo-label-")) for n in names
    )
    for name in ("sl-cai", "pm", "rl-cai"):
        assert (out / name / "config.json").exists()
    assert (out / "demo.log").stat().st_size > 0

    # Every query the demo suggests runs.
    suggested = [shlex.split(line.strip()) for line in lines if line.strip().startswith("charter sql ")]
    assert len(suggested) >= 4
    for command in suggested:
        ran = run_cli(*command[1:])
        assert ran.code == 0, (command, ran.stderr)


def test_demo_bad_model_is_exit_2(tmp_path: Path) -> None:
    result = run_cli("demo", "--model", "nobody/not-cached-xyz", "--out", tmp_path / "demo")
    assert result.code == 2
    assert "not a directory and not (completely) in the local Hugging Face cache" in result.error_lines()[0]
    assert not (tmp_path / "demo").exists()
