"""charter's own HTTP/1.1 client (backends/http.py) against servers we did not write: aiohttp's web
server (chunked answers, gzip, Connection: close, keep-alive timeouts) and the standard library's
http.server (HTTP/1.0, answers ended by the close of the connection), plus scripted sockets for what
no well-behaved server does on purpose (a stale kept-alive connection, 100 Continue, a torn answer,
garbage). Every server listens on 127.0.0.1 and lives for one test.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiohttp import web

from charter.backends.base import BackendError, CompletionRequest
from charter.backends.http import HTTPClient, HTTPProtocolError, Response, ServerDisconnected
from charter.backends.openai_fast import OpenAIFastBackend, transport_for

CHAT = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}]
}


@asynccontextmanager
async def aiohttp_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], **server_kw: Any
) -> AsyncIterator[tuple[str, list[Any]]]:
    """aiohttp's web server on a free port; yields its base URL and the peer of every request."""
    peers: list[Any] = []

    async def recorded(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorded)
    runner = web.AppRunner(app, access_log=None, **server_kw)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1", peers
    finally:
        await runner.cleanup()


@asynccontextmanager
async def scripted_server(
    answer: Callable[[int, bytes], Awaitable[bytes | None]], close_after: frozenset[int] = frozenset()
) -> AsyncIterator[tuple[str, list[int]]]:
    """A socket server: for request number k (counted over all connections) it writes what
    `answer(k, request_bytes)` returns, or closes the connection on None (and after writing when k
    is in `close_after`). Yields the URL and the number of connections accepted (a one-item list)."""
    accepted = [0]
    counter = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                body = await reader.readexactly(length)
                counter[0] += 1
                out = await answer(counter[0], head + body)
                if out is None:
                    break
                writer.write(out)
                await writer.drain()
                if counter[0] in close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", accepted
    finally:
        server.close()
        await server.wait_closed()


def _ok(payload: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\n{extra}\r\n".encode() + payload


def test_keep_alive_reuses_connections_and_sends_the_body_and_headers() -> None:
    seen: list[tuple[str, dict[str, str], Any]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.path, dict(request.headers), await request.json()))
        return web.json_response(CHAT)

    async def main() -> list[Any]:
        async with aiohttp_server(handler) as (url, peers):
            client = HTTPClient(url, {"Authorization": "Bearer k"}, timeout=10)
            for i in range(5):
                response = await client.post("/chat/completions", json.dumps({"i": i, "s": "é"}).encode())
                assert response.status == 200 and json.loads(response.body) == CHAT
            await client.close()
            return peers

    peers = asyncio.run(main())
    assert len(set(peers)) == 1, "five sequential requests should share one kept-alive connection"
    path, headers, _ = seen[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer k"
    assert headers["Content-Type"] == "application/json"
    assert headers["Host"].startswith("127.0.0.1:")
    assert headers["User-Agent"].startswith("charter/")
    assert [b["i"] for _, _, b in seen] == [0, 1, 2, 3, 4] and seen[0][2]["s"] == "é"


def test_chunked_gzip_and_connection_close_answers_are_read_whole() -> None:
    big = {"text": "x" * 300_000, "choices": []}

    async def handler(request: web.Request) -> web.StreamResponse:
        kind = request.path.rsplit("/", 1)[-1]
        if kind == "chunked":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            data = json.dumps(big).encode()
            for start in range(0, len(data), 7_001):  # many chunks, split across reads
                await response.write(data[start : start + 7_001])
            await response.write_eof()
            return response
        if kind == "gzip":
            response = web.json_response(big)
            response.enable_compression(force=web.ContentCoding.gzip)
            return response
        response = web.json_response(big)
        response.force_close()
        return response

    async def main() -> tuple[list[Response], list[Any]]:
        async with aiohttp_server(handler) as (url, peers):
            client = HTTPClient(url, timeout=10)
            answers = [await client.post(f"/{kind}", b"{}") for kind in ("chunked", "gzip", "close", "gzip")]
            await client.close()
            return answers, peers

    answers, peers = asyncio.run(main())
    assert all(json.loads(answer.body) == big for answer in answers)
    # the server did frame and code them so (the client reads whatever it is sent)
    assert answers[0].headers["transfer-encoding"] == "chunked"
    assert answers[1].headers["content-encoding"] == "gzip"
    assert answers[2].headers["connection"] == "close"
    # chunked and gzip keep the connection; the forced close makes the last request open a new one
    assert peers[0] == peers[1] == peers[2] and peers[3] != peers[2]


def test_http10_answer_ended_by_close_from_the_standard_library_server() -> None:
    class Handler(BaseHTTPRequestHandler):  # protocol_version HTTP/1.0, no Content-Length
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(CHAT).encode())

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:

        async def main() -> list[Any]:
            client = HTTPClient(f"http://127.0.0.1:{httpd.server_address[1]}", timeout=10)
            out = [json.loads((await client.post("/x", b"{}")).body) for _ in range(3)]
            await client.close()
            return out

        assert asyncio.run(main()) == [CHAT] * 3
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_connection_closed_by_the_servers_keep_alive_timeout_is_not_reused() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(CHAT)

    async def main() -> list[Any]:
        async with aiohttp_server(handler, keepalive_timeout=0.1) as (url, peers):
            client = HTTPClient(url, timeout=10)
            await client.post("/a", b"{}")
            await asyncio.sleep(0.5)  # the server closes the idle connection meanwhile
            response = await client.post("/a", b"{}")
            assert json.loads(response.body) == CHAT
            await client.close()
            return peers

    peers = asyncio.run(main())
    assert len(peers) == 2 and peers[0] != peers[1]


