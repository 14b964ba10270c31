"""`charter serve-reward`: rewards over HTTP, in the shape OpenRLHF's remote reward model uses.

OpenRLHF (`--remote_rm_url http://host:port/get_reward`) POSTs JSON
`{"query": [prompt + response, ...], "prompts": [prompt, ...], "labels": [...]}` and reads
`"rewards"` (newer versions also `"scores"`) from the answer: one number per query. This server
answers `{"rewards": [...], "scores": [...]}` (the same numbers) on any path.

- With a reward model (`--reward-model DIR`) each query is scored as the text it is (the prompt
  already rendered with the policy's chat template, as OpenRLHF sends it); `prompts` are optional.
- With the judge (`--judge-model`) each response is `query` minus its `prompt` prefix, and the
  responses to the same prompt in one request are compared with each other (see `charter_trl.judge`),
  so a request must carry at least two responses per prompt (OpenRLHF's `n_samples_per_prompt`).

A malformed request gets status 400 and `{"error": "<one line>"}`; scoring runs one request at a
time in a worker thread (the judge's calls have their own event loop, and the database one writer).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

__all__ = ["BadRequest", "RewardServer", "load_scorer", "score_request", "serve"]

# A request bigger than this is refused (OpenRLHF sends a rollout batch: thousands of texts at most).
MAX_BODY_BYTES = 64 * 1024 * 1024


class BadRequest(ValueError):
    """A request this server cannot score (answered with status 400 and this message)."""


def load_scorer(
    *, reward_model: str | os.PathLike[str] | None, judge: Any, db: str | os.PathLike[str] | None
) -> Any:
    """The reward model at `reward_model`, or the judge (`JudgeSettings`) storing its calls in `db`.

    Raises a one-line ValueError for a bad combination, a missing model or bad judge settings.
    """
    if (reward_model is None) == (judge is None):
        raise ValueError("charter serve-reward needs --reward-model DIR or --judge-model MODEL, one of them")
    if reward_model is not None:
        from .common import ModelLoadError
        from .scorers import RewardModelScorer
        from .training import resolve_model

        try:
            return RewardModelScorer(resolve_model(reward_model))
        except ModelLoadError as exc:
            raise ValueError(f"--reward-model {reward_model}: {exc}") from None
    from .judge import ConstitutionalJudge, as_settings

    settings = as_settings(judge)
    if db is None:
        raise ValueError("--judge-model stores every call in a database: give --db FILE")
    settings.check()
    if not Path(db).exists():
        from charter.store.store import Store

        Store(Path(db)).close()  # created up front, so the first request does not pay for it
    return ConstitutionalJudge(db, settings)


def _strings(body: dict[str, Any], key: str, n: int | None) -> list[str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f'"{key}" must be a list of strings')
    if n is not None and len(value) != n:
        raise BadRequest(f'"{key}" has {len(value)} items but "query" has {n}')
    return value


def score_request(scorer: Any, body: Any) -> dict[str, Any]:
    """Score one request body (parsed JSON); raises `BadRequest` for one that cannot be scored."""
    if not isinstance(body, dict):
        raise BadRequest('the request body must be a JSON object with "query" (a list of strings)')
    queries = _strings(body, "query", None)
    if queries is None:
        raise BadRequest('missing "query": a list of prompt + response strings')
    prompts = _strings(body, "prompts", len(queries))
    if not queries:
        return {"rewards": [], "scores": []}
    if getattr(scorer, "relative", False):
        if prompts is None:
            raise BadRequest('the judge needs "prompts" (each query is its prompt followed by the response)')
        responses = []
        for i, (query, prompt) in enumerate(zip(queries, prompts, strict=True)):
            if not query.startswith(prompt):
                raise BadRequest(f"query {i} does not start with prompts[{i}]")
            responses.append(query[len(prompt) :])
        try:
            rewards = scorer.rewards([[{"role": "user", "content": p}] for p in prompts], responses)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    else:
        rewards = scorer.score_texts(queries)
    return {"rewards": rewards, "scores": rewards}


class RewardServer:
    """The HTTP server around a scorer, on its own event loop in a daemon thread (`with` starts it)."""

    def __init__(self, scorer: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.scorer = scorer
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charter-reward")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where OpenRLHF's `--remote_rm_url` should point."""
        return f"http://{self.host}:{self.port}/get_reward"

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return _error(405, 'POST a JSON body with "query" (and "prompts")')
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"the request body is not JSON: {exc}")
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(self._pool, score_request, self.scorer, body)
        except BadRequest as exc:
            return _error(400, str(exc))
        except Exception as exc:  # a failed judge call, a broken model: say so, keep serving
            return _error(500, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
        return web.json_response(answer)

    def start(self) -> RewardServer:
        """Bind and start serving (returns once the port is bound)."""
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def start() -> None:
            app = web.Application(client_max_size=MAX_BODY_BYTES)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            # A short grace period: a stopped server should not hold the port (or Ctrl-C) for a minute.
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.requested_port)
            await site.start()
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1]) if sockets else self.requested_port

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(start())
            except BaseException as exc:  # e.g. the port is taken: reported by start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="charter-serve-reward", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise ValueError(f"cannot serve on {self.host}:{self.requested_port}: {failure[0]}")
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        loop, runner = self._loop, self._runner
        if loop is not None and runner is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=True)

    def __enter__(self) -> RewardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def serve(
    *,
    reward_model: str | os.PathLike[str] | None,
    judge: Any,
    db: str | os.PathLike[str] | None,
    host: str = "127.0.0.1",
    port: int = 5000,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve until Ctrl-C or SIGTERM (what `charter serve-reward` runs)."""
    import signal

    scorer = load_scorer(reward_model=reward_model, judge=judge, db=db)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with RewardServer(scorer, host=host, port=port) as server:
            what = "the reward model" if reward_model is not None else "the constitutional judge"
            echo(
                f"charter: serving {what} at {server.url} (OpenRLHF: --remote_rm_url {server.url}); Ctrl-C stops"
            )
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)
