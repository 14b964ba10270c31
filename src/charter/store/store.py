"""`Store`: the one place that writes to DuckDB.

Writes are buffered per table and flushed together in one transaction as Arrow tables (DuckDB's
`executemany` is ~50x slower). Records that belong together (a prompt's revisions and its SFT
example, and the calls they reference) are flushed atomically, so a crash leaves whole prompts or
nothing, and the same command resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from charter.backends.base import Completion, TokenLogprob
from charter.store.schema import MIGRATIONS


class StoreError(RuntimeError):
    """A database problem a user can act on."""


class StoreInUseError(StoreError):
    """Another process holds the database's write lock."""


@dataclass
class CachedCall:
    """A finished call found by its cache key."""

    call_id: str
    run_id: str
    completion: Completion


_LOCK_PID = re.compile(r"held in (?P<proc>.+?) \(PID (?P<pid>\d+)\)")


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


def _connect(
    path: str | Path, read_only: bool, config: dict[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    check_db_path(path)
    try:
        return duckdb.connect(str(path), read_only=read_only, config=config or {})
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            match = _LOCK_PID.search(text)
            holder = f"PID {match['pid']} ({match['proc']})" if match else "another process"
            raise StoreInUseError(
                f"database {path} is in use by {holder}: DuckDB allows one writer per file; "
                "wait for it to finish or use another --db"
            ) from None
        raise StoreError(f"cannot open database {path}: {text.splitlines()[0]}") from None


def open_read_only(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection (for `charter sql` and exports); the file must exist.

    The engine is locked too (`LOCKED_CONFIG`): user SQL run on it (`charter sql`, `--where`)
    cannot write files, attach databases or install extensions.
    """
    if not Path(path).exists():
        raise StoreError(f"database {path} does not exist")
    return _connect(path, read_only=True, config=LOCKED_CONFIG)


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
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "cost_usd": completion.cost_usd,
        "latency_ms": completion.latency_ms,
    }


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


_ARROW_TYPES: dict[str, pa.DataType] = {"VARCHAR": pa.string(), "JSON": pa.string(), "BOOLEAN": pa.bool_()}


def _arrow_column(values: list[Any], arrow_type: pa.DataType | None) -> Any:
    if arrow_type is not None:
        try:
            return pa.array(values, type=arrow_type)
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            pass  # e.g. a dict given for a JSON column: let Arrow infer, DuckDB casts as before
    return values


def _key_prefix(cache_key: str) -> int:
    # Cache keys are hex digests; 64 bits are plenty for a filter (a collision only costs a query).
    try:
        return int(cache_key[:16], 16)
    except ValueError:
        return hash(cache_key)


class Store:
    """A DuckDB file opened for writing by this process (DuckDB allows one writer per file)."""

    def __init__(self, path: str | Path, *, flush_rows: int = 5000, flush_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self.con = _connect(self.path, read_only=False)
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
        self._columns: dict[str, list[str]] = {}
        self._arrow_types: dict[str, dict[str, pa.DataType]] = {}
        self.migrate()

    # -- lifecycle ---------------------------------------------------------------------------
    def migrate(self) -> None:
        """Apply the migrations this file has not seen yet."""
        from charter.store import views

        con = self.con
        con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = con.execute("SELECT max(version) FROM schema_version").fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        for version, sql in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            con.execute("BEGIN")
            try:
                con.execute(sql)
                con.execute("INSERT INTO schema_version VALUES (?)", [version])
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        views.create_views(con)

    def close(self) -> None:
        """Flush what is buffered and close the file."""
        try:
            self.flush()
        finally:
            self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs --------------------------------------------------------------------------------
    def start_run(self, name: str, command: str, config: dict[str, Any]) -> tuple[str, bool]:
        """The run called `name` (created if new). Returns (run_id, resumed?)."""
        with self._lock:
            row = self.con.execute("SELECT run_id FROM runs WHERE name = ?", [name]).fetchone()
            if row:
                self.con.execute(
                    "UPDATE runs SET status = 'running', finished_at = NULL WHERE run_id = ?", [row[0]]
                )
                return str(row[0]), True
            # Derived from the name, not random: the shards of one run (`--shard i/n`, each in its
            # own file) get the same run id, so their rows merge into one run (`charter merge`).
            run_id = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
            self.con.execute(
                "INSERT INTO runs (run_id, name, command, config, status) VALUES (?, ?, ?, ?, 'running')",
                [run_id, name, command, json.dumps(config, ensure_ascii=False, default=str)],
            )
            return run_id, False

    def finish_run(self, run_id: str, status: str) -> None:
        """Flush and mark a run `done`, `failed` or `interrupted`."""
        with self._lock:
            self.flush()
            self.con.execute(
                "UPDATE runs SET status = ?, finished_at = current_timestamp WHERE run_id = ?",
                [status, run_id],
            )

    def run_id_for(self, name: str) -> str | None:
        """The id of the run called `name`, if any."""
        row = self.con.execute("SELECT run_id FROM runs WHERE name = ?", [name]).fetchone()
        return str(row[0]) if row else None

    # -- the request cache -------------------------------------------------------------------
    def _load_known_keys(self) -> set[int]:
        keys: set[int] = set()
        reader = self.con.sql("SELECT DISTINCT cache_key FROM calls WHERE error IS NULL").to_arrow_reader(
            100_000
        )
        for batch in reader:
            keys.update(_key_prefix(k) for k in batch.column(0).to_pylist())
        return keys

    def cache_get(self, cache_key: str) -> CachedCall | None:
        """A successful earlier call with this key, from this process's buffer or the file."""
        with self._lock:
            pending = self._pending_cache.get(cache_key)
            if pending is not None:
                return pending
            if self._known_keys is None:
                self._known_keys = self._load_known_keys()
            if _key_prefix(cache_key) not in self._known_keys:
                return None
            row = self.con.execute(
                "SELECT call_id, run_id, responses, logprobs, prompt_tokens, completion_tokens FROM calls "
                "WHERE cache_key = ? AND error IS NULL ORDER BY created_at LIMIT 1",
                [cache_key],
            ).fetchone()
        if row is None:
            return None
        return CachedCall(str(row[0]), str(row[1]), completion_from_row(row[2], row[3], row[4], row[5]))

    def add_call(self, row: dict[str, Any], completion: Completion | None = None) -> None:
        """Buffer one `calls` row; a successful one is immediately visible to `cache_get`."""
        with self._lock:
            self.add_rows("calls", [row])
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

    def maybe_flush(self) -> None:
        """Flush when enough rows or time have accumulated."""
        if self._pending_count >= self.flush_rows or (
            self._pending_count and time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        """Write every buffered row in one transaction (Arrow inserts; duplicates are ignored)."""
        with self._lock:
            if not self._pending_count:
                self._last_flush = time.monotonic()
                return
            pending, self._pending = self._pending, {}
            self._pending_count = 0
            con = self.con
            con.execute("BEGIN")
            try:
                # calls first: other rows reference them.
                for table in sorted(pending, key=lambda t: t != "calls"):
                    rows = pending[table]
                    if rows:
                        self._insert_arrow(table, rows)
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
            self._pending_cache.clear()
            self._last_flush = time.monotonic()

    def _table_columns(self, table: str) -> list[str]:
        if table not in self._columns:
            cols = self.con.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position",
                [table],
            ).fetchall()
            if not cols:
                raise StoreError(f"no table named {table!r}")
            self._columns[table] = [c[0] for c in cols]
            # Text and boolean columns are built with their Arrow type given (3x faster than letting
            # Arrow infer it); numbers keep inference so a float is never silently truncated.
            self._arrow_types[table] = {
                c[0]: _ARROW_TYPES[str(c[1]).upper()] for c in cols if str(c[1]).upper() in _ARROW_TYPES
            }
        return self._columns[table]

    def _insert_arrow(self, table: str, rows: list[dict[str, Any]]) -> None:
        known = self._table_columns(table)
        present: set[str] = set().union(*(r.keys() for r in rows))
        names = [c for c in known if c in present]
        unknown = present - set(known)
        if unknown:
            raise StoreError(f"table {table} has no column(s) {', '.join(sorted(unknown))}")
        types = self._arrow_types.get(table, {})
        batch = pa.table({c: _arrow_column([r.get(c) for r in rows], types.get(c)) for c in names})  # noqa: F841
        self.con.execute(f"INSERT OR IGNORE INTO {table} BY NAME SELECT * FROM batch")

    # -- reads -------------------------------------------------------------------------------
    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a query on the writer connection (after flushing) and fetch all rows."""
        with self._lock:
            self.flush()
            return self.con.execute(sql, params or []).fetchall()

    def query_dicts(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Like `query`, as dicts keyed by column name."""
        with self._lock:
            self.flush()
            cur = self.con.execute(sql, params or [])
            cols = [d[0] for d in cur.description or []]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def iter_dicts(
        self, sql: str, params: list[Any] | None = None, batch_size: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Stream a query's rows as dicts, `batch_size` at a time (flat memory on big tables)."""
        with self._lock:
            self.flush()
            cur = self.con.cursor()
        cur.execute(sql, params or [])
        cols = [d[0] for d in cur.description or []]
        while True:
            chunk = cur.fetchmany(batch_size)
            if not chunk:
                break
            for row in chunk:
                yield dict(zip(cols, row, strict=True))
        cur.close()

    def ids_in(self, table: str, run_id: str, column: str = "prompt_id") -> set[str]:
        """The ids already stored for a run: what a resumed command skips."""
        rows = self.query(f"SELECT DISTINCT {column} FROM {table} WHERE run_id = ?", [run_id])
        return {str(r[0]) for r in rows}
