"""Splitting one run over processes, machines or a cluster: `--shard i/n|auto` and `--executor`.

A shard owns the items whose id hashes to its index (see `Shard.owns`), so every process computes the
same split with no coordination. The run name does not depend on the shard, so the shards' DuckDB
files merge (`charter merge`) into the one run an unsharded command would have written.

`--shard auto` takes the index and count from the scheduler: a Slurm job array
(`SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN`, divided by `SLURM_ARRAY_TASK_STEP`, of
`SLURM_ARRAY_TASK_COUNT`) or a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX` of `CHARTER_SHARD_COUNT`,
which the manifest sets to the Job's `completions`: Kubernetes does not put that in the pod's env).

`--executor NAME --shards N` runs all N shards from one command on an executor a plugin registers
(`register_executors`; charter-ray registers `ray`): each shard runs `run_shard` where the executor
puts it, into its own DuckDB file that starts as a copy of `--db` (so it resumes what is already
there and sees the pairs or prompts it reads), and each finished file is merged into `--db` as it
arrives.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from charter.session import RunSummary

# The Kubernetes Job's `completions`, which the pod's environment does not carry by itself.
COUNT_ENV = "CHARTER_SHARD_COUNT"


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based): the items whose id hashes to `index` modulo `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"--shard {self.index}/{self.count}: need 0 <= i < n")

    @classmethod
    def parse(cls, text: str | Shard | None) -> Shard | None:
        """`"i/n"` -> Shard(i, n); None stays None."""
        if text is None or isinstance(text, Shard):
            return text
        index, sep, count = str(text).partition("/")
        try:
            if not sep:
                raise ValueError
            return cls(int(index), int(count))
        except ValueError:
            raise ValueError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4") from None

    def owns(self, item_id: str) -> bool:
        """True when the item with this id belongs to this shard (stable across machines and runs)."""
        if self.count == 1:
            return True
        digest = hashlib.sha256(item_id.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"--shard auto: {name}={raw!r} is not a whole number") from None


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard:
    """The shard a Slurm array task or a Kubernetes Indexed Job pod is (for `--shard auto`)."""
    env = os.environ if env is None else env
    task = _env_int(env, "SLURM_ARRAY_TASK_ID")
    if task is not None:
        count = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
        if count is None:
            raise ValueError("--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")
        first = _env_int(env, "SLURM_ARRAY_TASK_MIN") or 0
        step = _env_int(env, "SLURM_ARRAY_TASK_STEP") or 1
        offset, rest = divmod(task - first, step)
        if rest or not 0 <= offset < count:
            raise ValueError(
                f"--shard auto: Slurm array task {task} is not one of {count} evenly spaced tasks from "
                f"{first} (step {step}); use a contiguous array such as --array=0-{count - 1}"
            )
        return Shard(offset, count)
    index = _env_int(env, "JOB_COMPLETION_INDEX")
    if index is not None:
        count = _env_int(env, COUNT_ENV)
        if count is None:
            raise ValueError(
                f"--shard auto: JOB_COMPLETION_INDEX is set but {COUNT_ENV} is not; set it in the "
                "Job's container env to the Job's completions"
            )
        if not 0 <= index < count:
            raise ValueError(f"--shard auto: JOB_COMPLETION_INDEX={index} is not below {COUNT_ENV}={count}")
        return Shard(index, count)
    raise ValueError(
        "--shard auto: neither a Slurm array task (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT) nor a "
        f"Kubernetes Indexed Job (JOB_COMPLETION_INDEX, {COUNT_ENV}) is in the environment; give --shard i/n"
    )


def resolve_shard(value: str | Shard | None, env: Mapping[str, str] | None = None) -> Shard | None:
    """`--shard`'s value as a Shard: `i/n`, `auto` (from the scheduler's environment), or None."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return shard_from_env(env)
    return Shard.parse(value)


# --------------------------------------------------------------------------- executors
class ShardExecutor(Protocol):
    """Where `--executor NAME` runs the shards: a plugin's `register_executors` registers a factory."""

    def default_shards(self) -> int:
        """How many shards to cut a run into when `--shards` is not given (e.g. the cluster's CPUs)."""
        ...

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> concurrent.futures.Future[Any]:
        """Run `fn(*args)` somewhere (a picklable module-level function and arguments)."""
        ...

    def shutdown(self, *, cancel: bool) -> None:
        """Let go of the resources; `cancel=True` (an interrupt or error) stops unfinished work."""
        ...


ExecutorFactory = Callable[[], ShardExecutor]
"""`factory() -> ShardExecutor`, registered by name with `register_executors`."""


def executor_factories() -> dict[str, ExecutorFactory]:
    """The executors the installed plugins register, by name."""
    from charter.plugins import plugin_manager

    found: dict[str, ExecutorFactory] = {}
    plugin_manager().hook.register_executors(register=found.__setitem__)
    return found


def get_executor(name: str) -> ShardExecutor:
    """The executor `--executor name` means; a ValueError (exit 2) names the installed ones."""
    factories = executor_factories()
    if name not in factories:
        known = ", ".join(sorted(factories)) or "none installed"
        hint = " (pip install charter-ray)" if name == "ray" else ""
        raise ValueError(f"--executor {name!r}: no such executor{hint}; installed: {known}")
    return factories[name]()


