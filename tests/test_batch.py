"""`--batch`: revise, sample and label through the provider batch API (files + batches) of the server.

Each test starts its own server: the batch API keeps state (files, batches, held or failing lines).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from charter_testing.fake_openai import FakeOpenAIServer
from charter_testkit import CHAT_MODEL, REPO, CliResult, query, revise_args, write_prompts

from charter.backends.batch import POLL_ENV


@pytest.fixture
def bserver(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    """A server of this test's own, and batches looked at every 20 ms."""
    monkeypatch.setenv(POLL_ENV, "0.02")
    with FakeOpenAIServer() as srv:
        yield srv


def prompts(tmp_path: Path, count: int) -> Path:
    return write_prompts(
        tmp_path / "prompts.jsonl", [f"How do I do risky thing number {i}?" for i in range(count)]
    )


def sample_args(db: Path, server: FakeOpenAIServer, prompts_path: Path, *extra: Any) -> list[Any]:
    model = ["--model", CHAT_MODEL, "--api-base", server.base_url]
    return ["sample", "--db", db, *model, "--prompts", prompts_path, *extra]


def table(db: Path, sql: str) -> list[tuple[Any, ...]]:
    return sorted(query(db, sql))


REVISIONS = "SELECT prompt_id, round, principle, critique, revision FROM revisions"
SFT = "SELECT prompt_id, prompt, completion, init_response FROM sft_examples"


def test_batch_revise_equals_online_one_batch_per_round(
    tmp_path: Path, bserver: FakeOpenAIServer, cli: Callable[..., CliResult]
) -> None:
    source = prompts(tmp_path, 3)
    online, batched = tmp_path / "online.duckdb", tmp_path / "batch.duckdb"
    assert cli(*revise_args(source, online, bserver, "--rounds", "2", "--always-revise")).code == 0
    online_requests = bserver.request_count
    bserver.reset()

    result = cli(*revise_args(source, batched, bserver, "--rounds", "2", "--always-revise", "--batch"))
    assert result.code == 0, result.stderr
    assert bserver.request_count == 0  # nothing went to the online endpoint
    assert bserver.batches.lines_submitted == online_requests == 3 * 5
    # respond, then critique and revise for each of the 2 rounds: one batch each.
    assert bserver.batches.batches_created == 5
    assert table(batched, REVISIONS) == table(online, REVISIONS) and len(table(online, REVISIONS)) == 6
    assert table(batched, SFT) == table(online, SFT)
    jobs = query(batched, "SELECT status, requests, completed, failed FROM batch_jobs")
    assert sorted(jobs) == [("completed", 3, 3, 0)] * 5

    # The answers are in the same request cache as online calls: an online run of the same
    # command on the batch run's file makes no request.
    again = cli(*revise_args(source, batched, bserver, "--rounds", "2", "--always-revise", "--run-name", "x"))
    assert again.code == 0 and bserver.request_count == 0
    assert "15 cache hits" in again.stderr


def test_batch_label_with_logprobs_equals_online(
    tmp_path: Path, bserver: FakeOpenAIServer, cli: Callable[..., CliResult]
) -> None:
    source = prompts(tmp_path, 3)
    rows = {}
    for name, extra in (("online", []), ("batch", ["--batch"])):
        db = tmp_path / f"{name}.duckdb"
        assert cli(*sample_args(db, bserver, source, *extra)).code == 0
        label = ["label", "--db", db, "--model", CHAT_MODEL, "--api-base", bserver.base_url, *extra]
        result = cli(*label)
        assert result.code == 0, result.stderr
        rows[name] = table(
            db,
            "SELECT p.prompt_id, l.principle, l.prob_a, l.label_source, l.status "
            "FROM pair_labels l JOIN pairs p USING (pair_id)",
        )
    assert rows["batch"] == rows["online"] and len(rows["online"]) == 3
    assert all(r[3] == "logprobs" for r in rows["batch"])  # log-probabilities came back in the batch
    assert bserver.batches.batches_created == 2  # sample, label


