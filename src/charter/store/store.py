"""`Store`: the one place that writes to DuckDB.

Writes are buffered per table and flushed together in one transaction, whole columns at a time
(Python lists, then NumPy arrays: see `_LIST_ROWS`; `executemany` is ~50x slower). Records that
belong together (a prompt's revisions and its SFT example, and the calls they reference) are
flushed atomically, so a crash leaves whole prompts or nothing, and the same command resumes where
it stopped.

A flush that fails keeps its rows. A row the database refuses is found and stored with its error
(a `calls` row) or left out (a derived row: its item is redone, from the cache, on resume), and the
rest commits; a full disk is one `StoreWriteError` line, with everything committed so far kept.
Finished calls also go to a journal beside the file (`charter.store.journal`) as they finish, so a
kill -9 loses only the calls in flight.

A run's mid-run flushes (`maybe_flush`) are written by one writer thread while the run goes on
making calls (DuckDB leaves the GIL for most of an insert). The batch is everything buffered at the
hand-off, so it is as whole as a flush on the calling thread; until it commits its calls answer
`cache_get`, its journal lines stay in a sealed segment, and anything else that needs the
connection waits for it first. A batch the thread cannot write comes back and is flushed on the
calling thread, with that path's handling of refused rows and full disks.

Watching a live run: DuckDB allows one writer process per file and no reader process meanwhile.
The writer holds `DB.lock` for its life (a second writer gets "in use by PID N"), but its DuckDB
connection only until a reader asks for the file (`charter.store.lock`): `open_read_only` asks the
writer, which flushes and lets go until the reader is done, buffering results (and journaling
them) meanwhile. Nothing is paid while nobody watches; each look costs the writer one reopen (tens
of milliseconds). `iter_dicts` holds no cursor while its rows are consumed (it fetches a small
result whole, and streams a large one from a spilled Parquet file), so a reader can come in while
a step is still reading its items.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from charter.backends.base import Completion, TokenLogprob
from charter.store.journal import Journal
from charter.store.lock import LockHeld, ReleaseServer, WriterLock, ask_release, hang_up, live_writer
from charter.store.schema import MIGRATIONS


class StoreError(RuntimeError):
    """A database problem a user can act on."""


class StoreInUseError(StoreError):
    """Another process holds the database's write lock."""


class StoreWriteError(RuntimeError):
    """The database file cannot be written (disk full, I/O error): a run-time failure, exit 1."""


@dataclass
class CachedCall:
    """A finished call found by its cache key."""

    call_id: str
    run_id: str
    completion: Completion


@dataclass
class _Batch:
    """Rows handed to the writer thread: everything buffered at the hand-off, committed together."""

    rows: dict[str, list[dict[str, Any]]]
    count: int
    cache: dict[str, CachedCall]  # its calls, answered from here by `cache_get` until they commit
    segments: list[Path]  # the journal segments holding its calls, removed once it commits
    done: Future[BaseException | None] = field(default_factory=Future)


_LOCK_PID = re.compile(r"held in (?P<proc>.+?) \(PID (?P<pid>\d+)\)")
# How long a reader keeps retrying while a writer holds the file for a moment (opening, flushing).
READ_RETRY_S = 10.0


