"""The stages of the pipeline as tasks: each one Config (its options) and one run function.

    from charter.tasks import get_task
    task = get_task("label")
    config = task.config(db="cai.duckdb", model="text-completion-openai/base", method="cot")
    summary = task.run(config)

`charter revise|sample|label` derive their options from these configs, `charter run` validates
its YAML steps with them, and `charter.sl.revise` / `charter.rl.sample` / `charter.rl.label` are
thin wrappers that build one and run it.
"""

from __future__ import annotations

from charter.tasks.base import Task
from charter.tasks.label import LABEL, LabelConfig
from charter.tasks.revise import REVISE, ReviseConfig
from charter.tasks.sample import SAMPLE, SampleConfig

TASKS: dict[str, Task] = {task.name: task for task in (REVISE, SAMPLE, LABEL)}


def get_task(name: str) -> Task:
    """The task called `name` (revise, sample, label)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected {', '.join(TASKS)}") from None


__all__ = [
    "LABEL",
    "REVISE",
    "SAMPLE",
    "TASKS",
    "LabelConfig",
    "ReviseConfig",
    "SampleConfig",
    "Task",
    "get_task",
]
