"""A small, fast, real OpenAI-compatible HTTP server for tests and benchmarks.

It serves ``POST /v1/chat/completions``, ``POST /v1/completions`` (legacy) and ``GET /v1/models`` (the
``/v1`` prefix is optional), answers with JSON that LiteLLM's ``openai/`` and ``text-completion-openai/``
providers and the ``openai`` client parse, including log-probabilities, and can inject faults (429, 500,
503, slow answers, broken JSON, dropped connections)::

    from charter_testing.fake_openai import FakeOpenAIServer, FakeReply, FakeToken

    def responder(req):
        return FakeReply(" (A)", tokens=[FakeToken(" (A)", {" (A)": math.log(0.7), " (B)": math.log(0.3)})])

    with FakeOpenAIServer(responder=responder) as srv:
        litellm.completion(model="openai/test", api_base=srv.base_url, api_key="x", messages=[...])

Run it in another process for benchmarks with
``python -m charter_testing.fake_openai --port 8000 --latency-ms 50 [--no-logprobs]`` or
:func:`start_subprocess`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

from aiohttp import web

__all__ = [
    "DEFAULT_LOGPROB",
    "FAULT_KINDS",
    "FakeOpenAIServer",
    "FakeReply",
    "FakeRequest",
    "FakeToken",
    "Responder",
    "default_responder",
    "main",
    "start_subprocess",
]

#: Log-probability given to a chosen token that has no entry of its own in its ``top_logprobs``.
DEFAULT_LOGPROB = -0.01
#: The fault kinds :meth:`FakeOpenAIServer.inject` and :meth:`FakeOpenAIServer.fail_every` accept.
FAULT_KINDS = frozenset(
    {"429", "500", "503", "slow", "broken_json", "disconnect", "no_message", "null_content", "huge_usage"}
)
_MAX_RECORDED = 10_000
_MAX_N = 128
_WORD_RE = re.compile(r"\s*\S+|\s+")


@dataclass
class FakeToken:
    """One output token: its text and the top log-probabilities at its position (token -> logprob)."""

    text: str
    top_logprobs: dict[str, float] | None = None


@dataclass
class FakeReply:
    """What a responder answers for one choice.

    ``tokens``, when given, fixes the tokenization (their texts must concatenate to ``text``) and the top
    log-probabilities at each position; otherwise ``text`` is split into whitespace-preserving words.
    """

    text: str
    tokens: list[FakeToken] | None = None

    def __post_init__(self) -> None:
        if self.tokens is not None and "".join(t.text for t in self.tokens) != self.text:
            raise ValueError("FakeReply.tokens must concatenate to FakeReply.text")


@dataclass
class FakeRequest:
    """One choice to produce, as passed to a responder."""

    endpoint: Literal["chat", "completion"]
    body: dict[str, Any]
    messages: list[dict[str, Any]] | None
    prompt: str | None
    choice_index: int
    model: str


#: A responder maps a request (for one choice) to a reply; a plain ``str`` means ``FakeReply(text=...)``.
Responder = Callable[[FakeRequest], "FakeReply | str"]


class _BadRequest(Exception):
    """The request body is not something the OpenAI API would accept (answered with status 400)."""


def _content_text(content: Any) -> str:
    """The text of a chat message's ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        )
    return "" if content is None else str(content)


def _count_words(text: str) -> int:
    """Token count used in ``usage``: whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def default_responder(req: FakeRequest) -> FakeReply | str:
    """Deterministic short text from the last user message (or prompt), choice index, seed and temperature."""
    if req.messages is not None:
        users = [m for m in req.messages if isinstance(m, dict) and m.get("role") == "user"]
        last = users[-1] if users else (req.messages[-1] if req.messages else {})
        source = _content_text(last.get("content") if isinstance(last, dict) else last)
    else:
        source = req.prompt or ""
    key = json.dumps(
        [source, req.choice_index, req.body.get("seed"), req.body.get("temperature")], default=str
    )
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
    if _asks_for_choice(source):
        # A multiple-choice feedback question: answer like a feedback model would, with a
        # deterministic preference and log-probabilities for both options.
        p_a = 0.05 + 0.9 * int(digest, 16) / 0xFFFFFFFF
        answer = " (A)" if p_a >= 0.5 else " (B)"
        top = {" (A)": math.log(p_a), " (B)": math.log(1 - p_a)}
        return FakeReply(text=answer, tokens=[FakeToken(answer, top_logprobs=top)])
    return f"Response {digest}: I can help with that safely."


def _asks_for_choice(text: str) -> bool:
    tail = text.rstrip()
    return tail.endswith("answer is:") or "Answer with (A) or (B)" in tail[-200:]


def _error_body(message: str, etype: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": etype, "param": None, "code": code}}).encode()


def _json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(), status=status, headers=headers, content_type="application/json"
    )


def _error_response(
    status: int, message: str, etype: str, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_error_body(message, etype, code),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def _opt_int(body: dict[str, Any], *names: str) -> int | None:
    """The first of ``names`` present in ``body`` as an int (bools rejected), else None."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise _BadRequest(f"'{name}' must be an integer")
        return value
    return None


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise _BadRequest("'stop' must be a string or a list of strings")


