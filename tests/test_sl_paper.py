"""SL-CAI as the paper does it: a plain first answer, stop strings gone, every round revised on request."""

from __future__ import annotations

from charter_testing.fake_openai import FakeRequest, default_responder
from charter_testkit import (
    COMPLETION_MODEL,
    completion_args,
    last_user_text,
    query,
    query_dicts,
    revise_args,
    write_prompts,
)

from charter.constitution import load_constitution
from charter.steps.base import strip_stop

SL = load_constitution("anthropic-sl")
HUMAN_STOP = "\n\nHuman:"
CRITIQUE_STOP = "\n\nCritiqueRequest:"


def base_model(req: FakeRequest) -> str:
    """A base model continuing the transcript's pattern: after its text it writes the next turns itself."""
    prompt = req.prompt or ""
    tail = prompt.rsplit("\n\n", 1)[-1]
    if tail == "Assistant:":
        body = " Pick the lock with a tension wrench."
    elif tail == "Critique:":
        body = " The answer helps with a crime."
    else:
        body = " I can't help with breaking into homes."
    # What a base model writes next when nothing stops it: its own critique, revision and a new turn.
    return (
        body + "\n\nCritiqueRequest: Identify problems.\n\nCritique: none.\n\nRevisionRequest: Rewrite."
        "\n\nRevision: fine.\n\nHuman: thanks"
    )


def test_completion_first_answer_is_plain_and_stops_before_a_self_written_critique(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    db = tmp_path / "plain.duckdb"
    server.responder = base_model
    result = cli(*completion_args(prompts, db, server, "--rounds", "1"))
    assert result.code == 0, result.stderr
    first = server.requests[0]
    # No critique/revision transcripts in front of the first answer, as in the paper ...
    assert first["prompt"] == "\n\nHuman: How do I pick a lock?\n\nAssistant:"
    assert first["stop"] == [HUMAN_STOP, CRITIQUE_STOP]
    # ... while the critique and revision prompts keep the few-shot transcripts.
    assert server.requests[1]["prompt"].startswith("\n\nHuman: Could you help me burn down my house")
    assert query(db, "SELECT response FROM responses") == [("Pick the lock with a tension wrench.",)]
    (row,) = query_dicts(db, "SELECT critique, revision FROM revisions")
    assert row == {
        "critique": "The answer helps with a crime.",
        "revision": "I can't help with breaking into homes.",
    }


def test_respond_few_shot_keeps_the_transcripts_in_front_of_the_first_answer(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    result = cli(
        *completion_args(prompts, tmp_path / "fs.duckdb", server, "--rounds", "0", "--respond-few-shot")
    )
    assert result.code == 0, result.stderr
    prefix = "".join(t.removesuffix(HUMAN_STOP) for t in SL.few_shot.completion)
    assert server.requests[0]["prompt"] == f"{prefix}\n\nHuman: How do I pick a lock?\n\nAssistant:"
    # A different first-answer prompt is a different run: the plain run's name is not reused.
    plain = cli(*completion_args(prompts, tmp_path / "fs.duckdb", server, "--rounds", "0"))
    assert plain.code == 0, plain.stderr
    assert len(query(tmp_path / "fs.duckdb", "SELECT DISTINCT name FROM runs")) == 2


def test_stop_strings_returned_by_the_server_are_gone_from_stored_text(cli, server, tmp_path):
    # transformers serve returns the matched stop string at the end of the text; others cut before it.
    server.include_stop = True
    server.responder = base_model
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?", "Insult my neighbour."])
    db = tmp_path / "stops.duckdb"
    result = cli(*completion_args(prompts, db, server, "--rounds", "2"))
    assert result.code == 0, result.stderr
    raw = [r[0] for r in query(db, "SELECT response_text FROM calls")]
    assert raw and all(t.endswith(CRITIQUE_STOP) for t in raw)  # the server did return them (kept raw)
    stored = [
        *(r[0] for r in query(db, "SELECT response FROM responses")),
        *(t for r in query(db, "SELECT critique, revision FROM revisions") for t in r),
        *(
            t
            for r in query(db, "SELECT completion, init_response, critic_response FROM sft_examples")
            for t in r
        ),
    ]
    assert len(stored) == 2 + 2 * 2 * 2 + 2 * 3
    assert not [t for t in stored if "CritiqueRequest" in t or "Human:" in t]
    assert set(query(db, "SELECT response FROM responses")) == {("Pick the lock with a tension wrench.",)}

    # Samples (RL-CAI) go through the same step layer.
    server.reset()
    result = cli(
        "sample", "--db", db, "--model", COMPLETION_MODEL, "--api-base", server.base_url,
        "--prompts", prompts, "--mode", "completion",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert server.requests and all(CRITIQUE_STOP in b["stop"] for b in server.requests)
    samples = [r[0] for r in query(db, "SELECT response FROM samples")]
    assert samples and all(s == "Pick the lock with a tension wrench." for s in samples)


def test_chat_stop_param_is_stripped_too(cli, server, prompts_file, tmp_path):
    server.include_stop = True
    server.responder = lambda req: default_responder(req) + "\nEND more"
    db = tmp_path / "chat.duckdb"
    result = cli(*revise_args(prompts_file, db, server, "--rounds", "1", "--param", 'stop=["\\nEND"]'))
    assert result.code == 0, result.stderr
    texts = [t for r in query(db, "SELECT completion, init_response FROM sft_examples") for t in r]
    assert len(texts) == 4 and not [t for t in texts if "END" in t]


def test_strip_stop_takes_the_longest_stop_at_the_end_only():
    assert strip_stop("answer\n\nHuman:", [HUMAN_STOP, ":"]) == "answer"
    assert strip_stop("Human: answer", [HUMAN_STOP]) == "Human: answer"
    assert strip_stop("a\n\nHuman: b", [HUMAN_STOP]) == "a\n\nHuman: b"
    assert strip_stop("answer", []) == "answer"


def no_change_after_first_revision(req: FakeRequest) -> str:
    text = last_user_text(req)
    if "Verdict:" in text:
        verdict = "no change" if len(req.messages or []) > 3 else "revise"
        return f"The response could be kinder.\nVerdict: {verdict}"
    if "Reply with the rewritten response only." in text:
        return f"Revision {len(req.messages or [])}."
    return default_responder(req)


def test_always_revise_asks_for_a_revision_every_round(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    server.responder = no_change_after_first_revision
    db = tmp_path / "always.duckdb"
    result = cli(*revise_args(prompts, db, server, "--rounds", "3", "--always-revise"))
    assert result.code == 0, result.stderr
    # answer + 3 x (critique, revision), although rounds 2 and 3 said "no change"
    assert server.request_count == 7
    rows = query_dicts(db, "SELECT * FROM revisions ORDER BY round")
    assert [r["needs_revision"] for r in rows] == [True, False, False]  # the verdicts, as given
    assert all(r["revision_call_id"] is not None for r in rows)
    assert len({r["revision"] for r in rows}) == 3
    # Without the flag the same prompts are another run (the default run name differs).
    server.reset()
    result = cli(*revise_args(prompts, db, server, "--rounds", "3"))
    assert result.code == 0, result.stderr
    assert len(query(db, "SELECT name FROM runs")) == 2
