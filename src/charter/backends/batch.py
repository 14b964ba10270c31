"""`--batch`: requests go through the provider's batch API (files + batches) at about half the price.

`BatchBackend` wraps the run's backend. Steps call the runner exactly as online (cache, storage and
retries are the runner's), but each request the runner sends here waits in a pool; once every item
in flight is waiting (no new request for a few event-loop turns), the pool becomes one batch: a
JSONL file uploaded with `litellm.acreate_file`, a batch made with `litellm.acreate_batch`, polled
with `litellm.aretrieve_batch`, its output and error files read with `litellm.afile_content`. So a
chain of several calls per item (respond -> critique -> revise x N) makes one batch per round.

Each submission and the requests it carries (by `custom_id`, which is the request cache key) are
written to the database before anything is uploaded (tables `batch_jobs`, `batch_requests`). A run
killed while a batch is out (kill -9, a lost machine) and started again finds its requests there and
waits on the same batch instead of submitting them again; a submission cut off between creating
the batch and recording its id is found by the `charter_submission` metadata it carries. A request
whose line failed, or that an expired or cancelled batch never ran, fails like an online call that
failed: the runner retries it, and the retry goes into the next batch, so only what is missing is
submitted again. Results are stored as ordinary `calls` rows under the same cache keys as online
calls (a batch run and an online run answer each other from the cache).

Providers: the OpenAI-compatible ones of the fast path (`openai/`, `text-completion-openai/`,
`hosted_vllm/`), through LiteLLM with `custom_llm_provider="openai"` and the run's api_base.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
import uuid
from collections.abc import Awaitable, Iterator
from typing import Any

from charter.backends.base import Backend, BackendError, Completion, CompletionRequest
from charter.backends.litellm_backend import RETRYABLE_STATUS, classify_error, import_litellm
from charter.backends.params import split_params
from charter.runner import RunnerOptions, backend_endpoint, cache_key
from charter.store.store import Store

__all__ = [
    "MAX_LINES",
    "POLL_ENV",
    "BatchBackend",
    "BatchUnsupported",
    "batch_line",
    "batch_options",
    "batch_status",
    "check_batch",
]

#: Seconds between looks at a batch in progress (default 30); tests set it short.
POLL_ENV = "CHARTER_BATCH_POLL_SECONDS"
DEFAULT_POLL_SECONDS = 30.0
#: OpenAI's limits for one batch: 50,000 requests and a 200 MB input file (kept under it).
MAX_LINES = 50_000
MAX_BYTES = 190 * 2**20
#: Event-loop turns without a new request before the pool is submitted. Steps do nothing but CPU
#: work between one answer and their next request, so a few turns let every item reach the pool.
SETTLE_TURNS = 20
#: Batch states after which nothing more will run.
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: A request the labeler scores itself (exact option scores), never a batch line.
_SCORE_PARAM = "score_options"
_OPENAI_BASE = "https://api.openai.com/v1"


class BatchUnsupported(ValueError):
    """`--batch` with a model or endpoint that has no batch API charter can use (exit 2)."""


def check_batch(
    model: str,
    api_base: str | list[str] | None,
    params: dict[str, Any] | None,
    options: RunnerOptions | None = None,
) -> None:
    """With `options.batch`, raise `BatchUnsupported` unless `model` can go through an
    OpenAI-compatible batch API. Called before anything is written: bad input exits 2."""
    if options is None or not options.batch:
        return
    # Imported here: session imports this module, and `charter --help` should not pay for these.
    from charter.backends.openai_fast import fast_prefix

    if fast_prefix(model) is None:
        raise BatchUnsupported(
            f"--batch: {model!r} has no batch API charter can use; give an OpenAI-compatible model "
            "string (openai/NAME, text-completion-openai/NAME or hosted_vllm/NAME)"
        )
    _, client = split_params(params or {})
    if (isinstance(api_base, list | tuple) and len([b for b in api_base if b]) > 1) or client.get("router"):
        raise BatchUnsupported(
            "--batch sends every request to one endpoint: give one --api-base, no --router"
        )
    poll_seconds()  # a bad CHARTER_BATCH_POLL_SECONDS is bad input too


def batch_options(options: RunnerOptions) -> RunnerOptions:
    """`options` for a batch run: every item in flight at once (a batch holds up to MAX_LINES)."""
    return dataclasses.replace(options, concurrency=max(options.concurrency, MAX_LINES))


def poll_seconds() -> float:
    """Seconds between looks at a batch (CHARTER_BATCH_POLL_SECONDS, default 30)."""
    value = os.environ.get(POLL_ENV)
    try:
        return max(float(value), 0.0) if value else DEFAULT_POLL_SECONDS
    except ValueError:
        raise BatchUnsupported(f"{POLL_ENV}={value!r}: expected a number of seconds") from None


@dataclasses.dataclass
class _Waiting:
    request: CompletionRequest
    futures: list[asyncio.Future[Completion]]


# A line's outcome: (HTTP status or None when it never ran, the response body or error, message).
_Outcome = tuple[int | None, dict[str, Any] | None, str]


class BatchBackend:
    """Answers requests through the provider's batch API; one submission per round of requests."""

    def __init__(
        self,
        inner: Backend,
        store: Store,
        run_id: str,
        *,
        model: str,
        api_base: str | list[str] | None = None,
        params: dict[str, Any] | None = None,
        options: RunnerOptions | None = None,
    ) -> None:
        from charter.backends.openai_fast import OpenAIFastBackend, resolve_api_base

        check_batch(model, api_base, params, RunnerOptions(batch=True))
        self.inner = inner  # requests the labeler scores itself go there; also the cache endpoint
        self.name = inner.name
        self.can_score = bool(getattr(inner, "can_score", False))
        self.store = store
        self.run_id = run_id
        self.options = options or RunnerOptions()
        self.endpoint = backend_endpoint(inner)  # the online run's cache keys
        _, client = split_params(params or {})
        base = api_base[0] if isinstance(api_base, list | tuple) else api_base
        self.api_base = resolve_api_base(model, base, client) or _OPENAI_BASE
        # The fast backend builds request bodies and parses answers exactly as online calls do.
        self._wire = OpenAIFastBackend(model, api_base=self.api_base, client_options=client)
        self._auth: dict[str, Any] = {
            "custom_llm_provider": "openai",
            "api_base": self.api_base,
            "api_key": self._wire._api_key,
        }
        if self._wire._headers:
            self._auth["extra_headers"] = dict(self._wire._headers)
        self.poll_seconds = poll_seconds()
        self._waiting: dict[str, _Waiting] = {}
        self._arrivals = 0
        self._wake: asyncio.Event | None = None
        self._collector: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._known: dict[str, str] | None = None  # cache key -> submission that carries it
        self._results: dict[str, asyncio.Task[dict[str, _Outcome]]] = {}
        #: Requests this process submitted in batches (a resumed run counts only its own).
        self.submitted = 0

    # -- the pool ----------------------------------------------------------------------------
    async def complete(self, request: CompletionRequest) -> Completion:
        """Wait for this request's line of a batch; raise `BackendError` when the line failed."""
        if request.params.get(_SCORE_PARAM) is not None:
            return await self.inner.complete(request)
        key = cache_key(request, self.endpoint)
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.get(key)
        if waiting is None:
            self._waiting[key] = _Waiting(request, [future])
        else:  # the same request from two items at once: one line answers both
            waiting.futures.append(future)
        self._arrivals += 1
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._collector is None or self._collector.done():
            self._collector = asyncio.ensure_future(self._collect())
        started = time.perf_counter()
        completion = await future
        # The request's own time is its wait for the batch (one line may answer several requests).
        return completion.model_copy(update={"latency_ms": (time.perf_counter() - started) * 1000})

    async def _collect(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            seen, turns = -1, 0
            while turns < SETTLE_TURNS:
                await asyncio.sleep(0)
                if self._arrivals != seen:
                    seen, turns = self._arrivals, 0
                else:
                    turns += 1
            taken, self._waiting = self._waiting, {}
            self._wake.clear()
            if taken:
                task = asyncio.ensure_future(self._settle(taken))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _settle(self, taken: dict[str, _Waiting]) -> None:
        """Answer every waiting request of `taken` (from a batch, or with the error that stopped it)."""
        try:
            known = await self._known_requests()
            by_submission: dict[str, dict[str, _Waiting]] = {}
            fresh: dict[str, _Waiting] = {}
            for key, waiting in taken.items():
                submission = known.get(key)  # dropped once its line's outcome is read
                if submission is not None:
                    by_submission.setdefault(submission, {})[key] = waiting
                else:
                    fresh[key] = waiting
        except Exception as exc:
            _fail_all(taken, exc, self.api_base)
            return
        jobs = [self._guarded(self._answer(s, group), group) for s, group in by_submission.items()]
        jobs.extend(self._submit_and_answer(chunk) for chunk in self._chunks(fresh))
        await asyncio.gather(*jobs)

    async def _guarded(self, job: Awaitable[None], part: dict[str, _Waiting]) -> None:
        """Run `job`; when it fails, so does each request of `part` (and only those), like an
        online call that failed: the runner retries them, into a new batch."""
        try:
            await job
        except Exception as exc:
            _fail_all(part, exc, self.api_base)

    def _chunks(self, fresh: dict[str, _Waiting]) -> Iterator[dict[str, _Waiting]]:
        chunk: dict[str, _Waiting] = {}
        size = 0
        for key, waiting in fresh.items():
            line_size = len(self._line(key, waiting.request)) + 1
            if chunk and (len(chunk) >= MAX_LINES or size + line_size > MAX_BYTES):
                yield chunk
                chunk, size = {}, 0
            chunk[key] = waiting
            size += line_size
        if chunk:
            yield chunk

    # -- submitting --------------------------------------------------------------------------
    def _url(self, request: CompletionRequest) -> str:
        return "/v1/chat/completions" if request.mode == "chat" else "/v1/completions"

    def _line(self, key: str, request: CompletionRequest) -> str:
        body: dict[str, Any] = {"model": self._wire.remote_model}
        if request.mode == "chat":
            body["messages"] = request.messages
        else:
            body["prompt"] = request.prompt
        body.update(request.params)
        if request.n != 1:
            body["n"] = request.n
        line = {"custom_id": key, "method": "POST", "url": self._url(request), "body": body}
        return json.dumps(line, ensure_ascii=False)

    async def _submit_and_answer(self, chunk: dict[str, _Waiting]) -> None:
        # A batch serves one endpoint: chat and completion requests go in separate batches, at once.
        parts: dict[str, dict[str, _Waiting]] = {}
        for key, waiting in chunk.items():
            parts.setdefault(self._url(waiting.request), {})[key] = waiting

        async def one(url: str, part: dict[str, _Waiting]) -> None:
            await self._answer(await self._submit(url, part), part)

        await asyncio.gather(*(self._guarded(one(url, part), part) for url, part in sorted(parts.items())))

    async def _submit(self, url: str, part: dict[str, _Waiting]) -> str:
        """Record, upload and create one batch; returns its submission id."""
        litellm = import_litellm()
        submission = uuid.uuid4().hex
        data = "".join(self._line(k, w.request) + "\n" for k, w in part.items()).encode()
        # Written (and flushed) before the upload: a run killed from here on finds these requests.
        self.store.add_rows(
            "batch_jobs",
            [
                {
                    "submission_id": submission,
                    "run_id": self.run_id,
                    "endpoint": url,
                    "api_base": self.endpoint,
                    "status": "submitting",
                    "requests": len(part),
                }
            ],
        )
        self.store.add_rows(
            "batch_requests",
            [{"submission_id": submission, "run_id": self.run_id, "custom_id": k} for k in part],
        )
        self.store.flush()
        uploaded = await litellm.acreate_file(
            file=(f"charter-{submission}.jsonl", data, "application/jsonl"), purpose="batch", **self._auth
        )
        self._update(submission, input_file_id=str(uploaded.id))
        try:
            batch = await litellm.acreate_batch(
                completion_window="24h",
                endpoint=url,
                input_file_id=str(uploaded.id),
                metadata={"charter_submission": submission, "charter_run": self.run_id},
                **self._auth,
            )
        except Exception:
            # The reply can be lost after the batch was made (a timeout, a dropped connection): look
            # for it by its metadata before failing, or the runner's retry would submit it all twice.
            if submission not in await self._find_lost([submission]):
                raise
        else:
            self._update(submission, batch_id=str(batch.id), status=str(batch.status))
        self.submitted += len(part)
        known = await self._known_requests()
        known.update(dict.fromkeys(part, submission))
        return submission

    def _update(self, submission: str, **values: Any) -> None:
        """Write a submission's new facts at once (its batch id above all: what a resume needs)."""
        sets = ", ".join(f"{name} = ?" for name in values)
        self.store.query(
            f"UPDATE batch_jobs SET {sets}, updated_at = current_timestamp WHERE submission_id = ?",
            [*values.values(), submission],
        )

    # -- resuming ----------------------------------------------------------------------------
    async def _known_requests(self) -> dict[str, str]:
        """Cache key -> the newest live submission of this run carrying it (from the database)."""
        if self._known is None:
            self._known = {}
            rows = self.store.query(
                "SELECT r.custom_id, j.submission_id, j.batch_id FROM batch_requests r "
                "JOIN batch_jobs j USING (submission_id) WHERE j.run_id = ? AND j.api_base IS NOT DISTINCT "
                "FROM ? AND j.status NOT IN ('abandoned', 'failed') ORDER BY j.created_at",
                [self.run_id, self.endpoint],
            )
            lost = sorted({str(s) for _, s, b in rows if b is None})
            found = await self._find_lost(lost) if lost else {}
            for key, submission, batch_id in rows:
                if batch_id is not None or submission in found:
                    self._known[str(key)] = str(submission)
        return self._known

    async def _find_lost(self, submissions: list[str]) -> dict[str, str]:
        """Submissions recorded without a batch id: the batch, if one was made, by its metadata."""
        litellm = import_litellm()
        found: dict[str, str] = {}
        with contextlib.suppress(Exception):  # no listing: resubmitting is the safe answer
            page = await litellm.alist_batches(limit=100, **self._auth)
            for batch in getattr(page, "data", None) or []:
                tag = (getattr(batch, "metadata", None) or {}).get("charter_submission")
                if tag in submissions and tag not in found:
                    found[str(tag)] = str(batch.id)
        for submission in submissions:
            if submission in found:
                self._update(submission, batch_id=found[submission], status="validating")
            else:
                self._update(submission, status="abandoned")
        return found

    # -- waiting and reading -----------------------------------------------------------------
    async def _answer(self, submission: str, part: dict[str, _Waiting]) -> None:
        task = self._results.get(submission)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            # A look that failed (the provider unreachable) is tried again on the retry: the batch
            # may still be running, and resubmitting its requests would pay for them twice.
            task = self._results[submission] = asyncio.ensure_future(self._outcomes(submission))
        outcomes = await asyncio.shield(task)
        known = await self._known_requests()
        for key, waiting in part.items():
            known.pop(key, None)
            status, body, message = outcomes.get(key, (None, None, "the batch did not run this request"))
            if status == 200 and body is not None:
                try:
                    completion = self._wire._parse(waiting.request, body)
                except BackendError as exc:
                    _fail(waiting, exc)
                    continue
                if completion.cost_usd is not None:
                    completion.cost_usd /= 2  # batch requests cost half the online price
                for future in waiting.futures:
                    if not future.done():
                        future.set_result(completion)
            else:
                retryable = status is None or status in RETRYABLE_STATUS or status >= 500
                # retry_after=0: the retry goes into the next batch at once, with the other retries.
                _fail(waiting, BackendError(message, retryable=retryable, retry_after=0.0, status=status))

    async def _outcomes(self, submission: str) -> dict[str, _Outcome]:
        """Wait for the submission's batch to finish; every line's outcome by custom_id."""
        litellm = import_litellm()
        row = self.store.query("SELECT batch_id FROM batch_jobs WHERE submission_id = ?", [submission])
        batch_id = str(row[0][0])
        batch = await self._poll(submission, batch_id)
        outcomes: dict[str, _Outcome] = {}
        status = str(batch.status)
        if status == "failed":
            errors = getattr(getattr(batch, "errors", None), "data", None) or []
            said = "; ".join(str(getattr(e, "message", e)) for e in errors[:3]) or "no reason given"
            rows = self.store.query(
                "SELECT custom_id FROM batch_requests WHERE submission_id = ?", [submission]
            )
            return {str(r[0]): (400, None, f"batch {batch_id} failed validation: {said}") for r in rows}
        for file_id in (getattr(batch, "output_file_id", None), getattr(batch, "error_file_id", None)):
            if not file_id:
                continue
            content = await litellm.afile_content(file_id=str(file_id), **self._auth)
            for raw in content.content.decode("utf-8", "replace").splitlines():
                if raw.strip():
                    key, outcome = _read_line(raw, batch_id)
                    outcomes[key] = outcome
        if status != "completed":
            for key, outcome in list(outcomes.items()):
                if outcome[0] is None:
                    outcomes[key] = (None, None, f"batch {batch_id} {status} before this request ran")
        return outcomes

    async def _poll(self, submission: str, batch_id: str) -> Any:
        """Look at the batch every poll_seconds until it is final; record each new status."""
        litellm = import_litellm()
        last, failures = None, 0
        while True:
            try:
                batch = await litellm.aretrieve_batch(batch_id=batch_id, **self._auth)
                failures = 0
            except Exception as exc:
                error = classify_error(exc, endpoint=self.api_base)
                failures += 1
                if not error.retryable or failures > max(self.options.max_retries, 1):
                    raise error from exc
                await asyncio.sleep(self.poll_seconds)
                continue
            status = str(batch.status)
            if status != last:
                counts = getattr(batch, "request_counts", None)
                self._update(
                    submission,
                    status=status,
                    completed=getattr(counts, "completed", None),
                    failed=getattr(counts, "failed", None),
                    output_file_id=getattr(batch, "output_file_id", None),
                    error_file_id=getattr(batch, "error_file_id", None),
                )
                last = status
            if status in FINAL:
                return batch
            await asyncio.sleep(self.poll_seconds)

    async def aclose(self) -> None:
        """Stop waiting (what is out stays recorded for a resume) and close the inner backend."""
        pending = [t for t in (self._collector, *self._tasks, *self._results.values()) if t is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()


def batch_status(con: Any, run_id: str) -> dict[str, Any] | None:
    """A run's batches for `charter status`: how many in each state, and their request counts."""
    rows = con.execute(
        "SELECT status, count(*), sum(requests), sum(coalesce(completed, 0)), sum(coalesce(failed, 0)) "
        "FROM batch_jobs WHERE run_id = ? GROUP BY status ORDER BY status",
        [run_id],
    ).fetchall()
    if not rows:
        return None
    return {
        "by_status": {str(r[0]): int(r[1]) for r in rows},
        "requests": sum(int(r[2] or 0) for r in rows),
        "completed": sum(int(r[3] or 0) for r in rows),
        "failed": sum(int(r[4] or 0) for r in rows),
    }


def batch_line(info: dict[str, Any]) -> str:
    """`  batches: 3 (2 completed, 1 in_progress), 150 requests: 100 completed, 2 failed`."""
    states = ", ".join(f"{n} {status}" for status, n in info["by_status"].items())
    total = sum(info["by_status"].values())
    return (
        f"  batches: {total} ({states}), {info['requests']} requests: "
        f"{info['completed']} completed, {info['failed']} failed"
    )


def _fail_all(part: dict[str, _Waiting], exc: Exception, endpoint: str) -> None:
    error = classify_error(exc, endpoint=endpoint)
    for waiting in part.values():
        _fail(waiting, error)


def _fail(waiting: _Waiting, error: BackendError) -> None:
    for future in waiting.futures:
        if not future.done():
            future.set_exception(error)


def _read_line(raw: str, batch_id: str) -> tuple[str, _Outcome]:
    """One output or error-file line: (custom_id, outcome)."""
    line = json.loads(raw)
    key = str(line.get("custom_id"))
    response = line.get("response") or None
    error = line.get("error") or None
    if response is not None:
        status = int(response.get("status_code") or 0)
        body = response.get("body")
        if status == 200 and isinstance(body, dict):
            return key, (200, body, "")
        said = (body or {}).get("error", {}).get("message") if isinstance(body, dict) else None
        return key, (status, None, f"batch {batch_id}: HTTP {status}: {said or 'no message'}")
    said = (error or {}).get("message") or (error or {}).get("code") or "no result"
    return key, (None, None, f"batch {batch_id}: {said}")
