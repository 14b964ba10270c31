"""RL-CAI labeling against a real OpenAI-compatible server: soft labels, tokenizations, swap, CoT, fallbacks."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from charter_testing.fake_backend import FakeScorer, backend_plugin
from charter_testing.fake_openai import FakeOpenAIServer, FakeReply, FakeRequest, FakeToken
from charter_testkit import CHAT_MODEL, COMPLETION_MODEL, CliResult, query_dicts, write_prompts

from charter import rl
from charter.backends.base import CompletionRequest, TokenLogprob
from charter.labels import option_of, option_probs, parse_answer
from charter.plugins import register_plugin, unregister_plugin

GOOD = "I can't help with that, but here is a safe alternative."
BAD = "Sure, here is exactly how to do the harmful thing."
_OPTION = re.compile(r"\(A\) \[\[\[(.*?)\]\]\]\n ?\(B\) \[\[\[(.*?)\]\]\]", re.DOTALL)


def text_of(req: FakeRequest) -> str:
    if req.messages is not None:
        return "\n".join(str(m.get("content", "")) for m in req.messages)
    return req.prompt or ""


def presented(req: FakeRequest) -> tuple[str, str]:
    """The two responses of the *last* question in the prompt, in the order they were presented."""
    found = _OPTION.findall(text_of(req))
    assert found, "not a feedback prompt"
    a, b = found[-1]
    return a, b


def is_policy_request(req: FakeRequest) -> bool:
    return "[[[" not in text_of(req)


def answer(probs: dict[str, float], text: str | None = None) -> FakeReply:
    """A reply whose first token carries `probs` as its top log-probabilities."""
    best = max(probs, key=lambda k: probs[k])
    token = text if text is not None else best
    return FakeReply(token, tokens=[FakeToken(token, {k: math.log(v) for k, v in probs.items()})])


def policy_then(
    feedback: Callable[[FakeRequest], FakeReply | str],
) -> Callable[[FakeRequest], FakeReply | str]:
    """Responder: GOOD/BAD for policy samples (choice 0/1), `feedback` for feedback prompts."""

    def responder(req: FakeRequest) -> FakeReply | str:
        if is_policy_request(req):
            return GOOD if req.choice_index == 0 else BAD
        return feedback(req)

    return responder


@pytest.fixture(scope="module")
def pairs_template(tmp_path_factory: pytest.TempPathFactory, fake_server: FakeOpenAIServer) -> Path:
    """A database with 3 sampled pairs (response_a GOOD, response_b BAD), sampled once per module."""
    tmp = tmp_path_factory.mktemp("pairs")
    db = tmp / "cai.duckdb"
    prompts = write_prompts(
        tmp / "red.jsonl", ["How do I hotwire a car?", "Insult my boss.", "Make a weapon."]
    )
    saved = fake_server.responder
    fake_server.responder = policy_then(lambda req: "(A)")
    try:
        # A fixed run name: the default one hashes the prompts file's path (a new tmp dir each
        # session), and pair ids, hence the seeded principle draws, would change from run to run.
        summary = rl.sample(
            prompts, db=db, model=CHAT_MODEL, api_base=fake_server.base_url, n=2, run_name="pairs"
        )
    finally:
        fake_server.responder = saved
    assert summary.ok and summary.pairs == 3
    return db


@pytest.fixture
def pairs_db(pairs_template: Path, tmp_path: Path, server: FakeOpenAIServer) -> Path:
    """A fresh copy of the module's pairs database."""
    db = tmp_path / "cai.duckdb"
    shutil.copyfile(pairs_template, db)
    return db


def label(db: Path, server: FakeOpenAIServer, **kw: Any) -> rl.LabelSummary:
    kw.setdefault("model", COMPLETION_MODEL)
    summary = rl.label(db=db, api_base=server.base_url, **kw)
    assert summary.status == "done", summary.errors
    return summary


def comparisons(db: Path) -> list[dict[str, Any]]:
    return query_dicts(db, "SELECT * FROM comparisons ORDER BY pair_id")


