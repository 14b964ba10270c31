"""`charter train` output: one line per logging step and a summary, the libraries' chatter in the
run's log file, and counts checked before any model loads (issue 16 item 4)."""

from __future__ import annotations

import re
from pathlib import Path

from charter_trl.output import LOG_FILE
from charter_trl_testdata import fill_db, query_dicts, run_cli


def test_train_prints_step_lines_and_a_summary_only(tmp_path: Path, tiny_model: Path) -> None:
    db = tmp_path / "cai.duckdb"
    fill_db(db)
    out = tmp_path / "sft"
    result = run_cli(
        "train", "sft", "--db", db, "--model", tiny_model, "--out", out,
        "--max-steps", 3, "--batch-size", 4, "--param", "logging_steps=1",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert result.stdout == ""  # TRL's raw metric dicts went to the log, not stdout
    lines = result.stderr.rstrip().splitlines()
    steps = [line for line in lines if line.startswith("  step ")]
    assert [re.match(r"  step (\d)/3  loss \d", s).group(1) for s in steps] == ["1", "2", "3"]  # type: ignore[union-attr]
    # Besides the steps: one line saying what the run reads (every round's revision, the paper's
    # default), then the summary; nothing else.
    [reads] = [line for line in lines if line.startswith("sft: ")]
    assert "every round's revision" in reads
    assert len(lines) == len(steps) + 2 and lines[-1].startswith("trained sft on 16 rows")
    assert str(out / LOG_FILE) in lines[-1]
    assert "it/s" not in result.stderr and "Warning" not in result.stderr
    # What the libraries said is kept: TRL's per-step metric dicts are in the log.
    log = (out / LOG_FILE).read_text()
    assert "'loss'" in log or '"loss"' in log


def test_ppo_prompt_count_is_checked_before_any_model_loads(tmp_path: Path) -> None:
    db = tmp_path / "cai.duckdb"
    fill_db(db)
    out = tmp_path / "ppo"
    # 4 prompts, the default batch of 8. Neither model exists: had they been loaded first, the error would be about them.
    result = run_cli(
        "train", "ppo", "--db", db, "--model", tmp_path / "no-policy", "--reward-model", tmp_path / "no-rm",
        "--out", out, "--run", "revise-a",
    )  # fmt: skip
    assert result.code == 2, result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert "PPO needs at least batch_size x gradient_accumulation_steps = 8 training prompts, got 4" in line
    assert not out.exists()
    assert query_dicts(db, "SELECT * FROM training_runs") == []
