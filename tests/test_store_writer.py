"""Mid-run flushes on the store's writer thread (issue 13): the rows commit while calls go on, and
nothing about what a user sees changes: the cache answers a batch being written, readers and
queries see it, a kill while it is written loses nothing, a row the database refuses costs only
itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from charter_testkit import REPO, query, run_charter, subprocess_env

from charter.store import Store
from charter.store.journal import journal_path, sealed_segments

WRITER = "charter-store-writer"


def call_row(run_id: str, call_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "call_id": call_id,
        "run_id": run_id,
        "step": "respond",
        "model": "m",
        "cache_key": f"{call_id:0>32}",
        "request": "{}",
        "response_text": f"answer {call_id}",
        "attempts": 1,
        "error": None,
        "cached": False,
        "latency_ms": 1.0,
        **extra,
    }


@pytest.fixture
def held_writer(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The writer thread waits for this event before it writes a batch (so a test can look at the
    store while a batch is in flight); the calling thread's own flushes are not held."""
    release = threading.Event()
    write = Store._write

    def held(self: Store, con: Any, pending: Any) -> None:
        if threading.current_thread().name.startswith(WRITER):
            assert release.wait(60), "the test never let the writer go"
        write(self, con, pending)

    monkeypatch.setattr(Store, "_write", held)
    return release


def test_a_batch_being_written_is_answered_from_the_cache_and_every_query_waits_for_it(
    tmp_path: Path, held_writer: threading.Event
) -> None:
    from charter.backends.base import Completion

    db = tmp_path / "cai.duckdb"
    with Store(db, flush_rows=2) as store:
        run_id, _ = store.start_run("thread", "test", {})
        for i in range(3):
            store.add_call(call_row(run_id, f"c{i}"), Completion(texts=[f"answer c{i}"]))
        store.maybe_flush()  # 3 rows >= 2: handed to the writer thread, which waits
        assert [p.name for p in sealed_segments(db)] == ["cai.duckdb.journal.1"]
        store.add_call(call_row(run_id, "c3"), Completion(texts=["answer c3"]))
        hit = store.cache_get(f"{'c1':0>32}")
        assert hit is not None and hit.completion.texts == ["answer c1"]  # not committed yet
        threading.Timer(0.2, held_writer.set).start()
        # A query waits for the batch, then flushes the rest: all four, in one file.
        assert store.query("SELECT call_id FROM calls ORDER BY call_id") == [(f"c{i}",) for i in range(4)]
        assert sealed_segments(db) == []
    assert query(db, "SELECT count(*) FROM calls") == [(4,)]
    assert not journal_path(db).exists()


_KILLED_WRITER = """
import os, signal, sys, threading
from charter.store import Store
from charter.backends.base import Completion

def never(self, con, pending):  # the writer thread is killed with its batch unwritten
    threading.Event().wait()

Store._write = never
store = Store(sys.argv[1], flush_rows=3)
run_id, _ = store.start_run("killed", "test", {})

def row(call_id):
    return {"call_id": call_id, "run_id": run_id, "step": "respond", "model": "m",
            "cache_key": call_id.rjust(32, "0"), "request": '{"messages": []}', "attempts": 1,
            "response_text": "answer " + call_id, "error": None, "cached": False}

for i in range(3):
    store.add_call(row(f"a{i}"), Completion(texts=["answer"]))
store.maybe_flush()  # to the writer thread, which never writes it
for i in range(2):
    store.add_call(row(f"b{i}"), Completion(texts=["answer"]))  # the journal's new segment
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_kill_while_the_writer_thread_writes_loses_no_finished_call(tmp_path: Path) -> None:
    db = tmp_path / "cai.duckdb"
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(_KILLED_WRITER))
    proc = subprocess.run([sys.executable, str(script), str(db)], env=subprocess_env(), cwd=REPO, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    # The batch's calls sealed in a segment of their own, the later ones in the journal.
    assert [p.name for p in sealed_segments(db)] == ["cai.duckdb.journal.1"]
    assert journal_path(db).exists()
    with Store(db) as store:  # opening replays both, oldest first
        rows = store.query("SELECT call_id, response_text FROM calls ORDER BY call_id")
    assert rows == [(f"a{i}", f"answer a{i}") for i in range(3)] + [
        (f"b{i}", f"answer b{i}") for i in range(2)
    ]
    assert sealed_segments(db) == [] and not journal_path(db).exists()


def test_a_row_the_database_refuses_on_the_writer_thread_costs_only_itself(tmp_path: Path) -> None:
    db = tmp_path / "refused.duckdb"
    with Store(db, flush_rows=5) as store:
        run_id, _ = store.start_run("refused", "test", {})
        for i in range(6):
            # latency is a DOUBLE: the writer thread's insert fails on c3
            latency = "not a number" if i == 3 else 1.0
            store.add_call(call_row(run_id, f"c{i}", latency_ms=latency))
        store.maybe_flush()  # handed off; the thread's transaction fails and is rolled back
        store.add_call(call_row(run_id, "c6"))  # newer than the failed batch
        # The failed batch comes back ahead of c6, and this flush stores it the way a flush on the
        # calling thread always has: the refused row with its error, the rest as they were.
        store.flush()
        assert len(store.rejected) == 1 and store.rejected[0].startswith("calls: ")
    assert query(db, "SELECT call_id, error IS NULL FROM calls ORDER BY call_id") == [
        (f"c{i}", i != 3) for i in range(7)
    ]
    (error,) = query(db, "SELECT error FROM calls WHERE call_id = 'c3'")[0]
    assert error.startswith("not stored: ")
    assert sealed_segments(db) == [] and not journal_path(db).exists()


def test_a_reader_arriving_while_a_batch_is_written_sees_it_and_every_later_call(
    tmp_path: Path, held_writer: threading.Event
) -> None:
    db = tmp_path / "cai.duckdb"

    def calls_seen_by_another_process() -> int:
        result = run_charter("sql", db, "SELECT count(*) AS n FROM calls", "--format", "json")
        assert result.code == 0, result.stderr
        return int(json.loads(result.stdout)[0]["n"])

    with Store(db, flush_rows=2, flush_seconds=3600) as store:
        run_id, _ = store.start_run("live", "test", {})
        for i in range(2):
            store.add_call(call_row(run_id, f"c{i}"))
        store.maybe_flush()  # in flight, held
        store.add_call(call_row(run_id, "c2"))
        threading.Timer(0.5, held_writer.set).start()
        # The writer lets go of the file only once the batch is in, and flushes c2 for the reader.
        assert calls_seen_by_another_process() == 3
        store.add_call(call_row(run_id, "c3"))
        store.add_call(call_row(run_id, "c4"))
        store.maybe_flush()  # the file is the reader's no longer: handed off again, not held now
        assert calls_seen_by_another_process() == 5
    assert os.path.exists(db) and not journal_path(db).exists()