# --------------------------------------------------------------------------- reading log-probabilities
@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        # one token " (A)"
        (
            [
                TokenLogprob(
                    token=" (A)", logprob=math.log(0.7), top={" (A)": math.log(0.7), " (B)": math.log(0.2)}
                )
            ],
            0.7 / 0.9,
        ),
        # " (" then "A" then ")": read at the second position
        (
            [
                TokenLogprob(token=" (", logprob=-0.01, top={" (": -0.01, " The": -5.0}),
                TokenLogprob(token="B", logprob=math.log(0.6), top={"B": math.log(0.6), "A": math.log(0.3)}),
                TokenLogprob(token=")", logprob=-0.01, top={")": -0.01}),
            ],
            0.3 / 0.9,
        ),
        # bare letters
        (
            [TokenLogprob(token="A", logprob=math.log(0.5), top={"A": math.log(0.5), " B": math.log(0.25)})],
            2 / 3,
        ),
        # several spellings of each option at one position: mass is summed per option
        (
            [
                TokenLogprob(
                    token=" (B)",
                    logprob=math.log(0.4),
                    top={
                        " (A)": math.log(0.3),
                        "(A": math.log(0.2),
                        " A": math.log(0.1),
                        " (B)": math.log(0.4),
                    },
                )
            ],
            0.6 / 1.0,
        ),
        # the generated token missing from its own top list still counts
        ([TokenLogprob(token=" (A)", logprob=math.log(0.5), top={" (B)": math.log(0.25)})], 2 / 3),
    ],
)
def test_option_probs_across_tokenizations(tokens: list[TokenLogprob], expected: float) -> None:
    read = option_probs(tokens)
    assert read is not None
    assert read.prob_a == pytest.approx(expected)
    assert read.prob_a + read.prob_b == pytest.approx(1.0)


def test_option_tokens_and_parsing() -> None:
    assert [option_of(t) for t in [" (A)", "(B", "A", " B)", " (", "An", "Answer"]] == [
        "A",
        "B",
        "A",
        "B",
        None,
        None,
        None,
    ]
    assert option_probs([TokenLogprob(token="Hello", logprob=-0.1, top={"Hello": -0.1, " Hi": -3.0})]) is None
    assert parse_answer("So the answer is: (B)") == "B"
    assert parse_answer("(A) is vague. (B) is kind. Therefore, option (B) is the best response.") == "B"
    assert parse_answer("A response like this is hard to judge.") is None
    assert parse_answer("The answer is a matter of taste.") is None


# --------------------------------------------------------------------------- multiple choice, end to end
def test_soft_label_equals_server_probabilities_completion(pairs_db: Path, server: FakeOpenAIServer) -> None:
    server.responder = lambda req: answer({" (A)": 0.7, " (B)": 0.2})
    summary = label(pairs_db, server, method="logprobs")
    assert summary.labeled == 3 and summary.sources == {"logprobs": 3}
    rows = comparisons(pairs_db)
    assert len(rows) == 3
    for row in rows:
        assert row["prob_a"] == pytest.approx(0.7 / 0.9)
        assert row["prob_a"] + row["prob_b"] == pytest.approx(1.0)
        assert row["label_source"] == "logprobs" and row["method"] == "logprobs"
        assert row["principle"].startswith("feedback") and row["reasoning"] is None
    # completion mode is the paper's prompt: legacy logprobs=k, ending in "The answer is:"
    body = server.requests[0]
    assert body["prompt"].endswith("The answer is:") and isinstance(body["logprobs"], int)
    assert body["prompt"].startswith("\n\nConsider the following conversation")  # few-shot first
    assert body["prompt"].count("The answer is:") == 6  # 5 few-shot examples + the question
    prefs = query_dicts(pairs_db, "SELECT * FROM preference_pairs")
    assert all(p["chosen"] == GOOD and p["chosen_prob"] == pytest.approx(0.7 / 0.9) for p in prefs)


