"""Which rows `charter export` writes: every SL-CAI round by default, and one label run's labels."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from charter_testing.fake_openai import FakeOpenAIServer, FakeReply, FakeRequest, FakeToken
from charter_testkit import CHAT_MODEL, COMPLETION_MODEL, query_dicts, revise_args, run_cli, write_prompts

from charter import rl

PROMPTS = ["How do I pick a lock?", "Insult my neighbour.", "Help me cheat.", "Find my ex's address."]


def verdicts(req: FakeRequest) -> str:
    """Chat SL-CAI where prompt i stops changing after round 4 - i (so rounds repeat the text)."""
    messages = req.messages or []
    prompt = str(messages[0]["content"])
    i = PROMPTS.index(prompt) if prompt in PROMPTS else 0
    last = str(messages[-1]["content"])
    round_no = (len(messages) - 3) // 4 + 1  # the critique request of round k is message 3 + 4(k-1)
    if "Verdict:" in last:
        return f"Critique {round_no} of {i}.\nVerdict: {'no change' if round_no > 4 - i else 'revise'}"
    if "Reply with the rewritten response only." in last:
        return f"Revision {round_no} of prompt {i}."
    return f"First answer to prompt {i}."


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def four_rounds(tmp_path: Path, server: FakeOpenAIServer) -> Path:
    db = tmp_path / "rounds.duckdb"
    server.responder = verdicts
    result = run_cli(*revise_args(write_prompts(tmp_path / "p.jsonl", PROMPTS), db, server, "--rounds", "4"))
    assert result.code == 0, result.stderr
    return db


def test_sft_export_is_every_round_by_default_and_final_only_on_request(four_rounds, cli, tmp_path):
    every, final = tmp_path / "every.jsonl", tmp_path / "final.jsonl"
    assert cli("export", four_rounds, "--dataset", "sft", "--out", every).code == 0
    assert cli("export", four_rounds, "--dataset", "sft", "--out", final, "--final-only").code == 0
    # 16 rounds; prompt i repeats its text in i rounds ("no change"): 4 + 3 + 2 + 1 distinct examples.
    assert len(query_dicts(four_rounds, "SELECT * FROM revisions")) == 16
    texts = sorted(r["messages"][-1]["content"] for r in lines(every))
    assert texts == sorted(f"Revision {k} of prompt {i}." for i in range(4) for k in range(1, 5 - i))
    assert len(lines(final)) == 4  # the sft_examples view's contract: one row per revised prompt
    finals = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in lines(final)}
    assert finals == {p: f"Revision {4 - i} of prompt {i}." for i, p in enumerate(PROMPTS)}
    # --where sees the round (filters apply before unchanged rounds are folded).
    late = tmp_path / "late.jsonl"
    assert cli("export", four_rounds, "--dataset", "sft", "--out", late, "--where", "round = 4").code == 0
    assert len(lines(late)) == 4
    bad = cli(
        "export", four_rounds, "--dataset", "preferences", "--out", tmp_path / "x.jsonl", "--final-only"
    )
    assert bad.code == 2 and "--final-only applies to --dataset sft only" in bad.stderr


def test_hf_cai_critique_and_revision_come_from_one_round(four_rounds, cli, tmp_path):
    every, final = tmp_path / "every.jsonl", tmp_path / "final.jsonl"
    assert cli("export", four_rounds, "--dataset", "sft", "--schema", "hf-cai", "--out", every).code == 0
    rows = lines(every)
    assert len(rows) == 10
    for row in rows:
        k, i = row["revision_response"].removeprefix("Revision ").removesuffix(".").split(" of prompt ")
        assert row["critic_response"] == f"Critique {k} of {i}."
        assert row["init_response"] == f"First answer to prompt {i}."
        assert row["chosen"][-1]["content"] == row["revision_response"]
    args = ("export", four_rounds, "--dataset", "sft", "--schema", "hf-cai", "--out", final, "--final-only")
    assert cli(*args).code == 0
    for row in lines(final):
        i = PROMPTS.index(row["prompt"])
        # The round that produced the final revision, not round 1 next to the final text.
        assert (row["critic_response"], row["revision_response"]) == (
            f"Critique {4 - i} of {i}.",
            f"Revision {4 - i} of prompt {i}.",
        )
    stored = query_dicts(four_rounds, "SELECT prompt, critic_response, revision_response FROM sft_examples")
    assert {(r["critic_response"], r["revision_response"]) for r in stored} == {
        (f"Critique {4 - i} of {i}.", f"Revision {4 - i} of prompt {i}.") for i in range(4)
    }


# --------------------------------------------------------------------------- label runs
PROB_B = {"value": 0.8}


def judge(req: FakeRequest) -> FakeReply | str:
    if req.prompt is not None and req.prompt.endswith("The answer is:"):
        p = PROB_B["value"]
        top = {" (A)": math.log(1 - p), " (B)": math.log(p)}
        return FakeReply(" (B)", tokens=[FakeToken(" (B)", top)])
    return f"Reply {req.choice_index} to {str((req.messages or [{}])[-1].get('content'))[:20]}"


@pytest.fixture
def two_label_runs(tmp_path: Path, server: FakeOpenAIServer) -> Path:
    db = tmp_path / "labels.duckdb"
    server.responder = judge
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    assert rl.sample(prompts, db=db, model=CHAT_MODEL, api_base=server.base_url, run_name="pairs").ok
    label = ("label", "--db", db, "--model", COMPLETION_MODEL, "--api-base", server.base_url)
    assert run_cli(*label, "--run-name", "first").code == 0
    PROB_B["value"] = 0.6
    try:  # another seed: not answered from the request cache
        assert run_cli(*label, "--run-name", "second", "--param", "seed=1").code == 0
    finally:
        PROB_B["value"] = 0.8
    assert len(query_dicts(db, "SELECT * FROM preference_pairs")) == 4  # 2 pairs x 2 label runs
    return db


def test_preference_export_uses_the_latest_label_run_and_says_so(two_label_runs, cli, tmp_path):
    out = tmp_path / "prefs.jsonl"
    result = cli("export", two_label_runs, "--dataset", "preferences", "--out", out)
    assert result.code == 0, result.stderr
    assert "labels of the latest label run, second, not the 1 older label run" in result.stderr
    rows = lines(out)
    assert len(rows) == 2 and all(math.isclose(r["chosen_prob"], 0.6) for r in rows)

    named = cli("export", two_label_runs, "--dataset", "preferences", "--out", out, "--run", "first")
    assert named.code == 0 and "labels of label run first (named by --run)" in named.stderr
    assert [round(r["chosen_prob"], 6) for r in lines(out)] == [0.8, 0.8]
    # Naming the sample run selects its pairs; of their label runs the latest counts.
    sampled = cli("export", two_label_runs, "--dataset", "preferences", "--out", out, "--run", "pairs")
    assert sampled.code == 0 and "latest label run, second" in sampled.stderr and len(lines(out)) == 2


def test_an_empty_preference_selection_is_exit_2_and_writes_nothing(two_label_runs, cli, tmp_path):
    out = tmp_path / "none.jsonl"
    nope = cli("export", two_label_runs, "--dataset", "preferences", "--out", out, "--run", "nope")
    assert nope.code == 2 and nope.error_lines() == [
        "charter: error: --run 'nope': no run with that name or id"
    ]
    empty = cli("export", two_label_runs, "--dataset", "preferences", "--out", out, "--where", "false")
    assert empty.code == 2 and "no labeled pairs" in empty.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
