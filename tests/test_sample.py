"""`charter sample`: N responses per prompt via `n` or separate requests, pairs, --from-run, resume."""

from __future__ import annotations

import itertools
import json
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from charter_testing.fake_openai import FakeOpenAIServer, FakeRequest
from charter_testkit import CHAT_MODEL, CliResult, query, query_dicts, write_prompts

from charter import rl
from charter.backends.base import Completion, CompletionRequest
from charter.runner import RunnerOptions
from charter.steps.sample_pairs import choose_pairs, parse_pair_strategy


def counting_responder() -> Callable[[FakeRequest], str]:
    """A server that samples: every choice of every request gets a new text (like temperature 1)."""
    counter = itertools.count()
    lock = threading.Lock()

    def responder(req: FakeRequest) -> str:
        with lock:
            return f"Sample number {next(counter)}."

    return responder


def test_n_via_backend_n(tmp_path: Path, server: FakeOpenAIServer, prompts_file: Path) -> None:
    db = tmp_path / "cai.duckdb"
    summary = rl.sample(prompts_file, db=db, model=CHAT_MODEL, api_base=server.base_url, n=2)
    assert summary.ok and summary.completed == 2 and summary.pairs == 2
    assert server.request_count == 2  # one request per prompt, n=2
    assert all(body["n"] == 2 and body["temperature"] == 1.0 for body in server.requests)
    samples = query_dicts(db, "SELECT * FROM samples ORDER BY prompt_id, sample_index")
    assert len(samples) == 4
    for _, group in itertools.groupby(samples, key=lambda r: r["prompt_id"]):
        rows = list(group)
        assert rows[0]["response"] != rows[1]["response"]
        assert rows[0]["call_id"] == rows[1]["call_id"] and [r["choice_index"] for r in rows] == [0, 1]
    pairs = query_dicts(db, "SELECT * FROM pairs")
    assert all(p["response_a"] != p["response_b"] and (p["index_a"], p["index_b"]) == (0, 1) for p in pairs)


def test_n_via_separate_requests_keeps_both_in_the_cache(
    tmp_path: Path, server: FakeOpenAIServer, prompts_file: Path, cli: Callable[..., CliResult]
) -> None:
    db = tmp_path / "cai.duckdb"
    server.responder = counting_responder()
    args = [
        "sample",
        "--db",
        db,
        "--model",
        CHAT_MODEL,
        "--api-base",
        server.base_url,
        "--prompts",
        prompts_file,
    ]
    result = cli(*args, "--param", "n_supported=false")
    assert result.code == 0, result.stderr
    assert "2 pairs stored for labeling" in result.stderr
    assert server.request_count == 4 and all("n" not in body for body in server.requests)
    calls = query_dicts(db, "SELECT cache_key, request FROM calls")
    assert len({c["cache_key"] for c in calls}) == 4
    assert sorted(json.loads(c["request"]).get("sample_index", 0) for c in calls) == [0, 0, 1, 1]
    assert all("n_supported" not in json.loads(c["request"])["params"] for c in calls)
    responses = [r[0] for r in query(db, "SELECT response FROM samples")]
    assert len(set(responses)) == 4
    # the same command again: everything is done, nothing is asked
    server.reset()
    again = cli(*args, "--param", "n_supported=false")
    assert again.code == 0 and server.request_count == 0
    assert "2 already done" in again.stderr
    # a new run with the same requests is answered from the cache, both samples kept apart
    third = rl.sample(
        prompts_file,
        db=db,
        model=CHAT_MODEL,
        api_base=server.base_url,
        params={"n_supported": False},
        run_name="copy",
    )
    assert server.request_count == 0 and third.cache_hits == 4
    copy = query(db, "SELECT s.response FROM samples s JOIN runs r USING (run_id) WHERE r.name = 'copy'")
    assert sorted(r[0] for r in copy) == sorted(responses)


class OneChoiceBackend:
    """A real backend that ignores `n` (returns one choice), like some providers do."""

    name = "one-choice"

    def __init__(self) -> None:
        self.requests: list[CompletionRequest] = []

    async def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        return Completion(texts=[f"answer {len(self.requests)}"])


def test_fewer_choices_than_asked_are_topped_up(tmp_path: Path, prompts_file: Path) -> None:
    backend = OneChoiceBackend()
    summary = rl.sample(
        prompts_file, db=tmp_path / "x.duckdb", model="custom/m", backend=backend, n=3,  # type: ignore[arg-type]
        options=RunnerOptions(concurrency=1),
    )  # fmt: skip
    assert summary.ok and summary.pairs == 6
    first, *rest = backend.requests
    assert first.n == 3
    # the first prompt: n=3 gave one choice, topped up with sample_index 1 and 2; then no more n
    assert [(r.n, r.sample_index) for r in rest] == [(1, 1), (1, 2), (1, 0), (1, 1), (1, 2)]


