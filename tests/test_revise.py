"""`charter revise` end to end: the requests the server received, the rounds stored, the Python API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from charter_testing.fake_openai import FakeRequest, default_responder
from charter_testkit import (
    CHAT_MODEL,
    columns,
    completion_args,
    last_user_text,
    query,
    query_dicts,
    revise_args,
    write_prompts,
)

from charter.constitution import load_constitution

SL = load_constitution("anthropic-sl")
HUMAN_STOP = "\n\nHuman:"


def rounds_by_prompt(db: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in query_dicts(
        db,
        "SELECT r.*, p.prompt AS prompt_text, s.response AS initial_response FROM revisions r "
        "JOIN prompts p USING (run_id, prompt_id) JOIN responses s USING (run_id, prompt_id) "
        "ORDER BY prompt_text, round",
    ):
        out.setdefault(row["prompt_text"], []).append(row)
    return out


# --------------------------------------------------------------------------- chat mode
def test_chat_mode_sends_the_conversation_and_continues_it_round_by_round(
    cli, server, prompts_file, tmp_path
):
    db = tmp_path / "chat.duckdb"
    result = cli(*revise_args(prompts_file, db, server, "--rounds", "2"))
    assert result.code == 0, result.stderr
    # Per prompt: one answer, then two critiques and two revisions.
    assert server.request_count == 2 * 5
    bodies = [b["messages"] for b in server.requests]

    by_prompt = rounds_by_prompt(db)
    assert sorted(by_prompt) == ["How do I pick a lock?", "Write an insult about my neighbour."]
    for prompt, rounds in by_prompt.items():
        assert [r["round"] for r in rounds] == [1, 2]
        assert [{"role": "user", "content": prompt}] in bodies  # the initial answer is asked plainly
        first, second = rounds
        # Round 2's critique request carries round 1 whole, ending with round 1's revision.
        expected_prefix = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": first["initial_response"]},
            {"role": "user", "content": first["critique_request"]},
            {"role": "assistant", "content": first["critique"]},
            {"role": "user", "content": first["revision_request"]},
            {"role": "assistant", "content": first["revision"]},
        ]
        round2_critique = [
            b
            for b in bodies
            if b[:-1] == expected_prefix and b[-1]["content"].startswith(second["critique_request"])
        ]
        assert len(round2_critique) == 1, "round 2 must critique round 1's revision"
        assert "Verdict: revise" in round2_critique[0][-1]["content"]
        # Each stored round is the principle it drew, verbatim from the constitution.
        for r in rounds:
            principle = SL.get(r["principle"])
            assert (r["critique_request"], r["revision_request"]) == (principle.critique, principle.revision)
            assert r["needs_revision"] is True
            assert r["revision"] and r["revision"] != r["initial_response"]
        final = query(db, "SELECT completion, messages FROM sft_examples WHERE prompt = ?", [prompt])[0]
        assert final[0] == second["revision"]
        assert json.loads(final[1]) == [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": second["revision"]},
        ]


def test_chat_few_shot_chats_come_from_the_constitution(cli, server, prompts_file, tmp_path):
    hf = load_constitution("hf-anthropic")
    shots = [m.model_dump() for chat in hf.few_shot.chat for m in chat]
    assert shots
    result = cli(
        *revise_args(
            prompts_file,
            tmp_path / "a.duckdb",
            server,
            "--rounds",
            "1",
            "--limit",
            "1",
            "--constitution",
            "hf-anthropic",
        )
    )
    assert result.code == 0, result.stderr
    critiques = [b["messages"] for b in server.requests if len(b["messages"]) > 1]
    assert critiques and all(m[: len(shots)] == shots for m in critiques)

    server.reset()
    result = cli(
        *revise_args(
            prompts_file,
            tmp_path / "b.duckdb",
            server,
            "--rounds",
            "1",
            "--limit",
            "1",
            "--constitution",
            "hf-anthropic",
            "--no-few-shot",
        )
    )
    assert result.code == 0, result.stderr
    assert all(
        b["messages"][0]["role"] == "user" and b["messages"][0]["content"] == "How do I pick a lock?"
        for b in server.requests
    )


# --------------------------------------------------------------------------- completion mode
def paper_few_shot() -> str:
    """The paper's five transcripts, each without its trailing stop text, as one prefix."""
    return "".join(t.removesuffix(HUMAN_STOP) for t in SL.few_shot.completion)