def test_failed_and_expired_lines_resubmit_only_what_is_missing(
    tmp_path: Path, bserver: FakeOpenAIServer, cli: Callable[..., CliResult]
) -> None:
    source = prompts(tmp_path, 6)
    db = tmp_path / "cai.duckdb"
    bserver.batches.fail_lines(2, status=500)
    result = cli(*sample_args(db, bserver, source, "--batch"))
    assert result.code == 0, result.stderr
    ids = bserver.batches.submitted_ids
    assert len(ids) == 6 + 2 and len(set(ids)) == 6  # the 2 failed lines, and only they, again
    assert query(db, "SELECT count(DISTINCT prompt_id) FROM samples")[0][0] == 6

    expired = tmp_path / "expired.duckdb"
    before = len(bserver.batches.submitted_ids)
    bserver.batches.expire_next(run_lines=2)
    result = cli(*sample_args(expired, bserver, source, "--batch", "--seed", "1", "--temperature", "0.5"))
    assert result.code == 0, result.stderr
    assert len(bserver.batches.submitted_ids) - before == 6 + 4  # 4 never ran before the expiry
    statuses = sorted(r[0] for r in query(expired, "SELECT status FROM batch_jobs"))
    assert statuses == ["completed", "expired"]


def test_killed_mid_batch_resumes_without_resubmitting(
    tmp_path: Path, bserver: FakeOpenAIServer, cli: Callable[..., CliResult]
) -> None:
    count = 8
    source = prompts(tmp_path, count)
    db = tmp_path / "cai.duckdb"
    args = [str(a) for a in sample_args(db, bserver, source, "--batch")]
    env = {**os.environ, POLL_ENV: "0.02"}
    bserver.batches.hold()  # the batch stays in progress: the run is waiting on it when killed
    child = subprocess.Popen(
        [sys.executable, "-m", "charter", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while bserver.batches.lines_submitted < count:
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the batch was never submitted"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        if child.stderr:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    bserver.batches.release()

    resumed = cli(*args)  # in this process: one child start less
    assert resumed.code == 0, resumed.stderr
    ids = bserver.batches.submitted_ids
    assert len(ids) == count and len(set(ids)) == count  # every request submitted exactly once
    assert bserver.request_count == 0
    assert query(db, "SELECT count(DISTINCT prompt_id) FROM samples")[0][0] == count
    assert "(resumed)" in resumed.stderr
    status = cli("status", db)
    assert status.code == 0
    assert f"  batches: 1 (1 completed), {count} requests: {count} completed, 0 failed" in status.stdout


def test_a_lost_create_reply_adopts_the_batch_instead_of_resubmitting(
    tmp_path: Path, bserver: FakeOpenAIServer, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    from charter.backends.litellm_backend import import_litellm

    litellm = import_litellm()
    real = litellm.acreate_batch
    lost: list[str] = []

    async def reply_lost(**kwargs: Any) -> Any:
        batch = await real(**kwargs)  # the server made the batch...
        if not lost:
            lost.append(batch.id)
            raise TimeoutError("the reply never came")  # ...but the client never heard of it
        return batch

    monkeypatch.setattr(litellm, "acreate_batch", reply_lost)
    db = tmp_path / "cai.duckdb"
    result = cli(*sample_args(db, bserver, prompts(tmp_path, 4), "--batch"))
    assert result.code == 0, result.stderr
    assert lost and bserver.batches.batches_created == 1 and bserver.batches.lines_submitted == 4
    assert query(db, "SELECT batch_id, status FROM batch_jobs") == [(lost[0], "completed")]


def test_an_unreachable_provider_while_waiting_looks_again_without_resubmitting(
    tmp_path: Path, bserver: FakeOpenAIServer, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    from charter.backends.litellm_backend import import_litellm

    litellm = import_litellm()
    real = litellm.aretrieve_batch
    refused: list[str] = []

    async def flaky(**kwargs: Any) -> Any:
        if len(refused) < 2:  # more than the batch backend's own retries of a look (--max-retries 1)
            refused.append(kwargs["batch_id"])
            raise ConnectionError("connection refused")
        return await real(**kwargs)

    monkeypatch.setattr(litellm, "aretrieve_batch", flaky)
    db = tmp_path / "cai.duckdb"
    result = cli(*sample_args(db, bserver, prompts(tmp_path, 3), "--batch", "--max-retries", "1"))
    assert result.code == 0, result.stderr
    assert len(refused) == 2 and bserver.batches.batches_created == 1 and bserver.batches.lines_submitted == 3


def test_batch_with_a_provider_without_a_batch_api_is_bad_input(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    db = tmp_path / "cai.duckdb"
    source = prompts(tmp_path, 1)
    model = ["--model", "anthropic/claude-x", "--param", "api_key=sk-test"]
    result = cli("sample", "--db", db, *model, "--prompts", source, "--batch")
    assert result.code == 2
    assert result.error_lines() == [result.error_lines()[0]] and "--batch" in result.error_lines()[0]
    assert not db.exists()


def test_pipeline_batch_default_with_a_completion_model_label(
    tmp_path: Path, bserver: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from charter.pipeline import run_pipeline

    monkeypatch.chdir(tmp_path)
    write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?", "Insult my boss."])
    (tmp_path / "all.yaml").write_text(
        f"""
db: all.duckdb
defaults: {{model: openai/sl, api_base: "{bserver.base_url}", batch: true}}
steps:
  - revise: {{name: sl, prompts: p.jsonl, rounds: 1}}
  - sample: {{name: pairs, n: 2}}
  - label: {{model: "text-completion-openai/base", few_shot: false}}
""",
        encoding="utf-8",
    )
    results = run_pipeline(tmp_path / "all.yaml")
    assert all(r.ok for r in results)
    assert bserver.request_count == 0  # every request went in a batch
    # respond, critique, revise, sample, label (the paper's completion prompt, /v1/completions)
    assert bserver.batches.batches_created == 5
    endpoints = query(tmp_path / "all.duckdb", "SELECT endpoint, count(*) FROM batch_jobs GROUP BY ALL")
    assert sorted(endpoints) == [("/v1/chat/completions", 4), ("/v1/completions", 1)]
    labels = query(tmp_path / "all.duckdb", "SELECT label_source FROM pair_labels WHERE status = 'ok'")
    assert labels == [("logprobs",), ("logprobs",)]


def test_the_fake_batch_api_as_the_openai_client_sees_it(bserver: FakeOpenAIServer) -> None:
    import json

    import openai

    client = openai.OpenAI(base_url=bserver.base_url, api_key="sk-test", max_retries=0)

    def line(i: int, custom_id: str | None = None) -> str:
        body = {"model": "test", "messages": [{"role": "user", "content": f"q{i}"}], "logprobs": True}
        return json.dumps(
            {"custom_id": custom_id or f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        )

    def submit(lines: list[str]) -> Any:
        uploaded = client.files.create(file=("in.jsonl", "\n".join(lines).encode()), purpose="batch")
        return client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

    batch = submit([line(i) for i in range(3)])
    seen = [batch.status]
    while seen[-1] not in ("completed", "failed", "expired"):
        seen.append(client.batches.retrieve(batch.id).status)
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    done = client.batches.retrieve(batch.id)
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["c0", "c1", "c2"] and done.error_file_id is None
    assert all(o["response"]["body"]["choices"][0]["logprobs"]["content"] for o in out)

    bserver.batches.fail_lines(1, status=429)
    bserver.batches.hold()
    batch = submit([line(i) for i in range(2)])
    assert [client.batches.retrieve(batch.id).status for _ in range(3)] == ["in_progress"] * 3  # held
    bserver.batches.release()
    while (done := client.batches.retrieve(batch.id)).status != "completed":
        pass
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert errors[0]["custom_id"] == "c0" and errors[0]["response"]["status_code"] == 429

    bserver.batches.expire_next(run_lines=1)
    batch = submit([line(i) for i in range(3)])
    while (done := client.batches.retrieve(batch.id)).status not in ("expired", "completed"):
        pass
    assert done.status == "expired" and (done.request_counts.completed, done.request_counts.failed) == (1, 2)
    codes = [
        json.loads(x)["error"]["code"] for x in client.files.content(done.error_file_id).text.splitlines()
    ]
    assert codes == ["batch_expired", "batch_expired"]

    invalid = submit([line(0), line(1, custom_id="c0")])  # duplicate custom_id: fails validation
    assert invalid.status == "failed" and "duplicate" in invalid.errors.data[0].message
    assert bserver.batches.lines_submitted == 3 + 2 + 3  # the invalid batch's lines never count
