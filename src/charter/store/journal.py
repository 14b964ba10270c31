"""The journal of finished calls: what a kill -9 between two flushes would otherwise lose.

`DB.journal` beside the database gets one JSON line per finished call, written to the OS (one
`write(2)`, no fsync: a killed process loses nothing the kernel has) as each call finishes. The store
replays it into `calls` when it next opens the file and empties it after every successful flush,
so after a kill -9 only the calls in flight at the kill are asked again (not a second of finished
ones). A power cut may lose the unsynced tail; that is the same second of calls as before.

A batch the store writes on its writer thread while calls go on has its lines sealed first:
`DB.journal` is renamed `DB.journal.N` (an atomic rename: every line is in one file or the other at
any moment) and a new `DB.journal` takes the calls that finish meanwhile. The sealed segment is
removed once its batch commits; replay reads the sealed segments, oldest first, then `DB.journal`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

# `calls` columns that hold JSON text (a request, the responses, the log-probabilities). A line
# holds them as the JSON itself, not as a string of it: re-escaping every quote of a 4 KB few-shot
# request on every call was most of a label call's journal cost. Replay turns them back into the
# same text (json.dumps of what json.loads read gives the bytes it read: same separators, same
# key order, floats by repr; text written otherwise comes back as the same JSON, reformatted).
# A line written as a string (by an older charter, or text that is not JSON) stays one.
JSON_COLUMNS = ("request", "responses", "logprobs")
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


def _inlinable(value: Any) -> bool:
    # JSON text that opens an object or a list and holds no line break (the journal is a line per row).
    return isinstance(value, str) and value[:1] in ("{", "[") and "\n" not in value and "\r" not in value


def encode_row(row: dict[str, Any]) -> bytes:
    """One journal line for `row` (ending in a newline)."""
    inline = {name: row[name] for name in JSON_COLUMNS if _inlinable(row.get(name))}
    if not inline:
        return (_ENCODER.encode(row) + "\n").encode("utf-8")
    rest = {k: v for k, v in row.items() if k not in inline}
    parts = [_ENCODER.encode(rest)[1:-1]] if rest else []
    parts += [f'"{name}": {value}' for name, value in inline.items()]
    return ("{" + ", ".join(parts) + "}\n").encode("utf-8")


def decode_row(line: bytes) -> dict[str, Any] | None:
    """The row of one journal line; None for a line that is not one (torn by a kill)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    for name in JSON_COLUMNS:
        value = row.get(name)
        if value is not None and not isinstance(value, str):
            row[name] = json.dumps(value, ensure_ascii=False)
    return row


def journal_path(db: Path) -> Path:
    """The journal file beside `db`."""
    return db.with_name(db.name + ".journal")


def sealed_segments(db: Path) -> list[Path]:
    """The sealed journal segments beside `db` (`DB.journal.N`), oldest first."""
    head = journal_path(db)
    pattern = re.compile(re.escape(head.name) + r"\.(\d+)")
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(head.parent):
            match = pattern.fullmatch(entry.name)
            if match:
                found.append((int(match[1]), head.with_name(entry.name)))
    return [path for _, path in sorted(found)]


class Journal:
    """An append-only file of `calls` rows, one JSON object a line."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.path = journal_path(db)
        self._fd: int | None = None
        self._size = 0
        self._sealed: list[Path] = []

    def replay(self) -> list[dict[str, Any]]:
        """The rows a previous writer journaled and did not flush (a torn last line is skipped):
        its sealed segments' first, then the open journal's."""
        self._sealed = sealed_segments(self.db)
        rows = []
        for path in [*self._sealed, self.path]:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            for line in data.splitlines():
                row = decode_row(line)
                if row is not None:  # else cut off by the kill mid-write: that call is asked again
                    rows.append(row)
        return rows

    def open(self) -> None:
        """Open for appending (after `replay`)."""
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size

    def append(self, row: dict[str, Any]) -> None:
        """Write one row; it is in the kernel's hands when this returns."""
        if self._fd is None:
            return
        data = encode_row(row)
        try:
            os.write(self._fd, data)
        except OSError:
            # The disk is full (or gone): the next flush fails with the error the user needs to see;
            # until then the row is in memory, as it was before there was a journal.
            return
        self._size += len(data)

    def seal(self) -> list[Path]:
        """Seal the lines written so far as a segment of their own and start a new journal; the
        sealed segments (this one and any left from before), for `drop` once their rows commit."""
        if self._fd is not None and self._size:
            number = int(self._sealed[-1].name.rsplit(".", 1)[1]) + 1 if self._sealed else 1
            sealed = self.path.with_name(f"{self.path.name}.{number}")
            os.rename(self.path, sealed)
            self._sealed.append(sealed)
            os.close(self._fd)
            self._fd = None
            # No new journal (a full disk): from here the rows are in memory only, as after a failed
            # `append`, and the next flush reports the disk.
            with contextlib.suppress(OSError):
                self.open()
        return list(self._sealed)

    def drop(self, segments: list[Path]) -> None:
        """Remove sealed `segments`: every row in them is committed."""
        for path in segments:
            with contextlib.suppress(OSError):
                path.unlink()
            with contextlib.suppress(ValueError):
                self._sealed.remove(path)

    def clear(self) -> None:
        """Empty the journal: everything in it (and in every sealed segment) is committed."""
        if self._sealed:
            self.drop(list(self._sealed))
        if self._fd is not None and self._size:
            os.ftruncate(self._fd, 0)
            self._size = 0

    def close(self, *, remove: bool) -> None:
        """Close; remove the files when everything in them is committed."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if remove:
            self.drop(list(self._sealed))
            with contextlib.suppress(OSError):
                self.path.unlink()
