"""Reading the label at the answer token, on replies tokenized by a real BPE (issue 9, items 1-2).

The server here is the fake OpenAI server with a byte-level BPE trained in memory by the `tokenizers`
library, so " (A)" arrives as " (", "A", ")" the way GPT-2-style tokenizers split it, words such as
"As" arrive as one token, and some tokens carry a leading space. Both client paths are covered: the
OpenAI fast path (`openai/test` with an api base) and LiteLLM (`charter_fast_path=false`).
"""

from __future__ import annotations

import itertools
import json
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import test_label
from charter_testing.fake_openai import FakeOpenAIServer, FakeReply, FakeRequest, FakeToken
from charter_testing.tokenization import BPEReplies
from charter_testkit import CHAT_MODEL, COMPLETION_MODEL, CliResult, query_dicts
from test_label import policy_then, text_of

from charter import rl
from charter.backends.base import TokenLogprob
from charter.labels import read_answer, stated_answer

REASONING = "Option (A) declines politely and offers help; option (B) gives harmful detail."
PATHS = {"fast path": {}, "litellm": {"charter_fast_path": "false"}}
# The labeling tests' 3-pair database (response_a GOOD, response_b BAD), sampled once per module.
pairs_template = test_label.pairs_template
pairs_db = test_label.pairs_db


@pytest.fixture(scope="module")
def bpe() -> BPEReplies:
    return BPEReplies.train()


def wrong_token_case() -> list[TokenLogprob]:
    """The issue's constructed case: " (" first (with " A" among its alternatives), then A=0.2, B=0.8."""
    return [
        TokenLogprob(token=" (", logprob=math.log(0.95), top={" (": math.log(0.95), " A": math.log(0.01)}),
        TokenLogprob(token="B", logprob=math.log(0.8), top={"A": math.log(0.2), "B": math.log(0.8)}),
        TokenLogprob(token=")", logprob=-0.01, top={")": -0.01}),
    ]


def as_logprobs(reply: FakeReply) -> list[TokenLogprob]:
    assert reply.tokens is not None
    out = []
    for t in reply.tokens:
        top = t.top_logprobs or {}
        out.append(TokenLogprob(token=t.text, logprob=top.get(t.text, -0.01), top=top))
    return out


# --------------------------------------------------------------------------- the tokenizer itself
def test_the_trained_bpe_tokenizes_like_real_models(bpe: BPEReplies) -> None:
    assert bpe.split(" (A)") == [" (", "A", ")"]
    assert bpe.split("So the answer is: (B)")[-4:] == [":", " (", "B", ")"]
    assert "As" in bpe.split("As an Answer")  # a word starting with A is one token, not "A" + "s"
    assert any(t.startswith(" ") for t in bpe.split("So the answer is: (B)"))
    reply = bpe.answer("So the answer is: (B)", {"A": 0.2, "B": 0.8})
    assert reply.tokens is not None and "".join(t.text for t in reply.tokens) == reply.text
    letter = next(t for t in reply.tokens if t.text == "B")
    assert letter.top_logprobs == {"B": pytest.approx(math.log(0.8)), "A": pytest.approx(math.log(0.2))}


def test_the_fake_server_can_tokenize_plain_replies_with_it(bpe: BPEReplies) -> None:
    import openai

    with FakeOpenAIServer(responder=lambda req: "So the answer is: (B)", split=bpe.split) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x")
        out = client.chat.completions.create(
            model="test", messages=[{"role": "user", "content": "?"}], logprobs=True, top_logprobs=2
        )
    content = out.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None
    assert [t.token for t in content][-4:] == [":", " (", "B", ")"]
    assert "".join(t.token for t in content) == "So the answer is: (B)"


# --------------------------------------------------------------------------- reading, unit level
def test_the_constructed_wrong_token_case_reads_0_2() -> None:
    reading = read_answer(wrong_token_case())
    assert reading.prob_a == pytest.approx(0.2)  # main's reader said 1.0 (the " A" at position 0)
    assert (reading.position, reading.token, reading.mass) == (1, "B", pytest.approx(1.0))


