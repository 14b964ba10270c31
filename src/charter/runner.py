"""The runner: every backend call goes through here (cache, retries, limits, storage, progress).

Steps never retry, cache or store on their own ("one way to do each thing"): they call
`Runner.call`, and the runner looks the request up in the DuckDB request cache, waits for a
concurrency slot and the requests-per-minute limiter, retries retryable failures with exponential
backoff and jitter (honouring Retry-After), and buffers a `calls` row.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base

from charter.backends.base import Backend, BackendError, Completion, CompletionRequest
from charter.runner_options import RunnerOptions
from charter.store.store import CachedCall, Store, completion_to_json

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class CallResult:
    """A finished call: the completion and the `calls` row it is stored as."""

    completion: Completion
    call_id: str
    cached: bool


class CallFailed(RuntimeError):
    """A call that still failed after every retry (its row, with the error, is stored)."""


class RateLimiter:
    """Spaces request starts evenly to stay under a requests-per-minute budget."""

    def __init__(self, requests_per_minute: float) -> None:
        self.interval = 60.0 / requests_per_minute
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for the next free slot."""
        async with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self.interval
        if wait > 0:
            await asyncio.sleep(wait)


class _BackoffWait(wait_base):
    """Exponential backoff with full jitter, or the server's Retry-After when it sends one."""

    def __init__(self, options: RunnerOptions, offset: int = 0) -> None:
        self.options = options
        self.offset = offset  # attempts made before tenacity took over

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return backoff_seconds(self.options, exc, retry_state.attempt_number + self.offset)


def backoff_seconds(options: RunnerOptions, exc: BaseException | None, attempt_number: int) -> float:
    """How long to wait after failed attempt `attempt_number` (1-based): Retry-After or jittered 2^n."""
    if isinstance(exc, BackendError) and exc.retry_after is not None:
        return min(max(exc.retry_after, 0.0), options.retry_after_max)
    ceiling = min(options.backoff_max, options.backoff_initial * 2 ** (attempt_number - 1))
    return random.uniform(0, ceiling)


def public_url(url: str) -> str:
    """`url` without credentials (user:password@, the query and fragment), as a cache-key part."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.netloc:
        return url.strip().rstrip("/")
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme.lower(), host.lower(), parts.path.rstrip("/"), "", ""))


def backend_endpoint(backend: Any) -> str | None:
    """Where `backend` sends requests (its api_base, or a Router's deployments), secrets removed.

    None for a provider's default endpoint: then the model string alone names the model.
    """
    while getattr(backend, "inner", None) is not None:  # wrappers (the labeler's ScoringBackend)
        backend = backend.inner
    deployments = getattr(backend, "deployments", None)
    if deployments:
        parts = sorted(
            f"{p.get('model')}@{public_url(str(p['api_base'])) if p.get('api_base') else ''}"
            for p in (d.get("litellm_params", {}) for d in deployments)
        )
        return "router:" + ",".join(parts)
    base = getattr(backend, "api_base", None)
    if base is None:
        base = (getattr(backend, "client_options", None) or {}).get("api_base")
    return public_url(str(base)) if base else None


def cache_key(request: CompletionRequest, endpoint: str | None) -> str:
    """The request cache's key: the request, and the endpoint that answers it (a retrained model
    served under the same name at a new address must not be answered from the old one's cache)."""
    key = request.cache_key()
    if endpoint is None:
        return key
    return hashlib.sha256(f"{key}\n{endpoint}".encode()).hexdigest()[:32]


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, BackendError) and exc.retryable