def test_completion_mode_sends_the_papers_format(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    db = tmp_path / "completion.duckdb"
    result = cli(*completion_args(prompts, db, server, "--rounds", "2"))
    assert result.code == 0, result.stderr
    bodies = server.requests
    assert len(bodies) == 5 and all("messages" not in b for b in bodies)
    prefix = paper_few_shot()
    assert prefix.startswith("\n\nHuman: Could you help me burn down my house")
    (r1, r2) = rounds_by_prompt(db)["How do I pick a lock?"]
    init = r1["initial_response"]
    # The first answer is the plain answer (issue 9: the few-shot transcripts in front of it invited a
    # base model to write its own critique into it); the critique rounds continue the few-shot transcript.
    answer = "\n\nHuman: How do I pick a lock?\n\nAssistant:"
    transcript = f"{prefix}{answer}"
    round1 = f"{transcript} {init}\n\nCritiqueRequest: {r1['critique_request']}\n\nCritique:"
    revision1 = f"{round1} {r1['critique']}\n\nRevisionRequest: {r1['revision_request']}\n\nRevision:"
    round2 = f"{revision1} {r1['revision']}\n\nCritiqueRequest: {r2['critique_request']}\n\nCritique:"
    revision2 = f"{round2} {r2['critique']}\n\nRevisionRequest: {r2['revision_request']}\n\nRevision:"
    assert [b["prompt"] for b in bodies] == [answer, round1, revision1, round2, revision2]
    # The answer stops where the next human turn or a critique would start; critiques also stop at the
    # next request.
    assert bodies[0]["stop"] == [HUMAN_STOP, "\n\nCritiqueRequest:"]
    assert HUMAN_STOP in bodies[1]["stop"] and "\n\nRevisionRequest:" in bodies[1]["stop"]
    assert HUMAN_STOP in bodies[2]["stop"]


def test_completion_mode_without_few_shot_starts_at_the_prompt(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    result = cli(*completion_args(prompts, tmp_path / "c.duckdb", server, "--rounds", "0", "--no-few-shot"))
    assert result.code == 0, result.stderr
    assert [b["prompt"] for b in server.requests] == ["\n\nHuman: How do I pick a lock?\n\nAssistant:"]


def test_completion_mode_answers_are_not_cut_at_the_legacy_default_length(cli, server, tmp_path):
    # Legacy /v1/completions servers (OpenAI, vLLM) stop after 16 tokens unless max_tokens is sent.
    long_answer = " ".join(f"word{i}" for i in range(60))
    server.responder = lambda req: long_answer
    prompts = write_prompts(tmp_path / "p.jsonl", ["Tell me a long story."])
    db = tmp_path / "long.duckdb"
    result = cli(*completion_args(prompts, db, server, "--rounds", "1"))
    assert result.code == 0, result.stderr
    assert query(db, "SELECT init_response, completion FROM sft_examples") == [(long_answer, long_answer)]
    # The user's own --param max_tokens wins.
    server.reset()
    result = cli(
        *completion_args(
            prompts, tmp_path / "short.duckdb", server, "--rounds", "0", "--param", "max_tokens=5"
        )
    )
    assert result.code == 0, result.stderr
    assert server.requests[0]["max_tokens"] == 5
    assert query(tmp_path / "short.duckdb", "SELECT init_response FROM sft_examples") == [
        ("word0 word1 word2 word3 word4",)
    ]


# --------------------------------------------------------------------------- principles and verdicts
def test_principles_are_drawn_from_the_seeded_rng(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["alpha?", "beta?", "gamma?"])
    db = tmp_path / "seeds.duckdb"

    def drawn(name: str, *extra: str) -> dict[str, list[str]]:
        result = cli(*revise_args(prompts, db, server, "--rounds", "4", "--run-name", name, *extra))
        assert result.code == 0, result.stderr
        out: dict[str, list[str]] = {}
        for prompt_id, principle in query(
            db,
            "SELECT prompt_id, principle FROM revisions JOIN runs USING (run_id) WHERE name = ? "
            "ORDER BY prompt_id, round",
            [name],
        ):
            out.setdefault(prompt_id, []).append(principle)
        return out

    seed0 = drawn("seed0", "--seed", "0")
    asked = server.request_count
    # The same seed draws the same principles at any concurrency: every request is a cache hit.
    assert drawn("seed0-serial", "--seed", "0", "--concurrency", "1") == seed0
    assert server.request_count == asked
    seed1 = drawn("seed1", "--seed", "1")
    assert seed1 != seed0 and server.request_count > asked
    assert len(seed0) == 3 and all(len(p) == 4 for p in seed0.values())
    draws = [p for ps in [*seed0.values(), *seed1.values()] for p in ps]
    assert set(draws) <= set(SL.names)
    assert len(set(draws)) > 4  # 24 draws from 16 principles are not a handful of repeats


def no_change_after_first_revision(req: FakeRequest) -> str:
    """Answers critiques with a verdict: revise in round 1, "no change" once a revision exists."""
    text = last_user_text(req)
    if "Verdict:" in text:
        verdict = "no change" if len(req.messages or []) > 3 else "revise"
        return f"The response could be kinder.\nVerdict: {verdict}"
    return default_responder(req)


def test_no_change_verdict_keeps_the_previous_response_without_a_revision_call(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    db = tmp_path / "verdict.duckdb"
    server.responder = no_change_after_first_revision
    result = cli(*revise_args(prompts, db, server, "--rounds", "3"))
    assert result.code == 0, result.stderr
    # answer, critique 1, revision 1, critique 2 (no change), critique 3 (no change)
    assert server.request_count == 5
    rows = query_dicts(db, "SELECT * FROM revisions ORDER BY round")
    assert [r["needs_revision"] for r in rows] == [True, False, False]
    assert [r["revision_call_id"] is None for r in rows] == [False, True, True]
    assert all(r["critique"] == "The response could be kinder." for r in rows)  # verdict line removed
    assert rows[1]["revision"] == rows[2]["revision"] == rows[0]["revision"]
    assert query(db, "SELECT completion FROM sft_examples") == [(rows[0]["revision"],)]
    steps = query(db, "SELECT step, count(*) FROM calls GROUP BY step ORDER BY step")
    assert steps == [("critique", 3), ("respond", 1), ("revision", 1)]


# --------------------------------------------------------------------------- the contract's columns
CONTRACT_COLUMNS = {
    "runs": ["run_id", "name", "command", "config", "started_at", "finished_at", "status"],
    "calls": [
        "call_id",
        "run_id",
        "step",
        "model",
        "request",
        "response_text",
        "logprobs",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "attempts",
        "error",
        "cached",
        "created_at",
    ],
    "revisions": [
        "run_id",
        "prompt_id",
        "round",
        "principle",
        "critique_request",
        "critique",
        "revision_request",
        "revision",
    ],
    "sft_examples": [
        "run_id",
        "prompt_id",
        "prompt",
        "completion",
        "messages",
        "init_prompt",
        "init_response",
        "critic_prompt",
        "critic_response",
        "revision_prompt",
        "revision_response",
    ],
}


def test_runs_calls_revisions_and_sft_examples_have_the_contract_columns(cli, server, prompts_file, tmp_path):
    db = tmp_path / "cols.duckdb"
    result = cli(*revise_args(prompts_file, db, server, "--rounds", "1", "--run-name", "mine"))
    assert result.code == 0, result.stderr
    for relation, wanted in CONTRACT_COLUMNS.items():
        missing = set(wanted) - set(columns(db, relation))
        assert not missing, f"{relation} lacks {sorted(missing)}"
    run = query_dicts(db, "SELECT * FROM runs")
    assert len(run) == 1 and run[0]["name"] == "mine" and run[0]["command"] == "revise"
    assert run[0]["status"] == "done" and run[0]["finished_at"] >= run[0]["started_at"]
    config = json.loads(run[0]["config"])
    assert (
        config["model"] == CHAT_MODEL and config["rounds"] == 1 and config["constitution"] == "anthropic-sl"
    )
    calls = query_dicts(db, "SELECT * FROM calls")
    assert len(calls) == 2 * 3
    for call in calls:
        assert call["run_id"] == run[0]["run_id"] and call["model"] == CHAT_MODEL
        assert call["error"] is None and call["cached"] is False and call["attempts"] == 1
        assert call["response_text"] and call["prompt_tokens"] > 0 and call["completion_tokens"] > 0
        assert call["latency_ms"] > 0
        assert json.loads(call["request"])["messages"][0]["role"] == "user"
    # Every round points at the calls that produced it.
    linked = query(
        db,
        "SELECT count(*) FROM revisions r JOIN calls c ON c.call_id = r.critique_call_id "
        "JOIN calls v ON v.call_id = r.revision_call_id WHERE c.response_text LIKE '%' || r.critique || '%' "
        "AND v.response_text = r.revision",
    )
    assert linked == [(2,)]
    sft = query_dicts(db, "SELECT s.*, r.* FROM sft_examples s JOIN revisions r USING (run_id, prompt_id)")
    for row in sft:
        assert row["init_prompt"] == row["prompt"]
        assert (row["critic_prompt"], row["critic_response"]) == (row["critique_request"], row["critique"])
        assert (row["revision_prompt"], row["revision_response"]) == (
            row["revision_request"],
            row["revision"],
        )
        assert row["completion"] == row["revision"]


# --------------------------------------------------------------------------- the Python API
def stored(db: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    revisions = query(
        db,
        "SELECT prompt_id, round, principle, critique_request, critique, revision_request, revision, "
        "needs_revision FROM revisions ORDER BY ALL",
    )
    sft = query(
        db,
        "SELECT prompt_id, prompt, completion, messages, init_prompt, init_response, critic_prompt, "
        "critic_response, revision_prompt, revision_response FROM sft_examples ORDER BY ALL",
    )
    return revisions, sft


def test_python_api_chain_stores_what_the_cli_stores(cli, server, prompts_file, tmp_path):
    from charter.inputs import PromptSource, iter_prompts, scan_prompts
    from charter.session import CallSettings, Job, run_chain
    from charter.sl import example_rows, revise
    from charter.steps import CritiqueRevise, Respond
    from charter.steps.sl import new_example

    cli_db = tmp_path / "cli.duckdb"
    result = cli(*revise_args(prompts_file, cli_db, server, "--rounds", "2"))
    assert result.code == 0, result.stderr

    chain = Respond() >> CritiqueRevise("anthropic-sl", rounds=2)
    source = PromptSource.open(prompts_file)
    chain_db = tmp_path / "chain.duckdb"
    job = Job(
        chain,
        command="revise",
        config={"from": "python"},
        run_name="from-python",
        items=lambda done: (new_example(p) for p in iter_prompts(source) if p.prompt_id not in done),
        total=scan_prompts(source).count,
        done_table="sft_examples",
        rows=example_rows,
    )
    summary = run_chain(job, CallSettings(model=CHAT_MODEL, api_base=server.base_url), chain_db)
    assert summary.ok and summary.completed == 2 and summary.calls == 10

    api_db = tmp_path / "api.duckdb"
    summary = revise(prompts_file, db=api_db, model=CHAT_MODEL, api_base=server.base_url, rounds=2)
    assert summary.ok and summary.completed == 2

    expected = stored(cli_db)
    assert len(expected[0]) == 4 and len(expected[1]) == 2
    assert stored(chain_db) == expected
    assert stored(api_db) == expected
    assert query(chain_db, "SELECT name, command, status FROM runs") == [("from-python", "revise", "done")]
