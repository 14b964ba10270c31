"""Running a chain over many items: the store, the run record, resume, progress and failures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from charter.backends.base import Backend
from charter.backends.batch import check_batch
from charter.backends.registry import get_backend
from charter.prompts import load_prompt
from charter.runner import CallFailed, CallResult, Runner, RunnerOptions, bounded_map
from charter.steps.base import Chain, Step, StepContext
from charter.store.store import Store

S = TypeVar("S")


@dataclass
class RunSummary:
    """What a run did. `failed` counts items that still failed after retries (they resume next time)."""

    run_id: str
    run_name: str
    resumed: bool
    total: int
    skipped: int = 0
    completed: int = 0
    failed: int = 0
    calls: int = 0
    cache_hits: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    status: str = "done"
    terminated: bool = False  # SIGTERM arrived: the run stops like after Ctrl-C
    # Tokens and cost of the calls this run made (cache hits cost nothing); cost_usd stays None
    # while no call had a price (a local server, a model missing from LiteLLM's price table).
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None

    def add_usage(self, result: CallResult) -> None:
        """Count one call's tokens and cost (not for answers taken from the request cache)."""
        if result.cached:
            return
        completion = result.completion
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        if completion.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + completion.cost_usd

    def usage_text(self) -> str:
        """`1,234 + 567 tokens, $0.0123` (or `cost unknown`), for summaries and progress lines."""
        cost = "cost unknown" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        return f"{self.prompt_tokens:,} + {self.completion_tokens:,} tokens, {cost}"

    @property
    def ok(self) -> bool:
        """True when every item finished."""
        return self.failed == 0 and self.status == "done"


class RunInterrupted(BaseException):
    """A run stopped by SIGTERM: what finished is committed and the run is marked 'interrupted'.

    Not a KeyboardInterrupt (Ctrl-C stays one), so the CLI can exit 143 rather than 130.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# Seconds between progress lines when stderr is not a terminal (None: no lines); see
# `enable_progress_lines`. CHARTER_PROGRESS_SECONDS overrides the interval (tests use a short one).
_progress_lines: float | None = None
PROGRESS_LINE_SECONDS = 30.0


def enable_progress_lines(seconds: float | None = None) -> None:
    """Print a progress line every `seconds` (default 30, or CHARTER_PROGRESS_SECONDS) during runs."""
    global _progress_lines
    if seconds is None:
        seconds = float(os.environ.get("CHARTER_PROGRESS_SECONDS") or PROGRESS_LINE_SECONDS)
    _progress_lines = seconds if seconds > 0 else None


def _item_id(state: Any) -> str:
    prompt = getattr(state, "prompt", None)
    return str(getattr(prompt, "prompt_id", None) or getattr(state, "item_id", "?"))


def chain_templates(chain: Step[Any], mode: str) -> list[str]:
    """Names of the templates a chain renders in `mode`, from each step's optional `templates(mode)`."""
    names: list[str] = []
    for step in chain.steps if isinstance(chain, Chain) else [chain]:
        templates = getattr(step, "templates", None)
        if templates is not None:
            names.extend(n for n in templates(mode) if n not in names)
    return names


def check_templates(chain: Step[Any], mode: str, prompts_dir: str | None) -> None:
    """Load every template `chain` renders in `mode`, raising `PromptError` on a broken one.

    A broken template (a user override, most likely) is bad input: commands call this before they
    create the database or record a run, so it fails with exit 2 instead of on the first item.
    """
    for name in chain_templates(chain, mode):
        load_prompt(name, prompts_dir)


@dataclass
class Job(Generic[S]):
    """What a run computes: the chain, the items not yet done, and the rows each finished item adds.

    `config` is what the `runs` row records (and the default run name hashes); `items(done)` yields
    the items whose id is not in `done` (the ids in `done_table.done_column` for this run).
    """

    chain: Step[S]
    command: str
    config: dict[str, Any]
    run_name: str
    items: Callable[[set[str]], Iterable[S]]
    total: int
    done_table: str
    rows: Callable[[str, S], dict[str, list[dict[str, Any]]]]
    done_column: str = "prompt_id"
    item_id: Callable[[S], str] = _item_id