class Runner:
    """Makes the calls of one run against one backend, storing each in `calls`."""

    def __init__(
        self,
        backend: Backend,
        store: Store | None,
        run_id: str,
        options: RunnerOptions | None = None,
        on_call: Callable[[CallResult], None] | None = None,
    ) -> None:
        self.backend = backend
        self.store = store
        self.run_id = run_id
        self.options = options or RunnerOptions()
        self._slots = asyncio.Semaphore(max(1, self.options.concurrency))
        self._limiter = (
            RateLimiter(self.options.requests_per_minute) if self.options.requests_per_minute else None
        )
        self.on_call = on_call
        self.endpoint = backend_endpoint(backend)
        self.calls_made = 0
        self.cache_hits = 0

    async def call(self, step: str, request: CompletionRequest) -> CallResult:
        """Answer `request` from the cache or the backend; raises `CallFailed` after retries."""
        key = cache_key(request, self.endpoint)
        if self.store is not None:
            hit = self.store.cache_get(key)
            if hit is not None:
                self.cache_hits += 1
                call_id = hit.call_id
                if hit.run_id != self.run_id:
                    # Another run paid for this answer: record that this run used it, once.
                    call_id = self._store_cached(step, request, key, hit)
                result = CallResult(hit.completion, call_id, cached=True)
                if self.on_call:
                    self.on_call(result)
                return result
        started = time.perf_counter()
        attempts = 1
        try:
            # The first attempt runs bare: building tenacity's retry machinery for every call costs
            # more CPU than the call itself on a fast server, and nearly every call succeeds first time.
            completion = await self._attempt(request)
        except BackendError as first:
            completion, attempts = await self._retry(step, request, key, first, started)
        self.calls_made += 1
        call_id = self._store_call(step, request, key, completion, attempts, error=None, started=started)
        result = CallResult(completion, call_id, cached=False)
        if self.on_call:
            self.on_call(result)
        return result

    async def _attempt(self, request: CompletionRequest) -> Completion:
        async with self._slots:
            if self._limiter is not None:
                await self._limiter.acquire()
            return await self.backend.complete(request)

    async def _retry(
        self, step: str, request: CompletionRequest, key: str, first: BackendError, started: float
    ) -> tuple[Completion, int]:
        """Retries after a failed first attempt, with tenacity: the one retry policy of charter."""
        attempts = 1
        try:
            if not _is_retryable(first) or self.options.max_retries == 0:
                raise first
            await asyncio.sleep(backoff_seconds(self.options, first, 1))
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_is_retryable),
                stop=stop_after_attempt(self.options.max_retries),
                wait=_BackoffWait(self.options, offset=1),
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    completion = await self._attempt(request)
            return completion, attempts
        except BackendError as exc:
            self._store_call(step, request, key, None, attempts, error=str(exc), started=started)
            raise CallFailed(
                f"{step}: {exc} (after {attempts} attempt{'s' if attempts != 1 else ''})"
            ) from exc

    def _store_call(
        self,
        step: str,
        request: CompletionRequest,
        key: str,
        completion: Completion | None,
        attempts: int,
        *,
        error: str | None,
        started: float,
    ) -> str:
        call_id = uuid.uuid4().hex
        if self.store is None:
            return call_id
        row = self._call_row(call_id, step, request, key, attempts=attempts, error=error, cached=False)
        if completion is not None:
            row.update(completion_to_json(completion))
        else:
            row["latency_ms"] = (time.perf_counter() - started) * 1000
        self.store.add_call(row, completion)
        return call_id

    def _store_cached(self, step: str, request: CompletionRequest, key: str, hit: CachedCall) -> str:
        assert self.store is not None
        call_id = uuid.uuid5(uuid.NAMESPACE_OID, f"{self.run_id}:{key}").hex
        row = self._call_row(call_id, step, request, key, attempts=0, error=None, cached=True)
        row.update(completion_to_json(hit.completion), latency_ms=0.0)
        self.store.add_call(row)
        return call_id

    def _call_row(
        self,
        call_id: str,
        step: str,
        request: CompletionRequest,
        key: str,
        *,
        attempts: int,
        error: str | None,
        cached: bool,
    ) -> dict[str, Any]:
        """The `calls` columns every row has, whatever the completion."""
        return {
            "call_id": call_id,
            "run_id": self.run_id,
            "step": step,
            "model": request.model,
            "cache_key": key,
            "request": request.log_json(),
            "attempts": attempts,
            "error": error,
            "cached": cached,
        }


async def bounded_map(
    items: Iterable[T],
    worker: Callable[[T], Awaitable[R]],
    max_in_flight: int,
) -> AsyncGenerator[tuple[T, R | BaseException], None]:
    """Run `worker` over `items` with at most `max_in_flight` at once, pulling items lazily.

    Yields (item, result or exception) as each finishes. Items are read from the iterable only
    when a slot frees up, so memory stays flat however many prompts there are.
    """
    iterator = iter(items)
    running: dict[asyncio.Task[R], T] = {}
    # Finished tasks arrive on a queue (one done-callback each) rather than through asyncio.wait,
    # which re-registers a callback on every running task per completion: O(in flight) each time.
    finished: asyncio.Queue[asyncio.Task[R]] = asyncio.Queue()
    exhausted = False

    def refill() -> None:
        nonlocal exhausted
        while not exhausted and len(running) < max_in_flight:
            try:
                item = next(iterator)
            except StopIteration:
                exhausted = True
                return
            task = asyncio.ensure_future(worker(item))
            task.add_done_callback(finished.put_nowait)
            running[task] = item

    refill()
    try:
        while running:
            task = await finished.get()
            item = running.pop(task)
            exc = task.exception()
            yield item, (exc if exc is not None else task.result())
            refill()
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
