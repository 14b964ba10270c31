"""A `charter.shard.ShardExecutor` on Ray: each shard is one Ray task (one CPU), its result a future."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable
from typing import Any


class RayExecutor:
    """Runs shards as Ray tasks on the cluster `ray.init()` finds (`RAY_ADDRESS`, else a local one).

    When Ray is already initialized (the caller ran `ray.init(...)`), that cluster is used and left
    running; otherwise this executor starts or connects, and shuts Ray down again when done.
    """

    def __init__(self, *, num_cpus_per_shard: float = 1.0) -> None:
        try:
            import ray
        except ImportError as exc:  # the plugin is installed without its dependency
            raise ValueError(f"--executor ray: cannot import ray ({exc}); pip install charter-ray") from None
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init()
        self._num_cpus = num_cpus_per_shard
        self._refs: list[Any] = []

    def default_shards(self) -> int:
        """One shard per CPU of the cluster."""
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> concurrent.futures.Future[Any]:
        """`fn(*args)` as a Ray task; the future holds its result or raises its error."""
        task = self._ray.remote(num_cpus=self._num_cpus)(fn)
        ref = task.remote(*args)
        self._refs.append(ref)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        ref.future().add_done_callback(lambda done: _settle(future, done))
        return future

    def shutdown(self, *, cancel: bool) -> None:
        """Cancel what has not finished (on an interrupt or error); stop Ray if this executor started it."""
        try:
            if cancel:
                for ref in self._refs:
                    # Already finished, or its worker is gone: nothing to cancel.
                    with contextlib.suppress(Exception):
                        self._ray.cancel(ref, force=True)
        finally:
            self._refs.clear()
            if self._owns_ray:
                self._ray.shutdown()


def _settle(future: concurrent.futures.Future[Any], done: concurrent.futures.Future[Any]) -> None:
    """Hand a task's outcome on; an error raised inside the task arrives as itself, not as Ray's
    wrapper (whose message is the worker's whole traceback), so a bad input is still one line."""
    if done.cancelled():
        future.cancel()
        return
    error = done.exception()
    if error is None:
        future.set_result(done.result())
        return
    cause = getattr(error, "cause", None)
    future.set_exception(cause if isinstance(cause, BaseException) else error)
