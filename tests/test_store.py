"""The DuckDB store as users meet it: the request cache, resume after kill -9, one writer, no secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from charter_testkit import (
    REPO,
    query,
    revise_args,
    run_charter,
    subprocess_env,
    write_prompts,
)

from charter.store import Store

TABLES = ("runs", "calls", "prompts", "responses", "revisions", "sft_examples")


def counts(db: Path) -> dict[str, int]:
    return {t: query(db, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


def test_rerunning_a_finished_command_asks_nothing_and_adds_nothing(cli, server, prompts_file, tmp_path):
    db = tmp_path / "cache.duckdb"
    args = revise_args(prompts_file, db, server, "--rounds", "2")
    first = cli(*args)
    assert first.code == 0, first.stderr
    before = counts(db)
    assert before["calls"] == server.request_count == 10 and before["sft_examples"] == 2
    server.reset()

    again = cli(*args)
    assert again.code == 0, again.stderr
    assert server.request_count == 0
    assert counts(db) == before
    assert "resumed" in again.stderr and "2 already done" in again.stderr
    assert query(db, "SELECT status FROM runs") == [("done",)]


def test_a_new_run_reuses_cached_answers_and_records_them_as_cached(cli, server, prompts_file, tmp_path):
    db = tmp_path / "cache.duckdb"
    assert cli(*revise_args(prompts_file, db, server, "--rounds", "1", "--run-name", "a")).code == 0
    server.reset()
    result = cli(*revise_args(prompts_file, db, server, "--rounds", "1", "--run-name", "b"))
    assert result.code == 0, result.stderr
    assert server.request_count == 0
    per_run = query(
        db,
        "SELECT r.name, count(*), count(*) FILTER (WHERE c.cached) FROM calls c JOIN runs r USING (run_id) "
        "GROUP BY r.name ORDER BY r.name",
    )
    assert per_run == [("a", 6, 0), ("b", 6, 6)]
    same = query(
        db,
        "SELECT count(*) FROM sft_examples a JOIN sft_examples b USING (prompt_id) "
        "WHERE a.run_id <> b.run_id AND a.completion = b.completion",
    )
    assert same == [(4,)]  # both directions of the two prompts


def test_kill_9_mid_run_then_the_same_command_resumes_without_duplicates(cli, server, tmp_path):
    total = 12
    prompts = write_prompts(tmp_path / "p.jsonl", [f"Red-team prompt number {i}?" for i in range(total)])
    db = tmp_path / "killed.duckdb"
    args = revise_args(prompts, db, server, "--rounds", "1", "--concurrency", "1")
    server.latency_s = 0.1  # 36 calls one at a time: several seconds, several commits
    proc = subprocess.Popen(
        [sys.executable, "-m", "charter", *map(str, args)],
        env=subprocess_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Each prompt is 3 requests; commits happen about once a second. Kill after 5 prompts were
        # asked and a commit reached the file (DuckDB appends it to DB.wal): not on a timer, which
        # a fast run outpaces and a loaded machine lags.
        wal = db.with_name(db.name + ".wal")

        def committed_and_asked() -> bool:
            return server.request_count >= 3 * 5 and wal.exists() and wal.stat().st_size > 0

        deadline = time.monotonic() + 120
        while not committed_and_asked() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, (
            f"the run ended before it could be killed: {proc.stderr.read() if proc.stderr else ''}"
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    committed = query(db, "SELECT count(*) FROM sft_examples")[0][0]
    assert 0 < committed < total
    assert query(db, "SELECT status FROM runs") == [("running",)]
    server.latency_s = 0.0
    server.reset()

    result = cli(*args)
    assert result.code == 0, result.stderr
    assert f"{committed} already done" in result.stderr
    # Committed prompts are never asked again; what was in flight is asked at most once more.
    remaining = 3 * (total - committed)
    assert remaining - 3 * 6 <= server.request_count <= remaining
    assert query(db, "SELECT count(*), count(DISTINCT prompt_id) FROM sft_examples") == [(total, total)]
    assert query(db, "SELECT count(*), count(DISTINCT (prompt_id, round)) FROM revisions") == [(total, total)]
    # Every request the run needed is stored exactly once, and every round points at its calls.
    assert query(db, "SELECT count(*), count(DISTINCT cache_key) FROM calls WHERE error IS NULL") == [
        (3 * total, 3 * total)
    ]
    dangling = query(
        db,
        "SELECT count(*) FROM revisions r LEFT JOIN calls c ON c.call_id = r.revision_call_id "
        "WHERE c.call_id IS NULL",
    )
    assert dangling == [(0,)]
    assert query(db, "SELECT count(*), min(status) FROM runs") == [(1, "done")]


def test_a_second_writer_gets_a_clear_error_and_exit_2(server, prompts_file, tmp_path):
    db = tmp_path / "busy.duckdb"
    with Store(db):  # this test process holds the write lock
        result = run_charter(*revise_args(prompts_file, db, server, "--rounds", "0"))
    assert result.code == 2
    (line,) = result.error_lines()
    assert line.startswith(f"charter: error: database {db} is in use by PID {os.getpid()}"), line
    assert server.request_count == 0
    assert query(db, "SELECT count(*) FROM runs") == [(0,)]


def test_secrets_never_reach_the_database(cli, server, prompts_file, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ENVSECRET")
    db = tmp_path / "secrets.duckdb"
    args = revise_args(
        prompts_file,
        db,
        server,
        "--rounds",
        "1",
        "--param",
        "api_key=sk-SECRET123",
        "--param",
        'extra_headers={"Authorization": "Bearer sk-HEADERSECRET"}',
        "--param",
        "temperature=0.5",
    )
    # One failed attempt first, so error rows are written too; then the same command finishes.
    server.inject("500", count=2)  # both prompts' first requests
    failed = cli(*args, "--max-retries", "0")
    assert failed.code == 1
    done = cli(*args)
    assert done.code == 0, done.stderr
    assert all(body.get("temperature") == 0.5 for body in server.requests)  # the params did travel
    assert query(db, "SELECT count(*) FROM calls WHERE error IS NOT NULL")[0][0] >= 1

    secrets = ("sk-SECRET123", "sk-ENVSECRET", "sk-HEADERSECRET", "SECRET")
    for output in (failed.stdout, failed.stderr, done.stdout, done.stderr):
        assert not any(s in output for s in secrets)
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        assert {"runs", "calls", "revisions", "sft_examples"} <= set(tables)
        for table in tables:
            text = str(con.execute(f"SELECT * FROM {table}").fetchall())
            assert "SECRET" not in text, f"a secret is stored in {table}"
    finally:
        con.close()
    for path in tmp_path.iterdir():
        if path.name.startswith(db.name):
            assert b"SECRET" not in path.read_bytes(), f"a secret is in the bytes of {path.name}"


@pytest.mark.parametrize("as_lists", [True, False], ids=["lists", "numpy"])
def test_rows_keep_their_json_lists_and_numbers_as_given(tmp_path, monkeypatch, as_lists):
    """What a writer hands the store comes back as written, whichever way the batch goes to DuckDB:
    a dict for a JSON column as JSON (not Python's repr), equal-length lists as lists (not a 2-D
    array), big token counts, NULLs."""
    monkeypatch.setattr(Store, "_as_lists", lambda self: as_lists)
    db = tmp_path / "cai.duckdb"
    with Store(db) as store:
        run_id, _ = store.start_run("rows", "test", {})
        base = {"run_id": run_id, "step": "respond", "model": "m", "request": "{}", "attempts": 1}
        store.add_rows(
            "calls",
            [
                {
                    **base,
                    "call_id": "a",
                    "cache_key": "k1",
                    "logprobs": {"top": [["A", -0.5]]},
                    "prompt_tokens": 2**40,
                },
                {**base, "call_id": "b", "cache_key": "k2", "responses": ["x", "y"], "latency_ms": 1.25},
            ],
        )
        label = {"run_id": run_id, "model": "m", "method": "logprobs", "principle": "p", "status": "ok"}
        store.add_rows(
            "pair_labels",
            [
                {**label, "pair_id": "p1", "call_ids": ["a", "b"]},
                {**label, "pair_id": "p2", "call_ids": ["b", "a"]},
            ],
        )
    con = duckdb.connect(str(db), read_only=True)
    calls = con.execute(
        "SELECT call_id, logprobs->'$.top[0][1]', responses->>'$[1]', prompt_tokens, latency_ms, error "
        "FROM calls ORDER BY call_id"
    ).fetchall()
    assert calls == [("a", "-0.5", None, 2**40, None, None), ("b", None, "y", None, 1.25, None)]
    assert con.execute("SELECT call_ids FROM pair_labels ORDER BY pair_id").fetchall() == [
        (["a", "b"],),
        (["b", "a"],),
    ]


def test_a_journal_left_by_a_kill_replays_every_json_column_byte_for_byte(tmp_path):
    """The rows a killed writer journaled come back with the very texts it was given, whether the
    line was written by this charter (JSON columns inline) or an older one (JSON columns as strings)."""
    from charter.store.journal import encode_row, journal_path

    db = tmp_path / "cai.duckdb"
    with Store(db) as store:
        run_id, _ = store.start_run("killed", "test", {})
    request = json.dumps(
        {"mode": "chat", "params": {"temperature": 0.7, "top_logprobs": 20, "huge": 1e16},
         "messages": [{"role": "user", "content": 'Say "ü" \\ then\nstop\u2028'}]},
        ensure_ascii=False,
    )  # fmt: skip
    logprobs = json.dumps([[{"token": " (A)", "logprob": -0.01, "top": {" (A)": -0.01, " (B)": -4.6}}]])
    base = {"run_id": run_id, "step": "label", "model": "m", "attempts": 1, "error": None, "cached": False}
    rows = [
        {**base, "call_id": "new", "cache_key": "k1", "request": request, "responses": '["(A)"]',
         "logprobs": logprobs, "response_text": "(A)", "latency_ms": 12.5},
        {**base, "call_id": "old", "cache_key": "k2", "request": request, "responses": '["x\\"y"]',
         "logprobs": None},
    ]  # fmt: skip
    line_now = encode_row(rows[0])
    assert b'"request": {"mode"' in line_now  # inline, not escaped a second time
    line_before = (json.dumps(rows[1], ensure_ascii=False) + "\n").encode()
    journal_path(db).write_bytes(line_now + line_before + b'{"call_id": "torn", "req')
    with Store(db):  # opening replays the journal into calls
        pass
    con = duckdb.connect(str(db), read_only=True)
    got = con.execute(
        "SELECT call_id, request::VARCHAR, responses::VARCHAR, logprobs::VARCHAR, latency_ms FROM calls "
        "ORDER BY call_id"
    ).fetchall()
    assert got == [("new", request, '["(A)"]', logprobs, 12.5), ("old", request, '["x\\"y"]', None, None)]
    assert not journal_path(db).exists()


def test_a_journal_of_rows_already_committed_replays_without_duplicates_or_loss(tmp_path):
    """Killed after a flush committed but before the journal was reset: replay meets fresh calls
    already in the file (a plain INSERT would refuse them) beside one that is not; all three are
    there once, the other tables' rows too."""
    from charter.store.journal import encode_row, journal_path

    db = tmp_path / "cai.duckdb"
    base = {"step": "respond", "model": "m", "request": "{}", "attempts": 1, "error": None, "cached": False}
    with Store(db) as store:
        run_id, _ = store.start_run("killed", "test", {})
        committed = [{**base, "run_id": run_id, "call_id": f"c{i}", "cache_key": f"k{i}"} for i in range(2)]
        for row in committed:
            store.add_call(row)
    late = {**base, "run_id": run_id, "call_id": "c2", "cache_key": "k2"}
    journal_path(db).write_bytes(b"".join(encode_row(r) for r in [*committed, late]))
    with Store(db) as store:  # opening replays the journal
        store.add_call({**base, "run_id": run_id, "call_id": "c3", "cache_key": "k3"})
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT call_id FROM calls ORDER BY call_id").fetchall() == [
        ("c0",),
        ("c1",),
        ("c2",),
        ("c3",),
    ]
    assert not journal_path(db).exists()


