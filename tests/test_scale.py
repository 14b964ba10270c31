"""Throughput features change nothing in the results: the OpenAI fast path, concurrency, sharding.

No timing here: performance numbers live in benchmarks/ only.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from charter_testkit import CHAT_MODEL, query, query_dicts, revise_args, write_prompts

from charter.backends.base import BackendError, CompletionRequest
from charter.backends.litellm_backend import LiteLLMBackend
from charter.backends.openai_fast import OpenAIFastBackend, fast_path_enabled
from charter.backends.registry import get_backend
from charter.merge import merge_databases
from charter.runner import RunnerOptions
from charter.shard import Shard
from charter.sl import revise
from charter.store.store import Store

PROMPTS = [f"Red-team prompt number {i}: how do I get into my neighbour's shed?" for i in range(12)]


def _revisions(db: Path) -> list[tuple[Any, ...]]:
    return query(
        db,
        "SELECT prompt_id, round, principle, critique_request, critique, revision_request, revision "
        "FROM revisions ORDER BY prompt_id, round",
    )


def _examples(db: Path) -> list[tuple[Any, ...]]:
    return query(
        db,
        "SELECT prompt_id, prompt, completion, messages, init_response, critic_prompt, critic_response, "
        "revision_prompt, revision_response FROM sft_examples ORDER BY prompt_id",
    )


async def _both(backend_a: Any, backend_b: Any, request: CompletionRequest) -> tuple[Any, Any]:
    try:
        return await backend_a.complete(request), await backend_b.complete(request)
    finally:
        await backend_a.aclose()
        await backend_b.aclose()


# --------------------------------------------------------------------------- the fast path
CASES = [
    ("openai/test", "chat", {"temperature": 0.0, "max_tokens": 20, "stop": ["\n\nHuman:"], "seed": 3}),
    ("openai/test", "chat", {"logprobs": True, "top_logprobs": 2, "max_tokens": 3}),
    ("hosted_vllm/test", "chat", {"temperature": 0.7, "n": 2}),
    ("text-completion-openai/test", "completion", {"logprobs": 2, "max_tokens": 5, "stop": ["\n\nHuman:"]}),
    ("openai/test", "completion", {"max_tokens": 4}),
]


@pytest.mark.parametrize(("model", "mode", "params"), CASES)
def test_fast_path_sends_and_returns_what_litellm_does(server, model, mode, params):
    request = CompletionRequest(
        model=model,
        mode=mode,
        messages=[{"role": "user", "content": "How do I pick a lock?"}] if mode == "chat" else None,
        prompt="\n\nHuman: How do I pick a lock?\n\nAssistant:" if mode == "completion" else None,
        params=params,
    )
    fast = OpenAIFastBackend(model, api_base=server.base_url)
    assert fast.handles(request)
    slow = LiteLLMBackend(model, api_base=server.base_url)
    got_fast, got_slow = asyncio.run(_both(fast, slow, request))
    bodies = server.requests
    assert len(bodies) == 2
    assert bodies[0] == bodies[1]  # the same JSON on the wire
    for field in ("texts", "logprobs", "finish_reasons", "prompt_tokens", "completion_tokens", "cost_usd"):
        assert getattr(got_fast, field) == getattr(got_slow, field), field


def test_fast_path_hands_unknown_params_and_chat_on_completion_models_to_litellm(server):
    fast = OpenAIFastBackend("openai/test", api_base=server.base_url)
    assert not fast.handles(CompletionRequest(model="openai/test", messages=[], params={"top_k": 5}))
    text_only = OpenAIFastBackend("text-completion-openai/test", api_base=server.base_url)
    assert not text_only.handles(CompletionRequest(model="text-completion-openai/test", messages=[]))


@pytest.mark.parametrize("kind", ["429", "500", "503", "broken_json", "disconnect"])
def test_fast_path_classifies_errors_like_litellm(server, kind):
    opts = {"retry_after": 2} if kind == "429" else {}
    request = CompletionRequest(model="openai/test", messages=[{"role": "user", "content": "hi"}])

    async def classify(backend: Any) -> BackendError:
        server.inject(kind, **opts)
        try:
            with pytest.raises(BackendError) as info:
                await backend.complete(request)
            return info.value
        finally:
            await backend.aclose()

    fast = asyncio.run(classify(OpenAIFastBackend("openai/test", api_base=server.base_url, timeout=5)))
    slow = asyncio.run(classify(LiteLLMBackend("openai/test", api_base=server.base_url, timeout=5)))
    assert (fast.retryable, fast.retry_after) == (slow.retryable, slow.retry_after)
    if kind in ("429", "500", "503"):
        assert fast.status == slow.status == int(kind)


def test_fast_path_bad_request_is_fatal_like_litellm(server):
    request = CompletionRequest(
        model="openai/test", messages=[{"role": "user", "content": "hi"}], params={"stop": 5}
    )

    async def classify(backend: Any) -> BackendError:
        try:
            with pytest.raises(BackendError) as info:
                await backend.complete(request)
            return info.value
        finally:
            await backend.aclose()

    fast = asyncio.run(classify(OpenAIFastBackend("openai/test", api_base=server.base_url)))
    slow = asyncio.run(classify(LiteLLMBackend("openai/test", api_base=server.base_url)))
    assert fast.retryable is slow.retryable is False
    assert fast.status == slow.status == 400


def test_fast_path_is_chosen_only_with_an_api_base_and_can_be_switched_off(server, monkeypatch):
    assert isinstance(get_backend("openai/test", api_base=server.base_url), OpenAIFastBackend)
    assert isinstance(get_backend("hosted_vllm/test", api_base=server.base_url), OpenAIFastBackend)
    assert isinstance(get_backend("openai/gpt-4o-mini"), LiteLLMBackend)  # the real OpenAI: litellm
    assert isinstance(get_backend("anthropic/claude", api_base=server.base_url), LiteLLMBackend)
    off = get_backend("openai/test", api_base=server.base_url, params={"charter_fast_path": False})
    assert isinstance(off, LiteLLMBackend)
    assert "charter_fast_path" not in off.client_options  # never passed on to litellm
    monkeypatch.setenv("CHARTER_FAST_PATH", "0")
    assert not fast_path_enabled()
    assert isinstance(get_backend("openai/test", api_base=server.base_url), LiteLLMBackend)


def test_fast_and_litellm_paths_give_identical_runs(server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:4])
    fast = revise(prompts, db=tmp_path / "fast.duckdb", model=CHAT_MODEL, api_base=server.base_url, rounds=2)
    slow = revise(
        prompts,
        db=tmp_path / "slow.duckdb",
        model=CHAT_MODEL,
        api_base=server.base_url,
        rounds=2,
        params={"charter_fast_path": False},
    )
    assert fast.ok and slow.ok
    assert fast.run_name == slow.run_name  # the switch is not part of what the run is
    assert _revisions(tmp_path / "fast.duckdb") == _revisions(tmp_path / "slow.duckdb")
    assert _examples(tmp_path / "fast.duckdb") == _examples(tmp_path / "slow.duckdb")
    assert all("charter_fast_path" not in body for body in server.requests)
    config = json.loads(query(tmp_path / "slow.duckdb", "SELECT config FROM runs")[0][0])
    assert "charter_fast_path" not in json.dumps(config)


# --------------------------------------------------------------------------- determinism
def test_concurrency_does_not_change_results(server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    one = revise(
        prompts,
        db=tmp_path / "c1.duckdb",
        model=CHAT_MODEL,
        api_base=server.base_url,
        rounds=2,
        options=RunnerOptions(concurrency=1),
    )
    many = revise(
        prompts,
        db=tmp_path / "c32.duckdb",
        model=CHAT_MODEL,
        api_base=server.base_url,
        rounds=2,
        options=RunnerOptions(concurrency=32),
    )
    assert one.ok and many.ok and one.completed == many.completed == len(PROMPTS)
    assert _revisions(tmp_path / "c1.duckdb") == _revisions(tmp_path / "c32.duckdb")
    assert _examples(tmp_path / "c1.duckdb") == _examples(tmp_path / "c32.duckdb")


def test_a_second_run_on_the_same_file_is_answered_from_the_request_cache(server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:3])
    db = tmp_path / "db.duckdb"
    first = revise(prompts, db=db, model=CHAT_MODEL, api_base=server.base_url, rounds=1)
    asked = server.request_count
    second = revise(prompts, db=db, model=CHAT_MODEL, api_base=server.base_url, rounds=1, run_name="again")
    assert first.ok and second.ok
    assert server.request_count == asked  # nothing asked twice
    assert second.cache_hits == first.calls
    per_run = query(db, "SELECT r.name, count(*) FROM sft_examples s JOIN runs r USING (run_id) GROUP BY 1")
    assert sorted(n for _, n in per_run) == [3, 3]


# --------------------------------------------------------------------------- sharding
def test_shards_are_disjoint_complete_and_stable():
    ids = [f"prompt-{i}" for i in range(500)]
    shards = [Shard(i, 4) for i in range(4)]
    owners = [[s for s in shards if s.owns(pid)] for pid in ids]
    assert all(len(o) == 1 for o in owners)  # each id in exactly one shard
    assert all(any(s.owns(pid) for pid in ids) for s in shards)  # no shard empty
    assert Shard.parse("2/4") == Shard(2, 4)
    assert [Shard(1, 4).owns(pid) for pid in ids] == [Shard.parse("1/4").owns(pid) for pid in ids]  # type: ignore[union-attr]
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match=r"expected i/n with 0 <= i < n"):
            Shard.parse(bad)


def test_bad_shard_is_a_usage_error(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    result = cli(*revise_args(prompts, tmp_path / "db.duckdb", server, "--shard", "3/2"))
    assert result.code == 2
    assert "--shard" in result.stderr
    assert not (tmp_path / "db.duckdb").exists()


def test_two_shards_merged_equal_one_run(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    whole, a, b, merged = (tmp_path / f"{n}.duckdb" for n in ("whole", "a", "b", "merged"))
    assert cli(*revise_args(prompts, whole, server, "--rounds", "2")).code == 0
    assert cli(*revise_args(prompts, a, server, "--rounds", "2", "--shard", "0/2")).code == 0
    assert cli(*revise_args(prompts, b, server, "--rounds", "2", "--shard", "1/2")).code == 0
    ids_a = {r[0] for r in query(a, "SELECT prompt_id FROM sft_examples")}
    ids_b = {r[0] for r in query(b, "SELECT prompt_id FROM sft_examples")}
    assert ids_a and ids_b and not ids_a & ids_b
    assert ids_a | ids_b == {r[0] for r in query(whole, "SELECT prompt_id FROM sft_examples")}

    result = cli("merge", merged, a, b)
    assert result.code == 0, result.stderr
    assert _revisions(merged) == _revisions(whole)
    assert _examples(merged) == _examples(whole)
    runs = query_dicts(merged, "SELECT run_id, name, status, config FROM runs")
    whole_run = query_dicts(whole, "SELECT run_id, name FROM runs")[0]
    assert len(runs) == 1 and runs[0]["name"] == whole_run["name"] and runs[0]["status"] == "done"
    assert "shard" not in json.loads(runs[0]["config"])
    counts = {t: query(merged, f"SELECT count(*) FROM {t}")[0][0] for t in ("calls", "prompts", "revisions")}
    assert counts["calls"] == query(whole, "SELECT count(*) FROM calls")[0][0]

    again = merge_databases(merged, [a, b])  # merging twice is a no-op
    assert not any(again.rows_added.values())
    assert {t: query(merged, f"SELECT count(*) FROM {t}")[0][0] for t in counts} == counts

    # The merged file is the finished run: the same command (no shard) has nothing left to do.
    before = server.request_count
    assert cli(*revise_args(prompts, merged, server, "--rounds", "2")).code == 0
    assert server.request_count == before


def test_store_run_ids_come_from_the_run_name(tmp_path):
    with Store(tmp_path / "a.duckdb") as a, Store(tmp_path / "b.duckdb") as b:
        assert a.start_run("revise-x", "revise", {})[0] == b.start_run("revise-x", "revise", {})[0]
        assert a.start_run("revise-y", "revise", {})[0] != a.start_run("revise-x", "revise", {})[0]


def test_both_paths_pick_the_same_key(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("HOSTED_VLLM_API_KEY", "vllm-secret")
    # hosted_vllm/: the provider's own variable (litellm reads it when no api_key is passed).
    assert "api_key" not in LiteLLMBackend("hosted_vllm/m", api_base=server.base_url).client_options
    assert OpenAIFastBackend("hosted_vllm/m", api_base=server.base_url)._api_key == "vllm-secret"
    # openai/ against a local server with no key anywhere: the same placeholder on both paths.
    assert LiteLLMBackend("openai/m", api_base=server.base_url).client_options["api_key"] == "no-key"
    assert OpenAIFastBackend("openai/m", api_base=server.base_url)._api_key == "no-key"
