"""The journal of finished calls: what a kill -9 between two flushes would otherwise lose.

`DB.journal` beside the database gets one JSON line per finished call, written to the OS (one
`write(2)`, no fsync: a killed process loses nothing the kernel has) as each call finishes. The store
replays it into `calls` when it next opens the file and empties it after every successful flush,
so after a kill -9 only the calls in flight at the kill are asked again (not a second of finished
ones). A power cut may lose the unsynced tail; that is the same second of calls as before.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def journal_path(db: Path) -> Path:
    """The journal file beside `db`."""
    return db.with_name(db.name + ".journal")


class Journal:
    """An append-only file of `calls` rows, one JSON object a line."""

    def __init__(self, db: Path) -> None:
        self.path = journal_path(db)
        self._fd: int | None = None
        self._size = 0

    def replay(self) -> list[dict[str, Any]]:
        """The rows a previous writer journaled and did not flush (a torn last line is skipped)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        rows = []
        for line in data.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # cut off by the kill mid-write: that call is asked again
            if isinstance(row, dict):
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
        data = (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        try:
            os.write(self._fd, data)
        except OSError:
            # The disk is full (or gone): the next flush fails with the error the user needs to see;
            # until then the row is in memory, as it was before there was a journal.
            return
        self._size += len(data)

    def clear(self) -> None:
        """Empty the journal: everything in it is committed to the database."""
        if self._fd is not None and self._size:
            os.ftruncate(self._fd, 0)
            self._size = 0

    def close(self, *, remove: bool) -> None:
        """Close; remove the file when everything in it is committed."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink()