@dataclass
class CallSettings:
    """How a run's calls are made: one object for `run_chain`, `_drive` and the step context.

    Built from a task's Config (`CallConfig.settings`) or by hand; `backend` replaces the one
    `model` and `api_base` would pick (tests, in-process models).
    """

    model: str
    api_base: str | list[str] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    options: RunnerOptions = field(default_factory=RunnerOptions)
    mode: Literal["chat", "completion"] = "chat"
    seed: int = 0
    few_shot: bool = True
    prompts_dir: str | None = None
    backend: Backend | None = None
    progress: bool = False


def run_chain(job: Job[S], call: CallSettings, db: str | Path | Store) -> RunSummary:
    """Run `job.chain` over the items not yet in `job.done_table` for this run, storing their rows."""
    from charter.backends.params import split_params

    request_params, _ = split_params(call.params)
    check_templates(job.chain, call.mode, call.prompts_dir)
    # Before the database is touched: bad input, exit 2.
    check_batch(call.model, call.api_base, call.params, call.options)
    with ExitStack() as stack:
        store = db if isinstance(db, Store) else stack.enter_context(Store(db))
        run_id, resumed = store.start_run(
            job.run_name,
            job.command,
            job.config,
            total=job.total,
            done_table=job.done_table,
            done_column=job.done_column,
        )
        done = store.ids_in(job.done_table, run_id, job.done_column)
        summary = RunSummary(
            run_id=run_id, run_name=job.run_name, resumed=resumed, total=job.total, skipped=len(done)
        )
        backend = call.backend or get_backend(call.model, api_base=call.api_base, params=call.params)
        if call.options.batch:
            from charter.backends.batch import BatchBackend, batch_options

            backend = BatchBackend(
                backend,
                store,
                run_id,
                model=call.model,
                api_base=call.api_base,
                params=call.params,
                options=call.options,
            )
            call = replace(call, options=batch_options(call.options))
        started = time.perf_counter()
        status = "failed"
        try:
            asyncio.run(_drive(job, replace(call, params=request_params), store, backend, summary, done))
            status = "done" if summary.failed == 0 else "failed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except asyncio.CancelledError:
            if not summary.terminated:
                raise
            status = "interrupted"
            raise RunInterrupted(signal.SIGTERM) from None
        finally:
            summary.seconds = time.perf_counter() - started
            summary.status = status
            store.finish_run(run_id, status)
        return summary


async def _drive(
    job: Job[S], call: CallSettings, store: Store, backend: Backend, summary: RunSummary, done: set[str]
) -> None:
    """Run the job's pending items `call.options.concurrency` at a time, storing each finished one."""
    run_id, options, rows, item_id = summary.run_id, call.options, job.rows, job.item_id
    started_all = False

    def every_item() -> Iterator[S]:
        nonlocal started_all
        yield from job.items(done)
        started_all = True  # asked for one more: the last item has started

    items = every_item()
    bar = _Progress(summary.total - summary.skipped, call.progress, summary)

    def on_call(result: CallResult) -> None:
        bar.calls += 1
        summary.add_usage(result)

    runner = Runner(backend, store, run_id, options, on_call=on_call)
    ctx = StepContext(
        runner=runner,
        model=call.model,
        mode=call.mode,
        params=call.params,
        seed=call.seed,
        few_shot=call.few_shot,
        prompts_dir=call.prompts_dir,
    )

    async def work(state: S) -> S:
        return await job.chain.run(state, ctx)

    # Each item makes its calls one after another, so `concurrency` items in flight keep that many
    # requests in flight; a few more hide the gaps between one item's calls.
    in_flight = max(1, options.concurrency) + 4
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_sigterm() -> None:
        # Like asyncio's own Ctrl-C handling: cancel the main task, so the finally blocks below commit
        # what finished, and run_chain marks the run interrupted.
        summary.terminated = True
        if main is not None:
            main.cancel()

    with_sigterm = _add_signal_handler(loop, signal.SIGTERM, on_sigterm)
    ticker = asyncio.ensure_future(bar.tick()) if bar.line_seconds else None
    tail: asyncio.Future[None] | None = None
    try:
        # aclosing: on an error (a failed write) the calls still in flight are cancelled here, before
        # the clients close below, not later by the loop's shutdown (by then one may have opened a
        # new client that nobody closes).
        async with contextlib.aclosing(bounded_map(items, work, in_flight)) as results:
            with bar:
                async for state, result in results:
                    if isinstance(result, BaseException):
                        if not isinstance(result, CallFailed):
                            raise result
                        summary.failed += 1
                        if len(summary.errors) < 20:
                            summary.errors.append(f"{item_id(state)}: {result}")
                    else:
                        for table, table_rows in rows(run_id, result).items():
                            store.add_rows(table, table_rows)
                        summary.completed += 1
                    store.maybe_flush()
                    bar.advance()
                    if started_all and tail is None:
                        tail = asyncio.ensure_future(_flush_while_waiting(store))
    finally:
        for task in (ticker, tail):
            if task is not None:
                task.cancel()
        if with_sigterm:
            loop.remove_signal_handler(signal.SIGTERM)
        summary.calls = runner.calls_made
        summary.cache_hits = runner.cache_hits
        try:
            store.flush()
        finally:
            await _close_clients(backend)
            summary.errors.extend(f"not stored: {r}" for r in store.rejected[:5])


