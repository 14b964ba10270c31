"""Fixtures for the charter-ray tests: a local Ray instance (2 CPUs) and charter's test helpers.

The repository's tests/ helpers set the test environment (offline, a test key) on import; Ray's
workers inherit it because Ray is started after that import.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[3] / "tests"
if str(_TESTS) not in sys.path:  # run alone (pytest plugins/charter-ray/tests), tests/ is not on the path
    sys.path.insert(0, str(_TESTS))

import charter_testkit  # noqa: E402  (sets the environment before anything imports litellm)
from charter_testing.fake_openai import FakeOpenAIServer, default_responder  # noqa: E402

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e plugins/charter-ray)")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A local Ray instance with 2 CPUs (no dashboard), for this module only."""
    from charter.plugins import register_plugin
    from charter.shard import executor_factories

    if "ray" not in executor_factories():  # a checkout whose venv did not install charter-ray's entry point
        import charter_ray.plugin

        register_plugin(charter_ray.plugin, name="ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_server() -> Iterator[FakeOpenAIServer]:
    """The fake OpenAI-compatible server on 127.0.0.1, which the Ray workers call over HTTP."""
    with FakeOpenAIServer() as srv:
        srv.responder = default_responder
        yield srv


@pytest.fixture
def cli():
    """`cli("revise", ...)`: the CLI in-process (the driver), as in the core tests."""
    return charter_testkit.run_cli