def test_rows_written_again_are_kept_once_and_the_rest_of_their_flush_is_written(tmp_path):
    """Rows go in with a plain INSERT first: one already in the file must not fail the flush or
    lose the rows beside it (the transaction is redone, duplicates ignored), nor the next flush."""
    db = tmp_path / "cai.duckdb"
    prompt = {"prompt_id": "p0", "prompt": "hi", "messages": "[]"}
    with Store(db) as store:
        run_id, _ = store.start_run("again", "test", {})
        store.add_rows("prompts", [{**prompt, "run_id": run_id}])
        store.flush()
        for i in (1, 2):
            store.add_rows(
                "prompts", [{**prompt, "run_id": run_id}, {**prompt, "run_id": run_id, "prompt_id": f"p{i}"}]
            )
            store.flush()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT prompt_id FROM prompts ORDER BY 1").fetchall() == [("p0",), ("p1",), ("p2",)]


def test_items_come_the_same_fetched_whole_or_spilled_to_disk(tmp_path, monkeypatch):
    """A small result is fetched at once, a large one streamed from a Parquet spill: same rows."""
    from charter.store import store as store_module

    with Store(tmp_path / "cai.duckdb") as store:
        run_id, _ = store.start_run("items", "test", {})
        rows = [
            {"run_id": run_id, "prompt_id": f"p{i}", "prompt": f"hi {i}", "messages": "[]"} for i in range(7)
        ]
        store.add_rows("prompts", rows)  # flushed by iter_dicts itself
        sql = "SELECT prompt_id, prompt FROM prompts ORDER BY prompt_id"
        whole = list(store.iter_dicts(sql))
        monkeypatch.setattr(store_module, "_IN_MEMORY_ROWS", 3)
        spilled = list(store.iter_dicts(sql, batch_size=2))
    assert whole == spilled == [{"prompt_id": f"p{i}", "prompt": f"hi {i}"} for i in range(7)]