def test_a_stale_connection_is_retried_once_on_a_new_one() -> None:
    payload = json.dumps(CHAT).encode()

    async def answer(k: int, request: bytes) -> bytes | None:
        # Request 2 reaches a connection the server is closing (as at its keep-alive timeout):
        # closed without a byte of answer.
        return None if k == 2 else _ok(payload)

    async def main() -> int:
        async with scripted_server(answer) as (url, accepted):
            client = HTTPClient(url, timeout=10)
            await client.post("/a", b"{}")
            response = await client.post("/a", b"{}")  # stale, then retried on a new connection
            assert json.loads(response.body) == CHAT
            await client.close()
            return accepted[0]

    assert asyncio.run(main()) == 2


def test_a_torn_answer_is_an_error_and_is_not_retried_by_the_client() -> None:
    payload = json.dumps(CHAT).encode()

    async def answer(k: int, request: bytes) -> bytes | None:
        if k == 2:  # on the kept-alive connection: part of an answer, then the close
            return b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"choi'
        return _ok(payload)

    async def main() -> None:
        async with scripted_server(answer, close_after=frozenset({2})) as (url, accepted):
            client = HTTPClient(url, timeout=10)
            await client.post("/a", b"{}")
            with pytest.raises(ServerDisconnected):
                await client.post("/a", b"{}")
            assert accepted[0] == 1  # bytes of the answer had arrived: not sent again
            assert json.loads((await client.post("/a", b"{}")).body) == CHAT
            assert accepted[0] == 2
            await client.close()

    asyncio.run(main())


def test_informational_answers_are_skipped_and_garbage_is_a_protocol_error() -> None:
    payload = json.dumps(CHAT).encode()

    async def answer(k: int, request: bytes) -> bytes | None:
        if k == 1:
            return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + _ok(
                payload
            )
        return b"SSH-2.0-OpenSSH_9.6\r\n\r\n"

    async def main() -> None:
        async with scripted_server(answer) as (url, _):
            client = HTTPClient(url, timeout=10)
            assert json.loads((await client.post("/a", b"{}")).body) == CHAT
            with pytest.raises(HTTPProtocolError, match="status line"):
                await client.post("/a", b"{}")
            await client.close()

    asyncio.run(main())


def test_a_timeout_drops_the_connection_and_the_next_request_works() -> None:
    payload = json.dumps(CHAT).encode()

    async def answer(k: int, request: bytes) -> bytes | None:
        if k == 1:
            await asyncio.sleep(5)
        return _ok(payload)

    async def main() -> int:
        async with scripted_server(answer) as (url, accepted):
            client = HTTPClient(url, timeout=0.3)
            with pytest.raises(TimeoutError):
                await client.post("/a", b"{}")
            assert json.loads((await client.post("/a", b"{}")).body) == CHAT
            await client.close()
            return accepted[0]

    assert asyncio.run(main()) == 2  # the timed-out connection was not reused