# One produced token: (text as emitted, its own logprob, the top logprobs at its position).
_Tok = tuple[str, float, dict[str, float]]


def _generate(
    reply: FakeReply,
    stops: list[str],
    max_tokens: int | None,
    split: Callable[[str], list[str]] | None = None,
    include_stop: bool = False,
) -> tuple[str, list[_Tok], str]:
    """Apply stop sequences and ``max_tokens`` to a reply: (text, tokens, finish_reason).

    A reply without its own ``tokens`` is split by ``split`` (a tokenizer), else into words. With
    ``include_stop`` the matched stop string stays at the end of the text, as transformers serve
    returns it (OpenAI, vLLM and llama.cpp cut before it).
    """
    if reply.tokens is not None:
        source = reply.tokens
    else:
        pieces = split(reply.text) if split is not None else _WORD_RE.findall(reply.text)
        source = [FakeToken(w) for w in pieces]
    text = reply.text
    cut, finish = len(text), "stop"
    first = len(text)  # where the earliest stop string starts
    for stop in stops:
        at = text.find(stop)
        if 0 <= at < first:
            first = at
            cut = at + len(stop) if include_stop else at
    if max_tokens is not None and 0 <= max_tokens < len(source):
        boundary = sum(len(t.text) for t in source[:max_tokens])
        if boundary < cut:
            cut, finish = boundary, "length"
    toks: list[_Tok] = []
    pos = 0
    for tok in source:
        if pos >= cut:
            break
        top = tok.top_logprobs if tok.top_logprobs is not None else {tok.text: DEFAULT_LOGPROB}
        own = top.get(tok.text, DEFAULT_LOGPROB)
        toks.append((tok.text[: cut - pos], own, top))
        pos += len(tok.text)
    return text[:cut], toks, finish


def _top_k(top: dict[str, float], k: int) -> list[tuple[str, float]]:
    if k <= 0:
        return []
    return sorted(top.items(), key=lambda kv: -kv[1])[:k]


def _chat_logprobs(toks: list[_Tok], k: int) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": text,
                "logprob": own,
                "bytes": list(text.encode("utf-8")),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in _top_k(top, k)
                ],
            }
            for text, own, top in toks
        ],
        "refusal": None,
    }


def _legacy_logprobs(toks: list[_Tok], k: int, offset: int) -> dict[str, Any]:
    offsets = []
    for text, _, _ in toks:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": [text for text, _, _ in toks],
        "token_logprobs": [own for _, own, _ in toks],
        "top_logprobs": [dict(_top_k(top, k)) for _, _, top in toks],
        "text_offset": offsets,
    }


