"""`charter export --dataset preferences`: TRL conversational rows with chosen_prob, and hf-cai columns."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from charter_testing.fake_openai import FakeOpenAIServer, FakeReply, FakeRequest, FakeToken
from charter_testkit import CHAT_MODEL, COMPLETION_MODEL, CliResult, query_dicts, run_cli, write_prompts

from charter import rl

HF_CAI_COLUMNS = [
    "init_prompt", "init_response", "critic_prompt", "critic_response", "revision_prompt",
    "revision_response", "prompt", "messages", "chosen", "rejected",
]  # fmt: skip


def responder(req: FakeRequest) -> FakeReply | str:
    if req.prompt is not None and req.prompt.endswith("The answer is:"):
        # prefers option B: 0.2 vs 0.6
        return FakeReply(" (B)", tokens=[FakeToken(" (B)", {" (A)": math.log(0.2), " (B)": math.log(0.6)})])
    if req.messages is not None and "[[[" not in str(req.messages):
        return f"Reply {req.choice_index} to {req.messages[-1]['content'][:20]}"
    return "ok"


@pytest.fixture(scope="module")
def labeled_template(tmp_path_factory: pytest.TempPathFactory, fake_server: FakeOpenAIServer) -> Path:
    """revise (run "sl") -> sample --from-run sl (run "pairs") -> label (run "lab"), built once per module."""
    tmp = tmp_path_factory.mktemp("labeled")
    db = tmp / "cai.duckdb"
    prompts = write_prompts(tmp / "p.jsonl", ["How do I pick a lock?", "Insult my neighbour."])
    saved = fake_server.responder
    fake_server.responder = responder
    try:
        revised = run_cli("revise", prompts, "--db", db, "--model", CHAT_MODEL, "--api-base", fake_server.base_url,
                          "--rounds", "1", "--run-name", "sl")  # fmt: skip
        assert revised.code == 0, revised.stderr
        assert rl.sample(
            db=db, model=CHAT_MODEL, api_base=fake_server.base_url, from_run="sl", run_name="pairs"
        ).ok
        labeled = run_cli("label", "--db", db, "--model", COMPLETION_MODEL, "--api-base", fake_server.base_url,
                          "--run-name", "lab")  # fmt: skip
        assert labeled.code == 0, labeled.stderr
    finally:
        fake_server.responder = saved
    return db


def build(tmp_path: Path, template: Path, server: FakeOpenAIServer) -> Path:
    db = tmp_path / "cai.duckdb"
    shutil.copyfile(template, db)
    server.responder = responder
    return db


def test_export_preferences_trl_and_hf_cai(
    tmp_path: Path, labeled_template: Path, server: FakeOpenAIServer, cli: Callable[..., CliResult]
) -> None:
    db = build(tmp_path, labeled_template, server)
    out = tmp_path / "prefs.jsonl"
    result = cli("export", db, "--dataset", "preferences", "--out", out)
    assert result.code == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert list(row) == ["prompt", "chosen", "rejected", "chosen_prob"]
        assert row["prompt"][-1]["role"] == "user" and all(
            set(m) == {"role", "content"} for m in row["prompt"]
        )
        assert row["chosen"] == [{"role": "assistant", "content": row["chosen"][0]["content"]}]
        assert row["rejected"][0]["role"] == "assistant"
        assert row["chosen"][0]["content"].startswith("Reply 1")  # the judge preferred option B
        assert math.isclose(row["chosen_prob"], 0.75) and row["chosen_prob"] >= 0.5

    hf = tmp_path / "prefs-hf.parquet"
    assert cli("export", db, "--dataset", "preferences", "--out", hf, "--schema", "hf-cai").code == 0
    table = pq.read_table(hf)
    assert table.column_names == HF_CAI_COLUMNS
    sft = {r["init_prompt"]: r for r in query_dicts(db, "SELECT * FROM sft_examples")}
    for row in table.to_pylist():
        assert row["chosen"][:-1] == row["rejected"][:-1] and row["chosen"][-1]["role"] == "assistant"
        assert row["messages"] == row["chosen"] and row["prompt"] == row["chosen"][0]["content"]
        source = sft[row["prompt"]]
        assert (
            row["init_response"] == source["init_response"]
            and row["critic_prompt"] == source["critic_prompt"]
        )

    # pairs sampled from a prompts file have no SL-CAI history: those columns are null
    prompts = write_prompts(tmp_path / "q.jsonl", ["Tell me a joke about cats."])
    assert rl.sample(prompts, db=db, model=CHAT_MODEL, api_base=server.base_url).ok
    again = rl.label(db=db, model=COMPLETION_MODEL, api_base=server.base_url, run_name="lab")
    assert again.resumed and again.skipped == 2 and again.completed == 1  # only the new pair
    only = tmp_path / "only.jsonl"
    where = "prompt = 'Tell me a joke about cats.'"
    assert (
        cli(
            "export", db, "--dataset", "preferences", "--out", only, "--schema", "hf-cai", "--where", where
        ).code
        == 0
    )
    (row,) = [json.loads(line) for line in only.read_text(encoding="utf-8").splitlines()]
    assert (
        row["init_response"] is None
        and row["critic_prompt"] is None
        and row["prompt"] == "Tell me a joke about cats."
    )


def test_preference_pairs_view(tmp_path: Path, labeled_template: Path, server: FakeOpenAIServer) -> None:
    db = build(tmp_path, labeled_template, server)
    rows = query_dicts(db, "SELECT * FROM preference_pairs")
    assert len(rows) == 2
    for row in rows:
        assert {"prompt_id", "prompt", "chosen", "rejected", "chosen_prob", "messages"} <= set(row)
        assert row["chosen_prob"] >= 0.5
    # provenance in one query: prompt -> pair -> principle -> raw feedback call -> probabilities
    trail = query_dicts(
        db,
        """
        SELECT c.prompt, c.pair_id, c.principle, q.member, q.swapped, k.call_id, k.request, k.logprobs,
               q.prob_a AS query_prob_a, c.prob_a, c.prob_b, c.label_source
        FROM comparisons c
        JOIN feedback_queries q ON q.run_id = c.run_id AND q.pair_id = c.pair_id
        JOIN calls k ON k.call_id = q.call_id
        ORDER BY c.pair_id, q.member, q.swapped, q.attempt
        """,
    )
    assert len(trail) == 2
    for row in trail:
        assert json.loads(row["request"])["prompt"].endswith("The answer is:")
        assert json.loads(row["logprobs"])[0][0]["top"][" (B)"] == math.log(0.6)
        assert math.isclose(row["prob_a"], 0.25) and math.isclose(row["query_prob_a"], 0.25)
