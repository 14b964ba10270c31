"""charter-ray: `--executor ray` runs a charter command's shards as Ray tasks (see `charter_ray.executor`)."""

from charter_ray.executor import RayExecutor

__all__ = ["RayExecutor"]
