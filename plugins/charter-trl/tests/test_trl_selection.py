"""What `charter train` reads: every SL-CAI round by default, one label run's labels for reward/dpo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from charter_trl_testdata import RED_TEAM, fill_db, query_dicts, run_cli

ROUNDS = 4


def four_round_db(path: Path) -> Path:
    """4 prompts x 4 rounds as `charter revise` stores them; prompt i says "no change" in its last i rounds."""
    from charter_trl_testdata import _prompt_id

    from charter.records import Message, PromptRecord, RevisedExample, RevisionRound
    from charter.sl import example_rows
    from charter.store.store import Store

    with Store(path) as store:
        run_id, _ = store.start_run("revise-4x4", "revise", {"rounds": ROUNDS})
        for i, text in enumerate(RED_TEAM[:4]):
            prompt = PromptRecord(
                prompt_id=_prompt_id(text), prompt=text, messages=[Message(role="user", content=text)]
            )
            example = RevisedExample(prompt=prompt, initial_response=f"First answer {i}.")
            latest = example.initial_response
            for k in range(1, ROUNDS + 1):
                changed = k <= ROUNDS - i
                latest = f"Revision {k} of {i}." if changed else latest
                example.rounds.append(
                    RevisionRound(
                        round=k, principle=f"p{k}", critique_request="Identify harms.", critique=f"Critique {k}.",
                        revision_request="Rewrite.", revision=latest, needs_revision=changed,
                        revision_call_id=f"call-{i}-{k}" if changed else None,
                    )
                )  # fmt: skip
            for table, rows in example_rows(run_id, example).items():
                store.add_rows(table, rows)
        store.finish_run(run_id, "done")
    return path


def _train(kind: str, db: Path, model: Path, out: Path, *args: Any) -> Any:
    return run_cli("train", kind, "--db", db, "--model", model, "--out", out, "--max-steps", 1, *args)


def _config(db: Path) -> list[dict[str, Any]]:
    rows = query_dicts(db, "SELECT train_rows, config FROM training_runs ORDER BY started_at")
    return [{"train_rows": r["train_rows"], **json.loads(r["config"])} for r in rows]


def test_sft_trains_on_every_round_by_default_and_final_only_on_request(
    tiny_model: Path, tmp_path: Path
) -> None:
    db = four_round_db(tmp_path / "cai.duckdb")
    every = _train("sft", db, tiny_model, tmp_path / "every", "--batch-size", 2)
    assert every.code == 0, every.stderr
    # 16 rounds; 0 + 1 + 2 + 3 of them kept the previous text and count once.
    assert (
        "sft: 10 examples from every round's revision (6 unchanged rounds dropped as duplicates)"
        in every.stderr
    )
    alias = _train("sft", db, tiny_model, tmp_path / "alias", "--batch-size", 2, "--all-rounds")
    assert alias.code == 0, alias.stderr
    final = _train("sft", db, tiny_model, tmp_path / "final", "--batch-size", 2, "--final-only")
    assert final.code == 0, final.stderr
    assert "sft: 4 final revisions (sft_examples)" in final.stderr
    a, b, c = _config(db)
    assert (a["train_rows"], a["source"], a["duplicate_rounds_dropped"]) == (10, "revisions", 6)
    assert (b["train_rows"], b["source"]) == (10, "revisions")
    assert (c["train_rows"], c["source"], c["all_rounds"]) == (4, "sft_examples", False)
    # `charter export --dataset sft` makes the same choice.
    out = tmp_path / "sft.jsonl"
    assert run_cli("export", db, "--dataset", "sft", "--out", out).code == 0
    assert len(out.read_text().splitlines()) == 10
    assert run_cli("export", db, "--dataset", "sft", "--out", out, "--final-only").code == 0
    assert len(out.read_text().splitlines()) == 4


def add_label_run(db: Path, name: str, prob_a: float) -> None:
    """A second label run over fill_db's pairs, every pair labeled prob_a."""
    from charter.store.store import Store

    pair_ids = [r["pair_id"] for r in query_dicts(db, "SELECT pair_id FROM pairs")]
    with Store(db) as store:
        run_id, _ = store.start_run(name, "label", {"method": "logprobs"})
        store.add_rows(
            "pair_labels",
            [
                {"run_id": run_id, "pair_id": p, "model": "local/test", "method": "logprobs", "principle": "harmless",
                 "prob_a": prob_a, "prob_b": 1 - prob_a, "prob_a_unclamped": prob_a, "label_source": "logprobs",
                 "status": "ok"}
                for p in pair_ids
            ],
        )  # fmt: skip
        store.finish_run(run_id, "done")


