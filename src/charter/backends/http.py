"""A small keep-alive HTTP/1.1 client for the fast path's JSON POSTs to plain-HTTP endpoints.

Why: against a local inference server at high concurrency the client's CPU, not the server, caps a
run. aiohttp spends most of its ~0.3 ms per request on machinery these POSTs do not use (cookie
jars, tracing signals, redirect handling, payload objects, multidict headers), and importing it
takes ~0.2 s (it builds TLS contexts at import). This client writes each request as one buffer and
frames the answer with a few `bytes.find` calls, in the protocol callback that received it.

What it speaks: HTTP/1.1 over TCP to one `http://` origin. TLS endpoints are remote, where the
network is slower than any client, and keep aiohttp (`backends/openai_fast.py` picks). Connections
are kept alive and reused last-in first-out. An answer may be framed by Content-Length, by the
chunked transfer coding or by the close of the connection, may carry gzip or deflate content
coding, and may be preceded by informational 1xx answers. A reused connection the server had
already closed (its keep-alive timeout) is retried once on a new connection, but only when no byte
of the answer had arrived. Like aiohttp's session without `trust_env`, it uses no proxy. It does not
follow redirects, as the openai client does not: a 3xx is an error answer.
"""

from __future__ import annotations

import asyncio
import zlib
from urllib.parse import quote, urlsplit

from charter import __version__

USER_AGENT = f"charter/{__version__}"
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"  # RFC 3986 pchar and "/": left as they are


class HTTPProtocolError(Exception):
    """The server's bytes are not a well-formed HTTP/1.1 answer (retryable, like a truncated body)."""


class ServerDisconnected(ConnectionError):
    """The server closed the connection before its answer was complete."""