ShardJob = Callable[..., "RunSummary"]
"""`job(db=PATH, shard=SHARD) -> RunSummary`: a command with everything but its database and shard bound."""


def _checkpoint(path: Path) -> None:
    # Fold DuckDB's write-ahead log into the file, so the file alone is the whole database.
    import duckdb

    con = duckdb.connect(str(path))
    try:
        con.execute("CHECKPOINT")
    finally:
        con.close()


def run_shard(
    job: ShardJob, shard: Shard, seed: bytes | None, cwd: str | None = None, db_name: str | None = None
) -> tuple[RunSummary, bytes]:
    """Run one shard into a fresh DuckDB file (a copy of `seed` when given); returns the file's bytes.

    This is what an executor runs on a worker: the database needs no filesystem shared with the
    caller. Relative paths in `job` (prompts file, router file) mean what they meant in the caller's
    directory `cwd` when the worker has it (one machine, or a shared filesystem).
    """
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="charter-shard-") as tmp:
        part = Path(tmp) / f"shard-{shard.index}-of-{shard.count}.duckdb"
        if seed is not None:
            part.write_bytes(seed)
        if cwd is not None and os.path.isdir(cwd):
            os.chdir(cwd)
        try:
            summary = job(db=part, shard=shard)
        except Exception as exc:
            if db_name is not None:
                exc.args = tuple(a.replace(str(part), db_name) if isinstance(a, str) else a for a in exc.args)
            raise
        finally:
            os.chdir(here)
        _checkpoint(part)
        return summary, part.read_bytes()


def snapshot(db: Path, workdir: Path) -> bytes | None:
    """`db` as one self-contained file's bytes (None when it does not exist yet)."""
    if not db.exists():
        return None
    from charter.merge import merge_databases

    copy = workdir / "seed.duckdb"
    merge_databases(copy, [db])
    _checkpoint(copy)
    data = copy.read_bytes()
    copy.unlink()
    return data


def run_sharded(job: ShardJob, *, db: Path, executor: str, shards: int | None = None) -> RunSummary:
    """Run every shard of `job` on `executor` and merge each finished one into `db`; one summary.

    A shard that raises does not lose the others: every finished shard is merged before the first
    error is raised again, and running the same command again resumes (finished work is in `db`).
    """
    from charter.merge import merge_databases
    from charter.store.store import check_db_path

    check_db_path(db)
    runner = get_executor(executor)
    count = shards if shards is not None else max(1, int(runner.default_shards()))
    if count < 1:
        raise ValueError(f"--shards {count}: need at least 1")
    summaries: list[RunSummary] = []
    first_error: BaseException | None = None
    cancel = True
    db.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".charter-shards-", dir=db.parent) as tmp:
        workdir = Path(tmp)
        try:
            seed = snapshot(db, workdir)
            cwd = os.getcwd()
            futures = {
                runner.submit(run_shard, job, Shard(i, count), seed, cwd, str(db)): i for i in range(count)
            }
            for future in concurrent.futures.as_completed(futures):
                index = futures[future]
                try:
                    summary, data = future.result()
                except Exception as exc:  # keep merging the shards that finished
                    first_error = first_error or exc
                    continue
                part = workdir / f"shard-{index}-of-{count}.duckdb"
                part.write_bytes(data)
                merge_databases(db, [part])
                part.unlink()
                summaries.append(summary)
            cancel = False
        finally:
            runner.shutdown(cancel=cancel)
    if first_error is not None:
        raise first_error
    return combine_summaries(summaries)


_LEAST_FINISHED = {"done": 0, "flagged": 1, "running": 2, "interrupted": 3, "failed": 4}


def combine_summaries(summaries: list[RunSummary]) -> RunSummary:
    """The summaries of one run's shards as one: counts added, the least finished status."""
    if not summaries:
        raise ValueError("no shard finished")
    first = summaries[0]
    values: dict[str, Any] = {}
    for f in dataclasses.fields(first):
        items = [getattr(s, f.name) for s in summaries]
        known = [v for v in items if v is not None]
        if f.name == "status":
            values[f.name] = max(items, key=lambda s: _LEAST_FINISHED.get(str(s), 2))
        elif f.name == "seconds":
            values[f.name] = max(items)  # the shards ran side by side
        elif f.name in ("run_id", "run_name", "max_flagged"):
            values[f.name] = items[0]
        elif not known:
            values[f.name] = None
        elif isinstance(known[0], bool):
            values[f.name] = any(known)
        elif isinstance(known[0], (int, float)):
            values[f.name] = sum(known)
        elif isinstance(known[0], list):
            values[f.name] = [x for v in known for x in v]
        elif isinstance(known[0], dict):
            merged: dict[Any, Any] = {}
            for v in known:
                for k, n in v.items():
                    merged[k] = merged.get(k, 0) + n
            values[f.name] = merged
        else:
            values[f.name] = items[0]
    return type(first)(**values)