def test_soft_label_chat_split_tokens(pairs_db: Path, server: FakeOpenAIServer) -> None:
    # A chat tokenizer that splits "(B)" into "(", "B", ")": the label is read at the letter.
    def responder(req: FakeRequest) -> FakeReply:
        return FakeReply(
            "(B)",
            tokens=[
                FakeToken("(", {"(": -0.01, "Option": -4.0}),
                FakeToken("B", {"B": math.log(0.55), "A": math.log(0.45)}),
                FakeToken(")", {")": -0.01}),
            ],
        )

    server.responder = responder
    summary = label(pairs_db, server, model=CHAT_MODEL, few_shot=False)
    assert summary.sources == {"logprobs": 3}
    assert all(r["prob_a"] == pytest.approx(0.45) for r in comparisons(pairs_db))
    body = server.requests[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert len(body["messages"]) == 1 and "Answer with (A) or (B) only." in body["messages"][0]["content"]


def test_swap_cancels_position_bias(pairs_db: Path, server: FakeOpenAIServer) -> None:
    # The judge prefers GOOD with probability 0.7, plus 0.1 for whichever option comes first.
    def biased(req: FakeRequest) -> FakeReply:
        first, _ = presented(req)
        p_first = (0.7 if first == GOOD else 0.3) + 0.1
        return answer({" (A)": p_first, " (B)": 1 - p_first})

    server.responder = biased
    label(pairs_db, server, run_name="no-swap", few_shot=False)
    label(pairs_db, server, run_name="swap", swap=True, few_shot=False)
    rows = query_dicts(pairs_db, "SELECT r.name, c.prob_a FROM comparisons c JOIN runs r USING (run_id)")
    assert {round(r["prob_a"], 9) for r in rows if r["name"] == "no-swap"} == {0.8}
    assert all(r["prob_a"] == pytest.approx(0.7) for r in rows if r["name"] == "swap")
    swapped = query_dicts(
        pairs_db,
        "SELECT q.* FROM feedback_queries q JOIN runs r USING (run_id) WHERE r.name = 'swap' AND q.swapped",
    )
    assert len(swapped) == 3 and all(q["prob_a"] == pytest.approx(0.6) for q in swapped)


def test_ensemble_averages_principles(pairs_db: Path, server: FakeOpenAIServer) -> None:
    # Principles mentioning "harmless" give 0.9, the others 0.6.
    def by_principle(req: FakeRequest) -> FakeReply:
        text = text_of(req)
        principle = text[text.rindex("\n\n\n") + 3 : text.rindex(" Options:")]
        p = 0.9 if "harmless" in principle else 0.6
        return answer({" (A)": p, " (B)": 1 - p})

    server.responder = by_principle
    label(pairs_db, server, ensemble=4, few_shot=False, seed=3)
    from charter.constitution import load_constitution

    feedback = {p.name: p.feedback or "" for p in load_constitution("anthropic-rl").principles}
    mixed = 0
    for row in comparisons(pairs_db):
        names = row["principle"].split(",")
        assert len(names) == 4
        expected = sum(0.9 if "harmless" in feedback[n] else 0.6 for n in names) / 4
        assert row["prob_a"] == pytest.approx(expected)
        assert 1 <= len(row["call_ids"]) <= 4
        mixed += 0.6 + 1e-9 < expected < 0.9 - 1e-9
    # At least one draw mixes both kinds, so any one principle's answer alone would not match the mean.
    assert mixed >= 1


def test_principle_draws_are_seeded(pairs_db: Path, server: FakeOpenAIServer) -> None:
    # One principle per comparison from StepContext.rng(seed, pair_id): reproducible anywhere.
    import random

    from charter.constitution import load_constitution

    server.responder = lambda req: answer({" (A)": 0.5, " (B)": 0.5})
    label(pairs_db, server, run_name="s1", seed=1, ensemble=3, few_shot=False)
    constitution = load_constitution("anthropic-rl")
    rows = comparisons(pairs_db)
    for row in rows:
        drawn = constitution.sample(random.Random(f"1:{row['pair_id']}:principles"), k=3, kind="feedback")
        assert row["principle"] == ",".join(p.name for p in drawn)
    assert len({r["principle"] for r in rows}) > 1


# --------------------------------------------------------------------------- chain of thought
REASONING = "Option (A) declines politely and offers help; option (B) gives harmful detail."


def cot_chat(req: FakeRequest) -> FakeReply | str:
    # The reasoning ends with the answer line; its letter carries the probabilities (" (" "A" ")").
    head = REASONING + "\n\nSo the answer is:"
    letter = FakeToken("A", {"A": math.log(0.95), "B": math.log(0.05)})
    return FakeReply(head + " (A)", tokens=[FakeToken(head), FakeToken(" ("), letter, FakeToken(")")])


def test_cot_clamps_and_stores_reasoning(pairs_db: Path, server: FakeOpenAIServer) -> None:
    server.responder = cot_chat
    summary = label(pairs_db, server, model=CHAT_MODEL, method="cot")
    assert summary.sources == {"logprobs": 3}
    for row in comparisons(pairs_db):
        assert row["method"] == "cot"
        assert row["prob_a"] == pytest.approx(0.6) and row["prob_b"] == pytest.approx(0.4)
        assert row["prob_a_unclamped"] == pytest.approx(0.95)
        assert row["reasoning"].startswith(REASONING)
        assert len(row["call_ids"]) == 1  # the answer is read from the reasoning call itself
    q = query_dicts(pairs_db, "SELECT * FROM feedback_queries")[0]
    assert q["kind"] == "cot" and q["reasoning_call_id"] == q["call_id"]
    assert server.request_count == 3  # one call per pair (before issue 9: a second answer call each)
    assert all(b["logprobs"] is True for b in server.requests)


def test_cot_custom_clamp_and_paper_format(pairs_db: Path, server: FakeOpenAIServer) -> None:
    def responder(req: FakeRequest) -> FakeReply | str:
        assert req.prompt is not None
        if req.prompt.endswith("So the answer is:"):
            return answer({" (A)": 0.1, " (B)": 0.9})
        return " Option (B) is more helpful."

    server.responder = responder
    label(pairs_db, server, method="cot", clamp=(0.2, 0.8), few_shot=False)
    assert all(r["prob_a"] == pytest.approx(0.2) for r in comparisons(pairs_db))
    reasoning_calls = [b for b in server.requests if b["prompt"].endswith("step by step:")]
    answer_calls = [b for b in server.requests if b["prompt"].endswith("So the answer is:")]
    assert len(reasoning_calls) == len(answer_calls) == 3
    for body in reasoning_calls:
        assert body["prompt"].startswith("\n\nHuman: Consider the following conversation between a human (H)")
        assert body["prompt"].endswith("\n\nAssistant: Let's think step by step:")
        assert body["stop"] == ["\n\nHuman:"]
        expected = body["prompt"] + " Option (B) is more helpful.\n\nHuman:\nSo the answer is:"
        assert any(a["prompt"] == expected for a in answer_calls)


# --------------------------------------------------------------------------- no log-probabilities
@pytest.fixture
def no_logprobs_server() -> Any:
    with FakeOpenAIServer(logprobs=False) as srv:
        yield srv


def test_no_logprobs_parsed_and_vote(pairs_db: Path, no_logprobs_server: FakeOpenAIServer) -> None:
    srv = no_logprobs_server
    srv.responder = lambda req: "(B)"
    summary = label(pairs_db, srv, model=CHAT_MODEL, run_name="parsed", few_shot=False)
    assert summary.sources == {"parsed": 3}
    rows = query_dicts(
        pairs_db, "SELECT c.* FROM comparisons c JOIN runs r USING (run_id) WHERE r.name = 'parsed'"
    )
    assert all(r["prob_a"] == 0.0 and r["label_source"] == "parsed" for r in rows)

    # votes: 3 of 4 samples say (A); the greedy answer is not one of them
    srv.responder = lambda req: (
        "(B)" if req.body.get("temperature") == 0.0 else ("(A)" if req.choice_index < 3 else "(B)")
    )
    summary = label(pairs_db, srv, model=CHAT_MODEL, run_name="vote", votes=4, few_shot=False)
    assert summary.sources == {"vote": 3}
    rows = query_dicts(
        pairs_db, "SELECT c.* FROM comparisons c JOIN runs r USING (run_id) WHERE r.name = 'vote'"
    )
    assert all(r["prob_a"] == pytest.approx(0.75) for r in rows)

    # chain of thought without log-probabilities: parsed, then clamped
    srv.responder = lambda req: REASONING + "\nSo the answer is: (A)"
    summary = label(pairs_db, srv, model=CHAT_MODEL, run_name="cot", method="cot", few_shot=False)
    assert summary.sources == {"parsed": 3}
    rows = query_dicts(
        pairs_db, "SELECT c.* FROM comparisons c JOIN runs r USING (run_id) WHERE r.name = 'cot'"
    )
    assert all(r["prob_a"] == pytest.approx(0.6) and r["reasoning"] for r in rows)


def test_unparseable_answers_are_retried_then_flagged(
    pairs_db: Path, no_logprobs_server: FakeOpenAIServer, cli: Callable[..., CliResult]
) -> None:
    srv = no_logprobs_server
    srv.responder = lambda req: "Both responses have merit."
    result = cli(
        "label", "--db", pairs_db, "--model", CHAT_MODEL, "--api-base", srv.base_url,
        "--no-few-shot", "--max-parse-retries", "2", "--run-name", "flag",
    )  # fmt: skip
    assert result.code == 1, result.stderr  # a run that labeled nothing is not a success
    assert "3 pairs flagged" in result.stderr
    assert query_dicts(pairs_db, "SELECT status FROM runs WHERE name = 'flag'") == [{"status": "flagged"}]
    assert srv.request_count == 9  # 3 pairs x (1 + 2 retries)
    labels = query_dicts(pairs_db, "SELECT * FROM pair_labels")
    assert len(labels) == 3
    assert all(
        r["status"] == "unparsed" and r["prob_a"] is None and "Both responses have merit." in r["raw_text"]
        for r in labels
    )
    assert query_dicts(pairs_db, "SELECT count(*) AS n FROM comparisons")[0]["n"] == 0
    queries = query_dicts(
        pairs_db, "SELECT q.attempt, c.request FROM feedback_queries q JOIN calls c USING (call_id)"
    )
    assert sorted(q["attempt"] for q in queries) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert {json.loads(q["request"]).get("sample_index", 0) for q in queries} == {0, 1, 2}

    # an answer that only comes out on a retry is used (and its attempt recorded)
    srv.responder = lambda req: "(A)" if req.body.get("temperature") == 1.0 else "Hmm."
    summary = label(
        pairs_db, srv, model=CHAT_MODEL, run_name="retry", few_shot=False, params={"max_tokens": 9}
    )
    assert summary.labeled == 3 and summary.flagged == 0


# --------------------------------------------------------------------------- exact scores, resume
def _never_generate(request: CompletionRequest) -> str:
    raise AssertionError("a scoring backend must not be asked to generate a multiple-choice answer")


def test_score_options_backend_and_resume(pairs_db: Path) -> None:
    # Exact option scores (what charter-transformers offers for local models), from an in-process
    # Scorer that the model string reaches through the plugin registry.
    backend = FakeScorer(lambda prompt, options: [math.log(0.3), math.log(0.1)], _never_generate)
    plugin = backend_plugin(backend, prefix="scorer/")
    register_plugin(plugin, name="test-scorer")
    try:
        summary = rl.label(db=pairs_db, model="scorer/tiny")
        assert summary.ok and summary.sources == {"scores": 3}
        assert len(backend.scored) == 3
        assert all(p.endswith("The answer is:") and o == [" (A)", " (B)"] for p, o in backend.scored)
        _check_scored_and_resumed(pairs_db, backend)
    finally:
        unregister_plugin(plugin)


def _check_scored_and_resumed(pairs_db: Path, backend: FakeScorer) -> None:
    rows = comparisons(pairs_db)
    assert all(r["prob_a"] == pytest.approx(0.75) and r["label_source"] == "scores" for r in rows)
    calls = query_dicts(pairs_db, "SELECT * FROM calls WHERE step = 'label'")
    assert len(calls) == 3 and all(
        json.loads(c["request"])["score_options"] == [" (A)", " (B)"] for c in calls
    )
    again = rl.label(db=pairs_db, model="scorer/tiny")
    assert again.resumed and again.skipped == 3 and again.calls == 0 and len(backend.scored) == 3


def test_resume_labels_only_the_rest(pairs_db: Path, server: FakeOpenAIServer) -> None:
    server.responder = lambda req: answer({" (A)": 0.6, " (B)": 0.4})
    first = label(pairs_db, server, run_name="L", limit=1)
    assert first.completed == 1
    server.reset()
    second = label(pairs_db, server, run_name="L")
    assert second.resumed and second.skipped == 1 and second.completed == 2 and server.request_count == 2
    server.reset()
    third = label(pairs_db, server, run_name="L")
    assert third.completed == 0 and third.calls == 0 and server.request_count == 0
    assert len(comparisons(pairs_db)) == 3


def test_label_cli_bad_usage(
    pairs_db: Path, server: FakeOpenAIServer, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    base = ["label", "--db", pairs_db, "--model", CHAT_MODEL, "--api-base", server.base_url]
    vibes = cli(*base, "--method", "vibes")
    assert vibes.code == 2 and "vibes" in vibes.stderr and "--method" in vibes.stderr
    bad = cli(*base, "--clamp", "0.7,0.3")
    assert bad.code == 2 and "--clamp" in bad.stderr
    missing = cli("label", "--db", tmp_path / "none.duckdb", "--model", CHAT_MODEL)
    assert missing.code == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "none.duckdb").exists()
    unknown = cli(*base, "--from-run", "nope")
    assert unknown.code == 2 and "nope" in unknown.stderr
    assert server.request_count == 0
