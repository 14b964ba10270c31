"""`charter eval hhh`: the paper's 438 comparisons against a scripted server whose answers we plant."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from charter_testing.fake_openai import FakeOpenAIServer, FakeReply, FakeRequest, FakeToken
from charter_testkit import COMPLETION_MODEL, query, query_dicts

from charter.evals import bootstrap_accuracy, calibration, expected_calibration_error, load_hhh
from charter.prompts import load_prompt

ITEMS = load_hhh()
CORRECT = {item.prompt: item.correct for item in ITEMS}
INDEX = {item.prompt: i for i, item in enumerate(ITEMS)}


def planted(req: FakeRequest) -> FakeReply | str:
    """Right with P=0.8 on three comparisons of four, wrong with P=0.7 on the fourth."""
    prompt = req.prompt or ""
    correct = CORRECT[prompt]
    wrong = "B" if correct == "A" else "A"
    right = INDEX[prompt] % 4 != 0
    letter, p = (correct, 0.8) if right else (wrong, 0.7)
    other = wrong if letter == correct else correct
    top = {f" ({letter})": math.log(p), f" ({other})": math.log(1 - p)}
    return FakeReply(f" ({letter})", tokens=[FakeToken(f" ({letter})", top)])


def test_the_shipped_file_is_the_papers_438_and_renders_byte_for_byte() -> None:
    assert len(ITEMS) == 438
    assert sum(1 for i in ITEMS if i.correct == "A") == 228
    template = load_prompt("label-mc-paper")
    for item in ITEMS:
        rendered = template.render(
            conversation=item.conversation, principle=item.principle, responses=item.responses, few_shot=None
        )
        assert rendered.text == item.prompt


def test_accuracy_comes_out_as_planted(tmp_path: Path, server: FakeOpenAIServer, cli) -> None:  # type: ignore[no-untyped-def]
    server.responder = planted
    db = tmp_path / "eval.duckdb"
    args = ["eval", "hhh", "--db", db, "--model", COMPLETION_MODEL, "--api-base", server.base_url]
    result = cli(*args, "--limit", "40", "--run-name", "hhh-planted")
    assert result.code == 0, result.stderr
    assert result.stdout.startswith("accuracy 0.750 (95% CI ")
    rows = query_dicts(db, "SELECT * FROM eval_results ORDER BY item_id")
    assert len(rows) == 40 and sum(r["correct"] for r in rows) == 30
    # Every number links back to its call, and the call asked exactly the eval file's prompt.
    first = rows[0]
    assert first["prob_correct"] == pytest.approx(0.3) and first["label_source"] == "logprobs"
    (request,) = query(db, "SELECT request->>'prompt' FROM calls WHERE call_id = ?", [first["call_ids"][0]])
    assert request[0] == ITEMS[0].prompt
    assert (tmp_path / "hhh-planted-reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Calibration counts both answers of each comparison: 30 answers got 0.8 and were right, 10 got
    # 0.7 and were wrong (the planted mistakes), 10 got 0.3 and were right, 30 got 0.2 and were wrong.
    assert "P(answer) 0.8-0.9:  30 answers, predicted 0.800, right 1.000" in result.stdout
    assert "P(answer) 0.7-0.8:  10 answers, predicted 0.700, right 0.000" in result.stdout
    assert "P(answer) 0.3-0.4:  10 answers, predicted 0.300, right 1.000" in result.stdout
    # The same command resumes: nothing is asked again.
    before = server.request_count
    again = cli(*args, "--limit", "40", "--run-name", "hhh-planted")
    assert again.code == 0 and server.request_count == before
    assert "accuracy 0.750" in again.stdout


def test_a_model_without_usable_answers_fails(tmp_path: Path, server: FakeOpenAIServer, cli) -> None:  # type: ignore[no-untyped-def]
    server.responder = lambda req: "I would rather not say."
    db = tmp_path / "eval.duckdb"
    result = cli(
        "eval", "hhh", "--db", db, "--model", COMPLETION_MODEL, "--api-base", server.base_url, "--limit", "4",
        "--param", "logprobs=0",
    )  # fmt: skip
    assert result.code == 1
    assert "most comparisons gave no usable answer" in result.stderr


def test_bad_input_is_exit_2_and_writes_nothing(tmp_path: Path, server: FakeOpenAIServer, cli) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "eval.duckdb"
    base = ["eval", "hhh", "--db", db]
    missing = cli(*base, "--model", COMPLETION_MODEL, "--file", tmp_path / "nope.jsonl")
    assert missing.code == 2 and "no such eval file" in missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hello", "corrects": [" (A)"], "text_correct": "", "text_incorrect": ""}\n')
    layout = cli(*base, "--model", COMPLETION_MODEL, "--file", bad)
    assert layout.code == 2 and f"{bad}: line 1: prompt:" in layout.stderr
    neither = cli(*base)
    assert neither.code == 2 and "--reward-model" in neither.stderr
    checkpoint = cli(*base, "--reward-model", tmp_path / "no-such-model")
    assert checkpoint.code == 2 and "no such directory" in checkpoint.stderr
    method = cli(*base, "--model", COMPLETION_MODEL, "--method", "vibes")
    assert method.code == 2 and "--method 'vibes'" in method.stderr
    assert not db.exists()


def test_statistics_by_hand() -> None:
    acc = bootstrap_accuracy([True] * 75 + [False] * 25, seed=1)
    assert acc.value == 0.75 and acc.low < 0.75 < acc.high and acc.low > 0.6 and acc.high < 0.86
    assert bootstrap_accuracy([True] * 10, seed=1) == bootstrap_accuracy([True] * 10, seed=1)
    bins = calibration([0.9, 0.9, 0.1, 0.6], [True, False, False, True], bins=10)
    assert [(b.low, b.count, b.frequency) for b in bins] == [(0.1, 1, 0.0), (0.6, 1, 1.0), (0.9, 2, 0.5)]
    # |0.1-0| x 1/4 + |0.6-1| x 1/4 + |0.9-0.5| x 2/4
    assert expected_calibration_error(bins) == pytest.approx(0.025 + 0.1 + 0.2)


def test_summaries_count_tokens_and_cost(tmp_path: Path, server: FakeOpenAIServer, cli) -> None:  # type: ignore[no-untyped-def]
    """Every run summary says the tokens and the cost (issue 10 item 5): priced from LiteLLM's table."""
    server.responder = planted
    db = tmp_path / "eval.duckdb"
    # gpt-4o-mini is in LiteLLM's price table: the fake server's token counts get a real price.
    priced = cli(
        "eval", "hhh", "--db", db, "--model", "text-completion-openai/gpt-3.5-turbo-instruct",
        "--api-base", server.base_url, "--limit", "3",
    )  # fmt: skip
    assert priced.code == 0, priced.stderr
    (tokens,) = query(db, "SELECT sum(prompt_tokens), sum(completion_tokens), sum(cost_usd) FROM calls")
    assert tokens[2] and tokens[2] > 0
    assert f"{tokens[0]:,} + {tokens[1]:,} tokens, ${tokens[2]:.4f}" in priced.stderr
    unpriced = cli(*["eval", "hhh", "--db", db, "--model", COMPLETION_MODEL, "--api-base", server.base_url],
                   "--limit", "2")  # fmt: skip
    assert unpriced.code == 0 and "tokens, cost unknown" in unpriced.stderr
