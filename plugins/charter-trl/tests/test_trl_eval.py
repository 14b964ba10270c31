"""`charter eval hhh` on local models: a tiny feedback model scored exactly, and a trained reward model."""

from __future__ import annotations

from pathlib import Path

from charter_trl_testdata import query_dicts, run_cli


def test_eval_hhh_with_a_trained_reward_model(reward_model: Path, tmp_path: Path) -> None:
    db = tmp_path / "eval.duckdb"
    args = [
        "eval",
        "hhh",
        "--db",
        db,
        "--reward-model",
        reward_model,
        "--limit",
        "12",
        "--run-name",
        "rm-eval",
    ]
    result = run_cli(*args)
    assert result.code == 0, result.stderr
    assert result.stdout.startswith("accuracy ") and "on 12 comparisons" in result.stdout
    rows = query_dicts(db, "SELECT * FROM eval_results ORDER BY item_id")
    assert len(rows) == 12 and {r["label_source"] for r in rows} == {"reward"}
    assert all(0.0 < r["prob_correct"] < 1.0 and r["correct"] == (r["prob_correct"] > 0.5) for r in rows)
    again = run_cli(*args)  # resumes: every comparison is already scored
    assert again.code == 0 and "0 done, 12 already done" in again.stderr


def test_eval_hhh_on_a_tiny_local_feedback_model(tiny_model: Path, tmp_path: Path) -> None:
    db = tmp_path / "eval.duckdb"
    result = run_cli("eval", "hhh", "--db", db, "--model", f"local/{tiny_model}", "--limit", "6")
    assert result.code == 0, result.stderr
    rows = query_dicts(db, "SELECT * FROM eval_results")
    # A local model scores " (A)" / " (B)" exactly: the paper's multiple-choice reading, no parsing.
    assert len(rows) == 6 and {r["label_source"] for r in rows} == {"scores"}
    assert all(r["call_ids"] for r in rows)
