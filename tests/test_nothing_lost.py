"""Nothing lost, nothing wrongly kept (issue 12): malformed answers, failed flushes, the journal after
kill -9, the endpoint in the cache key, Ctrl-C / SIGTERM, and export temp files."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import duckdb
import pytest
from charter_testing.fake_openai import FakeOpenAIServer, FakeRequest
from charter_testkit import COMPLETION_MODEL, REPO, query, revise_args, subprocess_env, write_prompts

from charter.export import export
from charter.store import Store

# The fast path (openai client), LiteLLM's chat path, and LiteLLM's completion path.
PATHS = {
    "fast": [],
    "litellm": ["--param", "charter_fast_path=false"],
    "completion": ["--model", COMPLETION_MODEL, "--mode", "completion"],
}


@pytest.mark.parametrize("kind", ["no_message", "null_content"])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_choice_without_text_is_retried_and_never_cached(cli, server, tmp_path, kind, path):
    prompts = write_prompts(tmp_path / "p.jsonl", [f"Red-team prompt {i}?" for i in range(4)])
    db = tmp_path / "malformed.duckdb"
    args = revise_args(prompts, db, server, "--rounds", "1", *PATHS[path])
    server.fail_every(3, kind)
    result = cli(*args)
    assert result.code == 0, result.stderr
    server.clear_faults()
    # Every malformed answer was asked again; none is stored as a successful call.
    assert query(
        db, "SELECT count(*) FROM calls WHERE error IS NULL AND coalesce(response_text, '') = ''"
    ) == [(0,)]
    assert query(db, "SELECT count(*) FROM calls WHERE error IS NULL AND attempts > 1")[0][0] >= 3
    assert query(db, "SELECT count(*), min(length(completion)) > 0 FROM sft_examples") == [(4, True)]
    server.reset()
    assert cli(*args, "--run-name", "again").code == 0
    assert server.request_count == 0  # the good answers are all cached


def test_a_legitimately_empty_answer_is_a_valid_cached_answer(cli, server, tmp_path):
    def empty(req: FakeRequest) -> str:
        return ""

    server.responder = empty
    prompts = write_prompts(tmp_path / "p.jsonl", ["Say nothing."])
    db = tmp_path / "empty.duckdb"
    result = cli(*revise_args(prompts, db, server, "--rounds", "0"))
    assert result.code == 0, result.stderr
    assert query(db, "SELECT response_text, error, attempts FROM calls") == [("", None, 1)]
    server.reset()
    assert cli(*revise_args(prompts, db, server, "--rounds", "0", "--run-name", "b")).code == 0
    assert server.request_count == 0


# --------------------------------------------------------------------------- item 1: failed flushes
def test_a_huge_token_count_is_stored_and_the_rest_commits(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [f"Red-team prompt {i}?" for i in range(20)])
    db = tmp_path / "usage.duckdb"
    server.fail_every(5, "huge_usage")  # seen in the wild: usage.prompt_tokens = 2**40
    result = cli(*revise_args(prompts, db, server, "--rounds", "0"))
    assert result.code == 0, result.stderr
    assert query(db, "SELECT count(*), count(*) FILTER (WHERE prompt_tokens = 2**40) FROM calls") == [(20, 4)]
    assert query(db, "SELECT count(*) FROM calls WHERE error IS NOT NULL") == [(0,)]
    assert query(db, "SELECT count(*) FROM sft_examples") == [(20,)]


def test_a_row_the_database_refuses_costs_only_itself(tmp_path):
    db = tmp_path / "refused.duckdb"
    with Store(db) as store:
        for i in range(10):
            store.add_call(
                {
                    "call_id": f"c{i}",
                    "run_id": "r",
                    "step": "respond",
                    "model": "m",
                    "cache_key": f"{i:032x}",
                    "request": "{}",
                    "response_text": "ok",
                    "attempts": 1,
                    "error": None,
                    "cached": False,
                    # one value no column holds (latency is a DOUBLE): that call alone is refused
                    "latency_ms": "not a number" if i == 3 else 1.0,
                }
            )
        good = {"run_id": "r", "response": "x"}
        store.add_rows("responses", [{**good, "prompt_id": "a"}, {**good, "prompt_id": None}])
        store.flush()
        assert len(store.rejected) == 2 and all("not stored" not in r for r in store.rejected)
    assert query(db, "SELECT count(*), count(*) FILTER (WHERE error IS NULL) FROM calls") == [(10, 9)]
    (error,) = query(db, "SELECT error FROM calls WHERE call_id = 'c3'")[0]
    assert error.startswith("not stored: ")
    assert query(db, "SELECT prompt_id FROM responses") == [("a",)]


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # A file-size limit makes the kernel refuse writes past `limit` bytes (EFBIG) for this
        # process only: to DuckDB it is the same failed write(2) as a full disk (ENOSPC).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_is_one_line_exit_1_and_keeps_what_finished(cli, server, tmp_path):
    total = 120
    prompts = write_prompts(
        tmp_path / "p.jsonl", [f"Red-team prompt {i}? " + "x" * 300 for i in range(total)]
    )
    db = tmp_path / "full.duckdb"
    # Paced (4 at a time, 50 ms each) so the first commits (about one a second) are small and fit
    # under the limit: what finished before the failed write must be there to keep.
    args = revise_args(prompts, db, server, "--rounds", "1", "--concurrency", "4")
    server.latency_s = 0.05
    proc = subprocess.run(
        [sys.executable, "-m", "charter", *map(str, args)],
        env=subprocess_env(CHARTER_PROGRESS_SECONDS="0"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_file_size_limit(300_000),
    )
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"charter: error: cannot write to {db}"), proc.stderr
    assert "File too large" in lines[0] and "Traceback" not in proc.stderr
    asked = server.request_count
    # It stopped at the failed write (on a quick machine the calls may all be answered before the
    # write that fails: at most every call was asked).
    assert 0 < asked <= 3 * total
    assert query(db, "SELECT status FROM runs") != [("done",)]
    ((committed,),) = query(db, "SELECT count(*) FROM calls WHERE error IS NULL")
    assert committed > 0  # what finished before the failed write is kept
    server.reset()
    server.latency_s = 0.0
    # Space again: the same command finishes, asking only what it never had: what was committed is
    # not asked again, nor what the journal kept (the journal lives on the same full disk, so it may
    # have lost its tail: the bound is what the database holds), beyond the calls in flight (16).
    again = cli(*args)
    assert again.code == 0, again.stderr
    assert server.request_count <= 3 * total - committed + 16
    assert query(db, "SELECT count(*) FROM sft_examples") == [(total,)]
    assert query(db, "SELECT count(*), count(DISTINCT cache_key) FROM calls WHERE error IS NULL") == [
        (3 * total, 3 * total)
    ]


# --------------------------------------------------------------------------- item 9: the journal
def _default_sigint() -> None:
    # A child of a shell's background job starts with SIGINT ignored, and Python keeps it so: then
    # Ctrl-C could not reach it. A user's terminal gives the default; so does this.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[Any], **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "charter", *map(str, args)],
        env=subprocess_env(**env),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def _wait_for_requests(server: FakeOpenAIServer, proc: subprocess.Popen[str], count: int) -> None:
    deadline = time.monotonic() + 120
    while server.request_count < count and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended too early: {proc.stderr.read() if proc.stderr else ''}"
    assert server.request_count >= count, "the run made no progress"


def test_after_kill_9_only_the_calls_in_flight_are_asked_again(cli, server, tmp_path):
    total, concurrency = 60, 4
    prompts = write_prompts(tmp_path / "p.jsonl", [f"Red-team prompt number {i}?" for i in range(total)])
    db = tmp_path / "killed.duckdb"
    args = revise_args(prompts, db, server, "--rounds", "1", "--concurrency", concurrency)
    server.latency_s = 0.03
    proc = _start(args)
    try:
        _wait_for_requests(server, proc, 60)  # well past the first flush, far from the end
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = [json.dumps(b, sort_keys=True) for b in server.requests]
    assert len(first) < 3 * total
    server.reset()
    server.latency_s = 0.0
    result = cli(*args)
    assert result.code == 0, result.stderr
    again = {json.dumps(b, sort_keys=True) for b in server.requests}
    # Re-asked: requests of the killed run sent again. Only those in flight at the kill may be.
    re_asked = len(again & set(first))
    assert re_asked <= concurrency, f"{re_asked} finished calls were asked again"
    assert query(db, "SELECT count(*), count(DISTINCT cache_key) FROM calls WHERE error IS NULL") == [
        (3 * total, 3 * total)
    ]
    assert query(db, "SELECT count(*) FROM sft_examples") == [(total,)]
    assert not (tmp_path / "killed.duckdb.journal").exists()  # emptied and removed by a clean close


# --------------------------------------------------------------------------- item 10: the endpoint
def test_the_same_model_on_another_endpoint_is_not_answered_from_the_cache(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?", "Insult my neighbour."])
    db = tmp_path / "endpoints.duckdb"

    def retrained(req: FakeRequest) -> str:
        return "The retrained checkpoint answers differently."

    with FakeOpenAIServer(responder=retrained) as other:
        first = cli(*revise_args(prompts, db, server, "--rounds", "1", "--run-name", "old"))
        assert first.code == 0, first.stderr
        moved = revise_args(prompts, db, other, "--rounds", "1", "--run-name", "new")
        assert cli(*moved).code == 0
        assert other.request_count == 6  # nothing came from the old server's cache
    texts = query(
        db,
        "SELECT r.name, count(*) FILTER (WHERE c.response_text LIKE 'The retrained%') FROM calls c "
        "JOIN runs r USING (run_id) WHERE c.step = 'respond' GROUP BY r.name ORDER BY r.name",
    )
    assert texts == [("new", 2), ("old", 0)]
    # The same endpoint still hits the cache, written with credentials or a trailing slash or not:
    # they are not part of the key.
    server.reset()
    host = server.base_url.removeprefix("http://")
    for i, base in enumerate([server.base_url + "/", f"http://user:sk-SECRET@{host}?key=sk-SECRET"]):
        args = revise_args(prompts, db, server, "--rounds", "1", "--run-name", f"same{i}")
        args[args.index(server.base_url)] = base
        assert cli(*args).code == 0
    assert server.request_count == 0


# --------------------------------------------------------------------------- item 12: loose ends
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_say_how_to_resume_and_mark_the_run_interrupted(
    cli, server, tmp_path, signum, code
):
    total = 40
    prompts = write_prompts(tmp_path / "p.jsonl", [f"Red-team prompt number {i}?" for i in range(total)])
    db = tmp_path / "stopped.duckdb"
    args = revise_args(prompts, db, server, "--rounds", "1", "--concurrency", "2")
    server.latency_s = 0.05
    proc = _start(args)
    try:
        _wait_for_requests(server, proc, 30)  # several prompts finished (3 calls each)
        os.kill(proc.pid, signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr
    assert (
        stderr.strip().splitlines()[-1]
        == "charter: interrupted; the same command resumes (what finished is saved)"
    )
    assert "Traceback" not in stderr
    assert query(db, "SELECT status FROM runs") == [("interrupted",)]
    committed = query(db, "SELECT count(*) FROM sft_examples")[0][0]
    assert 0 < committed < total
    server.latency_s = 0.0
    result = cli(*args)
    assert result.code == 0 and f"{committed} already done" in result.stderr, result.stderr


def test_export_leaves_no_temp_file_after_an_error_and_ignores_a_stale_one(
    cli, server, prompts_file, tmp_path
):
    db = tmp_path / "export.duckdb"
    assert cli(*revise_args(prompts_file, db, server, "--rounds", "1")).code == 0
    out = tmp_path / "sft.jsonl"
    stale = tmp_path / "sft.jsonl.tmp"
    stale.write_text("half a line from a killed export", encoding="utf-8")
    stale.chmod(0o444)
    done = cli("export", db, "--dataset", "sft", "--out", out)
    assert done.code == 0, done.stderr
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2 and not stale.exists()
    # An error while rows are read (a filter that fails on the data, not when parsed): no file at all.
    # (Raised when the query runs, before the output is opened, as a ValueError naming --where; an
    # error on a later batch would come as duckdb.Error from the middle of the writing.)
    with pytest.raises((duckdb.Error, ValueError), match="Conversion Error"):
        export(db, "sft", tmp_path / "bad.jsonl", where="CAST(prompt AS INTEGER) > 0")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("bad")) == []


def test_once_every_item_started_what_finished_is_committed_while_the_last_answers_come(tmp_path):
    """The rows of finished items reach the file while the last items still wait for their
    answers (a kill then loses only the calls in flight; the flush left after the last answer is
    small), not only after the last answer."""
    import asyncio

    from charter_testing.fake_backend import FakeBackend

    import charter

    class LastOneWaits(FakeBackend):
        committed_meanwhile = -1

        async def complete(self, request):  # type: ignore[no-untyped-def]
            if "last one" in request.messages[-1]["content"]:
                for _ in range(200):  # up to 10 s: the other five finish in milliseconds
                    await asyncio.sleep(0.05)
                    self.committed_meanwhile = store.con.execute("SELECT count(*) FROM calls").fetchone()[0]
                    if self.committed_meanwhile == 5:
                        break
            return await super().complete(request)

    prompts = write_prompts(
        tmp_path / "prompts.jsonl", [*(f"question {i}" for i in range(5)), "the last one"]
    )
    backend = LastOneWaits()
    with Store(tmp_path / "cai.duckdb") as store:
        summary = charter.revise(prompts, db=store, model="fake/m", backend=backend, rounds=0, concurrency=2)
    assert summary.completed == 6
    assert backend.committed_meanwhile == 5