@pytest.mark.parametrize(
    ("text", "prob_a", "position_token"),
    [
        ("So the answer is: (B)", 0.2, "B"),  # " (" "B" ")" after the prefix
        (" (B)", 0.2, "B"),  # a multiple-choice continuation: " (" then the letter
        ("(A)", 0.7, "A"),  # no leading space
        ("The answer is A", 0.7, " A"),  # a bare letter with its leading space
        # garbage before the answer: the letter after the opening "(" is read
        ("Hmm, well. As an Answer I pick (A).", 0.7, "A"),
    ],
)
def test_reading_at_the_letter_in_real_tokenizations(
    bpe: BPEReplies, text: str, prob_a: float, position_token: str
) -> None:
    probs = {"A": prob_a, "B": 1 - prob_a}
    reading = read_answer(as_logprobs(bpe.answer(text, probs)))
    assert reading.prob_a == pytest.approx(prob_a)
    assert reading.token == position_token


def test_a_letter_inside_a_word_is_no_answer(bpe: BPEReplies) -> None:
    # llama.cpp-style garbage: "A" at p=0.003 among the alternatives of "As" at the first position.
    reply = bpe.reply("As a rule, both are fine.", lambda i, t: {"A": 0.003} if t == "As" else None)
    reading = read_answer(as_logprobs(reply))
    assert reading.prob_a is None
    assert reading.token == "As" and reading.mass == pytest.approx(0.003)


def test_chain_of_thought_reads_only_after_the_answer_line(bpe: BPEReplies) -> None:
    text = REASONING + "\n\nSo the answer is: (A)"
    reading = read_answer(as_logprobs(bpe.answer(text, {"A": 0.65, "B": 0.35})), after_prefix=True)
    assert reading.prob_a == pytest.approx(0.65) and reading.token == "A"
    assert stated_answer(text) == "A"
    # the mentions of (A) and (B) in the reasoning are not answers
    no_line = read_answer(as_logprobs(bpe.answer(REASONING, {"A": 0.9, "B": 0.1})), after_prefix=True)
    assert no_line.prob_a is None and no_line.position is None


# --------------------------------------------------------------------------- end to end
def label(db: Path, server: FakeOpenAIServer, **kw: Any) -> rl.LabelSummary:
    kw.setdefault("model", CHAT_MODEL)
    kw.setdefault("few_shot", False)
    summary = rl.label(db=db, api_base=server.base_url, **kw)
    assert summary.status == "done", summary.errors
    return summary


def run_rows(db: Path, table: str, name: str) -> list[dict[str, Any]]:
    return query_dicts(
        db, f"SELECT t.* FROM {table} t JOIN runs r USING (run_id) WHERE r.name = ? ORDER BY pair_id", [name]
    )


def reply_of(tokens: list[TokenLogprob]) -> FakeReply:
    return FakeReply(
        "".join(t.token for t in tokens), tokens=[FakeToken(t.token, dict(t.top)) for t in tokens]
    )


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
def test_wrong_token_case_is_labeled_0_2_with_its_evidence(
    pairs_db: Path, server: FakeOpenAIServer, path: str
) -> None:
    server.responder = lambda req: reply_of(wrong_token_case())
    for model in (CHAT_MODEL, COMPLETION_MODEL):
        summary = label(pairs_db, server, model=model, run_name=model, params=dict(PATHS[path]))
        assert summary.sources == {"logprobs": 3}
        assert [r["prob_a"] for r in run_rows(pairs_db, "comparisons", model)] == pytest.approx([0.2] * 3)
        for q in run_rows(pairs_db, "feedback_queries", model):
            assert (q["answer_position"], q["answer_token"], q["answer"]) == (1, "B", "B")
            assert q["option_mass"] == pytest.approx(1.0) and q["label_source"] == "logprobs"


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
def test_low_option_mass_is_never_a_logprob_label(
    pairs_db: Path, server: FakeOpenAIServer, bpe: BPEReplies, path: str
) -> None:
    params = dict(PATHS[path])
    # "(A)" is generated, but (A) and (B) together hold only 0.3 there: the text decides, as parsed.
    server.responder = lambda req: bpe.answer("(A)", {"A": 0.2, "B": 0.1}, lambda i, t: {" I": 0.6})
    summary = label(pairs_db, server, run_name="low", params=params)
    assert summary.sources == {"parsed": 3}
    rows = run_rows(pairs_db, "comparisons", "low")
    assert [r["prob_a"] for r in rows] == [1.0] * 3 and {r["label_source"] for r in rows} == {"parsed"}
    for q in run_rows(pairs_db, "feedback_queries", "low"):
        assert q["answer_token"] == "A" and q["option_mass"] == pytest.approx(0.3)
    # a lower threshold accepts the same evidence as a logprob label
    summary = label(pairs_db, server, run_name="lenient", params=params, min_option_mass=0.25)
    assert summary.sources == {"logprobs": 3}
    assert [r["prob_a"] for r in run_rows(pairs_db, "comparisons", "lenient")] == pytest.approx([2 / 3] * 3)
    config = query_dicts(pairs_db, "SELECT config FROM runs WHERE name = 'lenient'")[0]["config"]
    assert json.loads(config)["min_option_mass"] == 0.25

    # garbage with a letter inside a word and no answer: flagged, not a confident number
    server.responder = lambda req: bpe.reply(
        "As a rule, both are fine.", lambda i, t: {"A": 0.003} if t == "As" else None
    )
    # (another max_tokens, so the request cache does not answer with the earlier replies)
    garbage = {**params, "max_tokens": 7}
    # Every pair ends unparsed here, which is what this case checks: allow it (--max-flagged 1).
    summary = label(
        pairs_db, server, run_name="garbage", params=garbage, max_parse_retries=0, max_flagged=1.0
    )
    assert summary.labeled == 0 and summary.flagged == 3
    assert {r["status"] for r in run_rows(pairs_db, "pair_labels", "garbage")} == {"unparsed"}


