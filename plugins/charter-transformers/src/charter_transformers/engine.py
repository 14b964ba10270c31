"""Dynamic batching: concurrent requests for one model share one padded forward pass.

One worker thread per loaded model owns the model: callers (any thread, any event loop) put jobs on a
queue and wait on a `concurrent.futures.Future`, so the asyncio loop never blocks on torch. The
worker takes the first job, waits up to `window_ms` for more (or until `max_batch_size` rows), then
runs the jobs in batches bounded by `max_batch_size` rows and `max_batch_tokens` padded tokens.
Requests announced by `arriving()` (LocalBackend does, before litellm) but not queued yet extend
that wait, up to `MAX_ARRIVAL_WAIT_MS`: concurrent calls spend a few milliseconds each in litellm
and tokenization, so a fixed window alone splits what was sent together into several batches, and
each extra batch costs a whole `generate` call.

Generation uses one `model.generate` call per batch with left padding (decoder-only models continue
from the last position, so every row's prompt must end there) and the attention mask, from which
`generate` derives position ids. Sampling parameters, seeds, stop strings, token limits and
log-probabilities are per row (see `charter_transformers.sampling`), so requests with different
parameters still share a batch; only parameters that configure `generate` as a whole (e.g.
`repetition_penalty`) split a batch into groups. Each row samples from its own seeded
`torch.Generator`, so a seeded request gives the same text whatever it is batched with.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import os
import queue
import secrets
import threading
import time
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from charter.backends.base import BackendError
from charter_transformers.sampling import RowSampler, RowStopper, row_seed
from charter_transformers.tokens import token_texts

if TYPE_CHECKING:
    import torch

    from charter_transformers.loading import LoadedModel


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


DEFAULT_WINDOW_MS = _env_number("CHARTER_LOCAL_BATCH_WINDOW_MS", 5.0)
DEFAULT_MAX_BATCH_SIZE = int(_env_number("CHARTER_LOCAL_MAX_BATCH_SIZE", 16))
# Padded tokens (rows x (longest prompt + most new tokens)) per batch: bounds KV-cache memory.
DEFAULT_MAX_BATCH_TOKENS = int(_env_number("CHARTER_LOCAL_MAX_BATCH_TOKENS", 16384))
# The longest a batch waits for announced requests to reach the queue; a request that never does
# (it failed in litellm, or loads another model) delays one batch by at most this much.
MAX_ARRIVAL_WAIT_MS = 250.0


class _Arrivals:
    """How many announced requests have not reached an engine's queue yet (all engines together)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pending = 0

    def add(self) -> list[bool]:
        with self._lock:
            self.pending += 1
        return [True]

    def settle(self, ticket: list[bool]) -> None:
        with self._lock:
            if ticket[0]:
                ticket[0] = False
                self.pending -= 1


_arrivals = _Arrivals()
# The ticket of the request being made in this context; a mutable list so that copies of the
# context (litellm's tasks and threads) settle the same one.
_ticket: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "charter_local_ticket", default=None
)


@contextmanager
def arriving() -> Iterator[None]:
    """Announce a request that will reach an engine soon, so a forming batch waits for it."""
    ticket = _arrivals.add()
    token = _ticket.set(ticket)
    try:
        yield
    finally:
        _ticket.reset(token)
        _arrivals.settle(ticket)


@dataclass
class TokenInfo:
    """One generated token: its text, log-probability and the top alternatives (text, logprob)."""

    token: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass
class ChoiceResult:
    """One generated choice."""

    text: str
    finish_reason: str
    token_ids: list[int]
    logprobs: list[TokenInfo] | None = None
    text_offsets: list[int] | None = None


@dataclass
class GenerationResult:
    """All choices of one request and its token usage."""

    choices: list[ChoiceResult]
    prompt_tokens: int
    completion_tokens: int


@dataclass
class GenerationJob:
    """One request: a tokenized prompt and how to continue it (`n` choices, each its own row).

    `logprobs` is None for no log-probabilities, else the number of top alternatives per token.
    `batch_params` are extra `generate` settings shared by a whole batch (jobs group by them).
    """

    prompt_ids: list[int]
    n: int = 1
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    batch_params: tuple[tuple[str, Hashable], ...] = ()
    future: concurrent.futures.Future[GenerationResult] = field(default_factory=concurrent.futures.Future)

    @property
    def rows(self) -> int:
        return self.n


