"""`RunnerOptions` on its own, so the CLI can declare commands without importing the runner
(asyncio, tenacity, DuckDB): `charter --help` stays fast. `charter.runner` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunnerOptions:
    """How calls are made: parallelism, retries and rate limits."""

    concurrency: int = 16
    max_retries: int = 6
    requests_per_minute: float | None = None
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    # Through the provider's batch API (`--batch`, charter.backends.batch) instead of one call each.
    batch: bool = False
