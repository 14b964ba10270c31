"""`charter train sft|reward|ppo|dpo` through the CLI on a database filled through the store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from charter_trl_testdata import fill_db, query_dicts, run_cli
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "cai.duckdb"
    fill_db(path)
    return path


def _runs(db: Path) -> list[dict[str, Any]]:
    rows = query_dicts(db, "SELECT * FROM training_runs ORDER BY started_at")
    for row in rows:
        row["config"] = json.loads(row["config"]) if row["config"] else None
        row["metrics"] = json.loads(row["metrics"]) if row["metrics"] else None
    return rows


def _train(kind: str, db: Path, model: Path | str, out: Path, *args: Any) -> Any:
    return run_cli("train", kind, "--db", db, "--model", model, "--out", out, *args)


def _loads_causal_lm(path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert model.generate(**ids, max_new_tokens=2, do_sample=False).shape[1] > ids["input_ids"].shape[1]


# --------------------------------------------------------------------------------------------------
# Each command: trains, writes a loadable model, records the run
# --------------------------------------------------------------------------------------------------


def test_train_sft_writes_a_model_and_records_the_run(db: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "sl-cai"
    result = _train("sft", db, tiny_model, out, "--max-steps", 2, "--batch-size", 4, "--seed", 3)
    assert result.code == 0, result.stderr
    # Every round's revision by default (8 prompts x 2 rounds), as the paper trains.
    assert "trained sft on 16 rows" in result.stderr and "training run" in result.stderr
    _loads_causal_lm(out)

    [run] = _runs(db)
    assert run["kind"] == "sft" and run["status"] == "done" and run["train_rows"] == 16
    assert run["base_model"] == str(tiny_model.resolve()) and run["out_dir"] == str(out.resolve())
    assert run["started_at"] <= run["finished_at"]
    assert run["config"]["source"] == "revisions" and run["config"]["options"]["max_steps"] == 2
    assert run["config"]["options"]["seed"] == 3 and run["config"]["trl_config"]["seed"] == 3
    assert run["metrics"]["steps"] == 2 and run["metrics"]["final_loss"] > 0
    assert "trl_config" not in run["metrics"]
    # The record also travels with the model.
    record = json.loads((out / "charter_training_run.json").read_text())
    assert record["training_run_id"] == run["run_id"] and record["kind"] == "sft"


def test_train_sft_run_where_all_rounds_and_mix(db: Path, tiny_model: Path, tmp_path: Path) -> None:
    # --run keeps one revise run (4 prompts); --final-only its final revisions, --all-rounds (the
    # default, still accepted) both rounds' revisions.
    assert (
        _train(
            "sft", db, tiny_model, tmp_path / "a", "--run", "revise-a", "--final-only", "--max-steps", 1
        ).code
        == 0
    )
    assert (
        _train(
            "sft", db, tiny_model, tmp_path / "b", "--run", "revise-a", "--all-rounds", "--max-steps", 1
        ).code
        == 0
    )
    # --where filters on the view's columns.
    where = "prompt LIKE '%lock%' OR prompt LIKE '%exam%'"
    assert _train("sft", db, tiny_model, tmp_path / "c", "--where", where, "--max-steps", 1).code == 0
    mix = tmp_path / "mine.jsonl"
    mix.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
        )
        + "\n"
    )
    assert (
        _train(
            "sft", db, tiny_model, tmp_path / "d", "--run", "revise-b", "--mix", mix, "--max-steps", 1
        ).code
        == 0
    )

    a, b, c, d = _runs(db)
    assert (
        a["train_rows"] == 4 and a["config"]["run"] == "revise-a" and a["config"]["source"] == "sft_examples"
    )
    assert b["train_rows"] == 8 and b["config"]["source"] == "revisions" and b["config"]["all_rounds"]
    assert c["train_rows"] == 4 and c["config"]["where"] == where  # 2 prompts x 2 rounds
    assert d["train_rows"] == 8 and d["metrics"]["mix_rows"] == 1 and d["config"]["mix"] == str(mix)


def test_train_reward_soft_and_hard_labels(db: Path, tiny_model: Path, tmp_path: Path) -> None:
    soft = _train("reward", db, tiny_model, tmp_path / "pm", "--max-steps", 2, "--batch-size", 4)
    assert soft.code == 0, soft.stderr
    assert "eval_accuracy" in soft.stderr and "eval_ece" in soft.stderr
    hard = _train(
        "reward", db, tiny_model, tmp_path / "pm-hard", "--hard-labels", "--run", "label-1", "--max-steps", 1
    )
    assert hard.code == 0, hard.stderr

    first, second = _runs(db)
    assert first["kind"] == "reward" and first["status"] == "done"
    assert (
        first["config"]["source"] == "preference_pairs" and first["config"]["options"]["hard_labels"] is False
    )
    assert first["metrics"]["loss"] == "soft_labels" and first["metrics"]["eval_rows"] == 1
    assert first["train_rows"] == 11  # 12 pairs, one held out for accuracy and calibration
    assert set(first["metrics"]) >= {"eval_accuracy", "eval_ece", "eval_brier", "mean_chosen_prob"}
    assert second["metrics"]["loss"] == "hard_labels" and second["config"]["options"]["hard_labels"] is True

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pm")
    assert model.config.num_labels == 1
    AutoTokenizer.from_pretrained(tmp_path / "pm")


def test_train_ppo_records_policy_samples(
    db: Path, tiny_model: Path, reward_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rl-cai"
    result = _train(
        "ppo",
        db,
        f"local/{tiny_model}",  # charter's model-string form is accepted too
        out,
        "--reward-model",
        reward_model,
        "--prompts-from-run",
        "sample-1",
        "--max-steps",
        1,
        "--batch-size",
        2,
        "--param",
        "response_length=6",
        "--param",
        "num_ppo_epochs=1",
        "--param",
        "eval_count=2",
    )
    assert result.code == 0, result.stderr
    assert "mean_reward_before" in result.stderr
    _loads_causal_lm(out)

    [run] = _runs(db)
    assert run["kind"] == "ppo" and run["status"] == "done" and run["train_rows"] == 10
    assert run["config"]["reward_model"] == str(reward_model.resolve())
    assert (
        run["config"]["options"]["response_length"] == 6
        and run["config"]["trl_config"]["response_length"] == 6
    )
    metrics = run["metrics"]
    assert "samples_before" not in metrics and isinstance(metrics["mean_reward_before"], float)

    samples = query_dicts(
        db,
        "SELECT * FROM policy_samples WHERE training_run_id = ? ORDER BY stage, prompt_id",
        [run["run_id"]],
    )
    assert [s["stage"] for s in samples] == ["after", "after", "before", "before"]
    prompt_ids = {r["prompt_id"] for r in query_dicts(db, "SELECT prompt_id FROM prompts")}
    assert all(s["prompt_id"] in prompt_ids and s["prompt"].startswith("Can you help") for s in samples)
    before = [s["reward"] for s in samples if s["stage"] == "before"]
    assert sum(before) / 2 == pytest.approx(metrics["mean_reward_before"])


def test_train_ppo_with_eval_prompts_file(
    db: Path, tiny_model: Path, reward_model: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text(json.dumps({"id": "held-1", "prompt": "How do I stay safe online?"}) + "\n")
    result = _train(
        "ppo",
        db,
        tiny_model,
        tmp_path / "rl",
        "--reward-model",
        reward_model,
        "--run",
        "revise-a",
        "--eval-prompts",
        prompts,
        "--max-steps",
        1,
        "--batch-size",
        2,
        "--param",
        "response_length=4",
        "--param",
        "num_ppo_epochs=1",
    )
    assert result.code == 0, result.stderr
    [run] = _runs(db)
    assert run["train_rows"] == 4 and run["metrics"]["eval_rows"] == 1
    samples = query_dicts(db, "SELECT stage, prompt_id, prompt FROM policy_samples ORDER BY stage")
    assert samples == [
        {"stage": "after", "prompt_id": "held-1", "prompt": "How do I stay safe online?"},
        {"stage": "before", "prompt_id": "held-1", "prompt": "How do I stay safe online?"},
    ]


def test_train_dpo_with_where(db: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "dpo"
    result = _train(
        "dpo", db, tiny_model, out, "--where", "chosen_prob > 0.6", "--max-steps", 1, "--batch-size", 4
    )
    assert result.code == 0, result.stderr
    _loads_causal_lm(out)
    [run] = _runs(db)
    assert run["kind"] == "dpo" and run["status"] == "done" and run["train_rows"] == 11
    assert run["config"]["options"]["beta"] == 0.1 and run["metrics"]["steps"] == 1


def test_param_sets_charter_options_and_trl_fields(db: Path, tiny_model: Path, tmp_path: Path) -> None:
    result = _train(
        "dpo",
        db,
        tiny_model,
        tmp_path / "dpo",
        "--max-steps",
        1,
        "--param",
        "beta=0.3",
        "--param",
        "warmup_steps=1",
    )
    assert result.code == 0, result.stderr
    [run] = _runs(db)
    assert run["config"]["options"]["beta"] == 0.3 and run["config"]["options"]["extra"] == {
        "warmup_steps": 1
    }
    assert run["config"]["trl_config"]["warmup_steps"] == 1 and run["metrics"]["beta"] == 0.3


# --------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "args", "message"),
    [
        ("sft", ["--where", "false"], "no rows in revisions matching --where 'false'"),
        ("sft", ["--final-only", "--where", "false"], "no rows in sft_examples matching --where 'false'"),
        ("sft", ["--final-only", "--all-rounds"], "give --final-only or --all-rounds, not both"),
        ("sft", ["--run", "nope"], "--run 'nope': no run with that name or id"),
        ("sft", ["--where", "no_such_column = 1"], "--where 'no_such_column = 1'"),
        ("sft", ["--where", "true); COPY (SELECT 1) TO 'leak.csv'; SELECT (1"], "unbalanced ')'"),
        ("dpo", ["--where", "true) UNION ALL SELECT * FROM preference_pairs WHERE (true"], "unbalanced"),
        ("sft", ["--param", "no_such_field=1"], "unknown SFTConfig field 'no_such_field'"),
        ("sft", ["--mix", "missing.jsonl"], "--mix missing.jsonl: no such file"),
        ("sft", ["--max-steps", "0"], "--max-steps must be at least 1"),
        ("reward", ["--run", "revise-a"], "no rows in preference_pairs matching --run 'revise-a'"),
        ("reward", ["--param", "learning_rte=0.1"], "did you mean 'learning_rate'?"),
        ("dpo", ["--where", "chosen_prob > 2"], "no rows in preference_pairs"),
        ("ppo", ["--reward-model", "no/such/dir"], "--reward-model no/such/dir: cannot load tokenizer"),
        ("ppo", ["--reward-model", "MODEL", "--where", "false"], "no rows in prompts"),
        ("ppo", ["--reward-model", "MODEL", "--eval-prompts", "none.jsonl"], "none.jsonl: no such file"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    db: Path, tiny_model: Path, tmp_path: Path, kind: str, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    args = [str(tiny_model) if a == "MODEL" else a for a in args]
    result = _train(kind, db, tiny_model, out, *args)
    assert result.code == 2, result.stderr
    [line] = result.error_lines()
    assert line.startswith("charter: error: ") and message in line
    assert not out.exists()
    assert _runs(db) == []


def test_missing_model_and_database(db: Path, tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "out"
    result = _train("sft", db, tmp_path / "no-model", out)
    assert result.code == 2 and "cannot load" in result.error_lines()[0] and not out.exists()
    result = _train("sft", db, "nobody/no-such-model-xyz", out)
    assert result.code == 2 and "HF_HUB_OFFLINE=1" in result.error_lines()[0]
    result = _train("sft", tmp_path / "none.duckdb", tiny_model, out)
    assert result.code == 2 and "no such database" in result.error_lines()[0]
    assert not (tmp_path / "none.duckdb").exists() and not out.exists()
    assert _runs(db) == []


def test_ppo_needs_a_reward_model(db: Path, tiny_model: Path, tmp_path: Path) -> None:
    result = _train("ppo", db, tiny_model, tmp_path / "out")
    assert result.code == 2 and "--reward-model" in result.stderr


# --------------------------------------------------------------------------------------------------
# The run's life: 'running' while it trains (and the database stays readable), 'failed' on an error
# --------------------------------------------------------------------------------------------------


def test_running_then_failed_and_readable_meanwhile(
    db: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trl import SFTTrainer

    seen: list[list[dict[str, Any]]] = []

    def boom(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Another process could read now: the trainer holds no connection to the database.
        seen.append(query_dicts(db, "SELECT kind, status FROM training_runs"))
        raise RuntimeError("out of cheese")

    monkeypatch.setattr(SFTTrainer, "training_step", boom)
    result = _train("sft", db, tiny_model, tmp_path / "out", "--max-steps", 1)
    assert result.code == 1
    [error] = [line for line in result.stderr.splitlines() if "charter: error:" in line]
    assert error.startswith(
        "charter: error: charter train sft failed: RuntimeError: out of cheese "
        "(recorded in training_runs as 'failed')"
    ), error
    assert seen == [[{"kind": "sft", "status": "running"}]]
    [run] = _runs(db)
    assert run["status"] == "failed" and run["metrics"]["error"] == "RuntimeError: out of cheese"
    assert run["finished_at"] is not None


def test_python_api(db: Path, tiny_model: Path, tmp_path: Path) -> None:
    from charter_trl import run_training

    result = run_training(
        "sft", db=db, model=tiny_model, out=tmp_path / "sl", run="revise-b", max_steps=1, batch_size=2
    )
    assert result["status"] == "done" and result["train_rows"] == 8  # 4 prompts x 2 rounds
    [run] = _runs(db)
    assert run["run_id"] == result["training_run_id"]
    with pytest.raises(ValueError, match="unknown option 'max_stepz'"):
        run_training("sft", db=db, model=tiny_model, out=tmp_path / "x", max_stepz=1)


def test_python_dash_m_charter_lists_train_commands() -> None:
    # What `accelerate launch -m charter train ...` runs in each process.
    proc = subprocess.run(
        [sys.executable, "-m", "charter", "train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for kind in ("sft", "reward", "ppo", "dpo"):
        assert kind in proc.stdout