def test_each_reader_sees_every_call_finished_before_it_asked(tmp_path):
    """A second `charter sql` while the run is between timed flushes: the rows finished since the
    first reader are written for it, not left in the writer's buffer."""
    db = tmp_path / "cai.duckdb"

    def calls_seen_by_another_process() -> int:
        result = run_charter("sql", db, "SELECT count(*) AS n FROM calls", "--format", "json")
        assert result.code == 0, result.stderr
        return json.loads(result.stdout)[0]["n"]

    with Store(db, flush_seconds=3600) as store:
        run_id, _ = store.start_run("live", "test", {})

        def finish(call_id: str) -> None:
            store.add_call(
                {
                    "call_id": call_id,
                    "run_id": run_id,
                    "step": "respond",
                    "model": "m",
                    "cache_key": call_id,
                    "request": "{}",
                    "attempts": 1,
                }
            )

        finish("a")
        assert calls_seen_by_another_process() == 1
        finish("b")
        finish("c")  # the next timed flush is an hour away
        assert calls_seen_by_another_process() == 3


def test_an_older_file_is_upgraded_in_place_keeping_its_rows(tmp_path):
    """A file written by an older charter (schema version 4) opens: the later migrations and the
    views are applied together, and what it held is still there."""
    from charter.store.schema import MIGRATIONS

    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, sql in enumerate(MIGRATIONS[:4], start=1):
        con.execute(sql)
        con.execute("INSERT INTO schema_version VALUES (?)", [version])
    con.execute("INSERT INTO runs (run_id, name, command) VALUES ('r1', 'old', 'revise')")
    con.execute(
        "INSERT INTO calls (call_id, run_id, step, model, cache_key, request, prompt_tokens) "
        "VALUES ('c1', 'r1', 'respond', 'm', 'k1', '{}', 7)"
    )
    con.close()
    with Store(db) as store:
        assert store.query("SELECT max(version) FROM schema_version") == [(len(MIGRATIONS),)]
        assert store.query("SELECT call_id, prompt_tokens FROM calls") == [("c1", 7)]
        assert store.query(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'calls' "
            "AND column_name = 'prompt_tokens'"
        ) == [("BIGINT",)]
        assert store.query("SELECT count(*) FROM comparisons") == [(0,)]  # the views are there