@dataclass
class ScoreJob:
    """log p(option | prompt) per option: `rows_ids[i]` = (prompt + option token ids, option tokens)."""

    rows_ids: list[tuple[list[int], int]]
    future: concurrent.futures.Future[list[float]] = field(default_factory=concurrent.futures.Future)

    @property
    def rows(self) -> int:
        return len(self.rows_ids)


@dataclass
class EngineStats:
    """Counters for tests and benchmarks: how much batching actually happened."""

    batches: int = 0
    rows: int = 0
    largest_batch: int = 0

    def record(self, rows: int) -> None:
        self.batches += 1
        self.rows += rows
        self.largest_batch = max(self.largest_batch, rows)


_STOP = object()


class Engine:
    """The batching worker of one loaded model. Use `get_engine(loaded)` to share it."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        window_ms: float = DEFAULT_WINDOW_MS,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    ) -> None:
        self.loaded = loaded
        self.window_ms = window_ms
        self.max_batch_size = max(1, max_batch_size)
        self.max_batch_tokens = max(1, max_batch_tokens)
        self.stats = EngineStats()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        forward = inspect.signature(loaded.model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in forward

    # -- configuration and submission ---------------------------------------------------------

    def configure(
        self,
        *,
        window_ms: float | None = None,
        max_batch_size: int | None = None,
        max_batch_tokens: int | None = None,
    ) -> None:
        """Change the batching limits (they apply to batches formed from now on)."""
        if window_ms is not None:
            self.window_ms = max(0.0, float(window_ms))
        if max_batch_size is not None:
            self.max_batch_size = max(1, int(max_batch_size))
        if max_batch_tokens is not None:
            self.max_batch_tokens = max(1, int(max_batch_tokens))

    def submit(self, job: GenerationJob | ScoreJob) -> concurrent.futures.Future[Any]:
        """Queue a job; its future resolves when the batch holding it has run."""
        if self._closed:
            raise BackendError("the local model engine is closed", retryable=False)
        self._ensure_started()
        ticket = _ticket.get()
        if ticket is not None:
            _arrivals.settle(ticket)  # before queueing: the worker must not wait for this job itself
        self._queue.put(job)
        return job.future

    async def generate(self, job: GenerationJob) -> GenerationResult:
        """Await one generation job without blocking the event loop."""
        result: GenerationResult = await asyncio.wrap_future(self.submit(job))
        return result

    async def score(self, rows_ids: list[tuple[list[int], int]]) -> list[float]:
        """Await the summed option log-probabilities for pre-tokenized (ids, option length) rows."""
        result: list[float] = await asyncio.wrap_future(self.submit(ScoreJob(rows_ids)))
        return result

    def close(self) -> None:
        """Stop the worker once queued jobs are done."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None:
                name = f"charter-local-{self.loaded.name}"
                self._thread = threading.Thread(target=self._worker, name=name, daemon=True)
                self._thread.start()

    # -- the worker ---------------------------------------------------------------------------

    def _collect(self, first: Any) -> tuple[list[Any], bool]:
        """The first job plus whatever arrives within the window (longer while announced requests
        are on their way, see `arriving`), up to `max_batch_size` rows."""
        jobs = [first]
        rows = first.rows
        start = time.monotonic()
        deadline = start + self.window_ms / 1000
        # No window means no waiting at all, announced requests or not.
        latest = start + MAX_ARRIVAL_WAIT_MS / 1000 if self.window_ms > 0 else start
        # Polling step while waiting for announced requests: a request that gives up instead of
        # arriving must not hold the batch until `latest`.
        step = min(self.window_ms / 1000, 0.002)
        while rows < self.max_batch_size:
            now = time.monotonic()
            timeout = deadline - now
            if timeout <= 0 and _arrivals.pending > 0 and now < latest:
                timeout = min(step, latest - now)
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                now = time.monotonic()
                if now < deadline or (_arrivals.pending > 0 and now < latest):
                    continue
                break
            if item is _STOP:
                return jobs, True
            jobs.append(item)
            rows += item.rows
        return jobs, False

    def _worker(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            jobs, stop = self._collect(first)
            # Jobs whose caller gave up (cancelled futures) are dropped here.
            live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            try:
                self._dispatch(live)
            except Exception as exc:  # a bug here must not leave callers waiting forever
                error = BackendError(f"local model engine failed: {type(exc).__name__}: {exc}"[:500])
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(error)
            if stop:
                return

    def _dispatch(self, jobs: list[Any]) -> None:
        """Run collected jobs: generation grouped by batch-wide settings, then scoring."""
        groups: dict[tuple[tuple[str, Hashable], ...], list[GenerationJob]] = {}
        for job in jobs:
            if isinstance(job, GenerationJob):
                groups.setdefault(job.batch_params, []).append(job)
        for group in groups.values():
            for batch in self._split(group, lambda j: len(j.prompt_ids), lambda j: j.max_tokens):
                self._run(batch, self._generate_batch)
        scoring = [job for job in jobs if isinstance(job, ScoreJob)]
        for batch in self._split(scoring, lambda j: max(len(r[0]) for r in j.rows_ids), lambda j: 0):
            self._run(batch, self._score_batch)

    def _split(self, jobs: list[Any], length: Any, new_tokens: Any) -> list[list[Any]]:
        """Batches within the row and padded-token limits; sorted by length to pad less."""
        batches: list[list[Any]] = []
        current: list[Any] = []
        rows = longest = most_new = 0
        for job in sorted(jobs, key=length):
            r, n, m = rows + job.rows, max(longest, length(job)), max(most_new, new_tokens(job))
            if current and (r > self.max_batch_size or r * (n + m) > self.max_batch_tokens):
                batches.append(current)
                current, r, n, m = [], job.rows, length(job), new_tokens(job)
            current.append(job)
            rows, longest, most_new = r, n, m
        if current:
            batches.append(current)
        return batches

    def _run(self, batch: list[Any], fn: Any) -> None:
        try:
            results = fn(batch)
        except BackendError as exc:
            for job in batch:
                job.future.set_exception(exc)
            return
        except Exception as exc:
            import torch

            retryable = isinstance(exc, torch.OutOfMemoryError)
            error = BackendError(
                f"local model {self.loaded.name!r} failed: {type(exc).__name__}: {exc}"[:500],
                retryable=retryable,
            )
            for job in batch:
                job.future.set_exception(error)
            return
        for job, result in zip(batch, results, strict=True):
            job.future.set_result(result)

    # -- batches ------------------------------------------------------------------------------

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.loaded.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, length - len(r) :] = torch.tensor(r, dtype=torch.long)
                mask[i, length - len(r) :] = 1
        return ids.to(self.loaded.device), mask.to(self.loaded.device)

    def _generation_config(self, max_new_tokens: int, batch_params: tuple[tuple[str, Hashable], ...]) -> Any:
        from transformers import GenerationConfig

        base = getattr(self.loaded.model, "generation_config", None)
        config = GenerationConfig.from_dict(base.to_dict()) if base is not None else GenerationConfig()
        # Sampling happens in RowSampler; generate itself must only take its (one-hot) argmax.
        config.update(
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            min_p=None,
            typical_p=None,
            max_new_tokens=max_new_tokens,
            max_length=None,
            num_return_sequences=1,
            pad_token_id=self.loaded.pad_token_id,
            eos_token_id=sorted(self.loaded.eos_token_ids) or None,
            **dict(batch_params),
        )
        return config

    def _generate_batch(self, jobs: list[GenerationJob]) -> list[GenerationResult]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        # One row per choice: a request with n=2 is two rows of the same prompt.
        rows: list[GenerationJob] = []
        seeds: list[int] = []
        for job in jobs:
            for index in range(job.n):
                rows.append(job)
                base = job.seed if job.seed is not None else secrets.randbits(62)
                seeds.append(row_seed(base, index))
        self.stats.record(len(rows))
        loaded = self.loaded
        input_ids, mask = self._left_pad([job.prompt_ids for job in rows])
        prompt_len = input_ids.shape[1]
        stopper = RowStopper(rows, prompt_len, loaded.eos_token_ids, loaded.tokenizer, loaded.tokenizer_lock)
        sampler = RowSampler(rows, seeds, loaded.device, stopper)
        config = self._generation_config(max(job.max_tokens for job in rows), jobs[0].batch_params)
        with torch.inference_mode():
            sequences = loaded.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]),
                stopping_criteria=StoppingCriteriaList([stopper]),
            )
        if not isinstance(sequences, torch.Tensor):
            sequences = sequences.sequences
        generated = sequences[:, prompt_len:].tolist()
        chosen_lp = torch.stack(sampler.chosen_lp, dim=0).cpu().tolist() if sampler.chosen_lp else []
        top_values = torch.stack(sampler.top_values, dim=0).cpu().tolist() if sampler.top_values else []
        top_ids = torch.stack(sampler.top_ids, dim=0).cpu().tolist() if sampler.top_ids else []
        lp_column = {row: col for col, row in enumerate(sampler.with_logprobs)}

        choices: list[ChoiceResult] = []
        used: list[int] = []
        for r, job in enumerate(rows):
            count = stopper.done_at[r] if stopper.done_at[r] is not None else len(generated[r])
            tokens = generated[r][:count]
            used.append(len(tokens))
            reason = stopper.reasons[r] or "length"
            if reason == "eos":
                tokens = tokens[:-1]
            column = lp_column.get(r)
            per_step = None
            if column is not None:
                per_step = [
                    (
                        chosen_lp[s][column],
                        list(zip(top_ids[s][column], top_values[s][column], strict=True))
                        if top_ids and job.logprobs
                        else [],
                    )
                    for s in range(len(tokens))
                ]
            with loaded.tokenizer_lock:
                choices.append(self._finish_choice(job, tokens, reason, per_step))

        results: list[GenerationResult] = []
        position = 0
        for job in jobs:
            mine = choices[position : position + job.n]
            completion_tokens = sum(used[position : position + job.n])
            position += job.n
            results.append(GenerationResult(mine, len(job.prompt_ids), completion_tokens))
        return results

    def _finish_choice(
        self,
        job: GenerationJob,
        tokens: list[int],
        reason: str,
        per_step: list[tuple[float, list[tuple[int, float]]]] | None,
    ) -> ChoiceResult:
        """Decode a row, cut it at the first stop string and attach per-token log-probabilities."""
        tokenizer = self.loaded.tokenizer
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        finish = "length" if reason == "length" else "stop"
        cut = min((i for i in (text.find(s) for s in job.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        if per_step is None and cut < 0:
            return ChoiceResult(text, finish, tokens)
        # Character offset of each token in the decoded text (prefix decoding: tokens need not
        # decode to their own text in isolation).
        offsets = [len(tokenizer.decode(tokens[:i], skip_special_tokens=True)) for i in range(len(tokens))]
        keep = len(tokens) if cut < 0 else sum(1 for o in offsets if o < cut)
        tokens = tokens[:keep]
        if per_step is None:
            return ChoiceResult(text, finish, tokens)
        context = list(job.prompt_ids)
        infos: list[TokenInfo] = []
        for token, (logprob, top) in zip(tokens, per_step[:keep], strict=True):
            shown = top[: job.logprobs or 0]
            texts = token_texts(tokenizer, context, [token, *(t for t, _ in shown)])
            alternatives = [(text, v) for text, (_, v) in zip(texts[1:], shown, strict=True)]
            infos.append(TokenInfo(texts[0], logprob, alternatives))
            context.append(token)
        return ChoiceResult(text, finish, tokens, infos, offsets[:keep])

    def _score_batch(self, jobs: list[ScoreJob]) -> list[list[float]]:
        import torch

        rows = [row for job in jobs for row in job.rows_ids]
        self.stats.record(len(rows))
        input_ids, mask = self._left_pad([ids for ids, _ in rows])
        # Left padding puts every option at the end of its row, so the logits needed are the last
        # (longest option + 1) positions: no (batch x length x vocab) tensor for long prompts.
        span = max((n for _, n in rows), default=0)
        scores = [0.0] * len(rows)
        if span > 0:
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            kwargs: dict[str, Any] = {"logits_to_keep": span + 1} if self._logits_to_keep else {}
            with torch.inference_mode():
                logits = self.loaded.model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=position_ids,
                    use_cache=False,
                    **kwargs,
                ).logits
            logits = logits[:, -(span + 1) : -1, :].float()
            targets = input_ids[:, -span:]
            token_lp = torch.log_softmax(logits, dim=-1).gather(2, targets[..., None])[..., 0]
            lengths = torch.tensor([n for _, n in rows], device=token_lp.device)
            keep = torch.arange(span, device=token_lp.device)[None, :] >= (span - lengths)[:, None]
            scores = (token_lp * keep).sum(-1).cpu().tolist()
        out: list[list[float]] = []
        position = 0
        for job in jobs:
            out.append(scores[position : position + job.rows])
            position += job.rows
        return out


def get_engine(loaded: LoadedModel) -> Engine:
    """The shared engine of a loaded model, created on first use."""
    with loaded.lock:
        if loaded.engine is None:
            loaded.engine = Engine(loaded)
        engine: Engine = loaded.engine
        return engine
