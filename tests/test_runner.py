"""The runner against real HTTP faults: retries, Retry-After, failures that resume, the rpm limiter."""

from __future__ import annotations

import json
import time

import pytest
from charter_testing.fake_openai import FakeRequest, default_responder
from charter_testkit import COMPLETION_MODEL, last_user_text, query, query_dicts, revise_args, write_prompts

from charter.backends.base import BackendError
from charter.runner import RunnerOptions, backoff_seconds


@pytest.mark.parametrize(
    ("kind", "model"),
    [
        ("429", None),
        ("500", None),
        ("503", None),
        ("broken_json", None),
        ("disconnect", None),
        ("broken_json", COMPLETION_MODEL),
        ("disconnect", COMPLETION_MODEL),
    ],
)
def test_transient_faults_are_retried_and_succeed(cli, server, tmp_path, kind, model):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    db = tmp_path / "faults.duckdb"
    extra = ["--model", model, "--mode", "completion"] if model else []
    server.inject(kind)
    result = cli(*revise_args(prompts, db, server, "--rounds", "0", *extra))
    assert result.code == 0, result.stderr
    assert server.request_count == 2  # the faulted request and one retry, nothing more
    assert query(db, "SELECT step, attempts, error FROM calls") == [("respond", 2, None)]
    assert query(db, "SELECT count(*) FROM sft_examples") == [(1,)]


def poison(req: FakeRequest) -> str:
    """A persistent failure for one prompt (the server answers 500 when a responder raises)."""
    if "POISON" in last_user_text(req):
        raise RuntimeError("this prompt always fails")
    return default_responder(req)