def test_header_values_cannot_smuggle_lines_and_only_plain_http_is_spoken() -> None:
    with pytest.raises(ValueError, match="line break"):
        HTTPClient("http://127.0.0.1:1", {"X-Note": "a\r\nInjected: yes"})
    with pytest.raises(ValueError, match="plain http"):
        HTTPClient("https://api.example.com/v1")


def test_the_backend_picks_charters_client_for_http_and_aiohttp_for_https(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CHARTER_HTTP_TRANSPORT", raising=False)
    assert transport_for("http://127.0.0.1:8000/v1") == "http"
    assert transport_for("HTTPS://api.example.com/v1") == "aiohttp"
    monkeypatch.setenv("CHARTER_HTTP_TRANSPORT", "aiohttp")
    assert transport_for("http://127.0.0.1:8000/v1") == "aiohttp"
    monkeypatch.setenv("CHARTER_HTTP_TRANSPORT", "httpx")
    assert transport_for("http://127.0.0.1:8000/v1") == "openai"
    monkeypatch.setenv("CHARTER_HTTP_TRANSPORT", "curl")
    with pytest.raises(ValueError, match="CHARTER_HTTP_TRANSPORT='curl'"):
        transport_for("http://127.0.0.1:8000/v1")


REQUEST = CompletionRequest(model="openai/m", messages=[{"role": "user", "content": "hi"}])


def backend_failure(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], headers: dict[str, str] | None = None
) -> BackendError:
    """The `BackendError` the fast backend raises for one request to an aiohttp server running `handler`."""

    async def main() -> BackendError:
        async with aiohttp_server(handler) as (url, _):
            options: dict[str, Any] = {"api_key": "k", "headers": headers or {}}
            backend = OpenAIFastBackend("openai/m", api_base=url, client_options=options)
            try:
                with pytest.raises(BackendError) as raised:
                    await backend.complete(REQUEST)
            finally:
                await backend.aclose()
            return raised.value

    return asyncio.run(main())


def test_through_the_backend_a_torn_answer_is_retryable_and_a_redirect_is_not() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.headers.get("X-Kind") == "redirect":
            raise web.HTTPTemporaryRedirect("/v2/chat/completions")
        response = web.StreamResponse(headers={"Content-Length": "500"})
        await response.prepare(request)
        await response.write(b'{"choices": [')
        assert request.transport is not None
        request.transport.close()  # the server dies mid-answer
        return response

    torn = backend_failure(handler)
    moved = backend_failure(handler, {"X-Kind": "redirect"})
    assert torn.retryable
    assert not moved.retryable and moved.status == 307


def test_a_query_in_the_base_url_is_kept_and_credentials_in_it_are_refused_unechoed() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.json_response(CHAT)

    async def main() -> None:
        async with aiohttp_server(handler) as (url, _):
            client = HTTPClient(url + "?api-version=2024-06-01", timeout=10)
            await client.post("/chat/completions", b"{}")
            await client.close()

    asyncio.run(main())
    assert seen == ["/v1/chat/completions?api-version=2024-06-01"]
    with pytest.raises(ValueError, match="credentials") as refused:
        HTTPClient("http://someone:sekrit@127.0.0.1:1/v1")
    assert "sekrit" not in str(refused.value)


def test_through_the_backend_a_429_carries_its_retry_after() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"message": "slow down", "type": "rate_limit"}},
            status=429,
            headers={"Retry-After": "7"},
        )

    error = backend_failure(handler)
    assert error.retryable and error.retry_after == 7.0 and error.status == 429
    assert str(error).startswith("RateLimitError") and "slow down" in str(error)


def test_a_non_ascii_base_path_is_percent_encoded_and_a_non_latin1_header_refused() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response(CHAT)

    async def main() -> None:
        async with aiohttp_server(handler) as (url, _):
            client = HTTPClient(url.replace("/v1", "/mödel%20a"), timeout=10)
            await client.post("/chat/completions", b"{}")
            await client.close()

    asyncio.run(main())
    assert seen == ["/m%C3%B6del%20a/chat/completions"]
    with pytest.raises(ValueError, match="X-Who"):
        HTTPClient("http://127.0.0.1:1", {"X-Who": "名前"})