def test_min_option_mass_cli(pairs_db: Path, server: FakeOpenAIServer, cli: Callable[..., CliResult]) -> None:
    base = ["label", "--db", pairs_db, "--model", CHAT_MODEL, "--api-base", server.base_url, "--no-few-shot"]
    bad = cli(*base, "--min-option-mass", "1.5")
    assert bad.code == 2 and "--min-option-mass" in bad.stderr
    wrong = cli(*base, "--cot-samples", "3")
    assert wrong.code == 2 and "--method cot" in wrong.stderr
    assert server.request_count == 0
    server.responder = lambda req: reply_of(wrong_token_case())
    ok = cli(*base, "--min-option-mass", "0.9", "--run-name", "cli")
    assert ok.code == 0, ok.stderr
    assert [r["prob_a"] for r in run_rows(pairs_db, "comparisons", "cli")] == pytest.approx([0.2] * 3)


# --------------------------------------------------------------------------- chain of thought
def cot(bpe: BPEReplies, probs: dict[str, float], reasoning: str = REASONING) -> Callable[[FakeRequest], Any]:
    def feedback(req: FakeRequest) -> FakeReply:
        assert req.messages is not None
        if req.messages[-1]["content"].startswith("So the answer is"):
            return bpe.answer("(A)", {"A": 0.9, "B": 0.1})  # the re-ask
        return bpe.answer(reasoning + "\n\nSo the answer is: (A)", probs)

    return feedback


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
def test_cot_chat_is_one_call_per_query_and_agrees_with_the_answer_line(
    pairs_db: Path, server: FakeOpenAIServer, bpe: BPEReplies, path: str
) -> None:
    server.responder = cot(bpe, {"A": 0.55, "B": 0.45})
    summary = label(pairs_db, server, method="cot", run_name="cot", params=dict(PATHS[path]))
    assert summary.sources == {"logprobs": 3}
    assert server.request_count == 3  # one call per pair: no second question
    for row in run_rows(pairs_db, "comparisons", "cot"):
        assert row["prob_a_unclamped"] == pytest.approx(0.55) and row["prob_a"] == pytest.approx(0.55)
        assert len(row["call_ids"]) == 1 and row["reasoning"].startswith(REASONING)
    for q in run_rows(pairs_db, "feedback_queries", "cot"):
        assert q["call_id"] == q["reasoning_call_id"]
        assert q["answer"] == q["stated_answer"] == "A" and q["contradicts"] is None
        assert q["answer_token"] == "A" and q["option_mass"] == pytest.approx(1.0)
    body = server.requests[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert "So the answer is: (A)" in body["messages"][-1]["content"]


def test_cot_without_an_answer_line_asks_again_and_flags_a_contradiction(
    pairs_db: Path, server: FakeOpenAIServer, bpe: BPEReplies
) -> None:
    def feedback(req: FakeRequest) -> FakeReply | str:
        assert req.messages is not None
        if req.messages[-1]["content"].startswith("So the answer is"):
            return bpe.answer("(A)", {"A": 0.9, "B": 0.1})
        return "Weighing both, option (B) is the best response here."  # no answer line

    server.responder = policy_then(feedback)
    summary = label(pairs_db, server, method="cot", run_name="reask")
    assert summary.sources == {"logprobs": 3}
    assert server.request_count == 6  # reasoning + re-ask per pair
    flagged = query_dicts(
        pairs_db,
        "SELECT q.* FROM feedback_queries q JOIN runs r USING (run_id) WHERE r.name = 'reask' AND q.contradicts",
    )
    assert len(flagged) == 3
    assert all(q["stated_answer"] == "B" and q["answer"] == "A" for q in flagged)
    assert all(q["call_id"] != q["reasoning_call_id"] for q in flagged)


def test_cot_samples_averages_clamped_samples(
    pairs_db: Path, server: FakeOpenAIServer, bpe: BPEReplies
) -> None:
    # Each pair's k-th reasoning sample says P(A) = 0.9, 0.5, 0.2 in turn (whatever order they arrive).
    counters: dict[str, itertools.count[int]] = {}
    lock = threading.Lock()
    ladder = [0.9, 0.5, 0.2]

    def feedback(req: FakeRequest) -> FakeReply:
        key = text_of(req)
        with lock:
            k = next(counters.setdefault(key, itertools.count()))
        p = ladder[k % 3]
        return bpe.answer(REASONING + "\n\nSo the answer is: (A)", {"A": p, "B": 1 - p})

    server.responder = policy_then(feedback)
    summary = label(pairs_db, server, method="cot", cot_samples=3, run_name="ens")
    assert summary.sources == {"logprobs": 3}
    assert server.request_count == 9  # 3 reasoning calls per pair, nothing else
    assert all(b["temperature"] == 1.0 for b in server.requests)
    for row in run_rows(pairs_db, "comparisons", "ens"):
        assert row["prob_a"] == pytest.approx((0.6 + 0.5 + 0.4) / 3)  # clamped to [0.4, 0.6] first
        assert row["prob_a_unclamped"] == pytest.approx((0.9 + 0.5 + 0.2) / 3)
    assert {r["cot_samples"] for r in run_rows(pairs_db, "pair_labels", "ens")} == {3}
    queries = query_dicts(
        pairs_db,
        "SELECT q.pair_id, q.cot_sample, c.request FROM feedback_queries q JOIN calls c USING (call_id) "
        "JOIN runs r ON r.run_id = q.run_id WHERE r.name = 'ens'",
    )
    assert sorted(q["cot_sample"] for q in queries) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    indexes = {(q["pair_id"], json.loads(q["request"]).get("sample_index", 0)) for q in queries}
    assert len(indexes) == 9  # distinct sample indexes: the request cache keeps every sample
    config = json.loads(query_dicts(pairs_db, "SELECT config FROM runs WHERE name = 'ens'")[0]["config"])
    assert config["cot_samples"] == 3 and config["chain"]["chain"][0]["cot_samples"] == 3


def test_pipeline_label_step_takes_the_new_options(
    tmp_path: Path, server: FakeOpenAIServer, bpe: BPEReplies
) -> None:
    from charter.pipeline import PipelineError, load_pipeline, run_pipeline

    server.responder = policy_then(
        lambda req: bpe.answer(REASONING + "\n\nSo the answer is: (A)", {"A": 0.7, "B": 0.3})
    )
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "Insult my boss."}) + "\n", encoding="utf-8")
    body = (
        f"db: cai.duckdb\ndefaults:\n  api_base: {server.base_url}\nsteps:\n"
        "  - sample:\n      model: openai/test\n      prompts: p.jsonl\n"
        "  - label:\n      model: openai/test\n      method: cot\n      few_shot: false\n"
        "      cot_samples: 2\n      min_option_mass: {mass}\n"
    )
    path = tmp_path / "rl.yaml"
    path.write_text(body.replace("{mass}", "1.5"), encoding="utf-8")
    with pytest.raises(PipelineError, match="min_option_mass"):
        load_pipeline(path, env={})
    path.write_text(body.replace("{mass}", "0.9"), encoding="utf-8")
    run_pipeline(path, db=tmp_path / "cai.duckdb", env={})
    db = tmp_path / "cai.duckdb"
    config = json.loads(query_dicts(db, "SELECT config FROM runs WHERE command = 'label'")[0]["config"])
    assert config["min_option_mass"] == 0.9 and config["cot_samples"] == 2
    (row,) = query_dicts(db, "SELECT * FROM comparisons")
    assert row["prob_a"] == pytest.approx(0.6) and row["label_source"] == "logprobs"
    assert query_dicts(db, "SELECT count(*) AS n FROM feedback_queries")[0]["n"] == 2