def test_persistent_failure_exits_1_keeps_what_finished_and_the_same_command_resumes(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?", "POISON: say something rude"])
    db = tmp_path / "partial.duckdb"
    args = revise_args(prompts, db, server, "--rounds", "1", "--max-retries", "0")
    server.responder = poison
    failed = cli(*args)
    assert failed.code == 1
    assert "1 done" in failed.stderr and "1 failed" in failed.stderr
    assert "run the same command again" in failed.stderr
    assert query(db, "SELECT prompt FROM sft_examples") == [("How do I pick a lock?",)]
    errors = query_dicts(db, "SELECT step, attempts, error, response_text FROM calls WHERE error IS NOT NULL")
    assert len(errors) == 1 and errors[0]["step"] == "respond" and errors[0]["attempts"] == 1
    assert "this prompt always fails" in errors[0]["error"] and errors[0]["response_text"] is None
    assert query(db, "SELECT status FROM runs") == [("failed",)]

    server.responder = default_responder
    server.reset()
    resumed = cli(*args)
    assert resumed.code == 0, resumed.stderr
    assert server.request_count == 3  # only the failed prompt: answer, critique, revision
    assert "1 already done" in resumed.stderr
    assert query(db, "SELECT count(*), count(DISTINCT prompt_id) FROM sft_examples") == [(2, 2)]
    assert query(db, "SELECT count(*), min(status) FROM runs") == [(1, "done")]


def test_max_retries_bounds_the_attempts(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    db = tmp_path / "bounded.duckdb"
    server.inject("429", count=10, retry_after=0)
    result = cli(*revise_args(prompts, db, server, "--rounds", "0", "--max-retries", "2"))
    assert result.code == 1
    assert server.request_count == 3
    assert query(db, "SELECT attempts, error LIKE '%RateLimit%' FROM calls") == [(3, True)]


def test_retry_after_is_honoured(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    answered: list[float] = []

    def clock(req: FakeRequest) -> str:
        answered.append(time.monotonic())
        return default_responder(req)

    server.responder = clock
    server.inject("429", retry_after=1.5)
    started = time.monotonic()
    result = cli(*revise_args(prompts, tmp_path / "waited.duckdb", server, "--rounds", "0"))
    assert result.code == 0, result.stderr
    assert server.request_count == 2
    # Lower bounds only (a loaded machine makes everything slower, never faster): the retry came
    # at least Retry-After after the run started.
    assert answered[0] - started >= 1.5
    # Retry-After: 0 means at once, whatever the backoff would have been; no header: jittered backoff.
    opts = RunnerOptions()
    assert backoff_seconds(opts, BackendError("429", retryable=True, retry_after=0.0), 1) == 0.0
    assert backoff_seconds(opts, BackendError("429", retryable=True, retry_after=500.0), 1) == 120.0
    assert 0 <= backoff_seconds(opts, BackendError("503", retryable=True), 1) <= opts.backoff_initial


def test_rpm_spaces_the_requests(cli, server, tmp_path):
    arrivals: list[float] = []

    def clock(req: FakeRequest) -> str:
        arrivals.append(time.monotonic())
        return default_responder(req)

    server.responder = clock
    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {i}" for i in range(5)])
    # Without --rpm the five go out together: each is answered after two seconds of latency, and by
    # the first answer all five have arrived (counted at the server, not timed: no flake under load).
    admitted: list[int] = []

    def count(req: FakeRequest) -> str:
        admitted.append(server.request_count)
        return default_responder(req)

    server.responder = count
    server.latency_s = 2.0
    result = cli(*revise_args(prompts, tmp_path / "free.duckdb", server, "--rounds", "0"))
    assert result.code == 0, result.stderr
    assert admitted[0] == 5
    server.latency_s = 0.0
    server.responder = clock
    server.reset()
    started = time.monotonic()
    result = cli(*revise_args(prompts, tmp_path / "limited.duckdb", server, "--rounds", "0", "--rpm", "200"))
    took = time.monotonic() - started
    assert result.code == 0, result.stderr
    # 200 a minute is one request every 0.3 s: the fifth cannot start before 1.2 s.
    assert len(arrivals) == 5 and took >= 1.2
    later = sorted(arrivals)[1:]  # the first request also pays for opening the connection
    assert later[-1] - later[0] >= 3 * 0.3 - 0.1


def test_a_request_encodes_its_messages_once_and_a_copy_with_other_messages_its_own(monkeypatch):
    """The messages' JSON is made once per request and spliced into the key, `calls.request` and the
    body: a copy given other messages must not reuse it."""
    from charter.backends import base
    from charter.backends.base import CompletionRequest

    encoded_lists = []

    class Counting(json.JSONEncoder):
        def encode(self, o):  # type: ignore[no-untyped-def]
            if isinstance(o, list):
                encoded_lists.append(o)
            return super().encode(o)

    monkeypatch.setattr(base, "_KEY_ENCODER", Counting(sort_keys=True, ensure_ascii=False, default=str))
    request = CompletionRequest(model="openai/m", messages=[{"role": "user", "content": 'Ünï "a"'}])
    key = request.cache_key()
    request.log_json()
    assert request.cache_key() == key
    assert encoded_lists == [request.messages]  # once, for the key and calls.request alike
    other = request.model_copy(update={"messages": [{"role": "user", "content": "b"}]})
    assert request.cache_key() != other.cache_key()
    assert json.loads(other.log_json())["messages"] == [{"role": "user", "content": "b"}]
    assert json.loads(request.log_json()) == request.to_log()
    scored = CompletionRequest(model="openai/m", mode="completion", prompt="p", score_options=[" (A)"])
    assert json.loads(scored.log_json()) == scored.to_log()


def test_the_request_cache_key_keeps_its_bytes():
    """A cache written by an earlier charter must still answer: the key of a request never changes.
    (These values were computed by the charter of commit 00ee000.)"""
    from charter.backends.base import CompletionRequest

    chat = CompletionRequest(
        model="openai/m",
        messages=[{"role": "user", "content": 'Ünïcode "quoted"'}],
        params={"temperature": 0.7, "stop": ["\n\nHuman:"], "max_tokens": 8},
        sample_index=1,
    )
    scored = CompletionRequest(
        model="openai/m", mode="completion", prompt="The answer is:", score_options=[" (A)", " (B)"]
    )
    assert (chat.cache_key(), scored.cache_key()) == (
        "a157ed21d5bcf36b8caa05e71cce83e2",
        "d7bbe4b5192634ecf809c8057ff2c7b2",
    )
