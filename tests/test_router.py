"""Several endpoints behind LiteLLM's Router: failover, per-endpoint limits, config files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from charter_testing.fake_openai import FakeOpenAIServer
from charter_testkit import CHAT_MODEL, query, revise_args, write_prompts

from charter.backends.registry import get_backend
from charter.backends.router import RouterBackend, RouterConfigError, load_router_config
from charter.runner import RunnerOptions
from charter.sl import revise

PROMPTS = [f"Prompt {i}: how do I get past a locked door?" for i in range(6)]


@pytest.fixture
def second() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


def _revisions(db: Path) -> list[tuple[object, ...]]:
    return query(db, "SELECT prompt_id, round, principle, critique, revision FROM revisions ORDER BY ALL")


def test_repeated_api_base_selects_the_router_and_fails_over(cli, server, second, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    single, routed = tmp_path / "single.duckdb", tmp_path / "routed.duckdb"
    assert cli(*revise_args(prompts, single, server, "--rounds", "1")).code == 0
    server.reset()
    second.fail_every(1, "503")  # the second endpoint is down the whole time
    result = cli(
        *revise_args(
            prompts, routed, server, "--rounds", "1", "--api-base", second.base_url, "--max-retries", "3"
        )
    )
    assert result.code == 0, result.stderr
    assert " 0 failed" in result.stderr
    assert _revisions(routed) == _revisions(single)  # same results, whichever endpoint answered
    assert server.request_count == query(routed, "SELECT count(*) FROM calls")[0][0]
    # The Router moved failed requests to the healthy endpoint, and soon cooled the down one.
    assert second.request_count < server.request_count // 2
    config = json.loads(query(routed, "SELECT config FROM runs")[0][0])
    assert config["api_base"] == [server.base_url, second.base_url]


def test_when_every_endpoint_fails_the_runner_backs_off_and_records_it(server, second, tmp_path):
    server.fail_every(1, "500")
    second.fail_every(1, "500")
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:1])
    config = {
        "model_list": [
            {"model_name": CHAT_MODEL, "litellm_params": {"model": CHAT_MODEL, "api_base": s.base_url}}
            for s in (server, second)
        ],
        "router_settings": {"cooldown_time": 0.05},
    }
    summary = revise(
        prompts,
        db=tmp_path / "db.duckdb",
        model=CHAT_MODEL,
        backend=RouterBackend(CHAT_MODEL, router=config),
        rounds=0,
        options=RunnerOptions(max_retries=1, backoff_initial=0.01, backoff_max=0.02, retry_after_max=0.1),
    )
    assert summary.failed == 1
    attempts, error = query(tmp_path / "db.duckdb", "SELECT attempts, error FROM calls")[0]
    assert attempts == 2 and error
    # Each runner attempt went to the Router, which tried at most num_retries + 1 = 3 times.
    assert 2 <= server.request_count + second.request_count <= 2 * 3


def test_endpoint_concurrency_and_router_defaults(server, second):
    backend = get_backend(
        "openai/test", api_base=[server.base_url, second.base_url], params={"endpoint_concurrency": 8}
    )
    assert isinstance(backend, RouterBackend)
    assert backend.endpoint_limits == [8, 8] and backend.max_in_flight == 16
    # Not LiteLLM's max_parallel_requests (a full endpoint answers 429 and gets cooled down):
    # the limits are routing weights, and the backend caps the total in flight.
    assert [d["litellm_params"]["weight"] for d in backend.deployments] == [8, 8]
    assert all("max_parallel_requests" not in d["litellm_params"] for d in backend.deployments)
    assert backend.settings["num_retries"] == 2  # fail over to the other endpoint
    assert backend.settings["retry_after"] == 0  # backoff is the runner's job
    assert "api_key" not in json.dumps(backend.describe())
    # One --api-base is the ordinary backend, not the Router.
    assert not isinstance(get_backend("openai/test", api_base=[server.base_url]), RouterBackend)


def test_router_config_file(cli, server, second, tmp_path):
    config = tmp_path / "router.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: policy\n    litellm_params: {{model: openai/test, api_base: '{server.base_url}'}}\n"
        f"  - model_name: policy\n    litellm_params: {{model: openai/test, api_base: '{second.base_url}'}}\n"
        "router_settings:\n  routing_strategy: simple-shuffle\n",
        encoding="utf-8",
    )
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:4])
    db = tmp_path / "db.duckdb"
    result = cli("revise", prompts, "--db", db, "--model", "policy", "--router", config, "--rounds", "1")
    assert result.code == 0, result.stderr
    assert server.request_count + second.request_count == query(db, "SELECT count(*) FROM calls")[0][0] == 12
    assert "router" not in json.loads(query(db, "SELECT config FROM runs")[0][0])["params"]


def test_bad_router_configs_are_usage_errors(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:1])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_list: []\n", encoding="utf-8")
    result = cli("revise", prompts, "--db", tmp_path / "db.duckdb", "--model", "x", "--router", bad)
    assert result.code == 2 and "model_list" in result.stderr
    assert not (tmp_path / "db.duckdb").exists()
    with pytest.raises(RouterConfigError, match="no such"):
        load_router_config(tmp_path / "missing.yaml")
    good = {"model_list": [{"model_name": "a", "litellm_params": {"model": "openai/test"}}]}
    with pytest.raises(RouterConfigError, match="not a model_name"):
        RouterBackend("b", router=good)