@pytest.mark.parametrize("kind", ["reward", "dpo"])
def test_reward_and_dpo_use_the_latest_label_run_unless_run_names_one(
    kind: str, tiny_model: Path, tmp_path: Path
) -> None:
    db = tmp_path / "cai.duckdb"
    fill_db(db)  # label run "label-1" over 12 pairs
    add_label_run(db, "label-2", 0.7)
    assert len(query_dicts(db, "SELECT * FROM preference_pairs")) == 24
    latest = _train(kind, db, tiny_model, tmp_path / "latest", "--batch-size", 2)
    assert latest.code == 0, latest.stderr
    assert "labels of the latest label run, label-2, not the 1 older label run" in latest.stderr
    named = _train(kind, db, tiny_model, tmp_path / "named", "--batch-size", 2, "--run", "label-1")
    assert named.code == 0, named.stderr
    assert "labels of label run label-1 (named by --run)" in named.stderr
    first, second = _config(db)
    # 12 pairs (one held out by the reward model), never the union of both runs' 24 rows.
    assert first["label_run"] == "label-2" and second["label_run"] == "label-1"
    assert first["train_rows"] == second["train_rows"] == (11 if kind == "reward" else 12)
    nope = _train(kind, db, tiny_model, tmp_path / "nope", "--run", "nope")
    assert nope.code == 2 and "--run 'nope': no run with that name or id" in nope.stderr
    assert not (tmp_path / "nope").exists() and len(_config(db)) == 2


HHH = Path(__file__).parent / "data" / "hhh_comparisons.jsonl"


def test_reward_mix_blends_human_comparisons_and_reports_the_ratio(tiny_model: Path, tmp_path: Path) -> None:
    from charter_trl.data import read_hh_file

    # The paper's own HHH comparisons (full "\n\nHuman: ...\n\nAssistant: ..." transcripts).
    human = read_hh_file(HHH)
    assert len(human) == 6 and all(r["chosen_prob"] == 1.0 for r in human)
    first = human[0]
    assert first["prompt"][0]["role"] == "user" and first["prompt"][-1]["role"] == "user"
    assert first["prompt"][0]["content"].startswith("I want to see if my wife is having an affair")
    assert [m["role"] for m in first["chosen"]] == ["assistant"] and first["chosen"] != first["rejected"]
    db = tmp_path / "cai.duckdb"
    fill_db(db)  # 12 AI-labeled pairs
    result = _train("reward", db, tiny_model, tmp_path / "pm", "--batch-size", 2, "--mix", HHH)
    assert result.code == 0, result.stderr
    assert "reward: 12 AI-labeled pairs + 6 human pairs from --mix (33% human)" in result.stderr
    [run] = query_dicts(db, "SELECT train_rows, metrics FROM training_runs")
    metrics = json.loads(run["metrics"])
    assert (metrics["ai_pairs"], metrics["mix_pairs"]) == (12, 6)
    assert metrics["mix_fraction"] == pytest.approx(1 / 3)
    assert metrics["train_rows"] + metrics["eval_rows"] == 18


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ('{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: yo"}', "'rejected' must be a transcript string"),
        (
            '{"chosen": "hi", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: no"}',
            "'chosen' does not start with",
        ),
        (
            '{"chosen": "\\n\\nHuman: hi", "rejected": "\\n\\nHuman: hi"}',
            "does not end with an Assistant turn",
        ),
        (
            '{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: yo", "rejected": "\\n\\nHuman: bye\\n\\nAssistant: no"}',
            "differ before their final Assistant turn",
        ),
    ],
)
def test_reward_mix_bad_line_is_exit_2_naming_file_and_line(
    line: str, message: str, tiny_model: Path, tmp_path: Path
) -> None:
    db = tmp_path / "cai.duckdb"
    fill_db(db)
    bad = tmp_path / "hh.jsonl"
    bad.write_text(HHH.read_text(encoding="utf-8").splitlines()[0] + "\n" + line + "\n", encoding="utf-8")
    result = _train("reward", db, tiny_model, tmp_path / "pm", "--mix", bad)
    assert result.code == 2, result.stderr
    [error] = result.error_lines()
    assert error.startswith(f"charter: error: --mix {bad}, line 2: ") and message in error
    assert not (tmp_path / "pm").exists() and query_dicts(db, "SELECT * FROM training_runs") == []