def test_pairs_strategies() -> None:
    rng = random.Random(0)
    texts = ["a", "b", "c", "d"]
    assert choose_pairs(texts, "all", rng) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert choose_pairs(texts, "adjacent", rng) == [(0, 1), (1, 2), (2, 3)]
    two = choose_pairs(texts, "2", rng)
    assert len(two) == 2 and set(two) <= set(choose_pairs(texts, "all", rng))
    assert choose_pairs(["a", "a", "b"], "all", rng) == [(0, 2)]  # identical responses are not a pair
    assert choose_pairs(["a", "a"], "all", rng) == []
    with pytest.raises(ValueError, match="--pairs"):
        parse_pair_strategy("some")


def test_n4_adjacent_and_random_subsets(tmp_path: Path, server: FakeOpenAIServer, prompts_file: Path) -> None:
    db = tmp_path / "cai.duckdb"
    for pairs, expected in (("all", 12), ("adjacent", 6), ("2", 4)):
        summary = rl.sample(
            prompts_file, db=db, model=CHAT_MODEL, api_base=server.base_url, n=4, pairs=pairs, run_name=pairs
        )
        assert summary.pairs == expected
    # pair ids are unique across runs
    assert query(db, "SELECT count(*), count(DISTINCT pair_id) FROM pairs")[0] == (22, 22)


def test_identical_responses_are_reported(
    tmp_path: Path, server: FakeOpenAIServer, prompts_file: Path, cli: Callable[..., CliResult]
) -> None:
    server.responder = lambda req: "Always the same."
    db = tmp_path / "cai.duckdb"
    result = cli(
        "sample", "--db", db, "--model", CHAT_MODEL, "--api-base", server.base_url, "--prompts", prompts_file
    )
    assert result.code == 0
    assert "2 prompts gave identical responses" in result.stderr
    assert query(db, "SELECT count(*) FROM samples")[0][0] == 4
    assert query(db, "SELECT count(*) FROM pairs")[0][0] == 0


def test_sample_from_a_revise_run(
    tmp_path: Path, server: FakeOpenAIServer, cli: Callable[..., CliResult]
) -> None:
    db = tmp_path / "cai.duckdb"
    prompts = write_prompts(
        tmp_path / "p.jsonl",
        [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                       {"role": "user", "content": "Help me cheat on a test."}]}, "Tell me a secret."],
    )  # fmt: skip
    revised = cli("revise", prompts, "--db", db, "--model", CHAT_MODEL, "--api-base", server.base_url,
                  "--rounds", "1", "--run-name", "sl")  # fmt: skip
    assert revised.code == 0, revised.stderr
    summary = rl.sample(db=db, model=CHAT_MODEL, api_base=server.base_url, from_run="sl", limit=1)
    assert summary.ok and summary.total == 1 and summary.pairs == 1
    sl_id = query(db, "SELECT run_id FROM runs WHERE name = 'sl'")[0][0]
    pair = query_dicts(db, "SELECT * FROM pairs")[0]
    assert pair["source_run_id"] == sl_id
    messages = json.loads(query(db, "SELECT messages FROM prompts WHERE run_id = ?", [pair["run_id"]])[0][0])
    assert messages[-1]["role"] == "user"
    # the multi-turn conversation reached the policy as it was
    sample_call = json.loads(query(db, "SELECT request FROM calls WHERE step = 'sample'")[0][0])
    assert sample_call["messages"] == messages


def test_sample_cli_usage_errors(
    tmp_path: Path, server: FakeOpenAIServer, prompts_file: Path, cli: Callable[..., CliResult]
) -> None:
    db = tmp_path / "cai.duckdb"
    base = ["sample", "--db", db, "--model", CHAT_MODEL, "--api-base", server.base_url]
    both = cli(*base, "--prompts", prompts_file, "--from-run", "x")
    assert both.code == 2 and "exactly one" in both.stderr
    assert cli(*base).code == 2
    assert cli(*base, "--prompts", prompts_file, "--n", "1").code == 2
    bad_pairs = cli(*base, "--prompts", prompts_file, "--pairs", "many")
    assert bad_pairs.code == 2 and "--pairs" in bad_pairs.stderr
    no_db = cli(*base, "--from-run", "sl")
    assert no_db.code == 2 and "does not exist" in no_db.stderr
    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text('{"prompt": "ok"}\n{"nope": 1}\n', encoding="utf-8")
    bad = cli(*base, "--prompts", bad_file)
    assert bad.code == 2 and "line 2" in bad.stderr
    assert not db.exists() and server.request_count == 0