def _file_at_version(db: Path, version: int, storage: str | None = None) -> None:
    """A database file as an older charter left it: the first `version` migrations applied."""
    from charter.store.schema import MIGRATIONS

    con = duckdb.connect()
    options = f" (STORAGE_VERSION '{storage}')" if storage else ""
    con.execute(f"ATTACH '{db}' AS old{options}")
    con.execute("USE old")
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for number, sql in enumerate(MIGRATIONS[:version], start=1):
        assert isinstance(sql, str)
        con.execute(sql)
        con.execute("INSERT INTO schema_version VALUES (?)", [number])
    con.close()


def _label_sized_calls(store: Store, run_id: str, n: int) -> None:
    # Label requests: the same few-shot examples in every request, then the pair's own question.
    shots = [
        {"role": "user", "content": f"Example {i}: which response is more helpful? " * 20} for i in range(5)
    ]
    for i in range(n):
        messages = [*shots, {"role": "user", "content": f"Question {i}: (A) yes or (B) no?"}]
        store.add_call(
            {
                "call_id": f"c{i}",
                "run_id": run_id,
                "step": "label",
                "model": "m",
                "cache_key": f"k{i}",
                "request": {"mode": "chat", "messages": messages},
                "response_text": " (A)",
            }
        )
    store.flush()