class Response:
    """One answer: the status, lower-cased header names (repeated ones joined by ", "), the body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Connection(asyncio.Protocol):
    """One TCP connection; frames one answer at a time in `data_received`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.reusable = True
        self.received = False  # any byte of the current answer
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body_mode = ""  # "" reading the head, then "length", "chunked" or "close"
        self.remaining = 0
        self.chunks: list[bytes] = []

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received = True
        self.buffer += data
        if self.waiter is None:
            return  # bytes nobody asked for: the connection is not reused (checked in `send`)
        try:
            self._advance()
        except Exception as exc:  # a malformed answer: fail this request, drop the connection
            self._fail(exc)

    def eof_received(self) -> bool:
        self._closed_by_peer()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed_by_peer(exc)

    # -- framing ----------------------------------------------------------------------------
    def _closed_by_peer(self, exc: Exception | None = None) -> None:
        if self.closed:
            return
        self.closed = True  # never reused again (`HTTPClient._exchange` checks)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.body_mode == "close":  # the close is the end of this answer
            self.chunks.append(bytes(self.buffer))
            self.buffer.clear()
            self._finish()
            return
        error = ServerDisconnected("the server closed the connection before its answer was complete")
        if exc is not None:
            error.__cause__ = exc
        waiter.set_exception(error)

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.abort()

    def _advance(self) -> None:
        """Consume what the buffer holds of the current answer; resolve the waiter when it is whole."""
        buf = self.buffer
        while True:
            if not self.body_mode:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > 65536:
                        raise HTTPProtocolError("the answer's header section is over 64 KiB")
                    return
                head = bytes(buf[:end]).decode("latin-1")
                del buf[: end + 4]
                if self._start(head):
                    continue  # an informational 1xx answer: the real one follows
            if self.body_mode == "length":
                if len(buf) < self.remaining:
                    return
                self.chunks.append(bytes(buf[: self.remaining]))
                del buf[: self.remaining]
                self._finish()
                return
            if self.body_mode == "chunked":
                if not self._chunks(buf):
                    return
                self._finish()
                return
            return  # "close": everything until the server closes

    def _start(self, head: str) -> bool:
        """Read a status line and headers; pick the body framing. True for a 1xx answer."""
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HTTPProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            return True
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HTTPProtocolError(f"a header line without a colon: {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.status = status
        self.headers = headers
        connection = headers.get("connection", "").lower()
        if "close" in connection or (parts[0] == "HTTP/1.0" and "keep-alive" not in connection):
            self.reusable = False
        if status in (101, 204, 304):
            self.body_mode, self.remaining = "length", 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self.body_mode = "chunked"
        elif "content-length" in headers:
            length = headers["content-length"].split(",")[0].strip()
            if not length.isdigit():
                raise HTTPProtocolError(f"a bad Content-Length: {headers['content-length'][:40]!r}")
            self.body_mode, self.remaining = "length", int(length)
        else:
            self.body_mode = "close"
            self.reusable = False
        return False

    def _chunks(self, buf: bytearray) -> bool:
        """Consume whole chunks of the chunked coding; True once the last chunk and trailers are in."""
        while True:
            if self.remaining < 0:  # after the last chunk: trailer lines, then an empty line
                end = buf.find(b"\r\n")
                if end < 0:
                    return False
                del buf[: end + 2]
                if end == 0:
                    return True
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                return False
            size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HTTPProtocolError(f"a bad chunk size: {size_text[:20]!r}") from None
            if size == 0:
                del buf[: end + 2]
                self.remaining = -1
                continue
            if len(buf) < end + 2 + size + 2:
                return False
            start = end + 2
            self.chunks.append(bytes(buf[start : start + size]))
            if buf[start + size : start + size + 2] != b"\r\n":
                raise HTTPProtocolError("a chunk not followed by CRLF")
            del buf[: start + size + 2]

    def _finish(self) -> None:
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        coding = self.headers.get("content-encoding", "identity").lower().strip()
        waiter = self.waiter
        try:
            body = _decode(body, coding)
        except Exception as exc:
            self._fail(exc)
            return
        response = Response(self.status, self.headers, body)
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # -- use --------------------------------------------------------------------------------
    async def send(self, data: bytes, deadline: float) -> Response:
        """Write one request and wait for its whole answer, until `deadline` (the loop's clock)."""
        assert self.transport is not None
        if self.buffer:  # bytes arrived between answers: the stream is out of step
            raise HTTPProtocolError("the server sent bytes nobody asked for")
        self.received = False
        waiter = self.waiter = self.loop.create_future()
        # One timer handle, not asyncio.timeout: that costs a context manager, a task lookup and
        # a cancellation scope per request, and this runs thousands of times a second.
        timer = self.loop.call_at(deadline, self._time_out, waiter)
        try:
            self.transport.write(data)
            return await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def _time_out(self, waiter: asyncio.Future[Response]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError("no whole answer within the request's timeout"))

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


def _decode(body: bytes, coding: str) -> bytes:
    if coding in ("", "identity"):
        return body
    if coding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if coding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:  # some servers send raw deflate without the zlib wrapper
            return zlib.decompress(body, -zlib.MAX_WBITS)
    raise HTTPProtocolError(f"the answer's content coding {coding!r} is not one this client decodes")


class HTTPClient:
    """POSTs to one `http://` origin over kept-alive connections (made on the running loop).

    `headers` are sent with every request, after Host, User-Agent, Content-Type, Content-Length and
    Accept-Encoding; `timeout` bounds each request, connecting included, in seconds.
    """

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, timeout: float = 120.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{base_url}: this client speaks plain http:// only")
        self.host = parts.hostname
        self.port = parts.port or 80
        # Percent-encoded as aiohttp's URL type would (escapes already there are kept).
        self.prefix = quote(parts.path.rstrip("/"), safe=_PATH_SAFE)
        self.query = f"?{quote(parts.query, safe=_PATH_SAFE + '?')}" if parts.query else ""
        if parts.username or parts.password:
            # aiohttp refuses them beside the Authorization header every request here has. The
            # message leaves the URL out: it holds a secret.
            raise ValueError(
                "the endpoint URL holds credentials (user:password@); give the key as "
                "--param api_key=... instead"
            )
        host = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        fixed = {"Host": host, "User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        fixed.update(headers or {})
        for name, value in fixed.items():
            if any(c in f"{name}{value}" for c in "\r\n\0") or not name or ":" in name:
                raise ValueError(f"HTTP header {name!r}: a name or value cannot hold a line break or NUL")
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        try:
            self._headers.encode("latin-1")
        except UnicodeEncodeError as exc:
            name = next(k for k, v in fixed.items() if not f"{k}{v}".isascii())
            raise ValueError(f"HTTP header {name!r}: only Latin-1 text can be sent in a header") from exc
        self.timeout = timeout
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    async def post(self, path: str, body: bytes, content_type: str = "application/json") -> Response:
        """POST `body` to the base URL's path + `path`; the whole answer, whatever its status."""
        head = (
            f"POST {self.prefix}{path}{self.query} HTTP/1.1\r\n{self._headers}"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        data = head.encode("latin-1") + body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while self._idle:
            conn = self._idle.pop()
            if conn.closed or conn.buffer:
                conn.abort()
                self._all.discard(conn)
                continue
            try:
                return await self._exchange(conn, data, deadline)
            except ServerDisconnected:
                if conn.received:
                    raise
                # A kept-alive connection the server closed while idle: a new one, once.
                break
        return await self._exchange(await self._connect(loop, deadline), data, deadline)

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        connecting = loop.create_connection(lambda: _Connection(loop), self.host, self.port)
        _, conn = await asyncio.wait_for(connecting, max(deadline - loop.time(), 0))
        self._all.add(conn)
        return conn

    async def _exchange(self, conn: _Connection, data: bytes, deadline: float) -> Response:
        try:
            response = await conn.send(data, deadline)
        except BaseException:  # failed, timed out or cancelled mid-answer: never reuse it
            conn.abort()
            self._all.discard(conn)
            raise
        if conn.reusable and not conn.closed:
            self._idle.append(conn)
        else:
            conn.abort()
            self._all.discard(conn)
        return response

    async def close(self) -> None:
        """Close every connection (idle or not)."""
        for conn in self._all:
            if conn.transport is not None:
                conn.transport.close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks


__all__ = ["HTTPClient", "HTTPProtocolError", "Response", "ServerDisconnected"]