# DuckDB files carry "DUCK" at byte 8 of their header. DuckDB itself opens other files it
# recognises (parquet, CSV, JSON) as an in-memory database over the data, and reaches for the
# network to load the sqlite extension for a SQLite file: both must be refused before it sees them.
_DUCKDB_MAGIC = b"DUCK"
_DATA_SUFFIXES = frozenset({".parquet", ".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".txt", ".xlsx"})
_KNOWN_FORMATS = ((b"SQLite format 3\x00", "a SQLite database"), (b"PAR1", "a parquet file"))
# Engine settings that make a connection unable to touch anything but its own file: no COPY TO,
# ATTACH, read_csv('/etc/...'), INSTALL or extension downloads, whatever the statement type
# (EXPLAIN ANALYZE runs its statement), and no SET to turn them back on.
LOCKED_CONFIG: dict[str, Any] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}


def check_db_path(path: str | Path) -> None:
    """Raise `StoreError` unless `path` is a DuckDB file or a new path that can become one."""
    p = Path(path)
    if p.is_dir():
        raise StoreError(f"database {p}: is a directory, not a DuckDB file")
    if not p.exists():
        if p.suffix.lower() in _DATA_SUFFIXES:
            raise StoreError(
                f"database {p}: {p.suffix} names a data file, not a database; use a .duckdb path "
                "(charter export writes datasets)"
            )
        return
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise StoreError(f"database {p}: cannot read: {exc.strerror or exc}") from None
    if head[8:12] == _DUCKDB_MAGIC:
        return
    kind = next((name for magic, name in _KNOWN_FORMATS if head.startswith(magic)), None)
    if kind is None:
        kind = "an empty file" if not head else "a file of another format"
    raise StoreError(f"database {p}: {kind}, not a DuckDB database; give a .duckdb file or a new path")


def _in_use(path: str | Path, holder: str | None) -> StoreInUseError:
    return StoreInUseError(
        f"database {path} is in use by {holder or 'another process'}: DuckDB allows one writer per "
        "file; wait for it to finish or use another --db"
    )


def _lock_holder(exc: BaseException) -> str | None:
    match = _LOCK_PID.search(str(exc))
    return f"PID {match['pid']} ({match['proc']})" if match else None


def _is_lock_conflict(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


# DuckDB checkpoints when its WAL passes 16 MB by default, and each checkpoint writes the whole
# `calls` index again: at 200k rows that halved the write rate. 64 MB keeps `calls` above 50k rows/s
# (benchmarks/bench_store.py) and still bounds the WAL a crashed run replays on its next open.
_WRITER_CONFIG: dict[str, Any] = {"checkpoint_threshold": "64MB"}


def _connect(
    path: str | Path, read_only: bool, config: dict[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    check_db_path(path)
    try:
        return duckdb.connect(str(path), read_only=read_only, config=config or {})
    except duckdb.IOException as exc:
        if _is_lock_conflict(exc):
            raise _in_use(path, _lock_holder(exc)) from None
        raise StoreError(f"cannot open database {path}: {str(exc).splitlines()[0]}") from None


class ReadConnection:
    """A read-only DuckDB connection; while a charter run writes the file, also the lease on it.

    Behaves like the `duckdb.DuckDBPyConnection` it wraps; `close()` hands the file back.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, lease: Any = None) -> None:
        self._con = con
        self._lease = lease

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def close(self) -> None:
        """Close the connection and let the writer have the file again."""
        try:
            self._con.close()
        finally:
            if self._lease is not None:
                hang_up(self._lease)
                self._lease = None

    def __enter__(self) -> ReadConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_read_only(path: str | Path, config: dict[str, Any] | None = None) -> ReadConnection:
    """A read-only connection (for `charter sql`, `status` and exports); the file must exist.

    Works while a charter run writes the file: the writer lets go for as long as this connection
    is open (see the module docstring). The engine is locked (`LOCKED_CONFIG`): user SQL run on it
    (`charter sql`, `--where`) cannot write files, attach databases or install extensions; `config`
    adds to that.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"database {path} does not exist")
    check_db_path(path)
    config = {**LOCKED_CONFIG, **(config or {})}
    deadline = time.monotonic() + READ_RETRY_S
    delay = 0.02
    while True:
        try:
            return ReadConnection(duckdb.connect(str(path), read_only=True, config=config or {}))
        except duckdb.IOException as exc:
            if not _is_lock_conflict(exc):
                raise StoreError(f"cannot open database {path}: {str(exc).splitlines()[0]}") from None
            conflict: BaseException = exc
        writer = live_writer(path)
        if writer and writer.get("port"):
            try:
                lease = ask_release(int(writer["port"]))
            except LockHeld:
                raise _in_use(path, f"PID {writer.get('pid')}") from None
            except OSError:
                lease = None  # the writer is closing: retry
            if lease is not None:
                try:
                    con = _connect_until(path, config, deadline)
                except BaseException:
                    hang_up(lease)
                    raise
                return ReadConnection(con, lease)
        if time.monotonic() >= deadline:
            holder = f"PID {writer['pid']}" if writer and writer.get("pid") else _lock_holder(conflict)
            raise _in_use(path, holder)
        time.sleep(delay)  # a writer starting up, or a reader of another kind: a moment
        delay = min(delay * 2, 0.5)


def _connect_until(path: Path, config: dict[str, Any] | None, deadline: float) -> duckdb.DuckDBPyConnection:
    delay = 0.01
    while True:
        try:
            return duckdb.connect(str(path), read_only=True, config=config or {})
        except duckdb.IOException as exc:
            if not _is_lock_conflict(exc) or time.monotonic() >= deadline:
                raise _in_use(path, _lock_holder(exc)) from None
        time.sleep(delay)  # another reader's writer hand-back is still closing
        delay = min(delay * 2, 0.2)


def completion_to_json(completion: Completion) -> dict[str, Any]:
    """The columns a completion fills in `calls`."""
    logprobs = None
    if completion.logprobs is not None:
        logprobs = json.dumps(
            [
                [{"token": t.token, "logprob": t.logprob, "top": t.top} for t in choice]
                for choice in completion.logprobs
            ],
            ensure_ascii=False,
        )
    return {
        "response_text": completion.texts[0] if completion.texts else None,
        "responses": json.dumps(completion.texts, ensure_ascii=False),
        "logprobs": logprobs,
        "prompt_tokens": _token_count(completion.prompt_tokens),
        "completion_tokens": _token_count(completion.completion_tokens),
        "cost_usd": completion.cost_usd,
        "latency_ms": completion.latency_ms,
    }


def _token_count(value: int) -> int | None:
    # A count no BIGINT holds is a server's nonsense, not a number to fail a flush over: NULL.
    return value if 0 <= value < 2**63 else None


def completion_from_row(
    responses: str | None, logprobs: str | None, prompt_tokens: Any, completion_tokens: Any
) -> Completion:
    """Rebuild a `Completion` from its stored columns (cache hits)."""
    texts = json.loads(responses) if responses else [""]
    parsed = None
    if logprobs:
        parsed = [[TokenLogprob(**t) for t in choice] for choice in json.loads(logprobs)]
    return Completion(
        texts=texts,
        logprobs=parsed,
        prompt_tokens=int(prompt_tokens or 0),
        completion_tokens=int(completion_tokens or 0),
    )


# Batches go to DuckDB as Python lists bound to `unnest` parameters until this many rows were
# written, then as NumPy object arrays, which DuckDB scans at 1.5x the rate (60k vs 39k `calls`
# rows/s, benchmarks/bench_store.py) but whose import costs 0.1 s: a short run, or a command that
# writes little, never pays it. Not Arrow: pyarrow's first `pa.array` imports pandas (0.4 s of CPU).
_LIST_ROWS = 10_000


def _column_values(rows: list[dict[str, Any]], name: str, json_column: bool) -> list[Any]:
    values = [r.get(name) for r in rows]
    if json_column:
        # A dict or list given for a JSON column is stored as its JSON text, not its Python repr.
        values = [v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in values]
    return values


def _key_prefix(cache_key: str) -> int:
    # Cache keys are hex digests; 64 bits are plenty for a filter (a collision only costs a query).
    try:
        return int(cache_key[:16], 16)
    except ValueError:
        return hash(cache_key)


# `Store.iter_dicts` fetches a result of up to this many rows whole instead of spilling it to disk.
_IN_MEMORY_ROWS = 5_000


# Error texts that mean the file cannot be written at all (as opposed to one row it refuses).
_STORAGE_FAILURES = (
    "no space left",
    "file too large",
    "disk quota",
    "could not write",
    "failed to write",
    "input/output error",
    "read-only file system",
    "invalidated",
)


def _is_storage_failure(exc: BaseException) -> bool:
    if isinstance(exc, (duckdb.IOException, duckdb.FatalException, OSError)):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _STORAGE_FAILURES)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    # After some failures DuckDB has already aborted the transaction ("cannot rollback - no
    # transaction is active"); that must not hide the error that matters.
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")


# The columns of a `calls` row kept when the database refuses the row: enough to show the call and
# its error, and to ask it again on resume (an error row is never a cache hit).
_CALL_IDENTITY = ("call_id", "run_id", "step", "model", "cache_key", "request", "attempts", "cached")


class Store:
    """A DuckDB file opened for writing by this process (one writer per file; readers may look in)."""

    def __init__(
        self,
        path: str | Path,
        *,
        flush_rows: int = 5000,
        flush_seconds: float = 1.0,
        journal: bool | None = None,
    ) -> None:
        """Open (creating and migrating) `path`; `journal` None means on unless CHARTER_JOURNAL=0."""
        if journal is None:
            journal = os.environ.get("CHARTER_JOURNAL", "1").strip().lower() not in (
                "0",
                "false",
                "no",
                "off",
            )
        self.path = Path(path)
        on_disk = str(path) != ":memory:"
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._pending_count = 0
        self._pending_cache: dict[str, CachedCall] = {}
        # 64-bit prefixes of every successful call's cache key, loaded on the first lookup: a miss
        # (nearly every call of a fresh run) is answered from memory instead of a DuckDB point query.
        self._known_keys: set[int] | None = None
        self._last_flush = time.monotonic()
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._columns: dict[str, list[str]] = {}
        self._json_columns: dict[str, set[str]] = {}
        self._rows_written = 0  # committed by this Store: which way batches go to DuckDB (_LIST_ROWS)
        # Tables a plain INSERT met a row already there in: they go in with OR IGNORE from then on.
        self._overlapping: set[str] = set()
        self._readers = 0  # processes reading the file right now (we let go of it for them)
        self._closing = False
        self._wanted = False  # we wait for the file: new readers wait for us
        self._pinned = False  # someone holds `con` itself: we cannot let go
        # Mid-run flushes go to one writer thread (DuckDB lets go of the GIL for most of an insert,
        # so the event loop goes on making calls meanwhile). While a batch is in flight the thread
        # owns the connection: every other use of it settles the batch first (`_settle`), and the
        # thread never takes `_lock`, so settling under the lock cannot deadlock.
        self._writer: ThreadPoolExecutor | None = None
        self._inflight: _Batch | None = None
        #: Rows the database refused at a flush, as "table: error" (their items are redone on resume).
        self.rejected: list[str] = []
        self._con: duckdb.DuckDBPyConnection | None = None
        self._writer_lock = WriterLock(self.path) if on_disk else None
        if self._writer_lock is not None:
            try:
                self._writer_lock.acquire()
            except LockHeld as exc:
                raise _in_use(self.path, f"PID {exc.pid}" if exc.pid else None) from None
        self._journal: Journal | None = None
        self._server: ReleaseServer | None = None
        try:
            self._con = _connect(self.path, read_only=False, config=_WRITER_CONFIG)
            self.migrate()
            if journal and on_disk:
                self._journal = Journal(self.path)
                replayed = self._journal.replay()
                self._journal.open()
                if replayed:
                    self.add_rows("calls", replayed)
                    self.flush()
            if on_disk:
                self._server = ReleaseServer(self._release_for_reader, self._reader_done)
                assert self._writer_lock is not None
                self._writer_lock.publish(self._server.port)
        except BaseException:
            self._shutdown(keep_journal=True)
            raise

    # -- lifecycle ---------------------------------------------------------------------------
    def migrate(self) -> None:
        """Apply the migrations this file has not seen yet."""
        from charter.store import views

        with self._lock:
            con = self._connection()
            # One transaction for the lot: a new file costs one commit instead of one per migration
            # and view (50 ms of every first run), and a failed upgrade leaves the file as it was.
            con.execute("BEGIN")
            try:
                con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = con.execute("SELECT max(version) FROM schema_version").fetchone()
                current = int(row[0]) if row and row[0] is not None else 0
                if current < len(MIGRATIONS):
                    views.drop_views(con)  # recreated below; a view over a table blocks altering it
                for version, migration in enumerate(MIGRATIONS, start=1):
                    if version > current:
                        sql = migration(con) if callable(migration) else migration
                        if sql.strip():
                            con.execute(sql)
                        con.execute("INSERT INTO schema_version VALUES (?)", [version])
                views.create_views(con)
                con.execute("COMMIT")
            except Exception:
                _rollback(con)
                raise

    def close(self) -> None:
        """Flush what is buffered and close the file (what cannot be written stays in the journal)."""
        try:
            self.flush()
        finally:
            self._shutdown(keep_journal=bool(self._pending_count))

    def _shutdown(self, *, keep_journal: bool) -> None:
        with self._lock:
            self._closing = True  # a reader finishing now must not reopen the file
            self._settle()  # a batch that failed here stays in the journal
            keep_journal = keep_journal or bool(self._pending_count)
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            if self._con is not None:
                with contextlib.suppress(duckdb.Error):
                    self._con.close()
                self._con = None
        if self._journal is not None:
            self._journal.close(remove=not keep_journal)
        if self._writer_lock is not None:
            self._writer_lock.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the file, shared with readers -------------------------------------------------------
    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The writer's DuckDB connection, held from now until `close` (readers get "in use")."""
        with self._lock:
            self._pinned = True
            return self._connection()

    def _connection(self) -> duckdb.DuckDBPyConnection:
        """The open connection, reopened (waiting for readers to finish) after we let go of it; a
        batch the writer thread is writing is settled first (the connection is the thread's till then)."""
        with self._cond:
            self._settle()
            if self._con is not None:
                return self._con
            self._wanted = True
            try:
                waited = time.monotonic()
                delay = 0.01
                while True:
                    if not self._readers:
                        try:
                            self._con = self._reopen()
                            return self._con
                        except duckdb.IOException as exc:
                            if not _is_lock_conflict(exc):
                                raise StoreWriteError(
                                    f"cannot open {self.path}: {_first_line(exc)}"
                                ) from None
                    if time.monotonic() - waited > 10:
                        waited = float("inf")  # say it once
                        print(f"charter: waiting for readers of {self.path} to finish", file=sys.stderr)
                    self._cond.wait(delay)
                    delay = min(delay * 2, 0.5)
            finally:
                self._wanted = False
                self._cond.notify_all()

    def _reopen(self) -> duckdb.DuckDBPyConnection:
        """The writer's connection again, after it let go of the file for a reader."""
        return duckdb.connect(str(self.path), config=_WRITER_CONFIG)

    def _release_for_reader(self) -> bool:
        """A reader asks for the file: flush, close our connection, and keep it closed until it is done."""
        with self._cond:
            while self._wanted:
                self._cond.wait()
            if self._pinned:
                return False
            self._readers += 1
            if self._con is not None:
                with contextlib.suppress(Exception):
                    # Let the reader see everything finished so far; a failure is raised by the
                    # next flush of the run itself, where it can be reported.
                    self._flush_now()
                with contextlib.suppress(duckdb.Error):
                    self._con.close()
                self._con = None
            return True

    def _reader_done(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers and self._con is None and not self._closing:
                # Take the file back now: while we do not hold it, the next reader opens it without
                # asking us, and sees none of the rows finished since this one came.
                with contextlib.suppress(duckdb.Error):
                    self._con = self._reopen()
            self._cond.notify_all()

    # -- runs --------------------------------------------------------------------------------
    def start_run(
        self,
        name: str,
        command: str,
        config: dict[str, Any],
        *,
        total: int | None = None,
        done_table: str | None = None,
        done_column: str | None = None,
    ) -> tuple[str, bool]:
        """The run called `name` (created if new). Returns (run_id, resumed?).

        `total` items, counted by distinct `done_column` in `done_table`, is what `charter status`
        reports progress against.
        """
        with self._lock:
            con = self._connection()
            row = con.execute("SELECT run_id FROM runs WHERE name = ?", [name]).fetchone()
            if row:
                con.execute(
                    "UPDATE runs SET status = 'running', finished_at = NULL, "
                    "total_items = coalesce(?, total_items), done_table = coalesce(?, done_table), "
                    "done_column = coalesce(?, done_column) WHERE run_id = ?",
                    [total, done_table, done_column, row[0]],
                )
                return str(row[0]), True
            # Derived from the name, not random: the shards of one run (`--shard i/n`, each in its
            # own file) get the same run id, so their rows merge into one run (`charter merge`).
            run_id = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
            con.execute(
                "INSERT INTO runs (run_id, name, command, config, status, total_items, done_table, "
                "done_column) VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                [
                    run_id,
                    name,
                    command,
                    json.dumps(config, ensure_ascii=False, default=str),
                    total,
                    done_table,
                    done_column,
                ],
            )
            return run_id, False

    def finish_run(self, run_id: str, status: str) -> None:
        """Flush and mark a run `done`, `failed` or `interrupted`.

        The status is written even when the flush fails (a full disk), so the run never stays
        'running'; the flush's error is raised after.
        """
        with self._lock:
            try:
                self.flush()
            finally:
                with contextlib.suppress(StoreWriteError, duckdb.Error):
                    self._connection().execute(
                        "UPDATE runs SET status = ?, finished_at = current_timestamp WHERE run_id = ?",
                        [status, run_id],
                    )

    def run_id_for(self, name: str) -> str | None:
        """The id of the run called `name`, if any."""
        with self._lock:
            row = self._connection().execute("SELECT run_id FROM runs WHERE name = ?", [name]).fetchone()
        return str(row[0]) if row else None

    # -- the request cache -------------------------------------------------------------------
    def _load_known_keys(self) -> set[int]:
        keys: set[int] = set()
        # In batches, as plain tuples: an Arrow reader would import pyarrow (40 ms) for this alone.
        cursor = self._connection().execute("SELECT DISTINCT cache_key FROM calls WHERE error IS NULL")
        while rows := cursor.fetchmany(100_000):
            keys.update(_key_prefix(row[0]) for row in rows)
        return keys

    def cache_get(self, cache_key: str) -> CachedCall | None:
        """A successful earlier call with this key, from this process's buffer or the file."""
        with self._lock:
            pending = self._pending_cache.get(cache_key)
            if pending is None and self._inflight is not None:
                pending = self._inflight.cache.get(cache_key)
            if pending is not None:
                return pending
            if self._known_keys is None:
                self._known_keys = self._load_known_keys()
            if _key_prefix(cache_key) not in self._known_keys:
                return None
            row = (
                self._connection()
                .execute(
                    "SELECT call_id, run_id, responses, logprobs, prompt_tokens, completion_tokens FROM calls "
                    "WHERE cache_key = ? AND error IS NULL ORDER BY created_at LIMIT 1",
                    [cache_key],
                )
                .fetchone()
            )
        if row is None:
            return None
        return CachedCall(str(row[0]), str(row[1]), completion_from_row(row[2], row[3], row[4], row[5]))

    def add_call(self, row: dict[str, Any], completion: Completion | None = None) -> None:
        """Buffer (and journal) one `calls` row; a successful one is immediately visible to `cache_get`."""
        with self._lock:
            self.add_rows("calls", [row])
            if self._journal is not None:
                self._journal.append(row)
            if self._known_keys is not None and row.get("error") is None:
                self._known_keys.add(_key_prefix(row["cache_key"]))
            if completion is not None and row.get("error") is None and not row.get("cached"):
                self._pending_cache[row["cache_key"]] = CachedCall(row["call_id"], row["run_id"], completion)

    # -- generic batched writes --------------------------------------------------------------
    def add_rows(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        """Buffer rows for `table`; they are written at the next flush, all tables in one transaction."""
        with self._lock:
            bucket = self._pending.setdefault(table, [])
            before = len(bucket)
            bucket.extend(rows)
            self._pending_count += len(bucket) - before

    def maybe_flush(self, *, now: bool = False) -> None:
        """Flush when enough rows or time have accumulated, or whatever is buffered with `now` (not
        while a reader has the file), on the writer thread: the rows commit while the caller goes on.

        A batch the thread could not write is taken back and flushed here, where its error is raised
        (`flush`'s errors, `flush`'s handling of a row the database refuses).
        """
        inflight = self._inflight
        if inflight is not None and inflight.done.done():
            with self._lock:
                if self._settle() is not None:
                    self.flush()
        if self._pending_count >= self.flush_rows or (
            self._pending_count and (now or time.monotonic() - self._last_flush >= self.flush_seconds)
        ):
            with self._lock:
                if self._con is None and self._readers and self._pending_count < 20 * self.flush_rows:
                    return  # keep buffering (and journaling) until the reader is done
                if self._inflight is not None and self._pending_count < 4 * self.flush_rows:
                    return  # the thread is still writing the last batch: this one waits for it
                if self._pinned or self._inflight is not None or self._con is None:
                    # Someone holds the connection itself (it cannot be the thread's), or the file
                    # is to be taken back from a reader, or the thread has fallen far behind.
                    self.flush()
                else:
                    self._hand_off(self._con)

    def _hand_off(self, con: duckdb.DuckDBPyConnection) -> None:
        """Give everything buffered to the writer thread, which commits it on `con` (ours till then)."""
        for table in self._pending:
            self._table_columns(table)  # known before: the thread must not ask the connection
        try:
            segments = self._journal.seal() if self._journal is not None else []
        except OSError:
            self.flush()  # the journal cannot be split (its directory is read-only now): write here
            return
        batch = _Batch(self._pending, self._pending_count, self._pending_cache, segments)
        self._pending, self._pending_count, self._pending_cache = {}, 0, {}
        self._inflight = batch
        self._last_flush = time.monotonic()
        try:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="charter-store-writer")
            self._writer.submit(self._write_batch, con, batch)
        except RuntimeError as exc:  # no new threads (the interpreter is shutting down): write here
            batch.done.set_result(exc)
            self._settle()
            self.flush()

    def _write_batch(self, con: duckdb.DuckDBPyConnection, batch: _Batch) -> None:
        # On the writer thread: no `_lock`, no `_connection()`. Any failure goes back to `_settle`.
        try:
            self._write(con, batch.rows)
        except BaseException as exc:
            batch.done.set_result(exc)
        else:
            batch.done.set_result(None)

    def _settle(self) -> BaseException | None:
        """Wait for the batch on the writer thread (with `_lock` held) and account for it: committed,
        its journal segments go; failed, its rows go back ahead of the newer ones (still journaled),
        for the next flush to write or to report. Returns the thread's error, if any."""
        batch = self._inflight
        if batch is None:
            return None
        error = batch.done.result()
        self._inflight = None
        if error is None:
            self._rows_written += batch.count
            if self._journal is not None:
                self._journal.drop(batch.segments)
            return None
        for table, rows in batch.rows.items():
            self._pending[table] = rows + self._pending.get(table, [])
        self._pending_count += batch.count
        self._pending_cache = {**batch.cache, **self._pending_cache}
        return error

    def flush(self) -> None:
        """Write every buffered row in one transaction (column inserts; duplicates are ignored),
        once the writer thread's batch (if any) is in.

        Raises `StoreWriteError` when the file cannot be written; the rows stay buffered (and in the
        journal), so nothing finished is lost and a later flush or the next run writes them.
        """
        with self._lock:
            self._settle()
            if not self._pending_count:
                self._last_flush = time.monotonic()
                return
            self._flush_now()

    def _flush_now(self) -> None:
        con = self._connection()  # settles the writer thread's batch (its rows may come back)
        pending = self._pending
        try:
            self._write(con, pending)
        except StoreError:
            raise  # an unknown column: a bug, not a bad row
        except Exception as exc:
            if _is_storage_failure(exc):
                self._storage_failed(exc)
            # One row the database refuses must not cost the others: find it, then write the rest.
            self._set_aside(con, pending, keep_calls=True)
            try:
                self._write(con, pending)
            except Exception as again:
                if _is_storage_failure(again):
                    self._storage_failed(again)
                self._set_aside(con, pending, keep_calls=False)
                self._write(con, pending)
        self._rows_written += self._pending_count
        self._pending = {}
        self._pending_count = 0
        self._pending_cache.clear()
        if self._journal is not None:
            self._journal.clear()
        self._last_flush = time.monotonic()

    def _write(self, con: duckdb.DuckDBPyConnection, pending: dict[str, list[dict[str, Any]]]) -> None:
        try:
            self._write_tables(con, pending, optimistic=True)
        except duckdb.ConstraintException:
            # A row already in the file (a journal replayed after a kill that came between a commit
            # and the journal's reset; a table whose rows a command writes again): the same
            # transaction again, every duplicate ignored.
            self._write_tables(con, pending, optimistic=False)

    def _write_tables(
        self, con: duckdb.DuckDBPyConnection, pending: dict[str, list[dict[str, Any]]], *, optimistic: bool
    ) -> None:
        con.execute("BEGIN")
        try:
            # calls first: other rows reference them.
            for table in sorted(pending, key=lambda t: t != "calls"):
                rows = pending[table]
                if not rows:
                    continue
                if optimistic and table == "calls":
                    # A fresh call's id is a new uuid4: a plain INSERT, which DuckDB runs at ~3x the
                    # speed of INSERT OR IGNORE for label-sized requests (the ON CONFLICT path copies
                    # every row). A cached call's id is derived (run, key): it may be there already.
                    fresh = [r for r in rows if not r.get("cached")]
                    again = [r for r in rows if r.get("cached")]
                    if fresh:
                        self._insert_batch(con, table, fresh, ignore=False)
                    if again:
                        self._insert_batch(con, table, again)
                elif optimistic and table not in self._overlapping:
                    # The other tables' rows are new too, nearly always (a finished item is skipped
                    # on resume): a plain INSERT (half the time of OR IGNORE for a label's
                    # pair_labels and feedback_queries), and OR IGNORE once one is met again.
                    try:
                        self._insert_batch(con, table, rows, ignore=False)
                    except duckdb.ConstraintException:
                        self._overlapping.add(table)
                        raise
                else:
                    self._insert_batch(con, table, rows)
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise

    def _storage_failed(self, exc: BaseException) -> None:
        # DuckDB may have invalidated the connection: drop it, the next use reopens the file.
        if self._con is not None:
            with contextlib.suppress(Exception):
                self._con.close()
            self._con = None
        raise StoreWriteError(
            f"cannot write to {self.path}: {_first_line(exc)}; what finished before is saved "
            "(fix the disk, then run the same command again)"
        ) from None

    def _set_aside(
        self, con: duckdb.DuckDBPyConnection, pending: dict[str, list[dict[str, Any]]], *, keep_calls: bool
    ) -> None:
        """Find the rows the database refuses (by halving trial inserts) and take them out of `pending`.

        A refused `calls` row is put back as an error row (the call is asked again on resume); other
        refused rows are left out and listed in `rejected` (their item is redone, from the cache).
        """
        for table, rows in pending.items():
            refused = self._refused(con, table, rows)
            for index, message in reversed(refused):
                row = rows.pop(index)
                self._pending_count -= 1
                self.rejected.append(f"{table}: {message}")
                if table == "calls" and keep_calls:
                    kept = {k: row[k] for k in _CALL_IDENTITY if k in row}
                    kept["error"] = f"not stored: {message}"[:1000]
                    rows.insert(index, kept)
                    self._pending_count += 1

    def _refused(
        self, con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]
    ) -> list[tuple[int, str]]:
        def failure(lo: int, hi: int) -> str | None:
            con.execute("BEGIN")
            try:
                self._insert_batch(con, table, rows[lo:hi])
                return None
            except StoreError:
                raise
            except Exception as exc:
                if _is_storage_failure(exc):
                    raise
                return _first_line(exc)
            finally:
                _rollback(con)  # a trial: nothing is kept

        found: list[tuple[int, str]] = []
        spans = [(0, len(rows))]
        while spans:
            lo, hi = spans.pop()
            message = failure(lo, hi) if hi > lo else None
            if message is None:
                continue
            if hi - lo == 1:
                found.append((lo, message))
            else:
                mid = (lo + hi) // 2
                spans += [(mid, hi), (lo, mid)]
        return sorted(found)

    def _table_columns(self, table: str) -> list[str]:
        if table not in self._columns:  # (never on the writer thread: `_hand_off` asked first)
            cols = (
                self._connection()
                .execute(
                    # duckdb_columns(), not information_schema.columns: the same rows without DuckDB
                    # parsing the information_schema views first (10 ms of every run's first flush).
                    "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? "
                    "ORDER BY column_index",
                    [table],
                )
                .fetchall()
            )
            if not cols:
                raise StoreError(f"no table named {table!r}")
            self._columns[table] = [c[0] for c in cols]
            self._json_columns[table] = {c[0] for c in cols if str(c[1]).upper() == "JSON"}
        return self._columns[table]

    def _as_lists(self) -> bool:
        """Whether the next batch goes to DuckDB as lists (see `_LIST_ROWS`)."""
        return self._rows_written < _LIST_ROWS and "numpy" not in sys.modules

    def _insert_batch(
        self, con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]], *, ignore: bool = True
    ) -> None:
        """Insert `rows` whole columns at a time; with `ignore`, rows whose key is there are skipped."""
        known = self._table_columns(table)
        present: set[str] = set().union(*(r.keys() for r in rows))
        names = [c for c in known if c in present]
        unknown = present - set(known)
        if unknown:
            raise StoreError(f"table {table} has no column(s) {', '.join(sorted(unknown))}")
        json_columns = self._json_columns.get(table, set())
        columns = [_column_values(rows, c, c in json_columns) for c in names]
        verb = "OR IGNORE" if ignore else ""
        if self._as_lists():
            select = ", ".join(f'unnest(${i}) AS "{c}"' for i, c in enumerate(names, start=1))
            con.execute(f"INSERT {verb} INTO {table} BY NAME SELECT {select}", columns)
        else:
            import numpy as np

            # fromiter keeps each list as one element, where np.array would build a 2-D array.
            arrays = [np.fromiter(v, dtype=object, count=len(v)) for v in columns]
            batch = dict(zip(names, arrays, strict=True))  # noqa: F841 (DuckDB finds it by name)
            con.execute(f"INSERT {verb} INTO {table} BY NAME SELECT * FROM batch")

    # -- reads -------------------------------------------------------------------------------
    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a query on the writer connection (after flushing) and fetch all rows."""
        with self._lock:
            self.flush()
            return self._connection().execute(sql, params or []).fetchall()

    def query_dicts(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Like `query`, as dicts keyed by column name."""
        with self._lock:
            self.flush()
            cur = self._connection().execute(sql, params or [])
            cols = [d[0] for d in cur.description or []]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def iter_dicts(
        self, sql: str, params: list[Any] | None = None, batch_size: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Stream a query's rows as dicts, `batch_size` at a time (flat memory on big tables).

        No cursor keeps the database open while the rows are consumed (readers may come in
        meanwhile): a result of up to `_IN_MEMORY_ROWS` rows is fetched whole; a larger one is
        spilled to a temporary Parquet file (DuckDB writes it) and streamed from there through an
        in-memory DuckDB, and neither pyarrow nor NumPy is imported (0.14 s).
        """
        spill: Path | None = None
        with self._lock:
            self.flush()
            # A cursor of its own, closed at once: the writer's connection is left with no result.
            cursor = self._connection().cursor()
            try:
                cursor.execute(sql, params or [])
                names = [d[0] for d in cursor.description or []]
                # Most runs' items fit in memory many times over: fetched at once they cost a few
                # milliseconds, where the spill's second DuckDB instance and file cost ~20 before
                # the first row (and the first request of the run).
                head = cursor.fetchmany(_IN_MEMORY_ROWS + 1)
            finally:
                cursor.close()
            if len(head) > _IN_MEMORY_ROWS:
                # Too many to hold: the query again, written to disk by DuckDB (what it costs to
                # have fetched the head first is small beside a result this large).
                del head
                spill = Path(tempfile.mkdtemp(prefix="charter-rows-"))
                try:
                    self._connection().sql(sql, params=params or None).write_parquet(
                        str(spill / "rows.parquet")
                    )
                except BaseException:
                    shutil.rmtree(spill, ignore_errors=True)
                    raise
        if spill is None:
            for row in head:
                yield dict(zip(names, row, strict=True))
            return
        try:
            reader = duckdb.connect()
            try:
                cursor = reader.execute("SELECT * FROM read_parquet(?)", [str(spill / "rows.parquet")])
                while rows := cursor.fetchmany(batch_size):
                    for row in rows:
                        yield dict(zip(names, row, strict=True))
            finally:
                reader.close()
        finally:
            shutil.rmtree(spill, ignore_errors=True)

    def ids_in(self, table: str, run_id: str, column: str = "prompt_id") -> set[str]:
        """The ids already stored for a run: what a resumed command skips."""
        rows = self.query(f"SELECT DISTINCT {column} FROM {table} WHERE run_id = ?", [run_id])
        return {str(r[0]) for r in rows}
