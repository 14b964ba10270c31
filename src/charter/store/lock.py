"""One writer per file, and readers while it writes: the writer's lock file and the release protocol.

DuckDB lets one process hold a file for writing and then no other process may even read it. So the
writer (`Store`) takes `DB.lock` (an flock, held for the Store's life: a second writer is told "in use
by PID N"), and serves a tiny protocol on 127.0.0.1 whose port it writes into the lock file. A reader
that finds the file held connects, says `release`, and the writer flushes and closes its DuckDB
connection (buffering further results in memory and in its journal) until the reader hangs up. While
a reader holds the file, the writer waits only when it must read the file itself (a cache hit, a
query); new readers then wait for that to finish, so neither side starves.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: DuckDB's own lock is the only one
    fcntl = None  # type: ignore[assignment]

RELEASE_TIMEOUT_S = 60.0  # how long a reader waits for the writer to let go (it may be mid-flush)


def lock_path(db: Path) -> Path:
    """The lock file beside `db`."""
    return db.with_name(db.name + ".lock")


class WriterLock:
    """`DB.lock`: an exclusive flock naming the writer's PID and the port of its release server."""

    def __init__(self, db: Path) -> None:
        self.path = lock_path(db)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise `LockHeld(pid)` when another live process holds it."""
        if fcntl is None:
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read_info(fd)
                os.close(fd)
                raise LockHeld(info.get("pid")) from None
            # The previous writer may have unlinked the file between our open and our flock: then
            # we hold a lock nobody else can see; take the file that is there now instead.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                self.publish(None)
                return
            os.close(fd)

    def publish(self, port: int | None) -> None:
        """Write our PID and the release server's port into the lock file."""
        if self._fd is None:
            return
        data = json.dumps({"pid": os.getpid(), "port": port}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Remove the lock file and let go of the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


class LockHeld(Exception):
    """Another process holds the writer lock."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(f"held by PID {pid}")
        self.pid = pid


def _read_info(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def live_writer(db: Path) -> dict[str, Any] | None:
    """The live writer's {"pid", "port"} from the lock file, or None when no process holds it."""
    if fcntl is None:
        return None
    try:
        fd = os.open(lock_path(db), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_info(fd)  # held exclusively: a writer is alive
        fcntl.flock(fd, fcntl.LOCK_UN)  # a stale file (its writer was killed): nobody to ask
        return None
    finally:
        os.close(fd)


def hang_up(lease: socket.socket) -> None:
    """Tell the writer this reader is done: shut the connection down (a FIN goes out at once,
    whatever else still refers to the socket), then close it."""
    with contextlib.suppress(OSError):
        lease.shutdown(socket.SHUT_RDWR)
    lease.close()


def ask_release(port: int, timeout: float = RELEASE_TIMEOUT_S) -> socket.socket:
    """Ask the writer on `port` to let go of the file; keep the returned socket open while reading.

    Raises `LockHeld` when the writer cannot let go (it holds a raw connection: `charter merge`).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(b"release\n")
        # Closed here, not left to the garbage collector: a socket with a file object still open
        # only really closes when that goes too, and the writer waits for the hang-up.
        with sock.makefile("rb") as reader:
            reply = reader.readline().strip()
    except BaseException:
        sock.close()
        raise
    if reply != b"ok":
        sock.close()
        raise LockHeld(None)
    sock.settimeout(None)
    return sock


class ReleaseServer:
    """The writer's side: a daemon thread answering `release` requests on 127.0.0.1.

    `release()` is called when a reader arrives and must return True once the writer's DuckDB
    connection is closed (False: it cannot let go); `done()` when that reader hangs up.
    """

    def __init__(self, release: Callable[[], bool], done: Callable[[], None]) -> None:
        self._release = release
        self._done = done
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="charter-store-release", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                if conn.makefile("rb").readline().strip() != b"release":
                    return
                if not self._release():
                    conn.sendall(b"busy\n")
                    return
            except OSError:
                return
            try:
                conn.sendall(b"ok\n")
                while conn.recv(1024):  # the reader hangs up (or dies) when it is done
                    pass
            except OSError:
                pass
            finally:
                self._done()

    def close(self) -> None:
        """Stop accepting readers."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
