"""Backend failures named by what happened, retried only when that can help; bad model strings,
keys and endpoints refused before anything is written (issue 16 item 1)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from charter_testkit import CHAT_MODEL, query

from charter.backends.base import BackendError, CompletionRequest
from charter.backends.litellm_backend import DEFAULT_TIMEOUT, LiteLLMBackend
from charter.backends.openai_fast import OpenAIFastBackend
from charter.backends.preflight import PreflightError, check_model

REQUEST = CompletionRequest(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _ErrorServer:
    """A plain HTTP server answering every POST with one status and JSON body (like FastAPI's errors)."""

    def __init__(self, status: int, body: Any) -> None:
        payload = json.dumps(body).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.requests = 0
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _ErrorServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _fail(backend: Any) -> BackendError:
    async def go() -> BackendError:
        try:
            await backend.complete(REQUEST)
        except BackendError as exc:
            return exc
        finally:
            await backend.aclose()
        raise AssertionError("the call succeeded")

    return asyncio.run(go())


BACKENDS = {
    "fast": lambda base, **kw: OpenAIFastBackend(CHAT_MODEL, api_base=base, **kw),
    "litellm": lambda base, **kw: LiteLLMBackend(CHAT_MODEL, api_base=base, **kw),
}


@pytest.mark.parametrize("path", sorted(BACKENDS))
def test_connection_refused_is_named_with_the_endpoint(path: str) -> None:
    base = f"http://127.0.0.1:{_closed_port()}/v1"
    err = _fail(BACKENDS[path](base))
    assert str(err).startswith("connection refused")
    assert base in str(err)
    assert err.retryable  # a server that is still starting answers a little later


@pytest.mark.parametrize("path", sorted(BACKENDS))
def test_dns_failure_is_named_and_not_retried(path: str) -> None:
    # .invalid never resolves (RFC 2606); without any resolver the lookup fails too.
    err = _fail(BACKENDS[path]("http://no-such-host.invalid/v1"))
    assert "DNS lookup failed for no-such-host.invalid" in str(err)


@pytest.mark.parametrize("path", sorted(BACKENDS))
def test_fastapi_error_body_carries_the_servers_message(path: str) -> None:
    # `transformers serve` (FastAPI) answers errors as {"detail": "..."}, not OpenAI's {"error": {...}}.
    with _ErrorServer(422, {"detail": "Model 'test' is not loaded on this server"}) as srv:
        err = _fail(BACKENDS[path](srv.url))
    assert "Model 'test' is not loaded on this server" in str(err)
    assert err.status == 422
    assert not err.retryable


@pytest.mark.parametrize("path", sorted(BACKENDS))
def test_auth_failure_is_named_and_not_retried(path: str) -> None:
    body = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
    with _ErrorServer(401, body) as srv:
        err = _fail(BACKENDS[path](srv.url))
    assert str(err).startswith("authentication failed")
    assert "Incorrect API key provided" in str(err)
    assert not err.retryable


def test_timeout_names_the_endpoint_and_the_seconds(server: Any) -> None:
    server.inject("slow", delay_s=5)
    err = _fail(OpenAIFastBackend(CHAT_MODEL, api_base=server.base_url, client_options={"timeout": 0.5}))
    assert f"timed out: no answer from {server.base_url} within 0.5 s" in str(err)
    assert "--param timeout=" in str(err)
    assert err.retryable


def test_default_timeout_is_two_minutes_not_ten() -> None:
    assert DEFAULT_TIMEOUT == 120
    assert LiteLLMBackend("openai/x", api_base="http://127.0.0.1:1/v1").client_options["timeout"] == 120
    fast = OpenAIFastBackend("openai/x", api_base="http://127.0.0.1:1/v1", client_options={"timeout": 7})
    assert fast._timeout == 7


def test_auth_error_through_the_cli_is_one_attempt(cli: Any, prompts_file: Path, tmp_path: Path) -> None:
    db = tmp_path / "a.duckdb"
    body = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
    with _ErrorServer(401, body) as srv:
        result = cli(
            "revise", prompts_file, "--db", db, "-m", CHAT_MODEL, "--api-base", srv.url, "--rounds", "1"
        )
    assert result.code == 1
    assert "authentication failed" in result.stderr
    assert "(after 1 attempt)" in result.stderr  # not retried 6 times
    assert query(db, "SELECT DISTINCT attempts FROM calls") == [(1,)]


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("notaprovider/x", [], "LiteLLM knows no provider 'notaprovider'"),
        ("local/./no-such-model-dir", [], "no such file or directory"),
        ("anthropic/claude-3-5-haiku-latest", [], "no API key for anthropic: set ANTHROPIC_API_KEY"),
        ("openai/gpt-4o-mini", [], "no API key: set OPENAI_API_KEY"),
        (CHAT_MODEL, ["--api-base", "localhost:8000"], "expected an http:// or https:// URL"),
    ],
)
def test_bad_model_key_or_endpoint_exits_2_before_writing(
    cli: Any, prompts_file: Path, tmp_path: Path, model: str, extra: list[str], message: str
) -> None:
    db = tmp_path / "x.duckdb"
    env: dict[str, str | None] = {"OPENAI_API_KEY": None, "ANTHROPIC_API_KEY": None}
    for args in (
        ["revise", prompts_file, "--db", db, "-m", model, *extra],
        ["sample", "--prompts", prompts_file, "--db", db, "-m", model, *extra],
    ):
        result = cli(*args, env=env)
        assert result.code == 2, result.stderr
        assert message in result.stderr
        assert len(result.error_lines()) == 1
        assert not db.exists()


def test_an_unknown_http_transport_exits_2_before_writing(
    cli: Any, prompts_file: Path, tmp_path: Path
) -> None:
    db = tmp_path / "x.duckdb"
    args = ["revise", prompts_file, "--db", db, "-m", CHAT_MODEL, "--api-base", "http://127.0.0.1:9/v1"]
    result = cli(*args, env={"CHARTER_HTTP_TRANSPORT": "curl"})
    assert result.code == 2, result.stderr
    assert "CHARTER_HTTP_TRANSPORT='curl': one of auto, aiohttp, openai, httpx" in result.stderr
    assert len(result.error_lines()) == 1
    assert not db.exists()


def test_preflight_accepts_what_can_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    check_model("openai/x", api_base="http://127.0.0.1:8000/v1")  # a local server needs no key
    check_model("openai/x", params={"api_key": "k"})
    check_model("hosted_vllm/m", api_base="https://example.org/v1")
    check_model(f"local/{tmp_path}")
    check_model("local/HuggingFaceTB/SmolLM2-135M-Instruct")  # a hub id: the loader decides
    with pytest.raises(PreflightError, match="hosted_vllm/ models need --api-base"):
        check_model("hosted_vllm/m")


def test_missing_key_is_named_and_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    # No request leaves: the openai client refuses to start without a key (LiteLLM reports that
    # as an InternalServerError, which used to be retried 7 times).
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    err = _fail(LiteLLMBackend("openai/gpt-4o-mini"))
    assert str(err).startswith("no API key")
    assert not err.retryable