def test_an_upgraded_file_stores_requests_in_less_space_and_keeps_its_calls(tmp_path, monkeypatch):
    """Migration 7 rebuilds `calls` with ZSTD on the request/response JSON: the rows, the primary key
    and the cache-key index survive, and label-sized requests take much less disk than before."""
    import charter.store.store as store_module

    sizes = {}
    for version in (6, 7):
        db = tmp_path / f"v{version}.duckdb"
        _file_at_version(db, 6)
        con = duckdb.connect(str(db))
        con.execute("INSERT INTO runs (run_id, name, command) VALUES ('r1', 'old', 'label')")
        con.execute(
            "INSERT INTO calls (call_id, run_id, step, model, cache_key, request) "
            "VALUES ('kept', 'r1', 'label', 'm', 'k-kept', '{\"mode\": \"chat\"}')"
        )
        con.close()
        with monkeypatch.context() as patch:
            if version == 6:  # the charter before this migration
                patch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:6])
            store = Store(db)
        with store:
            _label_sized_calls(store, "r1", 3000)
            assert store.query("SELECT max(version) FROM schema_version") == [(version,)]
        sizes[version] = db.stat().st_size
    upgraded = tmp_path / "v7.duckdb"
    assert query(upgraded, "SELECT count(*) FROM calls") == [(3001,)]
    assert query(upgraded, "SELECT request FROM calls WHERE call_id = 'kept'") == [('{"mode": "chat"}',)]
    assert query(upgraded, "SELECT index_name FROM duckdb_indexes() WHERE table_name = 'calls'") == [
        ("calls_cache_key",)
    ]
    con = duckdb.connect(str(upgraded))
    with pytest.raises(duckdb.ConstraintException):
        con.execute(
            "INSERT INTO calls (call_id, run_id, step, model, cache_key, request) "
            "VALUES ('kept', 'r1', 'label', 'm', 'k', '{}')"
        )
    con.close()
    assert sizes[7] < 0.7 * sizes[6], sizes


def test_a_file_in_an_older_storage_format_upgrades_without_zstd(tmp_path):
    """DuckDB's storage format before v1.2 has no ZSTD for strings: such a file still opens, reaches
    the latest schema version, and takes new calls (its `calls` keep DuckDB's default compression)."""
    db = tmp_path / "old-format.duckdb"
    _file_at_version(db, 6, storage="v1.0.0")
    with Store(db) as store:
        run_id, _ = store.start_run("old", "label", {})
        _label_sized_calls(store, run_id, 10)
        assert store.query("SELECT count(*) FROM calls") == [(10,)]
    from charter.store.schema import MIGRATIONS

    assert query(db, "SELECT max(version) FROM schema_version") == [(len(MIGRATIONS),)]
    assert "ZSTD" not in query(db, "SELECT sql FROM duckdb_tables() WHERE table_name = 'calls'")[0][0]


def test_an_upgrade_that_fails_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    """Migrations are applied in one transaction: when a later one fails, the earlier ones of the
    same open are not half-applied and the file keeps its old version and rows."""
    import charter.store.store as store_module
    from charter.store.schema import MIGRATIONS

    db = tmp_path / "cai.duckdb"
    with Store(db) as store:
        run_id, _ = store.start_run("kept", "test", {})
    broken = [*MIGRATIONS, "CREATE TABLE added_then_undone (a INTEGER);", "SELECT no_such_function();"]
    monkeypatch.setattr(store_module, "MIGRATIONS", broken)
    with pytest.raises(duckdb.Error, match="no_such_function"):
        Store(db)
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    assert query(db, "SELECT max(version) FROM schema_version") == [(len(MIGRATIONS),)]
    assert query(
        db, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'added_then_undone'"
    ) == [(0,)]
    assert query(db, "SELECT run_id FROM runs") == [(run_id,)]
    assert query(db, "SELECT count(*) FROM comparisons") == [(0,)]  # its views too