class FakeOpenAIServer:
    """An OpenAI-compatible HTTP server on its own event loop in a daemon thread.

    ``responder`` produces each choice (default: :func:`default_responder`); ``latency_s`` is slept
    (asynchronously) before every answer; with ``logprobs=False`` no log-probabilities are ever returned;
    with ``include_stop=True`` a matched stop string is returned at the end of the text (transformers
    serve does this). ``split`` tokenizes replies that carry no tokens of their own (e.g.
    ``charter_testing.tokenization.BPEReplies.train().split``, a real BPE); by default they are split
    into whitespace-preserving words. Every completion request is counted and its JSON body recorded,
    faulted ones included.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        latency_s: float = 0.0,
        logprobs: bool = True,
        host: str = "127.0.0.1",
        include_stop: bool = False,
        port: int = 0,
        split: Callable[[str], list[str]] | None = None,
    ) -> None:
        self.responder: Responder = responder if responder is not None else default_responder
        self.split = split
        self.latency_s = latency_s
        self.logprobs = logprobs
        self.include_stop = include_stop
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.Lock()
        self._requests: deque[dict[str, Any]] = deque(maxlen=_MAX_RECORDED)
        self._count = 0
        self._faults: deque[tuple[str, dict[str, Any]]] = deque()
        self._every: tuple[int, str, dict[str, Any]] | None = None
        self._every_seen = 0
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.ServerRunner | None = None
        from charter_testing.fake_batch import FakeBatchAPI

        #: The batch API (``/v1/files``, ``/v1/batches``) and its test controls.
        self.batches = FakeBatchAPI(self)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> FakeOpenAIServer:
        """Start serving (returns once the port is bound); returns ``self``."""
        if self._thread is not None:
            raise RuntimeError("FakeOpenAIServer is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                if self._runner is not None:
                    loop.run_until_complete(self._runner.cleanup())
                loop.close()

        thread = threading.Thread(target=run, name="FakeOpenAIServer", daemon=True)
        thread.start()
        ready.wait()
        if errors:
            thread.join()
            raise RuntimeError(f"FakeOpenAIServer failed to start: {errors[0]!r}") from errors[0]
        self._loop, self._thread = loop, thread
        return self

    async def _serve(self) -> None:
        server = web.Server(self._handle, access_log=None, handler_cancellation=True)
        runner = web.ServerRunner(server, shutdown_timeout=0.25)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.host, self._requested_port)
        await site.start()
        self._port = int(runner.addresses[0][1])

    def stop(self) -> None:
        """Stop serving and join the server thread (a no-op when not running)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = self._runner = None
        self._port = None

    def __enter__(self) -> FakeOpenAIServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with ``port=0``)."""
        if self._port is None:
            raise RuntimeError("FakeOpenAIServer is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, for ``api_base`` / ``base_url``."""
        return f"http://{self.host}:{self.port}/v1"

    # ----------------------------------------------------------------- records
    @property
    def requests(self) -> list[dict[str, Any]]:
        """JSON bodies of the recorded completion requests (the last 10,000), oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """Completion requests received since start or :meth:`reset`, faulted ones included."""
        with self._lock:
            return self._count

    def reset(self) -> None:
        """Forget the recorded requests and zero the request count."""
        with self._lock:
            self._requests.clear()
            self._count = 0

    # ----------------------------------------------------------------- faults
    def inject(self, kind: str, count: int = 1, **opts: Any) -> None:
        """Apply fault ``kind`` to the next ``count`` completion requests (after those already queued).

        Kinds: ``"429"`` (``retry_after`` opt, default 0, sent as ``Retry-After``), ``"500"``, ``"503"``,
        ``"slow"`` (``delay_s`` opt: sleep, then answer normally), ``"broken_json"`` (status 200, truncated
        body), ``"disconnect"`` (close the connection without answering), and the malformed answers
        some proxies and servers send with status 200: ``"no_message"`` (a choice with neither
        ``message`` nor ``text``), ``"null_content"`` (``content``/``text`` null, no tool calls) and
        ``"huge_usage"`` (a normal answer reporting 2**40 prompt tokens).
        """
        opts = self._check_fault(kind, opts)
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults.extend((kind, opts) for _ in range(count))

    def fail_every(self, n: int, kind: str, **opts: Any) -> None:
        """Apply fault ``kind`` to every ``n``-th completion request from now on (``n=0`` turns it off)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        opts = self._check_fault(kind, opts)
        with self._lock:
            self._every = (n, kind, opts) if n else None
            self._every_seen = 0

    def clear_faults(self) -> None:
        """Drop all queued and periodic faults."""
        with self._lock:
            self._faults.clear()
            self._every = None
            self._every_seen = 0

    @staticmethod
    def _check_fault(kind: str, opts: dict[str, Any]) -> dict[str, Any]:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if kind == "slow" and "delay_s" not in opts:
            raise ValueError("fault 'slow' needs delay_s=<seconds>")
        return dict(opts)

    def _admit(self, body: Any) -> tuple[str, dict[str, Any]] | None:
        """Count and record one request; return the fault to apply to it, if any."""
        with self._lock:
            self._count += 1
            if isinstance(body, dict):
                self._requests.append(body)
            if self._faults:
                return self._faults.popleft()
            if self._every is not None:
                self._every_seen += 1
                n, kind, opts = self._every
                if self._every_seen % n == 0:
                    return kind, opts
        return None

    # ----------------------------------------------------------------- HTTP
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path.rstrip("/")
        if path.startswith("/v1"):
            path = path[3:]
        if path == "/models" and request.method == "GET":
            return _json_response(
                {
                    "object": "list",
                    "data": [{"id": "test", "object": "model", "created": 0, "owned_by": "charter"}],
                }
            )
        if path.startswith(("/files", "/batches")):
            return await self.batches.handle(request, path)
        if path not in ("/chat/completions", "/completions"):
            return _error_response(
                404, f"no route for {request.method} {request.path}", "invalid_request_error"
            )
        if request.method != "POST":
            return _error_response(405, "use POST", "invalid_request_error")
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        fault = self._admit(body)
        huge_usage = fault is not None and fault[0] == "huge_usage"
        if fault is not None and not huge_usage:
            kind, opts = fault
            if kind == "slow":
                await asyncio.sleep(float(opts["delay_s"]))
            else:
                return self._fault_response(request, kind, opts)
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if not isinstance(body, dict):
            return _error_response(400, "request body must be a JSON object", "invalid_request_error")
        try:
            payload = self._chat(body) if path == "/chat/completions" else self._completion(body)
        except _BadRequest as exc:
            return _error_response(400, str(exc), "invalid_request_error")
        except Exception as exc:
            return _error_response(500, f"FakeOpenAIServer responder failed: {exc!r}", "server_error")
        if huge_usage:
            # Some servers report nonsense token counts (seen: 2**40 prompt tokens).
            payload["usage"]["prompt_tokens"] = 2**40
            payload["usage"]["total_tokens"] = 2**40 + payload["usage"]["completion_tokens"]
        return _json_response(payload)

    def _fault_response(
        self, request: web.BaseRequest, kind: str, opts: dict[str, Any]
    ) -> web.StreamResponse:
        if kind == "429":
            return _error_response(
                429,
                "Rate limit reached (injected by FakeOpenAIServer)",
                "rate_limit_error",
                "rate_limit_exceeded",
                headers={"Retry-After": str(opts.get("retry_after", 0))},
            )
        if kind == "500":
            return _error_response(500, "Internal error (injected by FakeOpenAIServer)", "server_error")
        if kind == "503":
            return _error_response(503, "Service unavailable (injected by FakeOpenAIServer)", "server_error")
        if kind == "broken_json":
            return web.Response(
                body=b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"index": 0, "mes',
                content_type="application/json",
            )
        if kind in ("no_message", "null_content"):
            chat = request.path.rstrip("/").endswith("/chat/completions")
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            if kind == "null_content":
                choice.update({"message": {"role": "assistant", "content": None}} if chat else {"text": None})
            payload = self._envelope("chat.completion" if chat else "text_completion", {})
            payload.update(
                choices=[choice], usage={"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1}
            )
            return _json_response(payload)
        # "disconnect": drop the connection without writing anything.
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError

    def _replies(
        self, endpoint: Literal["chat", "completion"], body: dict[str, Any], n: int, **kw: Any
    ) -> Iterator[tuple[int, FakeReply]]:
        model = str(body.get("model", ""))
        for i in range(n):
            reply = self.responder(
                FakeRequest(endpoint=endpoint, body=body, choice_index=i, model=model, **kw)
            )
            if isinstance(reply, str):
                reply = FakeReply(text=reply)
            elif not isinstance(reply, FakeReply):
                raise TypeError(f"responder returned {type(reply).__name__}, expected FakeReply or str")
            yield i, reply

    @staticmethod
    def _n(body: dict[str, Any]) -> int:
        n = _opt_int(body, "n")
        if n is None:
            return 1
        if not 1 <= n <= _MAX_N:
            raise _BadRequest(f"'n' must be between 1 and {_MAX_N}")
        return n

    def _envelope(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        return {
            "id": f"{prefix}-fake{next(self._ids)}",
            "object": kind,
            "created": int(time.time()),
            "model": str(body.get("model", "")),
            "system_fingerprint": "fp_fake",
        }

    def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("'messages' must be a non-empty list")
        if body.get("stream"):
            raise _BadRequest("FakeOpenAIServer does not support stream=true")
        n = self._n(body)
        stops = _stops(body)
        max_tokens = _opt_int(body, "max_completion_tokens", "max_tokens")
        want_logprobs = self.logprobs and bool(body.get("logprobs"))
        k = (_opt_int(body, "top_logprobs") or 0) if want_logprobs else 0
        choices = []
        completion_tokens = 0
        for i, reply in self._replies("chat", body, n, messages=messages, prompt=None):
            text, toks, finish = _generate(reply, stops, max_tokens, self.split, self.include_stop)
            completion_tokens += _count_words(text)
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": _chat_logprobs(toks, k) if want_logprobs else None,
                    "finish_reason": finish,
                }
            )
        prompt_tokens = _count_words(
            " ".join(_content_text(m.get("content")) if isinstance(m, dict) else str(m) for m in messages)
        )
        out = self._envelope("chat.completion", body)
        out["choices"] = choices
        out["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return out

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        raw_prompt = body.get("prompt", "")
        prompts: list[str]
        if isinstance(raw_prompt, str):
            prompts = [raw_prompt]
        elif isinstance(raw_prompt, list) and raw_prompt and all(isinstance(p, int) for p in raw_prompt):
            prompts = [" ".join(str(p) for p in raw_prompt)]  # one prompt given as token ids
        elif isinstance(raw_prompt, list) and raw_prompt:
            prompts = [p if isinstance(p, str) else " ".join(str(t) for t in p) for p in raw_prompt]
        else:
            raise _BadRequest("'prompt' must be a string or a non-empty list")
        if body.get("stream"):
            raise _BadRequest("FakeOpenAIServer does not support stream=true")
        n = self._n(body)
        stops = _stops(body)
        max_tokens = _opt_int(body, "max_tokens")
        if max_tokens is None:
            max_tokens = 16  # the legacy endpoint's documented default
        lp = body.get("logprobs")
        want_logprobs = self.logprobs and isinstance(lp, int) and not isinstance(lp, bool)
        k = lp if want_logprobs and isinstance(lp, int) else 0
        choices = []
        completion_tokens = 0
        for p, prompt in enumerate(prompts):
            for i, reply in self._replies("completion", body, n, messages=None, prompt=prompt):
                text, toks, finish = _generate(reply, stops, max_tokens, self.split, self.include_stop)
                completion_tokens += _count_words(text)
                choices.append(
                    {
                        "text": text,
                        "index": p * n + i,
                        "logprobs": _legacy_logprobs(toks, k, len(prompt)) if want_logprobs else None,
                        "finish_reason": finish,
                    }
                )
        prompt_tokens = sum(_count_words(p) for p in prompts)
        out = self._envelope("text_completion", body)
        out["choices"] = choices
        out["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return out


# --------------------------------------------------------------------- CLI and subprocess helper
def main(argv: list[str] | None = None) -> int:
    """CLI: print the base URL on one line, then serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m charter_testing.fake_openai", description="Serve a fake OpenAI-compatible API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (the default)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    parser.add_argument("--no-logprobs", action="store_true", help="never return log-probabilities")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = FakeOpenAIServer(
        latency_s=args.latency_ms / 1000.0, logprobs=not args.no_logprobs, host=args.host, port=args.port
    )
    server.start()
    try:
        print(server.base_url, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


def start_subprocess(
    latency_ms: float = 0.0,
    logprobs: bool = True,
    *,
    host: str = "127.0.0.1",
    timeout_s: float = 30.0,
) -> tuple[subprocess.Popen[str], str]:
    """Launch the CLI on a free port in a new process; wait until it serves and return ``(process, base_url)``.

    The caller owns the process: ``proc.terminate(); proc.wait()`` when done.
    """
    cmd = [
        sys.executable,
        "-m",
        "charter_testing.fake_openai",
        "--host",
        host,
        "--port",
        "0",
        "--latency-ms",
        str(latency_ms),
    ]
    if not logprobs:
        cmd.append("--no-logprobs")
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])  # the directory holding ``charter_testing``
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()

    def read_first_line() -> None:
        assert proc.stdout is not None
        lines.put(proc.stdout.readline())

    threading.Thread(target=read_first_line, daemon=True).start()
    try:
        line = lines.get(timeout=timeout_s).strip()
    except queue.Empty:
        line = ""
    if not line.startswith("http"):
        proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
        raise RuntimeError(f"fake OpenAI server did not start (exit code {proc.poll()}, first line {line!r})")
    return proc, line


if __name__ == "__main__":
    sys.exit(main())