async def _flush_while_waiting(store: Store) -> None:
    """Every item has started: from here the run waits for its last answers. What finished goes to
    the file meanwhile (once the last items have sent their requests), then every `flush_seconds`,
    so what is left to flush after the last answer is small, and a kill loses only calls in flight."""
    await asyncio.sleep(0)
    while True:
        try:
            store.maybe_flush(now=True)
        except Exception:
            return  # kept buffered and journaled: the run's own last flush reports it
        await asyncio.sleep(store.flush_seconds)


def _add_signal_handler(loop: asyncio.AbstractEventLoop, signum: int, handler: Callable[[], None]) -> bool:
    try:
        loop.add_signal_handler(signum, handler)
    except (NotImplementedError, RuntimeError, ValueError):
        return False  # not the main thread (or Windows): the default action stays
    return True


class _Progress:
    """A rich progress bar with rate and ETA on stderr, or a plain line every so often when stderr
    is not a terminal (a log file: see `enable_progress_lines`); silent when disabled."""

    def __init__(self, total: int, enabled: bool, summary: RunSummary | None = None) -> None:
        self.enabled = enabled and total > 0
        self.total = total
        self.calls = 0
        self.summary = summary
        self.line_seconds = _progress_lines if not enabled and total > 0 else None
        self._progress: Any = None
        self._task: Any = None
        self._started = time.perf_counter()

    async def tick(self) -> None:
        """Print a progress line every `line_seconds` until cancelled."""
        assert self.line_seconds
        while True:
            await asyncio.sleep(self.line_seconds)
            print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        """One line: items done of total, failures, calls, rate and ETA."""
        summary = self.summary
        done = summary.completed if summary else 0
        failed = summary.failed if summary else 0
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        rate = (done + failed) / elapsed
        left = self.total - done - failed
        eta = f"{_duration(left / rate)}" if rate > 0 else "?"
        name = summary.run_name if summary else "run"
        return (
            f"charter: {name}: {done}/{self.total} items ({100 * done / max(self.total, 1):.0f}%), "
            f"{failed} failed, {self.calls} calls, {summary.usage_text() if summary else ''}, "
            f"{rate * 60:.1f} items/min, "
            f"{_duration(elapsed)} elapsed, ETA {eta}"
        )

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("calls {task.fields[calls]}"),
                TextColumn("{task.fields[usage]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("items", total=self.total, rate="", calls=0, usage="")
            self._started = time.perf_counter()
        return self

    def advance(self) -> None:
        if self._progress is not None:
            elapsed = max(time.perf_counter() - self._started, 1e-9)
            done = self._progress.tasks[0].completed + 1
            usage = self.summary.usage_text() if self.summary else ""
            self._progress.update(
                self._task, advance=1, calls=self.calls, rate=f"{done / elapsed:.1f} items/s", usage=usage
            )

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


async def _close_clients(backend: Backend) -> None:
    # Each asyncio.run gets a new loop; litellm keeps aiohttp sessions per loop, so close them here
    # rather than leaking "Unclosed client session" warnings at exit.
    close = getattr(backend, "aclose", None)
    if close is not None:
        await close()
