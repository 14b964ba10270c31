"""The `charter` entry point of charter-ray: registers the `ray` executor (ray is imported on use)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from charter.hookspecs import hookimpl


def _make_ray_executor() -> Any:
    from charter_ray.executor import RayExecutor

    return RayExecutor()


@hookimpl
def register_executors(register: Callable[[str, Any], None]) -> None:
    """Register `--executor ray`."""
    register("ray", _make_ray_executor)
